"""Credit leases on a running stack with two gateways: a typical request is admitted on the
gateway's lease without a reserve to metering, and the budget stays exact: two gateways racing one
user's budget never pass it and leave no credit stranded at its end; a lease goes back when idle; a
killed gateway's lease is freed by the reaper; the credit headers come from the lease; 200
concurrent requests of one user do not each ask metering."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from shared.contract import Usage
from shared.money import cost_credits
from tests.eventually import eventually
from tests.faults.kit import add_replica, gateway_url, launch, open_holds, settled_usage
from tests.kit.metrics import parse_metric
from tools.localstack import Stack
from tools.soak import LOAD_PLAN, get_usage, price_of, token_for, write_config

pytestmark = pytest.mark.timeout(180)

MODEL = "gpt-5-nano"
MAX_TOKENS = 200
SESSION = 4_000  # the "tight" plan's session: about fifty requests of this size
LEASE_ENV = {
    "JANUS_LEASE_SECONDS": "3",
    "JANUS_LEASE_TTL_SECONDS": "4",
    "JANUS_LEASE_IDLE_SECONDS": "1",
    "JANUS_REAP_INTERVAL_SECONDS": "1",
}
CREDIT = "X-RateLimit-Session-Remaining-Credits"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("leases")
    cfg = write_config(work / "leases-config")
    plans_path = Path(cfg["JANUS_PLANS"])
    plans = yaml.safe_load(plans_path.read_text())
    tight = dict(plans["plans"][LOAD_PLAN])
    tight.update(session={"credits": SESSION, "hours": 5}, weekly={"credits": SESSION * 10})
    plans["plans"]["tight"] = tight
    plans_path.write_text(yaml.safe_dump(plans, sort_keys=False))
    stack = launch(work, env={**LEASE_ENV, **cfg})
    try:
        add_replica(stack, "gateway").wait_ready()
        yield stack
    finally:
        stack.stop()


def urls(stack: Stack) -> list[str]:
    return [stack.base_url, gateway_url(stack.services["gateway-2"])]


async def chat(
    session: aiohttp.ClientSession, url: str, token: str, errors: list[str] | None = None
) -> tuple[int, dict[str, str]]:
    """One request; with ``errors``, a refusal's body is kept there (what a failure message shows)."""
    body = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "lease me"}]}
    async with session.post(
        f"{url}/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        text = await r.text()
        if errors is not None and r.status != 200:
            errors.append(f"{r.status} {text[:200]}")
        return r.status, dict(r.headers)


def reserves(stack: Stack) -> float:
    """Requests metering admitted one by one (a lease's admissions never reach it)."""
    return parse_metric(
        stack.services["metering"].metrics(), "janus_budget_decisions_total", decision="admitted"
    )


async def leases_of(stack: Stack, user: str) -> dict[str, int]:
    return {k: v for k, v in (await open_holds(stack.harness_url, user)).items() if k.startswith("lse_")}


async def test_two_gateways_racing_one_budget_stay_within_it_and_strand_nothing(two: Stack) -> None:
    user = "racer"
    token = token_for(two, user, "tight")
    statuses: list[int] = []
    async with aiohttp.ClientSession() as s:
        before = reserves(two)
        got = await asyncio.gather(*(chat(s, urls(two)[i % 2], token) for i in range(160)))
        statuses += [status for status, _ in got]
        served = statuses.count(200)
        assert served and statuses.count(429) and set(statuses) <= {200, 429}, statuses
        assert reserves(two) - before < served, "some requests were admitted on a lease"

        errors: list[str] = []
        last: dict[str, Any] = {}

        async def spent() -> bool:
            # keep asking on both gateways: refused on both only once nothing is left to hold,
            # wherever the last credits were (a lease parked on the other gateway goes back). While
            # requests are served, ask again at once: what the burst left (up to the whole budget,
            # about fifty requests, on a busy machine) is spent without a pause per request.
            for _ in range(4 * SESSION // _most_held(two)):  # far more than the budget can serve
                answers = [await chat(s, url, token, errors) for url in urls(two)]
                statuses.extend(status for status, _ in answers)
                if not any(status == 200 for status, _ in answers):
                    break
            else:
                return False
            last.update(await settled_usage(s, urls(two)[0], token))
            return bool(last["session"]["remaining"] < _most_held(two))

        try:
            await eventually(spent, 60, "the budget used up to its last request", every=0.3)
        except AssertionError as exc:
            holds = await open_holds(two.harness_url, user, detail=True)
            raise AssertionError(
                f"{exc}; last refusals {errors[-4:]}; last usage {last.get('session')}; holds {holds}"
            ) from None
        usage = await settled_usage(s, urls(two)[1], token)
    assert set(statuses) <= {200, 429}
    assert usage["session"]["used"] <= SESSION and usage["session"]["reserved"] == 0
    assert not await leases_of(two, user)


def _most_held(stack: Stack) -> int:
    """More than one request of this test holds: its output cap and a generous prompt estimate."""
    return cost_credits(Usage(prompt_tokens=200, completion_tokens=MAX_TOKENS), price_of(stack.env, MODEL))


async def test_an_idle_lease_goes_back_without_anyone_asking(two: Stack) -> None:
    user = "idler"
    token = token_for(two, user)
    async with aiohttp.ClientSession() as s:
        status, _ = await chat(s, urls(two)[0], token)
        assert status == 200
        assert await leases_of(two, user), "the first request asked for a lease"

        async def returned() -> bool:
            return not await leases_of(two, user)

        await eventually(returned, 10, "the idle lease given back")


async def test_a_killed_gateways_lease_is_freed_by_the_reaper(two: Stack) -> None:
    user = "orphan"
    token = token_for(two, user)
    victim = add_replica(two, "gateway", tag="-victim")
    victim.wait_ready()
    async with aiohttp.ClientSession() as s:
        status, _ = await chat(s, gateway_url(victim), token)
        assert status == 200
        leased = await leases_of(two, user)
        assert leased, "the request asked for a lease"

        async def charged() -> bool:
            return bool((await get_usage(s, urls(two)[0], token))["session"]["used"] > 0)

        # the answered request's settlement is sent within the gateway's bundle window (20 ms): a
        # gateway killed inside it loses it, as it loses one still being published (the request's
        # hold then waits for the hold reaper). What is tested here is the lease.
        await eventually(charged, 10, "the answered request charged")
        victim.stop(signal.SIGKILL)
        two.services.pop(victim.name)

        async def freed() -> bool:
            return not await leases_of(two, user)

        # the lease TTL (4 s) plus a reaper pass (1 s): a crash strands at most one lease a user
        await eventually(freed, 15, "the dead gateway's lease reaped")
        usage = await settled_usage(s, urls(two)[0], token)
    assert usage["session"]["reserved"] == 0 and usage["session"]["used"] > 0


async def test_credit_headers_come_from_the_lease(two: Stack) -> None:
    user = "header-reader"
    token = token_for(two, user)
    remaining: list[int] = []
    async with aiohttp.ClientSession() as s:
        first = reserves(two)
        for _ in range(5):
            status, headers = await chat(s, urls(two)[0], token)
            assert status == 200
            remaining.append(int(headers[CREDIT]))
            assert "X-RateLimit-Remaining-Requests" in headers
        assert reserves(two) - first == 1, "one reserve asked for the lease, the rest drew on it"
        # each answer counts its own request's hold at once, as a reserve's answer would
        steps = {a - b for a, b in itertools.pairwise(remaining)}
        assert len(steps) == 1 and steps.pop() > 0, remaining
        usage = await settled_usage(s, urls(two)[0], token)
    # stale only towards less: settled refunds show at the next answer from metering
    assert usage["session"]["remaining"] >= remaining[-1]


async def test_200_concurrent_requests_of_one_user_do_not_each_ask(two: Stack) -> None:
    token = token_for(two, "crowd")
    async with aiohttp.ClientSession() as s:
        before = reserves(two)
        got: list[Any] = await asyncio.gather(*(chat(s, urls(two)[0], token) for _ in range(200)))
        assert [status for status, _ in got] == [200] * 200
        asked = reserves(two) - before
    assert asked <= 20, f"{asked} reserves for 200 requests"
