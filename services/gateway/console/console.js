// The Janus console: a client of the gateway's public HTTP API, nothing more.
//
// The token lives in sessionStorage: it survives a reload of this tab (people refresh dashboards),
// is not shared with other tabs, goes when the tab closes, and is never sent on its own (unlike a
// cookie, so no cross-site request can use it). localStorage would keep a bearer credential on
// disk indefinitely. The page's Content-Security-Policy allows no inline or foreign script, and
// every server-provided string is written with textContent, never as HTML.
"use strict";

(function () {
  const KEY = "janus.token";
  const state = { token: null, usage: null, models: [], daily: null, chart: null, timers: [] };
  const $ = (sel) => document.querySelector(sel);
  const fmtInt = new Intl.NumberFormat("en-US");
  // whole cents for amounts people budget with, more digits for what single requests cost
  // whole cents (rounded down: never show more left than there is) for amounts people budget
  // with, more digits for what single requests cost
  const usd = (credits) => Math.abs(credits) >= 1e6
    ? "$" + (Math.floor(credits / 1e4) / 100).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })
    : "$" + (credits / 1e6).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || "HTTP " + status);
      this.status = status;
      this.code = err.code || null;
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = { Authorization: "Bearer " + state.token };
    if (opts.body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch("/v1" + path, {
      method: opts.method || "GET",
      headers: headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let body = null;
    try { body = await resp.json(); } catch (_) { body = null; }
    if (!resp.ok) throw new ApiError(resp.status, body);
    return body;
  }

  function say(message, ok) {
    const el = $("#status");
    el.textContent = message || "";
    el.classList.toggle("ok", !!ok);
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
    return tr;
  }

  // a one-cell row that spans the table: an empty list or an error in place of the rows
  function note(text) {
    const td = el("td", text);
    td.colSpan = 99;
    return row([td]);
  }

  function numCell(v) { return el("td", v, "num"); }

  function untilText(iso) {
    if (!iso) return "–";
    let s = Math.max(0, Math.round((Date.parse(iso) - Date.now()) / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + s + "s";
  }

  // ---------------------------------------------------------------------------------- budget
  function showPool(id, meterId, pool) {
    const root = document.getElementById(id);
    const field = (name) => root.querySelector('[data-field="' + name + '"]');
    field("remaining-usd").textContent = usd(pool.remaining);
    field("remaining").textContent = fmtInt.format(pool.remaining);
    field("limit").textContent = fmtInt.format(pool.limit);
    field("reserved").textContent = fmtInt.format(pool.reserved || 0);
    const countdown = field("countdown");
    countdown.dataset.reset = pool.reset;
    countdown.setAttribute("datetime", pool.reset);
    const meter = document.getElementById(meterId);
    meter.max = Math.max(pool.limit, 1);
    meter.value = pool.remaining;
    meter.low = pool.limit * 0.2;
    meter.high = pool.limit * 0.5;
    meter.optimum = pool.limit;
    meter.textContent = usd(pool.remaining) + " left";
  }

  function quotaText(q) {
    if (q.limit === null || q.limit === undefined) return fmtInt.format(q.used) + " used (no limit)";
    return fmtInt.format(q.remaining) + " of " + fmtInt.format(q.limit) + " left";
  }

  async function loadUsage() {
    const u = await api("/usage");
    state.usage = u;
    $("#plan-name").textContent = u.plan;
    showPool("pool-session", "session-meter", u.session);
    showPool("pool-weekly", "weekly-meter", u.weekly);
    $("#quota-input").textContent = quotaText(u.monthly_tokens.input);
    $("#quota-output").textContent = quotaText(u.monthly_tokens.output);
    $("#quota-countdown").dataset.reset = u.monthly_tokens.reset;
    tick();
    return u;
  }

  function tick() {
    for (const t of document.querySelectorAll("time[data-reset]")) t.textContent = untilText(t.dataset.reset);
  }

  // ----------------------------------------------------------------------------------- spend
  const PALETTE = ["#1d4ed8", "#b45309", "#15803d", "#b91c1c", "#7c3aed", "#0e7490", "#be185d", "#4b5563"];

  async function loadDaily() {
    state.daily = await api("/usage/daily?days=30");
    drawSpend();
  }

  function drawSpend() {
    const daily = state.daily;
    if (!daily) return;
    const split = document.querySelector('input[name="split"]:checked').value;
    const names = [];
    for (const d of daily.data) for (const k of Object.keys(d[split])) if (!names.includes(k)) names.push(k);
    names.sort();
    const xs = daily.data.map((d) => Date.parse(d.date + "T00:00:00Z") / 1000);
    const series = names.map((n) => daily.data.map((d) => (d[split][n] ? d[split][n].credits / 1e6 : 0)));

    const thead = $("#spend-table thead");
    thead.replaceChildren(row([el("th", "Day"), ...names.map((n) => el("th", n, "num")), el("th", "Total", "num")]));
    const tbody = $("#spend-table tbody");
    tbody.replaceChildren();
    for (const d of daily.data.slice().reverse()) {
      if (!d.requests) continue;
      tbody.appendChild(row([el("th", d.date), ...names.map((n) => numCell(fmtInt.format(d[split][n] ? d[split][n].credits : 0))),
        numCell(fmtInt.format(d.credits))]));
    }
    if (!tbody.children.length) tbody.appendChild(note("No spend in the last 30 days."));

    const box = $("#chart");
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    if (typeof uPlot === "undefined") return;
    const width = Math.max(280, box.clientWidth - 8);
    const opts = {
      width: width,
      height: 300,
      series: [{}].concat(names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 2,
        points: { show: true, size: 5 }, value: (u, v) => (v === null ? "–" : "$" + v.toFixed(4)) }))),
      axes: [{}, { values: (u, vals) => vals.map((v) => "$" + v), size: 80 }],
      scales: { x: { time: true } },
      legend: { live: false },
    };
    state.chart = new uPlot(opts, [xs].concat(series), box);
  }

  // ------------------------------------------------------------------------------------ keys
  async function loadKeys() {
    const tbody = $("#keys-table tbody");
    if (state.token.startsWith("sk-")) {
      // the API refuses key management to a key (a leaked key must not mint more); say so up front
      $("#key-form").hidden = true;
      tbody.replaceChildren(note("Sign in with your account's token to manage API keys."));
      return;
    }
    let keys;
    try {
      keys = (await api("/keys")).data;
    } catch (e) {
      tbody.replaceChildren(note(e.message));
      $("#key-form").hidden = e.code === "sign_in_required";
      return;
    }
    $("#key-form").hidden = false;
    tbody.replaceChildren();
    for (const k of keys) {
      const action = el("td");
      if (!k.revoked) {
        const b = el("button", "Revoke", "danger");
        b.type = "button";
        b.setAttribute("aria-label", "Revoke key " + (k.name || k.hint));
        b.dataset.revoke = k.id;
        action.appendChild(b);
      }
      tbody.appendChild(row([el("td", k.name || "(unnamed)"), el("td", k.hint), el("td", new Date(k.created * 1000).toISOString().slice(0, 16).replace("T", " ")),
        el("td", k.revoked ? "revoked" : "active"), action]));
    }
    if (!keys.length) tbody.appendChild(note("No keys yet."));
  }

  async function createKey(ev) {
    ev.preventDefault();
    const name = $("#key-name").value.trim();
    try {
      const made = await api("/keys", { method: "POST", body: { name: name } });
      $("#new-key-value").value = made.key;
      $("#new-key").hidden = false;
      $("#key-name").value = "";
      say("Key created. Copy it now: it is not shown again.", true);
      await loadKeys();
      $("#new-key-value").focus();
      $("#new-key-value").select();
    } catch (e) { say(e.message); }
  }

  async function revokeKey(id) {
    try {
      await api("/keys/" + encodeURIComponent(id), { method: "DELETE" });
      say("Key revoked.", true);
      await loadKeys();
    } catch (e) { say(e.message); }
  }

  async function copyKey() {
    const input = $("#new-key-value");
    try {
      await navigator.clipboard.writeText(input.value);
      say("Copied.", true);
    } catch (_) {
      input.select();
      say("Select the key and copy it (the clipboard is not available here).");
    }
  }

  // ------------------------------------------------------------------------------------ byok
  async function loadByok() {
    const tbody = $("#byok-table tbody");
    let listing;
    try { listing = await api("/byok"); } catch (e) { tbody.replaceChildren(note(e.message)); return; }
    const stored = {};
    for (const k of listing.data) stored[k.provider] = k;
    tbody.replaceChildren();
    for (const p of listing.providers) {
      const form = el("form");
      form.method = "post";
      form.className = "row";
      const id = "byok-" + p;
      const label = el("label", "New key for " + p, "sr");
      label.htmlFor = id;
      const input = el("input");
      input.id = id; input.type = "password"; input.autocomplete = "off"; input.required = true;
      const save = el("button", stored[p] ? "Replace" : "Save");
      save.type = "submit";
      form.append(label, input, save);
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        try { await api("/byok/" + encodeURIComponent(p), { method: "PUT", body: { api_key: input.value } });
          input.value = ""; say("Stored your " + p + " key.", true); await loadByok(); } catch (e) { say(e.message); }
      });
      const action = el("td");
      if (stored[p]) {
        const del = el("button", "Delete", "danger");
        del.type = "button";
        del.setAttribute("aria-label", "Delete your " + p + " key");
        del.addEventListener("click", async () => {
          try { await api("/byok/" + encodeURIComponent(p), { method: "DELETE" }); say("Deleted your " + p + " key.", true); await loadByok(); } catch (e) { say(e.message); }
        });
        action.appendChild(del);
      }
      const cell = el("td"); cell.appendChild(form);
      tbody.appendChild(row([el("th", p), el("td", stored[p] ? stored[p].hint : "not set"), cell, action]));
    }
    if (!listing.providers.length) tbody.appendChild(note("No provider here takes your own key."));
  }

  // ---------------------------------------------------------------------------------- models
  async function loadModels() {
    state.models = (await api("/models")).data;
    const tbody = $("#models-table tbody");
    tbody.replaceChildren();
    const select = $("#pg-model");
    for (const m of state.models) {
      const j = m.janus || { price: {}, capabilities: [] };
      tbody.appendChild(row([el("th", m.id), el("td", j.kind), numCell(fmtInt.format(j.context_window || 0)),
        numCell("$" + j.price.input), numCell("$" + j.price.cached_input), numCell("$" + j.price.output),
        el("td", (j.capabilities || []).join(", "))]));
      if (j.kind === "chat" && !select.querySelector('option[value="' + CSS.escape(m.id) + '"]')) {
        const o = el("option", m.id); o.value = m.id; select.appendChild(o);
      }
    }
  }

  // ------------------------------------------------------------------------------ playground
  function priceOf(model) {
    const m = state.models.find((x) => x.id === model);
    return m && m.janus ? m.janus.price : null;
  }

  async function play(ev) {
    ev.preventDefault();
    const button = $("#pg-send");
    const out = $("#pg-output");
    out.textContent = "";
    $("#pg-route").textContent = "…"; $("#pg-tokens").textContent = "–"; $("#pg-cost").textContent = "–";
    button.disabled = true;
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST", cache: "no-store", credentials: "omit",
        headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json", "X-Bot-ID": "console" },
        body: JSON.stringify({ model: $("#pg-model").value, stream: true, stream_options: { include_usage: true },
          messages: [{ role: "user", content: $("#pg-prompt").value }] }),
      });
      $("#pg-route").textContent = resp.headers.get("X-Janus-Route") || "–";
      if (!resp.ok) { let b = null; try { b = await resp.json(); } catch (_) { /* not JSON */ } throw new ApiError(resp.status, b); }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "", usage = null, model = null;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new ApiError(502, chunk);
            model = chunk.model || model;
            for (const c of chunk.choices || []) if (c.delta && c.delta.content) out.textContent += c.delta.content;
            if (chunk.usage) usage = chunk.usage;
          }
        }
      }
      if (usage) {
        $("#pg-tokens").textContent = usage.prompt_tokens + " in, " + usage.completion_tokens + " out";
        const p = priceOf(model);
        if (p) {
          const credits = Math.ceil(usage.prompt_tokens * p.input + usage.completion_tokens * p.output);
          // from the catalog's prices and the reported usage; metering's figure is in the pools
          $("#pg-cost").textContent = "≈ " + fmtInt.format(credits) + " credits (" + usd(credits) + ")";
        }
      }
      await loadUsage();
    } catch (e) {
      say(e.message);
    } finally {
      button.disabled = false;
    }
  }

  // ----------------------------------------------------------------------------------- admin
  async function loadAdmin() {
    const o = await api("/admin/overview");
    const dep = $("#deployments-table tbody");
    dep.replaceChildren();
    for (const d of o.deployments) {
      dep.appendChild(row([el("th", d.deployment), el("td", d.provider), el("td", d.state.replace("_", "-"), "state-" + d.state),
        numCell((d.error_rate * 100).toFixed(1) + "%"), numCell(d.latency_seconds === null ? "–" : (d.latency_seconds * 1000).toFixed(0) + " ms")]));
    }
    const r = o.this_replica;
    $("#replica-counts").textContent = "This gateway replica: " + fmtInt.format(r.chat_requests) + " chat requests, " +
      (r.error_rate * 100).toFixed(1) + "% server errors, " + (r.fallback_rate * 100).toFixed(1) + "% moved to a fallback.";
    const top = $("#top-table tbody");
    top.replaceChildren();
    for (const u of o.top_users_this_week) top.appendChild(row([el("th", u.user), el("td", u.plan), numCell(usd(u.credits)), numCell(fmtInt.format(u.requests))]));
  }

  // ------------------------------------------------------------------------------ navigation
  const LOADERS = { budget: loadUsage, spend: loadDaily, keys: loadKeys, byok: loadByok, models: loadModels,
    playground: loadModels, admin: loadAdmin };

  async function show(page) {
    for (const b of document.querySelectorAll("nav button")) {
      if (b.dataset.page === page) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
    }
    for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
    document.body.dataset.page = page;
    say("");
    try { await LOADERS[page](); } catch (e) { say(e.message); }
    document.body.dataset.loaded = page;
  }

  async function signIn(token) {
    state.token = token;
    let me;
    try {
      me = await api("/me");
      await loadUsage();
    } catch (e) {
      state.token = null;
      sessionStorage.removeItem(KEY);
      say(e.status === 401 || e.status === 403 ? "That token was not accepted: " + e.message : e.message);
      return;
    }
    sessionStorage.setItem(KEY, token);
    $("#signin").hidden = true;
    $("#nav").hidden = false;
    $("#signout").hidden = false;
    $("#who").hidden = false;
    $("#who").textContent = (me.email || me.user) + " · " + me.plan + (me.api_key_id ? " · API key " + me.api_key_id : "");
    $("#nav-admin").hidden = !me.admin;
    state.timers.push(setInterval(tick, 1000));
    state.timers.push(setInterval(() => { if (!$("#page-budget").hidden) loadUsage().catch((e) => say(e.message)); }, 10000));
    await show("budget");
    $("#main").focus();
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
    state.token = null;
    location.reload();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = $("#token");
      const token = input.value.trim();
      input.value = "";
      if (token) signIn(token);
    });
    $("#signout").addEventListener("click", signOut);
    $("#nav").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-page]");
      if (b) show(b.dataset.page);
    });
    $("#key-form").addEventListener("submit", createKey);
    $("#copy-key").addEventListener("click", copyKey);
    $("#keys-table").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-revoke]");
      if (b) revokeKey(b.dataset.revoke);
    });
    $("#pg-form").addEventListener("submit", play);
    for (const r of document.querySelectorAll('input[name="split"]')) r.addEventListener("change", drawSpend);
    let resizeTimer = null;
    window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawSpend, 200); });
    const saved = sessionStorage.getItem(KEY);
    if (saved) signIn(saved); else $("#token").focus();
  });
})();
