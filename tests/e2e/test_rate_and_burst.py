"""Admission through the real HTTP gateway, whole stack (nats-server with JetStream, the four
services, the built-in fake provider):

- a plan's request rate is enforced cluster-wide by metering: over it, 429 ``rate_limit_exceeded``
  with ``Retry-After`` and ``x-should-retry: true``, no hold and no charge, and the next window admits
  again (the window is shortened to a few seconds with ``JANUS_RATE_WINDOW_SECONDS``);
- 200 concurrent requests from one new user whose budget fits 10: at most 10 (plus the documented
  bound) admitted, the rest 429 with the credit headers, spend within the limit, no hold left.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import httpx
import openai
import pytest

from services.gateway.body import parse_chat
from shared.catalog import load_catalog
from shared.contract import Usage
from shared.money import PriceUnits, cost_credits
from tests.e2e.test_openai_sdk import RATE_HEADERS as CREDIT_HEADERS
from tests.openai_schema import validate
from tools.localstack import ROOT, Stack, start_stack
from tools.token import make_token

WINDOW = 6  # seconds: long enough for a few requests on a busy machine, short enough to wait out
RPM = 3
MODEL = "gpt-5-mini"
BODY = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "count to ten"}]}


def _hold() -> int:
    """The worst-case cost the gateway reserves for BODY (checked against a live probe below).
    The fake provider answers at least 16 words, so it produces exactly max_tokens and the actual
    cost equals the hold: settlements free nothing while the burst is in flight."""
    facts = parse_chat(json.dumps(BODY).encode())
    price = PriceUnits.of(load_catalog(ROOT / "config" / "catalog.yaml").model_by_name[MODEL].price)
    return cost_credits(Usage(facts.prompt_tokens, 10), price)


HOLD = _hold()
FITS = 10
BURST_SESSION = FITS * HOLD + HOLD // 2  # ten holds fit, an eleventh does not

PLANS = f"""
default_plan: rated
plans:
  rated:
    session: {{credits: 100000000, hours: 5}}
    weekly: {{credits: 500000000}}
    requests_per_minute: {RPM}
    default_model: {MODEL}
    auto_models: [{MODEL}]
  burst:
    session: {{credits: {BURST_SESSION}, hours: 5}}
    weekly: {{credits: 100000000}}
    default_model: {MODEL}
    auto_models: [{MODEL}]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("rate")
    (work / "plans.yaml").write_text(PLANS)
    s = start_stack(
        work / "stack",
        env={"JANUS_PLANS": str(work / "plans.yaml"), "JANUS_RATE_WINDOW_SECONDS": str(WINDOW)},
    )
    try:
        yield s
    finally:
        s.stop()


def _auth(stack: Stack, user: str, plan: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + make_token(user, plan, secret=stack.env["JANUS_JWT_SECRET"])}


async def _settled_usage(c: httpx.AsyncClient, stack: Stack, headers: dict[str, str], requests: int) -> dict:  # type: ignore[type-arg]
    """/v1/usage once ``requests`` settlements have landed and no hold is open (or 15 s passed)."""
    deadline = time.monotonic() + 15
    while True:
        u = (await c.get(f"{stack.base_url}/usage", headers=headers)).json()
        tally = u["week"]["by_model"].get(MODEL, {"requests": 0})
        done = tally["requests"] >= requests and u["session"]["reserved"] == 0
        if done or time.monotonic() > deadline:
            return u  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)


async def test_request_rate_is_429_with_retry_after_and_reopens(stack: Stack) -> None:
    headers = _auth(stack, "rated-user", "rated")
    url = f"{stack.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=30) as c:
        for i in range(RPM):
            r = await c.post(url, json=BODY, headers=headers)
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
            assert r.headers["x-ratelimit-remaining-requests"] == str(RPM - 1 - i)
            assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        refused = await c.post(url, json=BODY, headers=headers)
        assert refused.status_code == 429, refused.text
        validate("ErrorResponse", refused.json())
        err = refused.json()["error"]
        assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= WINDOW
        assert refused.headers["x-should-retry"] == "true"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"] == f"{retry_after}s"
        for h in CREDIT_HEADERS:
            assert h in refused.headers, h
        assert "x-request-id" in refused.headers

        # the refusal took no hold and charges nothing: only the three admitted requests are counted
        u = await _settled_usage(c, stack, headers, RPM)
        assert u["week"]["by_model"][MODEL]["requests"] == RPM
        assert u["session"]["reserved"] == 0 and u["weekly"]["reserved"] == 0
        assert u["session"]["used"] == RPM * HOLD

        # the window reopens exactly when Retry-After said
        await asyncio.sleep(retry_after)
        again = await c.post(url, json=BODY, headers=headers)
        assert again.status_code == 200, again.text
        assert again.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)


def test_the_openai_sdk_waits_out_the_rate_limit(stack: Stack) -> None:
    """The official SDK retries a 429 that says ``x-should-retry: true`` after ``Retry-After``."""
    key = _auth(stack, "sdk-rated-user", "rated")["Authorization"].removeprefix("Bearer ")
    patient = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=3)
    impatient = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
    for _ in range(RPM):
        patient.chat.completions.create(**BODY)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as ei:
        impatient.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert ei.value.code == "rate_limit_exceeded"
    t0 = time.monotonic()
    raw = patient.chat.completions.with_raw_response.create(**BODY)  # type: ignore[call-overload]
    waited = time.monotonic() - t0
    assert raw.http_response.status_code == 200
    assert raw.retries_taken >= 1 and waited >= 0.9
    assert raw.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)


async def test_two_hundred_concurrent_requests_from_a_new_user_whose_budget_fits_ten(stack: Stack) -> None:
    url = f"{stack.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=30) as c:
        # a probe user on the same plan: the hold the gateway reserves is what this test expects
        probe = await c.post(url, json=BODY, headers=_auth(stack, "burst-probe", "burst"))
        assert probe.status_code == 200, probe.text
        limit = int(probe.headers["x-ratelimit-session-limit-credits"])
        assert limit == BURST_SESSION
        assert limit - int(probe.headers["x-ratelimit-session-remaining-credits"]) == HOLD
        probe_usage = await _settled_usage(c, stack, _auth(stack, "burst-probe", "burst"), 1)
        actual = probe_usage["session"]["used"]
        assert probe_usage["session"]["reserved"] == 0 and actual > 0
    # the overshoot bound of one request (actual - reserved); admitted requests can only exceed FITS if
    # settlements free credits during the burst, i.e. if the actual cost is below the hold
    bound = max(0, actual - HOLD)
    most = 1 + (BURST_SESSION - HOLD) // min(actual, HOLD)

    headers = _auth(stack, "burst-user", "burst")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
        start = asyncio.Event()

        async def one() -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
            await start.wait()
            async with s.post(url, json=BODY, headers=headers) as r:
                return r.status, dict(r.headers), await r.json()

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        await asyncio.sleep(0)
        start.set()
        results = await asyncio.gather(*tasks)

    statuses = [st for st, _, _ in results]
    admitted = statuses.count(200)
    refused = [(h, b) for st, h, b in results if st == 429]
    assert admitted + len(refused) == 200, sorted(set(statuses))
    assert FITS <= admitted <= most, (admitted, actual, HOLD)
    if actual == HOLD:
        assert admitted == FITS
    for h, b in refused:
        assert b["error"]["code"] == "budget_exceeded" and b["error"]["type"] == "insufficient_quota"
        assert h["x-should-retry"] == "false"
        for name in CREDIT_HEADERS:
            assert name in {k.lower() for k in h}, name
        assert int(h["X-RateLimit-Session-Remaining-Credits"]) < HOLD

    async with httpx.AsyncClient(timeout=30) as c:
        u = await _settled_usage(c, stack, headers, admitted)
    assert u["week"]["by_model"][MODEL]["requests"] == admitted
    assert u["session"]["reserved"] == 0 and u["weekly"]["reserved"] == 0  # no hold left
    assert u["session"]["used"] == admitted * actual
    assert u["session"]["used"] <= BURST_SESSION + bound
