"""The per-plan request rate: the window arithmetic (properties over random arrival times) and the
rate as admission applies it to a record, next to the credit pools."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.metering import budget
from services.metering import windows as w
from services.metering.record import Bounds, Record, decode_record, encode_record
from shared.catalog import Plan, SessionPool, WeeklyPool
from shared.contract import RequestRate, ReserveRequest, Settlement, Usage
from shared.errors import JanusError, RateLimited
from shared.money import PriceUnits

T0 = 1_800_000_000
limits = st.integers(min_value=1, max_value=12)
lengths = st.integers(min_value=1, max_value=120)
gaps = st.lists(st.integers(min_value=0, max_value=90), min_size=1, max_size=80)


def _drive(limit: int, length: int, steps: list[int]) -> list[tuple[int, bool, int, int]]:
    """Arrivals at T0 + cumulative gaps: (time, admitted, window start, reset) for each."""
    start = count = 0
    now = T0
    out = []
    for gap in steps:
        now += gap
        ok, start, count = w.rate_admit(start, count, limit, length, now)
        out.append((now, ok, start, w.rate_reset(start, length, now)))
    return out


@given(limits, lengths, gaps)
def test_a_window_admits_at_most_its_limit(limit: int, length: int, steps: list[int]) -> None:
    log = _drive(limit, length, steps)
    for now, _, start, _ in log:
        assert start <= now < start + length  # a request always lands in an open window
    starts = {start for _, ok, start, _ in log if ok}
    for s in starts:
        assert sum(1 for _, ok, start, _ in log if ok and start == s) <= limit
    # the fixed window's edge, documented in windows.rate_admit: never more than 2 * limit in any span
    admitted = [now for now, ok, _, _ in log if ok]
    for t in admitted:
        assert sum(1 for u in admitted if t <= u < t + length) <= 2 * limit


@given(limits, lengths, gaps)
def test_a_refusal_names_the_exact_second_the_window_reopens(
    limit: int, length: int, steps: list[int]
) -> None:
    start = count = 0
    now = T0
    for gap in steps:
        now += gap
        before = (start, count)
        ok, start, count = w.rate_admit(start, count, limit, length, now)
        if ok:
            continue
        assert (start, count) == before and count == limit  # refused: nothing counted, window full
        reset = w.rate_reset(start, length, now)
        assert 1 <= reset <= length
        # one second earlier is still refused, the announced second is admitted
        assert not w.rate_admit(start, count, limit, length, now + reset - 1)[0]
        assert w.rate_admit(start, count, limit, length, now + reset)[0]


@given(limits, lengths)
def test_a_burst_admits_exactly_the_limit(limit: int, length: int) -> None:
    log = _drive(limit, length, [0] * (limit + 3))
    assert [ok for _, ok, _, _ in log] == [True] * limit + [False] * 3
    assert all(reset == length for _, _, _, reset in log)


def test_reset_is_zero_with_no_open_window() -> None:
    assert w.rate_reset(0, 60, T0) == 0
    assert w.rate_reset(T0 - 60, 60, T0) == 0
    assert w.rate_reset(T0 - 59, 60, T0) == 1


# ------------------------------------------------------------------------------ in admission
PRICE = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)  # 1 credit a token


def rules(rpm: int | None, session: int = 1000, window: int = 60) -> budget.PlanRules:
    plan = Plan(
        session=SessionPool(credits=session, hours=1),
        weekly=WeeklyPool(credits=10 * session),
        default_model="m",
        requests_per_minute=rpm,
    )
    return budget.PlanRules.of("p", plan, window)


def req(rid: str, cost: int = 10, byok: bool = False) -> ReserveRequest:
    return ReserveRequest(rid, "u", "p", "m", input_tokens=cost, max_output_tokens=0, byok=byok)


def test_over_the_rate_is_refused_without_a_hold_and_admitted_in_the_next_window() -> None:
    r = rules(3)
    rec = Record(user="u")
    for i in range(3):
        reply, changed = budget.reserve(rec, req(f"a{i}"), r, PRICE, T0 + i)
        assert reply.admitted and changed
        assert reply.requests == RequestRate(3, 2 - i, 60 - i)
    refused, changed = budget.reserve(rec, req("a3"), r, PRICE, T0 + 10)
    assert not refused.admitted and not changed
    assert refused.denied_pool == "requests" and refused.retry_after == 50
    assert refused.requests == RequestRate(3, 0, 50)
    assert "a3" not in rec.holds and len(rec.holds) == 3 and rec.rate_count == 3
    assert "try again in 50s" in refused.message
    # the credit pools are reported on the refusal too (the gateway sends their headers)
    assert [p.name for p in refused.pools] == ["session", "weekly"]
    # one second before the window ends: still refused; at its end: a new window
    assert not budget.reserve(rec, req("a4"), r, PRICE, T0 + 59)[0].admitted
    again, changed = budget.reserve(rec, req("a5"), r, PRICE, T0 + 60)
    assert again.admitted and changed and again.requests == RequestRate(3, 2, 60)
    assert (rec.rate_start, rec.rate_count) == (T0 + 60, 1)


def test_a_budget_refusal_wins_and_is_not_counted() -> None:
    r = rules(2, session=100)
    rec = Record(user="u")
    big, changed = budget.reserve(rec, req("big", cost=500), r, PRICE, T0)
    assert not big.admitted and not changed and big.denied_pool == "session" and big.retry_after is None
    assert rec.rate_count == 0 and big.requests == RequestRate(2, 2, 0)
    assert budget.reserve(rec, req("x"), r, PRICE, T0)[0].admitted
    assert budget.reserve(rec, req("y"), r, PRICE, T0)[0].admitted
    # the rate is spent and so is the budget for this one: the budget answers (no retry is worth it)
    both, _ = budget.reserve(rec, req("big2", cost=500), r, PRICE, T0)
    assert both.denied_pool == "session"
    assert budget.reserve(rec, req("z"), r, PRICE, T0)[0].denied_pool == "requests"


def test_byok_requests_count_against_the_rate_but_hold_nothing() -> None:
    r = rules(2)
    rec = Record(user="u")
    first, changed = budget.reserve(rec, req("b1", byok=True), r, PRICE, T0)
    assert first.admitted and changed and first.hold == 0 and not rec.holds
    assert budget.reserve(rec, req("b2"), r, PRICE, T0)[0].admitted
    assert budget.reserve(rec, req("b3", byok=True), r, PRICE, T0)[0].denied_pool == "requests"
    # with no rate set, a BYOK request still writes nothing
    free = Record(user="u")
    reply, changed = budget.reserve(free, req("b4", byok=True), rules(None), PRICE, T0)
    assert reply.admitted and not changed and reply.requests is None


def test_a_retried_reserve_is_not_counted_twice() -> None:
    r = rules(2)
    rec = Record(user="u")
    budget.reserve(rec, req("a"), r, PRICE, T0)
    again, changed = budget.reserve(rec, req("a"), r, PRICE, T0 + 1)
    assert again.admitted and not changed and rec.rate_count == 1
    assert again.requests == RequestRate(2, 1, 59)
    budget.settle(rec, Settlement("a", "u", "p", "m", Usage(10, 0)), r, PRICE, T0 + 2, Bounds())
    assert budget.reserve(rec, req("a"), r, PRICE, T0 + 3)[0].admitted and rec.rate_count == 1


def test_rate_state_survives_the_record_round_trip_and_costs_nothing_when_unset() -> None:
    rec = Record(user="u", rate_start=T0, rate_count=7)
    back = decode_record(encode_record(rec))
    assert (back.rate_start, back.rate_count) == (T0, 7)
    assert b"rate_" not in encode_record(Record(user="u"))  # omitted at their defaults


def test_bad_rates_are_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        rules(0)
    with pytest.raises(ValueError, match="one second"):
        rules(5, window=0)


def test_the_rate_limit_error_survives_the_bus_with_its_headers() -> None:
    err = RateLimited("slow down", retry_after=2.2)
    back = JanusError.from_wire(err.to_wire())
    assert isinstance(back, RateLimited) and back.http_status == 429
    # whole seconds, rounded up: waiting exactly Retry-After is never early
    assert back.headers() == {"Retry-After": "3", "x-should-retry": "true"}
    assert json.loads(back.to_body()) == {
        "error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }
