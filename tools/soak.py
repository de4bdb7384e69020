"""Sustained streaming load against a whole stack, with every stream checked and memory watched.

``python -m tools.soak [--minutes 10] [--concurrency 64]`` starts nats-server and the four services
(the built-in fake provider, paced so that streams stay open), keeps ``concurrency`` SSE streams
open for the whole run and reports, per service, resident memory at the start and the end. It exits
non-zero when a stream stalled, lost or reordered text, missed its ``[DONE]`` or failed.

The fake provider's text is deterministic per prompt, so every stream is checked against the
buffered answer to the same prompt. The load test (``tests/scale/test_load.py``) runs the same
driver for one minute; the fault and scale-out tests use its client and config helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from shared.catalog import load_catalog
from shared.contract import Usage
from shared.money import PriceUnits, cost_credits
from tools.localstack import ROOT, Stack, start_stack
from tools.token import make_token

LOAD_PLAN = "load"


# ------------------------------------------------------------------------------------------ config
def write_config(
    workdir: Path, *, latency_ms: int = 0, tokens_per_second: int = 0, plan_credits: int = 10_000_000_000
) -> dict[str, str]:
    """A catalog (the default one, with the fake deployment paced as asked) and a plans file with
    one roomy plan ``load`` next to the default ones; returns the env that points the stack at them."""
    catalog = yaml.safe_load((ROOT / "config" / "catalog.yaml").read_text())
    for provider in catalog["providers"]:
        if provider.get("kind") == "fake":
            for dep in provider["deployments"]:
                dep.setdefault("options", {}).update(
                    latency_ms=str(latency_ms), tokens_per_second=str(tokens_per_second)
                )
    plans = yaml.safe_load((ROOT / "config" / "plans.yaml").read_text())
    base = dict(plans["plans"]["enterprise"])
    base.update(
        session={"credits": plan_credits, "hours": 5},
        weekly={"credits": plan_credits * 4},
        monthly_tokens={"input": 10**12, "output": 10**12},
        requests_per_minute=1_000_000,
    )
    plans["plans"][LOAD_PLAN] = base
    workdir.mkdir(parents=True, exist_ok=True)
    cat_path, plans_path = workdir / "catalog.yaml", workdir / "plans.yaml"
    cat_path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    plans_path.write_text(yaml.safe_dump(plans, sort_keys=False))
    return {"JANUS_CATALOG": str(cat_path), "JANUS_PLANS": str(plans_path)}


def price_of(env: dict[str, str], model: str) -> PriceUnits:
    m = load_catalog(env["JANUS_CATALOG"]).model_by_name[model]
    return PriceUnits.of(m.price)


def token_for(stack: Stack, user: str, plan: str = LOAD_PLAN) -> str:
    return make_token(user, plan, f"{user}@example.com", secret=stack.env["JANUS_JWT_SECRET"])


# ------------------------------------------------------------------------------------------ client
@dataclass
class ChatResult:
    status: int
    text: str = ""
    usage: Usage | None = None
    chunks: int = 0
    done: bool = False  # the stream ended with data: [DONE] (buffered: a 200 with a body)
    error: dict[str, Any] | None = None  # the OpenAI error object, HTTP or in-band
    in_band: bool = False  # the error came as an SSE event after the stream had started
    model: str = ""
    request_id: str = ""
    elapsed: float = 0.0


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        int(raw.get("prompt_tokens") or 0),
        int(raw.get("completion_tokens") or 0),
        int(details.get("cached_tokens") or 0),
    )


async def chat(
    session: aiohttp.ClientSession,
    base_url: str,
    token: str,
    prompt: str,
    *,
    model: str = "gpt-5-nano",
    stream: bool = True,
    stall: float = 30.0,
    on_chunk: Any = None,
) -> ChatResult:
    """One chat completion. A stream is read event by event; ``stall`` bounds the silence between
    two reads (the client's own stall detector), ``on_chunk(result)`` runs after each content chunk."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=stall)
    async with session.post(
        f"{base_url}/chat/completions",
        json=body,
        timeout=timeout,
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        res = ChatResult(r.status, request_id=r.headers.get("X-Request-Id", ""))
        if r.status != 200 or not r.headers.get("Content-Type", "").startswith("text/event-stream"):
            payload = await r.json(content_type=None)
            if r.status == 200:
                res.text = payload["choices"][0]["message"]["content"] or ""
                res.usage = _usage(payload.get("usage"))
                res.model = payload.get("model", "")
                res.done = True
            else:
                res.error = payload.get("error")
            res.elapsed = time.monotonic() - t0
            return res
        parts: list[str] = []
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                res.done = True
                break
            event = json.loads(data)
            if "error" in event:
                res.error, res.in_band = event["error"], True
                break
            res.model = event.get("model", res.model)
            if event.get("usage"):
                res.usage = _usage(event["usage"])
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    parts.append(piece)
                    res.chunks += 1
                    res.text = "".join(parts)
                    if on_chunk is not None:
                        on_chunk(res)
        res.text = "".join(parts)
        res.elapsed = time.monotonic() - t0
        return res


async def get_usage(session: aiohttp.ClientSession, base_url: str, token: str) -> dict[str, Any]:
    async with session.get(
        f"{base_url}/usage",
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=10),
    ) as r:
        r.raise_for_status()
        return dict(await r.json())


async def answers(
    session: aiohttp.ClientSession, base_url: str, token: str, prompts: list[str], model: str
) -> dict[str, str]:
    """The buffered answer to each prompt: what every stream of the same prompt must reassemble to."""
    results = await asyncio.gather(
        *(chat(session, base_url, token, p, model=model, stream=False) for p in prompts)
    )
    for res in results:
        if res.status != 200 or not res.text:
            raise RuntimeError(f"buffered answer failed: {res.status} {res.error}")
    return {p: res.text for p, res in zip(prompts, results, strict=True)}


# -------------------------------------------------------------------------------------------- load
@dataclass
class LoadReport:
    streams: int = 0
    failures: list[str] = field(default_factory=list)
    charged: Counter[str] = field(default_factory=Counter)  # user -> credits by the clients' usage
    per_url: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.failures and self.streams > 0


def check_stream(res: ChatResult, expected: str) -> str | None:
    """Why a stream is wrong, or None."""
    if res.status != 200:
        return f"HTTP {res.status}: {res.error}"
    if res.error is not None:
        return f"in-band error after {res.chunks} chunks: {res.error}"
    if not res.done:
        return f"no [DONE] after {res.chunks} chunks"
    if res.text != expected:
        return f"text differs: {res.text[:80]!r} != {expected[:80]!r}"
    if res.usage is None or res.usage.completion_tokens != res.chunks:
        return f"usage {res.usage} does not match {res.chunks} content chunks"
    return None


async def run_load(
    base_urls: list[str],
    users: dict[str, str],
    expected: dict[str, str],
    *,
    concurrency: int,
    seconds: float,
    model: str,
    price: PriceUnits,
    stall: float = 30.0,
    results: list[tuple[str, ChatResult]] | None = None,
) -> LoadReport:
    """``concurrency`` loops, each streaming one prompt after another until ``seconds`` are over;
    ``results`` (when given) receives every (user, result) for the caller's own checks."""
    report = LoadReport()
    prompts = list(expected)
    names = list(users)
    stop_at = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency * 2)

    async def loop(slot: int, session: aiohttp.ClientSession) -> None:
        user = names[slot % len(names)]
        url = base_urls[slot % len(base_urls)]
        i = slot
        while time.monotonic() < stop_at:
            prompt = prompts[i % len(prompts)]
            i += 1
            try:
                res = await chat(session, url, users[user], prompt, model=model, stall=stall)
            except (TimeoutError, aiohttp.ClientError) as exc:
                report.failures.append(f"{user}: {type(exc).__name__} {exc}")
                continue
            report.streams += 1
            report.per_url[url] += 1
            if results is not None:
                results.append((user, res))
            if res.usage is not None:
                report.charged[user] += cost_credits(res.usage, price)
            why = check_stream(res, expected[prompt])
            if why:
                report.failures.append(f"{user} {res.request_id}: {why}")

    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(loop(n, session) for n in range(concurrency)))
    return report


# -------------------------------------------------------------------------------------------- soak
def rss(stack: Stack) -> dict[str, int]:
    return {name: svc.rss_kib() for name, svc in stack.services.items()}


async def soak(
    stack: Stack, *, concurrency: int, seconds: float, model: str, interval: float = 30.0
) -> tuple[LoadReport, list[dict[str, int]]]:
    users = {f"soak-{i}": token_for(stack, f"soak-{i}") for i in range(concurrency)}
    prompts = [f"Soak prompt number {i}: tell me about gateways" for i in range(16)]
    async with aiohttp.ClientSession() as session:
        expected = await answers(session, stack.base_url, next(iter(users.values())), prompts, model)
    # one short round first, so the baseline is taken with every pool and cache warmed up
    price = price_of(stack.env, model)
    await run_load(
        [stack.base_url], users, expected, concurrency=concurrency, seconds=3, model=model, price=price
    )
    samples = [rss(stack)]
    total = LoadReport()
    left = seconds
    while left > 0:
        part = await run_load(
            [stack.base_url],
            users,
            expected,
            concurrency=concurrency,
            seconds=min(interval, left),
            model=model,
            price=price,
        )
        left -= interval
        total.streams += part.streams
        total.failures += part.failures
        samples.append(rss(stack))
        print(f"  {total.streams} streams, {len(total.failures)} failures, RSS KiB {samples[-1]}", flush=True)
    return total, samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tokens-per-second", type=int, default=20, help="the fake provider's pace")
    ap.add_argument("--model", default="gpt-5-nano")
    a = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="janus-soak-"))
    env = write_config(workdir / "config", tokens_per_second=a.tokens_per_second)
    stack = start_stack(workdir, env=env)
    print(f"soak: {a.concurrency} streams for {a.minutes} min; logs in {workdir}", flush=True)
    try:
        report, samples = asyncio.run(
            soak(stack, concurrency=a.concurrency, seconds=a.minutes * 60, model=a.model)
        )
    finally:
        stack.stop()
    first, last = samples[0], samples[-1]
    print(f"\n{report.streams} streams checked, {len(report.failures)} failures")
    print(f"{'service':<10} {'start MiB':>10} {'end MiB':>10} {'growth MiB':>11} {'peak MiB':>10}")
    for name in first:
        peak = max(s[name] for s in samples)
        print(
            f"{name:<10} {first[name] / 1024:>10.1f} {last[name] / 1024:>10.1f} "
            f"{(last[name] - first[name]) / 1024:>11.1f} {peak / 1024:>10.1f}"
        )
    for f in report.failures[:20]:
        print("  FAIL", f)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
