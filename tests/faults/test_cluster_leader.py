"""A 3-node NATS cluster on loopback loses the node that leads the settlement stream (SIGKILL)
while clients stream: JetStream elects a new leader, service resumes within seconds and the budgets
stay exact (what clients were told they used = /v1/usage = the ledger)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from shared import subjects
from tests.faults.kit import launch, ledger_matches, settled_usage, tally, wait_until
from tests.kit.cluster import start_cluster, stream_leader
from tests.kit.metrics import parse_metric
from tools.localnats import NatsServer, cluster_url
from tools.localstack import Stack
from tools.soak import ChatResult, answers, chat, price_of, run_load, token_for

pytestmark = pytest.mark.timeout(150)

MODEL = "gpt-5-nano"
BUDGET_STREAM = f"KV_{subjects.BUDGET_BUCKET}"
# the node leading the settlement stream is the one whose loss puts every settlement through an
# election; killing it (rather than any leader) makes the test hit that window every time
LEADER_OF = subjects.SETTLE_STREAM
RECOVERY = 20.0


async def kill_leader(stack: Stack, after: float) -> tuple[NatsServer, float]:
    await asyncio.sleep(after)
    leader = await asyncio.to_thread(stream_leader, stack.cluster, LEADER_OF)
    assert leader, f"no leader for {LEADER_OF}"
    victim = next(s for s in stack.cluster if s.name == leader)
    victim.stop(signal.SIGKILL)
    return victim, time.monotonic()


async def test_cluster_loses_its_jetstream_leader_and_budgets_stay_exact(tmp_path: Path) -> None:
    stack = launch(tmp_path, tokens_per_second=100, cluster=start_cluster(tmp_path))
    try:
        assert stack.env["JANUS_NATS_REPLICAS"] == "3"
        users = {f"cl-{i}": token_for(stack, f"cl-{i}") for i in range(6)}
        prompts = [f"cluster prompt {i}" for i in range(6)]
        async with aiohttp.ClientSession() as session:
            expected = await answers(session, stack.base_url, token_for(stack, "cl-warm"), prompts, MODEL)
        results: list[tuple[str, ChatResult]] = []
        price = price_of(stack.env, MODEL)
        _, (victim, killed_at) = await asyncio.gather(
            run_load(
                [stack.base_url],
                users,
                expected,
                concurrency=8,
                seconds=12,
                model=MODEL,
                price=price,
                stall=30,
                results=results,
            ),
            kill_leader(stack, after=3),
        )
        alive = [s for s in stack.cluster if s is not victim]
        for stream in (LEADER_OF, BUDGET_STREAM):
            # the survivors name the dead node as leader until its heartbeats are missed (seconds)
            async def elected(stream: str = stream) -> str | None:
                leader = await asyncio.to_thread(stream_leader, alive, stream)
                return leader if leader != victim.name else None

            await wait_until(elected, RECOVERY, f"a new leader for {stream}", every=0.5)

        # service resumed: requests after the kill were served, and one now is served at once
        served_after = [r for _, r in results if r.status == 200 and r.done]
        assert len(served_after) > 20
        async with aiohttp.ClientSession() as session:
            probe = token_for(stack, "cl-probe")

            async def served() -> bool:
                res = await chat(session, stack.base_url, probe, "still there?", model=MODEL, stall=10)
                return res.status == 200 and res.done

            await wait_until(served, RECOVERY, "a request served after the leader loss", every=0.5)
            assert time.monotonic() - killed_at < RECOVERY + 15

            charged, broken = tally(results, price)
            used = {}
            for user, token in users.items():
                doc = await settled_usage(
                    session, stack.base_url, token, timeout=40, nats_url=cluster_url(alive), user=user
                )
                used[user] = doc["session"]["used"]
        lost = parse_metric(stack.services["gateway"].metrics(), "janus_settlements_total", result="lost")
        assert lost == 0, f"the gateway gave up {lost:g} settlements during the election"
        await ledger_matches(cluster_url(alive), used)
        for user in users:
            if user in broken:
                assert used[user] >= charged[user], user
            else:
                assert used[user] == charged[user], user
    finally:
        stack.stop()
