"""Group commit: changes to one user that queue up together are applied in arrival order and
persisted with one compare-and-set write; every caller is answered from that write's outcome.

Against a real nats-server: the KV bucket's stream sequence counts the writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from services.metering import budget, leases
from services.metering.leases import LeaseTerms
from services.metering.record import SCHEMA, Record, user_key
from services.metering.service import MeteringService, settle_linger
from services.metering.store import BudgetStore
from shared import metrics, subjects
from shared.bus import Bus
from shared.catalog import ConfigError, load_catalog, load_plans
from shared.contract import LeaseReturn, ReserveReply, ReserveRequest
from shared.errors import ServiceUnavailable
from shared.money import PriceUnits
from shared.streams import ensure_settlement_stream
from tests.metering.conftest import HOLD, MODEL, TINY_SESSION, ledger, settings, settle, wait_for

Start = Callable[..., Awaitable[MeteringService]]
BUCKET = "test_group_commit"


@pytest.fixture
def tiny(plans_file: Path) -> tuple[budget.PlanRules, PriceUnits]:
    catalog = load_catalog()
    plans = load_plans(str(plans_file), catalog)
    model = catalog.model(MODEL)
    assert model is not None
    return budget.PlanRules.of("tiny", plans.plans["tiny"]), PriceUnits.of(model.price)


def reserving(
    rid: str, rules: budget.PlanRules, price: PriceUnits, now: int, user: str = "u"
) -> Callable[[Record], tuple[ReserveReply, bool]]:
    req = ReserveRequest(rid, user, "tiny", MODEL, 1000, 1000)
    return lambda rec: budget.reserve(rec, req, rules, price, now)


async def writes(bus: Bus, bucket: str) -> int:
    """How many writes the bucket has taken (its stream's last sequence)."""
    info = await bus.js.stream_info(f"KV_{bucket}")
    return int(info.state.last_seq)


async def test_changes_queued_together_are_one_write_in_arrival_order(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    rules, price = tiny
    store = BudgetStore(await bus.kv(BUCKET))
    now = int(time.time())
    # submitted in one loop turn: they all join the first batch
    futures = [store.submit("u", reserving(f"r{i}", rules, price, now)) for i in range(15)]
    replies = await asyncio.gather(*futures)
    fits = TINY_SESSION // HOLD
    assert [r.admitted for r in replies] == [True] * fits + [False] * (15 - fits)
    # each answer saw the holds of those before it
    remaining = [r.pools[0].remaining for r in replies[:fits]]
    assert remaining == [TINY_SESSION - HOLD * (i + 1) for i in range(fits)]
    assert await writes(bus, BUCKET) == 1
    rec, _ = await store.read(user_key("u"))
    assert rec is not None and sorted(rec.holds) == sorted(f"r{i}" for i in range(fits))


async def test_a_conflict_reapplies_the_whole_batch_to_the_fresh_record(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    rules, price = tiny
    kv = await bus.kv(BUCKET)
    mine, other = BudgetStore(kv), BudgetStore(kv)  # two replicas
    now = int(time.time())
    assert (await mine.update("u", reserving("a", rules, price, now))).admitted
    # the other replica writes behind this one's cached revision
    assert (await other.update("u", reserving("b", rules, price, now))).admitted
    retries = metrics.CAS_RETRIES._value.get()
    replies = await asyncio.gather(
        *(mine.submit("u", reserving(f"c{i}", rules, price, now)) for i in range(10))
    )
    assert metrics.CAS_RETRIES._value.get() > retries
    fits = TINY_SESSION // HOLD - 2  # "a" and "b" hold their share
    assert [r.admitted for r in replies] == [True] * fits + [False] * (10 - fits)
    rec, _ = await mine.read(user_key("u"))
    assert rec is not None and sorted(rec.holds) == sorted(["a", "b", *(f"c{i}" for i in range(fits))])


async def test_nothing_to_do_is_decided_on_the_current_record_not_the_cache(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    """A change that finds nothing to do on this replica's cached copy writes nothing, so no conflict
    would ever show the copy is behind: a lease the other replica granted, and its return that came
    here, must still meet."""
    rules, price = tiny
    kv = await bus.kv(BUCKET)
    mine, other = BudgetStore(kv), BudgetStore(kv)  # two replicas
    now = int(time.time())
    assert (await mine.update("u", reserving("a", rules, price, now))).admitted  # cached here
    req = ReserveRequest("b", "u", "tiny", MODEL, 10, 10, lease_requests=8, lease_id="L1")
    granted = await other.update("u", lambda rec: budget.reserve(rec, req, rules, price, now, LeaseTerms()))
    lease = granted.lease
    assert lease is not None
    back = LeaseReturn("u", "L1", lease.credits, lease.input_tokens, lease.output_tokens, lease.requests)

    def give(rec: Record) -> tuple[bool, bool]:
        changed = leases.give_back(rec, back)
        return changed, changed

    assert await mine.update("u", give)
    assert await mine.update("u", lambda rec: budget.renew(rec, "b", now + 1)) is True
    rec, _ = await mine.read(user_key("u"))
    assert rec is not None and "L1" not in rec.holds and rec.holds["b"].seen == now + 1


async def test_a_failing_change_fails_only_its_own_caller(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    rules, price = tiny
    store = BudgetStore(await bus.kv(BUCKET))
    now = int(time.time())

    def broken(rec: Record) -> tuple[None, bool]:
        rec.holds.clear()  # a half-done mutation that must not reach the record
        raise ValueError("bug")

    # a first write leaves the decoded record cached: the broken change mutates that very object
    assert (await store.update("u", reserving("z", rules, price, now))).admitted
    first = store.submit("u", reserving("a", rules, price, now))
    bad = store.submit("u", broken)
    last = store.submit("u", reserving("b", rules, price, now))
    assert (await first).admitted and (await last).admitted
    with pytest.raises(ValueError):
        await bad
    rec, _ = await store.read(user_key("u"))
    assert rec is not None and sorted(rec.holds) == ["a", "b", "z"]
    assert await writes(bus, BUCKET) == 2


async def test_every_waiter_is_answered_when_the_write_fails(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    rules, price = tiny
    store = BudgetStore(await bus.kv(BUCKET))
    now = int(time.time())
    await store.update("u", reserving("a", rules, price, now))
    await bus.js.delete_key_value(BUCKET)  # the next write cannot land anywhere
    results = await asyncio.wait_for(
        asyncio.gather(
            *(store.submit("u", reserving(f"b{i}", rules, price, now)) for i in range(5)),
            return_exceptions=True,
        ),
        20,
    )
    assert all(isinstance(r, ServiceUnavailable) and r.retryable for r in results)
    # the next change is not stuck behind the failed batch: it is tried and fails the same way (a hang
    # would end in the deadline's TimeoutError, which fails this test)
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(store.update("u", reserving("c", rules, price, now)), 20)


async def test_settlements_fetched_together_are_one_write_per_user(
    bus: Bus, start_metering: Start, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    rules, price = tiny
    kv = await bus.kv(subjects.BUDGET_BUCKET)
    store = BudgetStore(kv)
    now = int(time.time())
    users = ["alice", "bob"]
    for u in users:
        for i in range(8):
            await store.update(u, reserving(f"{u}-{i}", rules, price, now, user=u))
    # every settlement is in the stream before metering starts, so one fetch takes them all
    await ensure_settlement_stream(bus)
    await asyncio.gather(*(settle(bus, u, f"{u}-{i}", completion=100 * i) for u in users for i in range(8)))
    before = await writes(bus, subjects.BUDGET_BUCKET)
    await start_metering()

    async def drained() -> bool:
        info = await bus.js.consumer_info(subjects.SETTLE_STREAM, subjects.SETTLE_DURABLE)
        return info.num_pending == 0 and info.num_ack_pending == 0

    await wait_for(drained, what="settlements applied and acknowledged")
    assert await writes(bus, subjects.BUDGET_BUCKET) - before == len(users)
    for u in users:
        rec = await store.read_user(u)
        assert not rec.holds and rec.settled_count == 8
        assert rec.session_used == sum(50 + 40 * i for i in range(8))  # 1000 in, 100*i out
    entries = await ledger(bus)
    assert sorted(e.request_id for e in entries) == sorted(f"{u}-{i}" for u in users for i in range(8))


@pytest.mark.parametrize(
    "linger",
    [
        # a linger far longer than publishing five settlements one after the other takes
        {"settle_linger_ms": 3000.0},
        # a linger of 1 ms, but a write rate so low that the first write's bytes make it 3 s
        {"settle_linger_ms": 1.0, "settle_write_bytes_per_second": 1, "settle_linger_max_ms": 3000.0},
    ],
    ids=["long-linger", "after-a-large-write"],
)
async def test_settlements_arriving_one_by_one_within_the_linger_share_one_write(
    bus: Bus, start_metering: Start, tiny: tuple[budget.PlanRules, PriceUnits], linger: dict[str, float]
) -> None:
    rules, price = tiny
    store = BudgetStore(await bus.kv(subjects.BUDGET_BUCKET))
    now = int(time.time())
    for i in range(6):
        await store.update("carol", reserving(f"c-{i}", rules, price, now, user="carol"))
    await start_metering(**linger)
    await settle(bus, "carol", "c-0", completion=100)

    async def first_applied() -> bool:
        return (await store.read_user("carol")).settled_count == 1

    await wait_for(first_applied, what="the first settlement applied")
    before = await writes(bus, subjects.BUDGET_BUCKET)
    for i in range(1, 6):  # each waits for its stream acknowledgement, as a gateway's does
        await settle(bus, "carol", f"c-{i}", completion=100)

    async def all_applied() -> bool:
        return (await store.read_user("carol")).settled_count == 6

    await wait_for(all_applied, what="every settlement applied")
    assert await writes(bus, subjects.BUDGET_BUCKET) - before == 1
    rec = await store.read_user("carol")
    assert not rec.holds and rec.session_used == 6 * 90


async def test_a_record_of_a_newer_layout_is_read_but_never_overwritten(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    """A rolling upgrade: a newer replica wrote the record with a field this one does not know.
    Writing it back would drop that field, so the change fails with a retryable 503 instead and the
    stored bytes stay as they were; reading it still works."""
    rules, price = tiny
    kv = await bus.kv(BUCKET)
    store = BudgetStore(kv)
    now = int(time.time())
    assert (await store.update("u", reserving("a", rules, price, now))).admitted
    stored = msgspec.msgpack.decode((await kv.get(user_key("u"))).value)
    assert stored["schema"] == SCHEMA  # every write says which layout wrote it
    newer = msgspec.msgpack.encode({**stored, "schema": SCHEMA + 1, "holds_by_region": {"eu": 1}})
    rev = await kv.put(user_key("u"), newer)
    with pytest.raises(ServiceUnavailable) as ei:
        await store.update("u", reserving("b", rules, price, now))
    assert ei.value.code == "metering_version" and ei.value.retryable
    entry = await kv.get(user_key("u"))
    assert (entry.value, entry.revision) == (newer, rev)
    rec, _ = await store.read(user_key("u"))
    assert rec is not None and sorted(rec.holds) == ["a"]
    # an older layout (no field: written before it existed) is simply brought up to this one
    older = {k: v for k, v in stored.items() if k != "schema"}
    await kv.put(user_key("u"), msgspec.msgpack.encode(older))
    assert (await BudgetStore(kv).update("u", reserving("b", rules, price, now))).admitted
    assert msgspec.msgpack.decode((await kv.get(user_key("u"))).value)["schema"] == SCHEMA


def _written() -> tuple[float, float]:
    """(writes, bytes) the record-size histogram has observed so far."""
    samples = {s.name: s.value for s in metrics.METER_RECORD_BYTES.collect()[0].samples}
    return samples["janus_metering_record_bytes_count"], samples["janus_metering_record_bytes_sum"]


async def test_every_write_is_measured_at_the_size_of_the_record_it_stored(
    bus: Bus, tiny: tuple[budget.PlanRules, PriceUnits]
) -> None:
    rules, price = tiny
    kv = await bus.kv(BUCKET + "_size")
    store = BudgetStore(kv)
    now = int(time.time())
    before = _written()
    await asyncio.gather(*(store.submit("u", reserving(f"r{i}", rules, price, now)) for i in range(2)))
    first, _ = await Bus.kv_get(kv, user_key("u"))
    await store.submit("u", reserving("r9", rules, price, now))
    second, _ = await Bus.kv_get(kv, user_key("u"))
    # two writes (the first two changes were one), each observed at the size stored; the record grew
    assert len(second) > len(first)
    assert _written() == (before[0] + 2, before[1] + len(first) + len(second))


def test_the_linger_grows_with_the_bytes_a_batch_wrote_within_its_bounds() -> None:
    rate = 4 * 1024 * 1024
    assert settle_linger(0.02, 0.2, 1_000, rate) == 0.02  # a small record: the base linger
    assert settle_linger(0.02, 0.2, rate // 10, rate) == pytest.approx(0.1)  # 410 KiB: 0.1 s
    assert settle_linger(0.02, 0.2, 625 * 1024 * 2, rate) == 0.2  # never above the most
    assert settle_linger(0.02, 0.2, 10**9, 0) == 0.02  # a rate of 0: the base linger always


@pytest.mark.parametrize("most", [-1.0, 5001.0])
def test_a_linger_bound_out_of_range_is_refused(plans_file: Path, most: float) -> None:
    with pytest.raises(ConfigError, match="JANUS_SETTLE_LINGER_MAX_MS"):
        MeteringService(settings("nats://127.0.0.1:1", plans_file, settle_linger_max_ms=most))
    MeteringService(settings("nats://127.0.0.1:1", plans_file, settle_linger_max_ms=5000.0))
