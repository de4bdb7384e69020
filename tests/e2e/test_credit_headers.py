"""The six ``X-RateLimit-*`` credit headers on every chat completion and embeddings answer to an
authenticated caller, refusals included (400, 404, 413, 429, 503), with what metering last reported
for the user; and budget-aware ``auto``: a caller low on credits is steered to a cheaper class
(``reason=budget``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.test_openai_sdk import RATE_HEADERS as HEADERS
from tools.localstack import ROOT, Stack, start_stack
from tools.token import make_token

SESSION = 40_000
WEEKLY = 1_000_000
MAX_BODY = 256 * 1024

PLANS = f"""
default_plan: pro
plans:
  pro:
    session: {{credits: {SESSION}, hours: 5}}
    weekly: {{credits: {WEEKLY}}}
    default_model: gpt-5-mini
    auto_models: [gpt-5-nano, qwen.qwen3-32b, gpt-5-mini, deepseek.v3.2, gpt-5.2,
                  "qwen3:latest", "gemma3:1b", "deepseek-v3.1:671b-cloud"]
"""
ANALYSIS = "Explain step by step the trade-offs of a cache in front of a database."


def _start(work: Path) -> Stack:
    """The offline catalog on plans with a small session pool."""
    (work / "plans.yaml").write_text(PLANS)
    env = {
        "JANUS_PLANS": str(work / "plans.yaml"),
        "JANUS_CATALOG": str(ROOT / "config" / "catalog.yaml"),
        "JANUS_MAX_BODY_BYTES": str(MAX_BODY),
    }
    return start_stack(work, env=env)


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = _start(tmp_path_factory.mktemp("credits"))
    try:
        yield s
    finally:
        s.stop()


def _client(stack: Stack, user: str) -> httpx.Client:
    tok = make_token(user, "pro", secret=stack.env["JANUS_JWT_SECRET"])
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {tok}"}, timeout=30)


def _credits(r: httpx.Response) -> dict[str, str]:
    missing = [h for h in HEADERS if h not in r.headers]
    assert not missing, f"{r.status_code} {r.text[:200]} lacks {missing}"
    return {h: r.headers[h] for h in HEADERS}


def _chat(c: httpx.Client, **body: object) -> httpx.Response:
    return c.post("/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], **body})


def test_refusals_carry_the_credit_headers_metering_last_reported(small_budget: Stack) -> None:
    with _client(small_budget, "headers-user") as c:
        # a caller this gateway has never seen: fetched from metering before the 400
        bad = c.post("/chat/completions", json={"model": "gpt-5-nano", "messages": []})
        assert bad.status_code == 400
        first = _credits(bad)
        assert first["x-ratelimit-session-limit-credits"] == str(SESSION)
        assert first["x-ratelimit-session-remaining-credits"] == str(SESSION)
        assert first["x-ratelimit-weekly-limit-credits"] == str(WEEKLY)

        ok = _chat(c, model="gpt-5-nano", max_tokens=16)
        assert ok.status_code == 200, ok.text
        last = _credits(ok)
        assert int(last["x-ratelimit-session-remaining-credits"]) < SESSION

        unknown = _chat(c, model="no-such-model")
        too_big = c.post(
            "/chat/completions",
            content=b"{" + b" " * MAX_BODY + b"}",
            headers={"Content-Type": "application/json"},
        )
        # a long output cap is granted shorter now; a prompt the session cannot pay for is refused
        over = c.post(
            "/chat/completions",
            json={
                "model": "gpt-5.2",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": "word " * 40_000}],
            },
        )
        assert (unknown.status_code, too_big.status_code, over.status_code) == (404, 413, 429)
        assert _credits(unknown) == last and _credits(too_big) == last
        assert _credits(over)["x-ratelimit-session-limit-credits"] == str(SESSION)

    with _client(small_budget, "embeddings-user") as c:
        # the same for embeddings, from a caller's first request on (it once answered without them)
        refused = [
            c.post("/embeddings", json={"model": "text-embedding-3-small", "input": 1}),
            c.post("/embeddings", json={"model": "no-such-model", "input": "hi"}),
            c.post("/embeddings", json={"model": "gpt-5-nano", "input": "hi"}),
            c.post(
                "/embeddings",
                content=b"{" + b" " * MAX_BODY + b"}",
                headers={"Content-Type": "application/json"},
            ),
        ]
        assert [r.status_code for r in refused] == [400, 404, 400, 413]
        views = [_credits(r) for r in refused]
        assert views[0]["x-ratelimit-session-remaining-credits"] == str(SESSION)
        assert all(v == views[0] for v in views)
        ok = c.post("/embeddings", json={"model": "text-embedding-3-small", "input": "hi"})
        assert ok.status_code == 200, ok.text
        assert int(_credits(ok)["x-ratelimit-session-remaining-credits"]) < SESSION

    with _client(small_budget, "headers-user") as c:
        # a 503 (no worker answers) after authentication carries them as well
        small_budget.services["worker"].stop()
        gone = _chat(c, model="gpt-5-nano", max_tokens=16)
        assert gone.status_code == 503, gone.text
        _credits(gone)


def test_auto_steers_a_caller_low_on_credits_to_a_cheaper_class(tmp_path: Path) -> None:
    stack = _start(tmp_path)  # of its own: the other test stops its stack's worker
    try:
        tok = make_token("budget-user", "pro", secret=stack.env["JANUS_JWT_SECRET"])
        client = openai.OpenAI(base_url=stack.base_url, api_key=tok, max_retries=0)

        def ask_auto() -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", max_tokens=16, messages=[{"role": "user", "content": ANALYSIS}]
            )
            return str(raw.headers["x-janus-route"])

        assert "reason=budget" not in ask_auto()  # plenty left: the class the prompt asks for
        # a long prompt to the dearest model spends the session pool quickly
        long_prompt = "word " * 4000
        deadline = time.monotonic() + 60
        while True:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-5.2", max_tokens=1, messages=[{"role": "user", "content": long_prompt}]
            )
            left = int(raw.headers["x-ratelimit-session-remaining-credits"])
            if left < SESSION * 0.2:
                break
            assert time.monotonic() < deadline, f"{left} credits left"
        route = ask_auto()
        assert "reason=budget" in route, route
    finally:
        stack.stop()
