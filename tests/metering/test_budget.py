"""The pure admission and settlement rules."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.metering import budget
from services.metering.record import Bounds, Record, decode_record, encode_record, kv_key, user_key
from shared.catalog import Plan, SessionPool, WeeklyPool
from shared.contract import ModelUsage, ReserveRequest, Settlement, Usage
from shared.money import PriceUnits

RULES = budget.PlanRules.of(
    "p", Plan(session=SessionPool(credits=1000, hours=1), weekly=WeeklyPool(credits=5000), default_model="m")
)
PRICE = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)  # 1 credit a token
NOW = 1_800_000_000


def req(rid: str, inp: int, out: int) -> ReserveRequest:
    return ReserveRequest(rid, "u", "p", "m", input_tokens=inp, max_output_tokens=out)


def test_overshoot_is_bounded_by_one_requests_actual_minus_reserved() -> None:
    rec = Record(user="u")
    reply, _ = budget.reserve(rec, req("a", 100, 800), RULES, PRICE, NOW)
    assert reply.admitted and reply.hold == 900
    # the prompt estimate was low: the provider reports 400 prompt tokens, not 100
    out, _ = budget.settle(rec, Settlement("a", "u", "p", "m", Usage(400, 800)), RULES, PRICE, NOW, Bounds())
    assert out.entry.credits == 1200 and out.entry.reserved == 900
    assert rec.session_used - 1000 <= out.entry.credits - out.entry.reserved
    refused, changed = budget.reserve(rec, req("b", 1, 0), RULES, PRICE, NOW)
    assert not refused.admitted and not changed and refused.denied_pool == "session"
    assert refused.pools[0].remaining == 0


def test_settlement_is_idempotent_and_remembers_its_cost() -> None:
    rec = Record(user="u")
    budget.reserve(rec, req("a", 10, 10), RULES, PRICE, NOW)
    s = Settlement("a", "u", "p", "m", Usage(10, 5))
    first, changed = budget.settle(rec, s, RULES, PRICE, NOW, Bounds())
    again, changed_again = budget.settle(rec, s, RULES, PRICE, NOW + 5, Bounds())
    assert changed and not changed_again and again.result == "duplicate"
    assert again.entry.credits == first.entry.credits == 15 and rec.session_used == 15


def test_retried_reserve_holds_once() -> None:
    rec = Record(user="u")
    a, _ = budget.reserve(rec, req("a", 10, 10), RULES, PRICE, NOW)
    b, changed = budget.reserve(rec, req("a", 10, 10), RULES, PRICE, NOW)
    assert a.hold == b.hold == 20 and not changed and len(rec.holds) == 1


def test_settlement_lands_in_the_window_of_its_admission() -> None:
    rec = Record(user="u")
    budget.reserve(rec, req("old", 10, 10), RULES, PRICE, NOW)
    later = NOW + 3600  # the session has expired
    budget.reserve(rec, req("new", 10, 10), RULES, PRICE, later)
    budget.settle(rec, Settlement("old", "u", "p", "m", Usage(10, 10)), RULES, PRICE, later, Bounds())
    assert rec.session_used == 0 and rec.session_start == later
    assert rec.week_used == 20  # the same week


def test_reap_releases_only_stale_holds() -> None:
    rec = Record(user="u")
    budget.reserve(rec, req("a", 1, 1), RULES, PRICE, NOW)
    budget.reserve(rec, req("b", 1, 1), RULES, PRICE, NOW + 100)
    assert budget.reap(rec, NOW + 120, ttl=60) == ["a"]
    assert list(rec.holds) == ["b"]


def test_record_round_trip_and_safe_keys() -> None:
    rec = Record(user="u")
    budget.reserve(rec, req("a", 1, 1), RULES, PRICE, NOW)
    assert decode_record(encode_record(rec)) == rec
    assert user_key("alice_01") == "b.u.alice_01"
    hashed = user_key("alice@example.com")
    assert hashed.startswith("b.h.") and len(hashed) == 4 + 64
    assert kv_key("b", "a.b") != kv_key("b", "a/b") and "*" not in user_key("a*>")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reserve", "settle", "reap"]),
            st.integers(0, 5),
            st.integers(0, 4 * 86400),
            st.integers(0, 400),
        ),
        max_size=40,
    )
)
def test_an_admission_answers_the_pools_a_fresh_count_gives(ops: list[tuple[str, int, int, int]]) -> None:
    # admission counts the open holds once and adds its own; the answer must equal a full recount,
    # whatever windows moved (session expiry, week and month turns) in between
    rec = Record(user="u")
    now = NOW
    for op, rid, step, tokens in ops:
        now += step
        if op == "reserve":
            reply, _ = budget.reserve(rec, req(f"r{rid}", tokens, tokens), RULES, PRICE, now)
            # a fresh copy has no running sums: it counts every hold
            fresh = budget.figures(decode_record(encode_record(rec)), RULES, now)
            assert reply.pools == budget.pool_states(fresh, RULES.plan)
            assert budget.figures(rec, RULES, now) == fresh
        elif op == "settle":
            budget.settle(
                rec, Settlement(f"r{rid}", "u", "p", "m", Usage(tokens, 1)), RULES, PRICE, now, Bounds()
            )
        else:
            budget.reap(rec, now, ttl=3600)
        fresh = budget.figures(decode_record(encode_record(rec)), RULES, now)
        assert budget.figures(rec, RULES, now) == fresh


def test_each_model_of_a_fallback_is_charged_at_its_own_price() -> None:
    rec = Record(user="u")
    dear = PriceUnits(input=5_000_000, cached_input=5_000_000, output=5_000_000)  # 5 credits a token
    assert budget.reserve(rec, req("a", 10, 20), RULES, dear, NOW)[0].admitted
    s = Settlement("a", "u", "p", "dear", Usage(10, 20), other=[ModelUsage("m", Usage(7, 0))])
    out, _ = budget.settle(rec, s, RULES, dear, NOW, Bounds(), prices={"m": PRICE, "dear": dear})
    assert out.entry.credits == 30 * 5 + 7 == rec.session_used
    assert (rec.week_by_model["dear"].credits, rec.week_by_model["m"].credits) == (150, 7)
    assert rec.month_input_tokens == 17 and rec.week_by_bot["default"].credits == 157


def test_a_renewed_hold_is_never_reaped_and_an_abandoned_one_is() -> None:
    rec = Record(user="u")
    for rid in ("live", "dead"):
        assert budget.reserve(rec, req(rid, 1, 1), RULES, PRICE, NOW)[0].admitted
    for t in range(NOW + 100, NOW + 1000, 100):  # a long, healthy stream renews every 100 s
        assert budget.renew(rec, "live", t) == (True, True)
        assert budget.reap(rec, t, ttl=300) == ([] if t < NOW + 300 else ["dead"] if t == NOW + 300 else [])
    assert set(rec.holds) == {"live"}
    assert budget.renew(rec, "gone", NOW + 1000) == (False, False)
    assert budget.reap(rec, NOW + 900 + 300, ttl=300) == ["live"]  # renewals stopped: its gateway died


def test_a_request_that_fits_with_a_shorter_answer_is_granted_what_the_pools_hold() -> None:
    rec = Record(user="u")
    budget.reserve(rec, req("a", 100, 500), RULES, PRICE, NOW)  # 400 credits of the session left
    asked = ReserveRequest("b", "u", "p", "m", input_tokens=100, max_output_tokens=4096,
                           min_output_tokens=256)
    reply, changed = budget.reserve(rec, asked, RULES, PRICE, NOW)
    assert reply.admitted and changed
    assert reply.max_output_tokens == 300 and reply.hold == 400 and rec.holds["b"].output_tokens == 300
    assert reply.pools[0].remaining == 0
    # below the floor: refused as before, nothing held
    third = ReserveRequest("c", "u", "p", "m", input_tokens=1, max_output_tokens=4096, min_output_tokens=1)
    refused, changed = budget.reserve(rec, third, RULES, PRICE, NOW)
    assert not refused.admitted and not changed and "c" not in rec.holds


def test_without_a_floor_a_request_the_pools_cannot_hold_whole_is_refused() -> None:
    rec = Record(user="u")
    reply, _ = budget.reserve(rec, req("a", 100, 4096), RULES, PRICE, NOW)
    assert not reply.admitted and not rec.holds


@settings(max_examples=300, deadline=None)
@given(used=st.integers(0, 1200), inp=st.integers(0, 2000), out=st.integers(1, 50_000),
       floor=st.integers(1, 50_000), pin=st.integers(0, 3_000_000), pout=st.integers(0, 20_000_000))
def test_a_granted_output_always_fits_every_pool(used: int, inp: int, out: int, floor: int, pin: int,
                                                 pout: int) -> None:
    price = PriceUnits(input=pin, cached_input=pin, output=pout)
    rec = Record(user="u", session_start=NOW, session_used=used, week_start=RULES.week_start(NOW),
                 week_used=used)
    asked = ReserveRequest("x", "u", "p", "m", input_tokens=inp, max_output_tokens=out,
                           min_output_tokens=min(floor, out))
    reply, _ = budget.reserve(rec, asked, RULES, price, NOW)
    if reply.admitted:
        granted = reply.max_output_tokens
        assert min(floor, out) <= granted <= out
        assert used + reply.hold <= 1000
        assert budget.hold_cost(ReserveRequest("x", "u", "p", "m", inp, granted), price) == reply.hold
