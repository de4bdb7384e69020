"""Metering SIGKILLed and started again while clients stream: no charge is lost or doubled.

What the clients were told they used (usage x price, by ``shared.money.cost_credits``) must equal,
user by user, both the spend ``/v1/usage`` reports and the sum of the ledger stream's entries, and
no hold may stay open. Requests refused while metering was down must have been refused with an
OpenAI-style error, not a broken connection.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.faults.kit import launch, ledger_matches, settled_usage, tally
from tests.kit.metrics import parse_metric
from tools.localstack import Stack, start_service
from tools.soak import ChatResult, answers, price_of, run_load, token_for

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-5-nano"
USERS = 8


async def kill_and_restart(stack: Stack, after: float, down: float) -> None:
    await asyncio.sleep(after)
    stack.services["metering"].stop(signal.SIGKILL)
    await asyncio.sleep(down)
    svc = await asyncio.to_thread(start_service, "metering", stack.env, stack.workdir, tag="-restarted")
    stack.services["metering"] = svc


async def test_metering_killed_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    stack = launch(tmp_path, tokens_per_second=100)
    try:
        users = {f"meter-{i}": token_for(stack, f"meter-{i}") for i in range(USERS)}
        prompts = [f"metering fault prompt {i}" for i in range(8)]
        async with aiohttp.ClientSession() as session:
            # the warm-up's buffered answers go to a user of their own, outside the comparison
            expected = await answers(session, stack.base_url, token_for(stack, "meter-warm"), prompts, MODEL)
        results: list[tuple[str, ChatResult]] = []
        load = run_load(
            [stack.base_url],
            users,
            expected,
            concurrency=16,
            seconds=10,
            model=MODEL,
            price=price_of(stack.env, MODEL),
            results=results,
        )
        await asyncio.gather(load, kill_and_restart(stack, after=3, down=2))

        served = [r for _, r in results if r.status == 200]
        refused = [r for _, r in results if r.status != 200]
        assert len(served) > 50, "the load did not run"
        assert refused, "metering was down for 2s: some requests should have been refused"
        charged, broken = tally(results, price_of(stack.env, MODEL))
        assert not broken, "metering is not on the stream path: no stream may break"

        async with aiohttp.ClientSession() as session:
            for user, token in users.items():
                usage = await settled_usage(session, stack.base_url, token, timeout=40)
                assert usage["session"]["used"] == charged[user], user
        lost = parse_metric(stack.services["gateway"].metrics(), "janus_settlements_total", result="lost")
        assert lost == 0, f"the gateway gave up {lost:g} settlements"
        await ledger_matches(stack.harness_url, {u: charged[u] for u in users})
    finally:
        stack.stop()
