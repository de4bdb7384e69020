"""The console in a real browser (Debian's headless Chromium, driven by Playwright) against the
running stack: sign in, the pools match ``/v1/usage``, a key made in the page works with the
official SDK and is refused once revoked in the page, a streamed playground message lowers the
pools, and no page logs an error or trips the Content-Security-Policy. Every page is captured at
desktop and phone width into ``screenshots/console/`` (gitignored)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.kit.programs import debian_tool
from tools.localstack import ROOT, Stack
from tools.token import make_token

SHOTS = ROOT / "screenshots" / "console"
PAGES = ("budget", "spend", "keys", "byok", "models", "playground", "admin")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# every securitypolicyviolation event, recorded before any page script runs
_WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
                          e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""

_UNNAMED_CONTROLS = """
[...document.querySelectorAll('input, select, textarea, button')]
  .filter(e => e.offsetParent !== null)
  .filter(e => !((e.labels && e.labels.length) || e.getAttribute('aria-label')
                 || e.getAttribute('aria-labelledby') || e.textContent.trim()))
  .map(e => e.outerHTML.slice(0, 80))
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=debian_tool("chromium"), headless=True)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page whose console errors, uncaught exceptions and CSP violations are collected."""

    def __init__(self, browser: Browser, viewport: dict[str, int], base: str) -> None:
        self.context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        self.context.add_init_script(_WATCH_CSP)
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.base = base

    def sign_in(self, token: str) -> None:
        self.page.goto(self.base + "/console")
        self.page.get_by_label("Token", exact=True).fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_selector('body[data-loaded="budget"]')

    def open(self, page: str) -> None:
        self.page.locator(f'nav button[data-page="{page}"]').click()
        self.page.wait_for_selector(f'body[data-loaded="{page}"]')

    def check_clean(self) -> None:
        csp = self.page.evaluate("window.__csp")
        assert csp == [], csp
        assert self.errors == [], self.errors

    def shoot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def _usage(stack: Stack, token: str) -> dict[str, Any]:
    r = httpx.get(stack.base_url + "/usage", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def _settled(stack: Stack, token: str, in_history: int = 0, deadline: float = 20) -> dict[str, Any]:
    """/v1/usage once no hold is open and, with ``in_history``, once today's history shows that many
    requests: metering writes the daily history from the ledger every few seconds, after the
    settlement itself."""
    end = time.monotonic() + deadline
    while True:
        u = _usage(stack, token)
        done = not u["weekly"]["reserved"]
        if done and in_history:
            r = httpx.get(
                stack.base_url + "/usage/daily?days=1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            r.raise_for_status()
            done = r.json()["data"][-1]["requests"] >= in_history
        if done:
            return u
        assert time.monotonic() < end, f"usage not settled within {deadline}s: {u}"
        time.sleep(0.1)


def _shown(page: Page, pool: str) -> int:
    text = page.locator(f'#pool-{pool} [data-field="remaining"]').inner_text()
    return int(text.replace(",", ""))


def _chat(stack: Stack, token: str, user_text: str) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=token, max_retries=0)
    client.chat.completions.create(model="gpt-5-mini", messages=[{"role": "user", "content": user_text}])


def test_console_end_to_end_at_desktop_width(stack: Stack, browser: Browser) -> None:
    secret = stack.env["JANUS_JWT_SECRET"]
    token = make_token("browser-user", "pro", "b@example.com", secret=secret, roles=["janus-admin"])
    base = stack.base_url.removesuffix("/v1")
    _chat(stack, token, "some history for the spend chart")
    before = _settled(stack, token, in_history=1)
    w = Watched(browser, DESKTOP, base)
    w.sign_in(token)
    page = w.page

    # the gauges show what /v1/usage says
    for pool in ("session", "weekly"):
        assert _shown(page, pool) == before[pool]["remaining"]
    assert re.match(
        r"^(\d+d )?(\d+h )?\d+m \d+s$", page.locator('#pool-weekly [data-field="countdown"]').inner_text()
    )
    w.shoot("budget-desktop")

    w.open("spend")
    page.wait_for_selector("#chart canvas")
    assert page.locator("#spend-table tbody tr").count() >= 1
    assert "gpt-5-mini" in page.locator("#spend-table thead").inner_text()
    w.shoot("spend-desktop")

    # a key created in the page works with the SDK, and is refused once revoked in the page
    w.open("keys")
    page.get_by_label("Name", exact=True).fill("from the browser")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_selector("#new-key:not([hidden])")
    key = page.locator("#new-key-value").input_value()
    assert key.startswith("sk-janus-")
    sdk = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
    assert sdk.chat.completions.create(
        model="gpt-5-nano", messages=[{"role": "user", "content": "hi"}]
    ).choices
    w.shoot("keys-desktop")
    page.get_by_role("button", name="Revoke key from the browser").click()
    page.wait_for_selector("#keys-table tbody td:text-is('revoked')")
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(model="gpt-5-nano", messages=[{"role": "user", "content": "hi"}])

    # an own provider key set in the page shows only as a masked hint, and can be deleted
    w.open("byok")
    page.get_by_label("New key for upstream", exact=True).fill("sk-own-provider-key-0000wxyz")
    page.locator("#byok-table button[type=submit]").click()
    page.wait_for_selector("#byok-table td:text-is('sk-...wxyz')")
    assert "sk-own-provider-key" not in page.content()
    w.shoot("byok-desktop")
    page.get_by_role("button", name="Delete your upstream key").click()
    page.wait_for_selector("#byok-table td:text-is('not set')")
    w.open("models")
    assert page.locator("#models-table tbody tr").count() >= 3
    w.shoot("models-desktop")

    # a streamed playground message: the answer, the route, the cost, and the pools go down
    w.open("playground")
    page.get_by_label("Model", exact=True).select_option("gpt-5-mini")
    page.get_by_label("Message", exact=True).fill("Write two sentences about gateways.")
    page.get_by_role("button", name="Send").click()
    # locators, not wait_for_function: a string predicate is an eval, which the page's CSP refuses
    expect(page.locator("#pg-cost")).to_contain_text("credits")
    assert page.locator("#pg-output").inner_text().strip()
    assert page.locator("#pg-route").inner_text().startswith("model=gpt-5-mini; reason=direct")
    w.shoot("playground-desktop")
    after = _settled(stack, token)
    assert after["weekly"]["remaining"] < before["weekly"]["remaining"]
    w.open("budget")
    expect(page.locator('#pool-weekly [data-field="remaining"]')).to_have_text(
        f"{after['weekly']['remaining']:,}"
    )

    w.open("admin")
    assert page.locator("#deployments-table tbody tr").count() >= 1
    assert "browser-user" in page.locator("#top-table").inner_text()
    w.shoot("admin-desktop")
    w.check_clean()
    # the token never reached a URL or persistent storage, and signing out forgets it
    assert token not in page.url
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.getItem('janus.token')") == token
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_selector("#signin-form")
    assert page.evaluate("sessionStorage.getItem('janus.token')") is None
    assert page.locator("#nav").is_hidden()
    w.context.close()


def test_console_at_phone_width_without_the_operator_role(stack: Stack, browser: Browser) -> None:
    token = make_token("phone-user", "developer", secret=stack.env["JANUS_JWT_SECRET"])
    _chat(stack, token, "history")
    w = Watched(browser, PHONE, stack.base_url.removesuffix("/v1"))
    w.sign_in(token)
    assert w.page.locator("#nav-admin").is_hidden()
    for name in PAGES[:-1]:
        w.open(name)
        # every visible control has an accessible name (a label, aria-label or its own text)
        unnamed = w.page.evaluate(_UNNAMED_CONTROLS)
        assert unnamed == [], (name, unnamed)
        if name == "spend":
            w.page.wait_for_selector("#chart canvas")
        # nothing wider than the phone: no sideways scrolling of the page itself
        assert w.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
        w.shoot(f"{name}-phone")
    w.check_clean()
    w.context.close()


def test_a_bad_token_is_refused_in_the_page(stack: Stack, browser: Browser) -> None:
    w = Watched(browser, DESKTOP, stack.base_url.removesuffix("/v1"))
    w.page.goto(w.base + "/console")
    w.page.get_by_label("Token", exact=True).fill("not-a-token")
    w.page.get_by_role("button", name="Sign in").click()
    expect(w.page.locator("#status")).to_contain_text("not accepted")
    assert w.page.locator("#nav").is_hidden()
    assert w.page.evaluate("sessionStorage.getItem('janus.token')") is None
    assert w.page.evaluate("window.__csp") == []
    w.context.close()
