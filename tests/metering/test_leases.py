"""Credit leases as pure rules on one record: a lease is a hold, so every pool stays within its
limit together with the holds and the other leases, whatever order gateways grant, draw and give
back in; settlements draw exactly once; the end of a budget gets no lease."""

from __future__ import annotations

import random

import msgspec

from services.metering import budget, leases
from services.metering.leases import LeaseTerms
from services.metering.record import Bounds, Record, decode_record, encode_record
from shared.catalog import Plan, SessionPool, TokenQuota, WeeklyPool
from shared.contract import LeaseDraw, LeaseReturn, ReserveRequest, Settlement, Usage
from shared.money import PriceUnits

PLAN = Plan(
    session=SessionPool(credits=10_000, hours=1),
    weekly=WeeklyPool(credits=50_000),
    default_model="m",
    monthly_tokens=TokenQuota(input=100_000, output=100_000),
    requests_per_minute=1000,
)
RULES = budget.PlanRules.of("p", PLAN)
PRICE = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)  # 1 credit a token
NOW = 1_800_000_000
TERMS = LeaseTerms(fraction=0.25, seconds=30)


def ask(
    rid: str, lease: str = "", want: int = 0, back: LeaseReturn | None = None, cost: int = 100
) -> ReserveRequest:
    return ReserveRequest(
        rid,
        "u",
        "p",
        "m",
        input_tokens=cost // 2,
        max_output_tokens=cost - cost // 2,
        lease_requests=want,
        lease_id=lease,
        lease_return=back,
    )


def settle(rec: Record, rid: str, cost: int, lease: str = "", held: int = 0, at: int = NOW) -> budget.Outcome:
    draw = LeaseDraw(held, held // 2, held - held // 2) if lease else None
    s = Settlement(rid, "u", "p", "m", Usage(cost // 2, cost - cost // 2), lease=lease, held=draw)
    out, _ = budget.settle(rec, s, RULES, PRICE, at, Bounds())
    return out


def reserved(rec: Record) -> int:
    return sum(h.credits for h in rec.holds.values())


def test_a_lease_is_a_bounded_hold_in_the_same_write() -> None:
    rec = Record(user="u")
    reply, changed = budget.reserve(rec, ask("r1", "L1", 1000), RULES, PRICE, NOW, TERMS)
    assert changed and reply.admitted and reply.hold == 100
    lease = reply.lease
    assert lease is not None
    # a quarter of what the session had left after this request's hold, in requests like it
    assert lease.credits == (10_000 - 100) // 4 // 100 * 100 == 2400 and lease.requests == 24
    assert lease.seconds == 30
    assert rec.holds["L1"].lease and reserved(rec) == 100 + 2400
    assert reply.pools[0].remaining == 10_000 - 2500  # the answer counts the lease as held
    assert rec.rate_count == 1 + 24  # the allowance is counted in the rate window at once
    assert decode_record(encode_record(rec)) == rec


def test_no_lease_near_the_end_of_a_budget() -> None:
    """Fewer than four requests' worth in a quarter of what is left: every request reserves alone,
    so no credit is parked where another gateway of the user cannot reach it."""
    rec = Record(user="u", session_start=NOW, session_used=9_000)
    reply, _ = budget.reserve(rec, ask("r1", "L1", 64), RULES, PRICE, NOW, TERMS)
    assert reply.admitted and reply.lease is None and list(rec.holds) == ["r1"]


def test_settlements_draw_on_the_lease_once_and_are_capped_by_their_hold() -> None:
    rec = Record(user="u")
    budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    assert rec.holds["L1"].credits == 800
    out = settle(rec, "r2", 70, "L1", held=100)
    assert out.result == "charged" and out.entry.credits == 70 and out.entry.reserved == 100
    assert rec.holds["L1"].credits == 700 and rec.session_used == 70
    again = settle(rec, "r2", 70, "L1", held=100)
    assert again.result == "duplicate" and rec.holds["L1"].credits == 700 and rec.session_used == 70
    greedy = settle(rec, "r3", 5_000, "L1", held=100)  # a worker reporting more than was held
    assert greedy.entry.credits == 100 and greedy.over_hold == 4_900
    # a gateway claiming a bigger draw than the lease has left takes what is left, no more
    settle(rec, "r4", 10_000, "L1", held=9_000)
    assert rec.holds["L1"].credits == 0 and rec.session_used == 70 + 100 + 600


def test_giving_back_returns_the_unused_part_once_and_the_rest_goes_with_the_settlements() -> None:
    rec = Record(user="u")
    budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    counted = rec.rate_count
    # the gateway admitted two requests on it (200 credits, 2 requests), then went idle
    back = LeaseReturn("u", "L1", credits=600, input_tokens=300, output_tokens=300, requests=6)
    budget.reserve(rec, ask("r9", back=back), RULES, PRICE, NOW, TERMS)
    assert rec.holds["L1"].credits == 200 and rec.holds["L1"].returned
    assert rec.rate_count == counted + 1 - 6
    budget.reserve(rec, ask("r10", back=back), RULES, PRICE, NOW, TERMS)  # a repeated return: nothing
    assert rec.holds["L1"].credits == 200
    settle(rec, "r2", 100, "L1", held=100)
    settle(rec, "r3", 40, "L1", held=100)
    assert "L1" not in rec.holds  # given back and fully drawn: gone
    late = settle(rec, "r4", 500, "L1", held=100)  # its lease gone (reaped): the draw still caps it
    assert late.result == "late" and late.entry.credits == 100


def test_a_return_for_a_reserve_that_timed_out_gives_back_everything() -> None:
    rec = Record(user="u")
    budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    budget.reserve(rec, ask("r2", back=LeaseReturn("u", "L1", whole=True)), RULES, PRICE, NOW, TERMS)
    assert "L1" not in rec.holds and reserved(rec) == 200


def test_a_whole_return_that_overtakes_its_grant_refuses_the_late_grant() -> None:
    """A reserve asking for lease L1 timed out at the gateway, which gave L1 back whole at once; the
    return reached metering first. Without a memory of it the late grant would park L1 unused until
    the reaper, minutes later."""
    rec = Record(user="u")
    back = LeaseReturn("u", "L1", whole=True)
    assert leases.give_back(rec, back, NOW, Bounds())  # remembered: the record must be written
    assert not leases.give_back(rec, back, NOW, Bounds())  # once
    reply, _ = budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    assert reply.admitted and reply.lease is None and list(rec.holds) == ["r1"]
    # a partial return of a lease never granted (or already reaped) is not remembered
    assert not leases.give_back(rec, LeaseReturn("u", "L2", credits=100), NOW, Bounds())
    reply, _ = budget.reserve(rec, ask("r2", "L2", 8), RULES, PRICE, NOW, TERMS)
    assert reply.lease is not None


def test_the_reaper_frees_a_dead_gateways_lease_after_the_lease_ttl() -> None:
    rec = Record(user="u")
    budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    assert budget.reap(rec, NOW + 60, ttl=900, lease_ttl=300) == []
    settle(rec, "r2", 10, "L1", held=100, at=NOW + 250)  # a draw is a sign of life
    assert budget.reap(rec, NOW + 400, ttl=900, lease_ttl=300) == []
    assert budget.reap(rec, NOW + 560, ttl=900, lease_ttl=300) == ["L1"]
    assert list(rec.holds) == ["r1"]


def test_a_lease_never_outlives_the_window_it_was_reserved_in() -> None:
    rec = Record(user="u")
    budget.reserve(rec, ask("r0", cost=10), RULES, PRICE, NOW - 3590, TERMS)  # the session ends at NOW + 10
    reply, _ = budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    assert reply.lease is not None and reply.lease.seconds == 10


def test_two_gateways_racing_one_budget_never_pass_a_limit() -> None:
    """Two gateways admit locally on their leases, ask for new ones, give back, and settle in any
    order: at every step used + holds + leases stays within every pool, and every admitted request
    is charged exactly once."""
    for seed in range(40):
        rnd = random.Random(seed)
        rec = Record(user="u")
        gateways: list[dict[str, int | str]] = [{"lease": "", "left": 0}, {"lease": "", "left": 0}]
        pending: list[tuple[str, str, int, int]] = []  # request, lease, held, cost
        charged: dict[str, int] = {}
        n = 0
        while n < 400:
            n += 1
            g = gateways[rnd.randrange(2)]
            cost = rnd.choice((50, 100, 300))
            rid = f"r{n}"
            if g["lease"] and int(g["left"]) >= cost:
                g["left"] = int(g["left"]) - cost
                pending.append((rid, str(g["lease"]), cost, rnd.randrange(cost + 1)))
            else:
                back = (
                    LeaseReturn(
                        "u",
                        str(g["lease"]),
                        credits=int(g["left"]),
                        input_tokens=10**6,
                        output_tokens=10**6,
                        requests=10**6,
                    )
                    if g["lease"]
                    else None
                )
                lid = f"L{n}"
                reply, _ = budget.reserve(
                    rec, ask(rid, lid, rnd.randrange(1, 64), back, cost), RULES, PRICE, NOW, TERMS
                )
                g["lease"], g["left"] = "", 0
                if reply.admitted:
                    pending.append((rid, "", cost, rnd.randrange(cost + 1)))
                    if reply.lease is not None:
                        g["lease"], g["left"] = lid, reply.lease.credits
            if pending and rnd.random() < 0.5:
                rid, lease, held, actual = pending.pop(rnd.randrange(len(pending)))
                out = settle(rec, rid, actual, lease, held)
                charged[rid] = out.entry.credits
            assert rec.session_used + reserved(rec) <= PLAN.session.credits, seed
        for rid, lease, held, actual in pending:
            charged[rid] = settle(rec, rid, actual, lease, held).entry.credits
        for g in gateways:
            if g["lease"]:
                budget.reserve(
                    rec,
                    ask("last", back=LeaseReturn("u", str(g["lease"]), whole=True)),
                    RULES,
                    PRICE,
                    NOW,
                    TERMS,
                )
        assert rec.session_used == sum(charged.values()) <= PLAN.session.credits
        assert not [h for k, h in rec.holds.items() if h.lease and k != "last"]


def test_a_lease_return_of_another_user_changes_nothing() -> None:
    rec = Record(user="u")
    budget.reserve(rec, ask("r1", "L1", 8), RULES, PRICE, NOW, TERMS)
    other = msgspec.structs.replace(ask("r2"), lease_return=LeaseReturn("someone-else", "L1", whole=True))
    budget.reserve(rec, other, RULES, PRICE, NOW, TERMS)
    assert rec.holds["L1"].credits == 800 and not rec.holds["L1"].returned
