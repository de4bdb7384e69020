"""Property tests of the window arithmetic and of the windows as admission sees them."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from services.metering import budget
from services.metering import windows as w
from services.metering.record import Bounds, Record
from shared.catalog import Plan, SessionPool, TokenQuota, WeeklyPool
from shared.contract import ReserveRequest, Settlement, Usage
from shared.money import PriceUnits

# 1990 .. 2100, whole seconds
times = st.integers(min_value=631_152_000, max_value=4_102_444_800)
weekdays = st.integers(min_value=0, max_value=6)
reset_times = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")


def utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@given(times, weekdays, reset_times)
def test_week_contains_now_and_starts_on_the_configured_moment(now: int, wd: int, hhmm: str) -> None:
    secs = w.parse_reset_time(hhmm)
    start, end = w.week_start(now, wd, secs), w.week_end(now, wd, secs)
    assert start <= now < end and end - start == w.WEEK
    d = utc(start)
    assert d.weekday() == wd and f"{d.hour:02d}:{d.minute:02d}" == hhmm and d.second == 0


@given(times, weekdays, reset_times)
def test_week_resets_exactly_at_the_announced_time(now: int, wd: int, hhmm: str) -> None:
    secs = w.parse_reset_time(hhmm)
    reset = w.week_end(now, wd, secs)
    assert w.week_start(reset - 1, wd, secs) == w.week_start(now, wd, secs)
    assert w.week_start(reset, wd, secs) == reset
    assert w.iso(reset) == utc(reset).strftime("%Y-%m-%dT%H:%M:%SZ")


@given(times)
def test_default_week_is_monday_midnight(now: int) -> None:
    d = utc(w.week_start(now))
    assert (d.weekday(), d.hour, d.minute, d.second) == (0, 0, 0, 0)


@given(times)
def test_month_is_the_calendar_month_across_year_boundaries(now: int) -> None:
    start, end = w.month_start(now), w.month_end(now)
    assert start <= now < end
    s, e, n = utc(start), utc(end), utc(now)
    assert (s.year, s.month, s.day, s.hour) == (n.year, n.month, 1, 0)
    assert (e.year, e.month) == ((n.year + 1, 1) if n.month == 12 else (n.year, n.month + 1))
    assert w.month_start(end) == end and w.month_start(end - 1) == start


def test_new_year_week_and_month() -> None:
    new_year = int(dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp())  # a Friday
    assert w.iso(w.week_start(new_year)) == "2026-12-28T00:00:00Z"
    assert w.iso(w.month_start(new_year - 1)) == "2026-12-01T00:00:00Z"
    assert w.iso(w.month_end(new_year - 1)) == "2027-01-01T00:00:00Z"


@given(times, st.floats(min_value=0.01, max_value=200), st.integers(0, 10**6))
def test_session_expires_exactly_at_its_end(start: int, hours: float, offset: int) -> None:
    length = w.session_length(hours)
    end = w.session_end(start, length, start)
    assert end == start + length
    assert not w.session_expired(start, length, end - 1)
    assert w.session_expired(start, length, end)
    later = start + offset
    if w.session_expired(start, length, later):
        # a request now opens a new session that lasts the full length
        assert w.session_end(start, length, later) == later + length
    else:
        assert w.session_end(start, length, later) == end


RULES = budget.PlanRules.of("p", Plan(session=SessionPool(credits=1000, hours=5),
                                      weekly=WeeklyPool(credits=3000, reset_weekday=2, reset_time="06:30"),
                                      default_model="m", monthly_tokens=TokenQuota()))
PRICE = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)  # 1 credit a token


@given(times, st.lists(st.tuples(st.integers(0, 40_000), st.integers(1, 400)), min_size=1, max_size=30))
def test_pools_reset_at_the_reset_they_announce(t0: int, steps: list[tuple[int, int]]) -> None:
    """Drive admissions and settlements over time: a pool's ``used`` drops to zero exactly at the
    reset time it announced, never before, and admitted holds never exceed a limit."""
    rec = Record(user="u")
    now = t0
    for i, (gap, cost) in enumerate(steps):
        before = budget.pool_states(budget.figures(_rolled(rec, now), RULES, now), RULES.plan)
        prev_used = (rec.session_used, rec.week_used)
        now += gap
        req = ReserveRequest(f"r{i}", "u", "p", "m", input_tokens=cost, max_output_tokens=0)
        reply, changed = budget.reserve(rec, req, RULES, PRICE, now)
        s_reset, w_reset = before[0].reset, before[1].reset
        if prev_used[1] and now < w_reset:
            assert rec.week_used == prev_used[1]
        if now >= w_reset:
            assert rec.week_used == 0
        if prev_used[0] and now < s_reset and rec.session_start:
            assert rec.session_used == prev_used[0]
        if now >= s_reset:
            assert rec.session_used == 0
        f = budget.figures(rec, RULES, now)
        assert f.session_used + f.session_reserved <= 1000
        assert f.week_used + f.week_reserved <= 3000
        if changed:
            assert reply.admitted
            settlement_usage = Settlement(f"r{i}", "u", "p", "m", Usage(cost, 0))
            budget.settle(rec, settlement_usage, RULES, PRICE, now, Bounds())


def _rolled(rec: Record, now: int) -> Record:
    budget.roll(rec, RULES, now)
    return rec
