"""The budget record's compact set of settled request ids: exact idempotency by request id, bounded
by time (how long JetStream can redeliver), and readable from records written in the former form."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from services.metering import budget
from services.metering.record import (
    DIGEST,
    Bounds,
    Record,
    Settled,
    _find,
    decode_record,
    digest,
    encode_record,
)
from shared.catalog import Plan, SessionPool, WeeklyPool
from shared.contract import Settlement, Usage
from shared.money import PriceUnits

ids = st.text(min_size=1, max_size=40)
T0 = 1_800_000_000


def _gateway_id() -> str:
    return "req_" + os.urandom(12).hex()


@given(
    st.lists(
        st.tuples(ids, st.integers(0, 10**12), st.integers(0, 30)),
        min_size=1,
        max_size=60,
        unique_by=lambda t: t[0],
    ),
    st.integers(1, 200),
)
def test_ids_are_remembered_for_the_horizon_after_publication_and_the_floor_covers_the_rest(
    settled: list[tuple[str, int, int]], horizon: int
) -> None:
    rec = Record(user="u")
    now = T0
    for rid, cost, step in settled:
        now += step
        rec.remember_settled(rid, cost, now, now, Bounds(horizon=horizon))
    rec = decode_record(encode_record(rec))  # and it survives the KV round trip
    # ids are forgotten in slices: the floor never passes the horizon, and at most 1/16 of what is
    # kept is older than it
    assert rec.settled_floor <= now - horizon
    assert sum(t <= now - horizon for t in rec.settled_at) <= len(rec.settled_at) // 16
    assert len(rec.settled_ids) == DIGEST * rec.settled_count == DIGEST * len(rec.settled_at)
    at = T0
    for rid, cost, step in settled:
        at += step
        if at > rec.settled_floor:  # published after the floor: the record vouches for it
            assert rec.settled_cost(rid) == cost
        else:
            assert rec.settled_cost(rid) is None


@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3), st.booleans()), min_size=1, max_size=300),
    st.integers(1, 60),
    st.integers(4, 120),
)
def test_the_index_of_a_busy_record_answers_as_a_scan_of_a_fresh_copy_does(
    steps: list[tuple[int, int, bool]], horizon: int, ceiling: int
) -> None:
    """A copy kept between writes indexes its ids after a few lookups and keeps the index through
    additions and forgetting; its every answer must be the one a freshly decoded copy (which scans)
    gives. Ids repeat (a 64-bit digest collision, or the same id remembered twice)."""
    rec = Record(user="u")
    now = T0
    bounds = Bounds(horizon=horizon, ceiling=ceiling)
    for n, (rid, step, look) in enumerate(steps):
        now += step
        if look:
            rec.settled_cost(f"r{rid}")  # lookups: the copy indexes itself after a few
        rec.remember_settled(f"r{rid}", n, now, now, bounds)
    fresh = decode_record(encode_record(rec))
    assert "_index" not in fresh.__dict__
    for rid in range(401):
        assert rec.settled_cost(f"r{rid}") == fresh.settled_cost(f"r{rid}"), rid
    assert "_index" in rec.__dict__  # 401 lookups: the index was built and used
    assert rec.settled_count <= ceiling + ceiling // 16


def test_the_ceiling_forgets_early_and_raises_the_floor_past_what_it_forgot() -> None:
    rec = Record(user="u")
    for i in range(10):
        rec.remember_settled(f"r{i}", i, T0 + i, T0 + i, Bounds(horizon=3600, ceiling=4))
    assert rec.settled_count == 4 and rec.settled_floor == T0 + 5
    assert rec.settled_cost("r5") is None and rec.settled_cost("r6") == 6


def test_a_digest_straddling_two_others_is_not_a_match() -> None:
    a, b = os.urandom(DIGEST), os.urandom(DIGEST)
    straddler = a[3:] + b[:3]
    assert _find(a + b, straddler) == -1
    assert _find(a + b + straddler, straddler) == 2
    assert _find(straddler + a + b, straddler) == 0


def test_former_records_are_read_and_moved_over_in_order() -> None:
    old = Record(user="u", settled=[Settled(f"old{i}", i * 10) for i in range(5)])
    data = encode_record(old)
    rec = decode_record(data)
    assert rec.settled_cost("old3") == 30  # readable before any change
    rec.remember_settled("new", 99, T0, T0, Bounds())
    assert rec.settled == [] and rec.settled_count == 6 and rec.settled_at == [T0] * 6
    assert [rec.settled_cost(f"old{i}") for i in range(5)] == [0, 10, 20, 30, 40]
    assert rec.settled_cost("new") == 99


def test_a_full_record_is_under_half_its_former_size() -> None:
    rids = [_gateway_id() for _ in range(256)]
    former = Record(user="u", settled=[Settled(r, 12_345) for r in rids])
    compact = Record(user="u")
    for r in rids:
        compact.remember_settled(r, 12_345, T0, T0, Bounds())
    before, after = len(encode_record(former)), len(encode_record(compact))
    assert after < 0.5 * before, (before, after)  # 8469 -> 4140 bytes
    assert digest(rids[0]) != digest(rids[1])


def test_a_redelivery_is_a_duplicate_within_the_horizon_and_unprovable_after_it() -> None:
    rules = budget.PlanRules.of(
        "p",
        Plan(
            session=SessionPool(credits=10**9, hours=1), weekly=WeeklyPool(credits=10**10), default_model="m"
        ),
    )
    price = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)
    bounds = Bounds(horizon=600)
    rec = Record(user="u")
    first = Settlement(_gateway_id(), "u", "p", "m", Usage(10, 5))
    out, changed = budget.settle(rec, first, rules, price, T0, bounds)
    assert changed and out.entry.credits == 15
    again = budget.Delivery(T0, redelivered=True)
    for i in range(300):  # a busy user: far more than the 256 ids the record used to keep
        budget.settle(
            rec, Settlement(_gateway_id(), "u", "p", "m", Usage(1, 1)), rules, price, T0 + i, bounds
        )
    dup, changed = budget.settle(rec, first, rules, price, T0 + 599, bounds, again)
    assert not changed and dup.result == "duplicate" and dup.entry.credits == 15
    # past the horizon (the next settlement forgets it) the record cannot vouch for it: refused
    # unchanged, never charged again
    budget.settle(rec, Settlement(_gateway_id(), "u", "p", "m", Usage(1, 1)), rules, price, T0 + 900, bounds)
    late, changed = budget.settle(rec, first, rules, price, T0 + 900, bounds, again)
    assert not changed and late.result == budget.UNPROVABLE
    # a first delivery was never applied, however old: charged
    fresh = Settlement(_gateway_id(), "u", "p", "m", Usage(1, 1))
    out, changed = budget.settle(rec, fresh, rules, price, T0 + 900, bounds, budget.Delivery(T0, False))
    assert changed and out.result == "late"
