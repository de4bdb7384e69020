"""The budget record's compact set of settled request ids: exact idempotency by request id, bounded,
and readable from records written in the former form."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from services.metering import budget
from services.metering.record import DIGEST, Record, Settled, _find, decode_record, digest, encode_record
from shared.catalog import Plan, SessionPool, WeeklyPool
from shared.contract import Settlement, Usage
from shared.money import PriceUnits

ids = st.text(min_size=1, max_size=40)


def _gateway_id() -> str:
    return "req_" + os.urandom(12).hex()


@given(
    st.lists(st.tuples(ids, st.integers(0, 10**12)), min_size=1, max_size=60, unique_by=lambda t: t[0]),
    st.integers(1, 50),
)
def test_the_last_keep_ids_are_remembered_with_their_cost_and_older_ones_forgotten(
    settled: list[tuple[str, int]], keep: int
) -> None:
    rec = Record(user="u")
    for rid, cost in settled:
        rec.remember_settled(rid, cost, keep)
    rec = decode_record(encode_record(rec))  # and it survives the KV round trip
    kept, gone = settled[-keep:], settled[:-keep]
    assert rec.settled_count == len(kept) and len(rec.settled_ids) == DIGEST * len(kept)
    for rid, cost in kept:
        assert rec.settled_cost(rid) == cost
    for rid, _ in gone:
        assert rec.settled_cost(rid) is None


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
    rec.remember_settled("new", 99, keep=4)
    assert rec.settled == [] and rec.settled_count == 4
    assert [rec.settled_cost(f"old{i}") for i in range(5)] == [None, None, 20, 30, 40]
    assert rec.settled_cost("new") == 99


def test_a_full_record_is_about_a_third_of_its_former_size() -> None:
    keep = 256
    rids = [_gateway_id() for _ in range(keep)]
    former = Record(user="u", settled=[Settled(r, 12_345) for r in rids])
    compact = Record(user="u")
    for r in rids:
        compact.remember_settled(r, 12_345, keep)
    before, after = len(encode_record(former)), len(encode_record(compact))
    assert after < 0.35 * before, (before, after)  # 8469 -> 2858 bytes
    assert digest(rids[0]) != digest(rids[1])


def test_a_redelivered_settlement_is_a_duplicate_until_it_leaves_the_set() -> None:
    rules = budget.PlanRules.of(
        "p",
        Plan(
            session=SessionPool(credits=10**9, hours=1), weekly=WeeklyPool(credits=10**10), default_model="m"
        ),
    )
    price = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)
    rec = Record(user="u")
    first = Settlement(_gateway_id(), "u", "p", "m", Usage(10, 5))
    out, changed = budget.settle(rec, first, rules, price, 1_800_000_000, keep=3)
    assert changed and out.entry.credits == 15
    again, changed = budget.settle(rec, first, rules, price, 1_800_000_001, keep=3)
    assert not changed and again.result == "duplicate" and again.entry.credits == 15
    for _ in range(3):
        budget.settle(
            rec, Settlement(_gateway_id(), "u", "p", "m", Usage(1, 1)), rules, price, 1_800_000_002, keep=3
        )
    # pushed out of the bounded set (JetStream's de-duplication window covers re-publishes by then)
    late, changed = budget.settle(rec, first, rules, price, 1_800_000_003, keep=3)
    assert changed and late.result == "late"
