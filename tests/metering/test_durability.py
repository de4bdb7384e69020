"""Metering as real processes: a SIGKILL in the middle of settlements, and two replicas at once.

Whatever happens, every request is charged exactly once and the ledger's sum equals the sum of the
settled costs.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import subjects
from shared.bus import Bus
from shared.contract import Usage
from shared.money import PriceUnits, cost_credits
from tests.metering.conftest import (
    HOLD,
    MODEL,
    TINY_SESSION,
    ledger,
    ledger_count,
    record,
    reserve,
    settle,
    wait_for,
)
from tools.localnats import NatsServer
from tools.localstack import ServiceProc, base_env, start_service

USERS = [f"user-{i}" for i in range(5)]
N = 100


def nano_cost(prompt: int, completion: int) -> int:
    from shared.catalog import load_catalog

    model = load_catalog().model(MODEL)
    assert model is not None
    return cost_credits(Usage(prompt, completion), PriceUnits.of(model.price))


def workload() -> list[tuple[str, str, int]]:
    """(user, request id, completion tokens) for N requests spread over USERS."""
    return [(USERS[i % len(USERS)], f"req-{i}", 37 * i % 900 + 1) for i in range(N)]


@pytest.fixture
def procs() -> Iterator[list[ServiceProc]]:
    started: list[ServiceProc] = []
    yield started
    for p in started:
        p.stop(signal.SIGKILL)


def metering_env(nats: NatsServer, plans: Path) -> dict[str, str]:
    # a short ack wait so a killed replica's unacknowledged settlements come back within the test
    return base_env(
        nats.url, JANUS_PLANS=str(plans), JANUS_SETTLE_ACK_WAIT_SECONDS="2", JANUS_SHUTDOWN_GRACE_SECONDS="3"
    )


async def check_exactly_once(
    bus: Bus, work: list[tuple[str, str, int]], others: dict[str, int] | None = None
) -> None:
    """Every request of ``work`` charged once; the ledger holds them (and ``others``) once each."""
    expected = {rid: nano_cost(1000, c) for _, rid, c in work}

    async def all_settled() -> bool:
        recs = [await record(bus, u) for u in USERS]
        return all(not r.holds for r in recs) and sum(r.settled_count for r in recs) == len(work)

    await wait_for(all_settled, timeout=60, what="every settlement applied")

    async def drained() -> bool:
        info = await bus.js.consumer_info(subjects.SETTLE_STREAM, subjects.SETTLE_DURABLE)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(drained, timeout=30, what="the settlement stream consumed")
    for u in USERS:
        rec = await record(bus, u)
        mine = [rid for user, rid, _ in work if user == u]
        assert rec.week_used == sum(expected[r] for r in mine)
        assert rec.settled_count == len(mine)
        assert [rid for rid in mine if rec.settled_cost(rid) != expected[rid]] == []

    expected.update(others or {})

    async def ledger_complete() -> bool:
        return await ledger_count(bus) >= len(expected)

    await wait_for(ledger_complete, timeout=20, what="ledger entries")
    entries = await ledger(bus)
    assert sorted(e.request_id for e in entries) == sorted(expected)
    assert sum(e.credits for e in entries) == sum(expected.values())


async def test_sigkill_during_settlements_charges_each_request_once(
    bus: Bus, nats_server: NatsServer, plans_file: Path, tmp_path: Path, procs: list[ServiceProc]
) -> None:
    env = metering_env(nats_server, plans_file)
    procs.append(start_service("metering", env, tmp_path))
    work = workload()
    replies = await asyncio.gather(*(reserve(bus, u, rid, plan="pro") for u, rid, _ in work))
    assert all(r.admitted for r in replies)

    half = N // 2
    await asyncio.gather(*(settle(bus, u, rid, completion=c, plan="pro") for u, rid, c in work[:half]))

    async def some_applied() -> bool:
        return await ledger_count(bus) >= 5

    await wait_for(some_applied, what="first settlements")
    procs[0].stop(signal.SIGKILL)
    # the rest arrive while metering is down; then every one again under another message id, so
    # the stream's de-duplication does not catch them and the record's idempotency must
    await asyncio.gather(*(settle(bus, u, rid, completion=c, plan="pro") for u, rid, c in work[half:]))
    await asyncio.gather(
        *(settle(bus, u, rid, completion=c, plan="pro", msg_id=f"{rid}-again") for u, rid, c in work)
    )
    procs.append(start_service("metering", env, tmp_path, tag="-restarted"))
    await check_exactly_once(bus, work)


async def test_two_replicas_keep_the_same_guarantees(
    bus: Bus, nats_server: NatsServer, plans_file: Path, tmp_path: Path, procs: list[ServiceProc]
) -> None:
    env = metering_env(nats_server, plans_file)
    procs.append(start_service("metering", env, tmp_path, tag="-a", wait=False))
    procs.append(start_service("metering", env, tmp_path, tag="-b", wait=False))
    for p in procs:
        p.wait_ready()

    replies = await asyncio.gather(*(reserve(bus, "burst", f"b{i}") for i in range(200)))
    admitted = [f"b{i}" for i, r in enumerate(replies) if r.admitted]
    assert len(admitted) == TINY_SESSION // HOLD  # both replicas, one budget

    work = workload()
    assert all(
        r.admitted for r in await asyncio.gather(*(reserve(bus, u, rid, plan="pro") for u, rid, _ in work))
    )
    await asyncio.gather(
        *(settle(bus, u, rid, completion=c, plan="pro") for u, rid, c in work),
        *(settle(bus, "burst", rid) for rid in admitted),
    )
    burst_costs = dict.fromkeys(admitted, HOLD)
    await check_exactly_once(bus, work, burst_costs)
    burst = await record(bus, "burst")
    assert not burst.holds and burst.session_used == HOLD * len(admitted) <= TINY_SESSION


async def test_settlements_waiting_out_a_linger_survive_a_sigkill_and_are_charged_once(
    bus: Bus, nats_server: NatsServer, plans_file: Path, tmp_path: Path, procs: list[ServiceProc]
) -> None:
    env = metering_env(nats_server, plans_file)
    # after its first batch this replica waits a minute before fetching again
    procs.append(start_service("metering", {**env, "JANUS_SETTLE_LINGER_MS": "60000"}, tmp_path))
    work = workload()
    assert all(
        r.admitted for r in await asyncio.gather(*(reserve(bus, u, rid, plan="pro") for u, rid, _ in work))
    )
    u, rid, c = work[0]
    await settle(bus, u, rid, completion=c, plan="pro")

    async def first_applied() -> bool:
        return (await record(bus, u)).settled_count == 1

    await wait_for(first_applied, what="the first settlement")
    await asyncio.gather(*(settle(bus, u, rid, completion=c, plan="pro") for u, rid, c in work[1:]))
    # the linger holds nothing: what arrived during it waits in the stream, not in the replica
    info = await bus.js.consumer_info(subjects.SETTLE_STREAM, subjects.SETTLE_DURABLE)
    assert (info.num_pending, info.num_ack_pending) == (N - 1, 0)
    procs[0].stop(signal.SIGKILL)
    await asyncio.gather(
        *(settle(bus, u, rid, completion=c, plan="pro", msg_id=f"{rid}-again") for u, rid, c in work)
    )
    procs.append(start_service("metering", env, tmp_path, tag="-restarted"))
    await check_exactly_once(bus, work)
