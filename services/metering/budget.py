"""Admission, settlement and reaping as pure functions on one user's ``Record``.

Nothing here touches NATS or the clock: the caller passes ``now`` (whole UTC seconds) and writes the
mutated record back with one compare-and-set, so the rules below hold across pools and replicas.

Admission: a request is admitted only if every pool can hold its worst-case cost (the prompt
estimate plus ``max_output_tokens`` at the model's price, with ``shared.money.cost_credits``):
``used + open holds + this hold <= limit`` for the session, the week and, when the plan sets them,
the monthly input/output token quotas. A request that names a floor (``min_output_tokens``) and does
not fit whole is granted the largest output every pool can hold, down to that floor, in the same
write; the reply says how much (``max_output_tokens``) and the gateway sends the provider that cap.

Overshoot bound: a pool's spend can pass its limit by at most one request's ``actual - reserved``
cost. Every admitted hold fits under the limit together with all the others, and a settlement
replaces its hold by the actual cost, so the only way past the limit is a request whose actual
cost exceeded its reservation (an underestimated prompt, or a settlement that arrives after the
reaper released its hold); the next admission sees the overshoot in ``used`` and is refused.
With exact prompt counts and ``completion_tokens <= max_output_tokens`` the bound is zero.

Request rate: a plan's ``requests_per_minute`` is counted in the same record, in a rolling window
(``windows.rate_admit``) that opens at the first request after the previous one ended and admits at
most that many requests; the count and its compare-and-set are the pools', so the limit holds for
the whole cluster, not per gateway or metering replica. Only admitted requests count; a request the
budget refuses is not counted, and one the rate refuses takes no hold.

Settlement lands in the windows of the moment the request was admitted (the hold's time), so a
request made on Sunday night and settled on Monday is charged to last week, not to the new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from services.metering import leases
from services.metering import windows as w
from services.metering.leases import LeaseTerms
from services.metering.record import OTHER_BOT, Bounds, Hold, Record, Tally, bot_key
from shared.catalog import Plan
from shared.contract import (
    LedgerEntry,
    PoolState,
    PoolUsage,
    QuotaUsage,
    RequestRate,
    ReserveReply,
    ReserveRequest,
    Settlement,
    TallyRow,
    Usage,
    UsageReport,
)
from shared.money import PriceUnits, cost_credits, output_within


@dataclass(frozen=True, slots=True)
class PlanRules:
    """A plan with its window parameters parsed once at startup."""

    name: str
    plan: Plan
    session_seconds: int
    reset_weekday: int
    reset_seconds: int
    rate_limit: int | None = None  # requests admitted per rate window; None: unlimited
    rate_seconds: int = 60  # the rate window's length (a minute, shorter in tests)

    @classmethod
    def of(cls, name: str, plan: Plan, rate_seconds: int = 60) -> PlanRules:
        if not 0 <= plan.weekly.reset_weekday <= 6:
            raise ValueError(f"plan {name}: weekly.reset_weekday must be 0..6")
        rpm = plan.requests_per_minute
        if rpm is not None and rpm < 1:
            raise ValueError(f"plan {name}: requests_per_minute must be at least 1 (omit it for no limit)")
        if rate_seconds < 1:
            raise ValueError("the request-rate window must last at least one second")
        return cls(
            name,
            plan,
            w.session_length(plan.session.hours),
            plan.weekly.reset_weekday,
            w.parse_reset_time(plan.weekly.reset_time),
            rpm,
            rate_seconds,
        )

    def week_start(self, now: int) -> int:
        return w.week_start(now, self.reset_weekday, self.reset_seconds)


@dataclass(slots=True)
class Figures:
    """Every pool's state at ``now``: what is used, what open holds reserve, when it resets."""

    session_open: bool
    session_used: int
    session_reserved: int
    session_reset: int
    week_used: int
    week_reserved: int
    week_reset: int
    month_in: int
    month_in_reserved: int
    month_out: int
    month_out_reserved: int
    month_reset: int


def roll(rec: Record, rules: PlanRules, now: int) -> None:
    """Move the record's windows to ``now``. Windows only move forward, so a replica whose clock
    lags another's never re-opens a window that has already been replaced."""
    if rec.session_start and w.session_expired(rec.session_start, rules.session_seconds, now):
        rec.session_start, rec.session_used = 0, 0
    ws = rules.week_start(now)
    if ws > rec.week_start:
        rec.week_start, rec.week_used = ws, 0
        rec.week_by_model, rec.week_by_bot = {}, {}
    ms = w.month_start(now)
    if ms > rec.month_start:
        rec.month_start, rec.month_input_tokens, rec.month_output_tokens = ms, 0, 0


class _Reserved:
    """What the open holds reserve in each window of a record.

    Counted once per decoded record and then kept current by every change to ``rec.holds`` in this
    module, so the k-th admission of a group commit costs O(1) instead of a pass over every open
    hold. ``key`` is what the sums were counted for: window starts that move (``roll``) or a hold
    count that changed behind our back force a recount.
    """

    __slots__ = ("key", "month_in", "month_out", "session", "week")

    def __init__(self, key: tuple[int, int, int, int]) -> None:
        self.key = key
        self.session = self.week = self.month_in = self.month_out = 0

    def add(self, h: Hold, sign: int) -> None:
        ss, ws, ms, _ = self.key
        if h.at >= ms:
            self.month_in += sign * h.input_tokens
            self.month_out += sign * h.output_tokens
        if h.at >= ws:
            self.week += sign * h.credits
        if ss and h.at >= ss:
            self.session += sign * h.credits


def _reserved(rec: Record) -> _Reserved:
    key = (rec.session_start, rec.week_start, rec.month_start, len(rec.holds))
    memo: _Reserved | None = rec.__dict__.get("_reserved")
    if memo is None or memo.key != key:
        memo = _Reserved(key)
        for h in rec.holds.values():
            memo.add(h, 1)
        rec.__dict__["_reserved"] = memo
    return memo


def _held(rec: Record, h: Hold, sign: int) -> None:
    """Account for ``h`` just added (1) to or removed (-1) from ``rec.holds``."""
    memo: _Reserved | None = rec.__dict__.get("_reserved")
    if memo is None:
        return
    ss, ws, ms, n = memo.key
    if (ss, ws, ms) != (rec.session_start, rec.week_start, rec.month_start) or n + sign != len(rec.holds):
        del rec.__dict__["_reserved"]  # stale anyway: the next figures() recounts
        return
    memo.add(h, sign)
    memo.key = (ss, ws, ms, n + sign)


def figures(rec: Record, rules: PlanRules, now: int) -> Figures:
    """Pool states of a record already rolled to ``now``."""
    r = _reserved(rec)
    return Figures(
        session_open=rec.session_start > 0,
        session_used=rec.session_used,
        session_reserved=r.session,
        session_reset=w.session_end(rec.session_start, rules.session_seconds, now),
        week_used=rec.week_used,
        week_reserved=r.week,
        week_reset=rec.week_start + w.WEEK,
        month_in=rec.month_input_tokens,
        month_in_reserved=r.month_in,
        month_out=rec.month_output_tokens,
        month_out_reserved=r.month_out,
        month_reset=w.month_end(now),
    )


def pool_states(f: Figures, plan: Plan) -> list[PoolState]:
    return [
        PoolState(
            "session",
            plan.session.credits,
            max(0, plan.session.credits - f.session_used - f.session_reserved),
            float(f.session_reset),
        ),
        PoolState(
            "weekly",
            plan.weekly.credits,
            max(0, plan.weekly.credits - f.week_used - f.week_reserved),
            float(f.week_reset),
        ),
    ]


def hold_cost(req: ReserveRequest, price: PriceUnits) -> int:
    usage = Usage(prompt_tokens=max(req.input_tokens, 0), completion_tokens=max(req.max_output_tokens, 0))
    return cost_credits(usage, price)


def _denial(f: Figures, plan: Plan, hold: int, req: ReserveRequest) -> tuple[str, str] | None:
    """The pool that cannot hold the request (the one that frees up last), and the message."""
    over: list[tuple[int, str, str]] = []

    def check(pool: str, unit: str, limit: int | None, used: int, need: int, reset: int) -> None:
        if limit is None or used + need <= limit:
            return
        left = max(0, limit - used)
        what = f"{pool} budget" if unit == "credits" else f"{pool.replace('_', ' ')} quota"
        extra = f"; this request may use up to {need} {unit}" if left else ""
        over.append(
            (
                reset,
                pool,
                f"{what} exhausted: {left} of {limit} {unit} remaining{extra}; resets at {w.iso(reset)}",
            )
        )

    check(
        "session", "credits", plan.session.credits, f.session_used + f.session_reserved, hold, f.session_reset
    )
    check("weekly", "credits", plan.weekly.credits, f.week_used + f.week_reserved, hold, f.week_reset)
    q = plan.monthly_tokens
    check(
        "monthly_input_tokens",
        "tokens",
        q.input,
        f.month_in + f.month_in_reserved,
        max(req.input_tokens, 0),
        f.month_reset,
    )
    check(
        "monthly_output_tokens",
        "tokens",
        q.output,
        f.month_out + f.month_out_reserved,
        max(req.max_output_tokens, 0),
        f.month_reset,
    )
    if not over:
        return None
    _, pool, message = max(over, key=lambda o: o[0])
    return pool, message


def _largest_output(f: Figures, plan: Plan, req: ReserveRequest, price: PriceUnits) -> int:
    """The most output tokens (up to the request's own cap) every pool and quota can still hold
    beside the request's prompt; below 0 when not even the prompt fits."""
    best = max(req.max_output_tokens, 0)
    for limit, used in (
        (plan.session.credits, f.session_used + f.session_reserved),
        (plan.weekly.credits, f.week_used + f.week_reserved),
    ):
        best = min(best, output_within(limit - used, req.input_tokens, price))
    quota = plan.monthly_tokens.output
    if quota is not None:
        best = min(best, quota - f.month_out - f.month_out_reserved)
    return best


def request_rate(rec: Record, rules: PlanRules, now: int) -> RequestRate | None:
    """The rate window as it stands at ``now`` (nothing counted); None when the plan sets no rate."""
    if rules.rate_limit is None:
        return None
    reset = w.rate_reset(rec.rate_start, rules.rate_seconds, now)
    used = rec.rate_count if reset else 0
    return RequestRate(rules.rate_limit, max(0, rules.rate_limit - used), reset)


def _count_request(rec: Record, rules: PlanRules, now: int) -> tuple[RequestRate | None, str]:
    """Count one request against the plan's rate: (the window after it, "" or the refusal message).
    A refused request leaves the record untouched."""
    limit, seconds = rules.rate_limit, rules.rate_seconds
    if limit is None:
        return None, ""
    ok, start, count = w.rate_admit(rec.rate_start, rec.rate_count, limit, seconds, now)
    reset = w.rate_reset(start, seconds, now)
    if not ok:
        per = "minute" if seconds == 60 else f"{seconds} s"
        return RequestRate(limit, 0, reset), (
            f"Rate limit reached for requests on plan {rules.name!r}: limit {limit} per {per}, used {count}. "
            f"Please try again in {reset}s."
        )
    rec.rate_start, rec.rate_count = start, count
    return RequestRate(limit, limit - count, reset), ""


def reserve(
    rec: Record,
    req: ReserveRequest,
    rules: PlanRules,
    price: PriceUnits,
    now: int,
    terms: LeaseTerms | None = None,
) -> tuple[ReserveReply, bool]:
    """Admit or refuse; returns the reply and whether the record changed (and must be written).

    The gateway's previous lease named in the request is given back first, in the same write; a
    lease asked for is granted after the request's own hold, from what is left (``leases``)."""
    gave = (
        req.lease_return is not None
        and req.lease_return.user == req.user
        and leases.give_back(rec, req.lease_return)
    )
    reply, changed = _admit(rec, req, rules, price, now)
    if terms is None or req.lease_requests < 1 or not changed or req.byok or not reply.admitted:
        return reply, changed or gave
    unit = rec.holds.get(req.request_id)
    if unit is None:
        return reply, changed or gave
    f = figures(rec, rules, now)
    plan, q = rules.plan, rules.plan.monthly_tokens
    room: dict[str, tuple[int | None, int]] = {
        "credits": (
            min(
                plan.session.credits - f.session_used - f.session_reserved,
                plan.weekly.credits - f.week_used - f.week_reserved,
            ),
            0,
        ),
        "input": (q.input, f.month_in + f.month_in_reserved),
        "output": (q.output, f.month_out + f.month_out_reserved),
    }
    counted = rec.rate_count if rules.rate_limit is not None else 0
    rate = (rules.rate_limit, counted, w.rate_reset(rec.rate_start, rules.rate_seconds, now))
    lease = leases.grant(
        rec,
        unit,
        req.lease_requests,
        req.lease_id,
        room,
        rate,
        [f.session_reset, f.week_reset, f.month_reset],
        now,
        terms,
    )
    if lease is None:
        return reply, True
    pools = pool_states(figures(rec, rules, now), rules.plan)
    reply = msgspec.structs.replace(reply, pools=pools, requests=request_rate(rec, rules, now), lease=lease)
    return reply, True


def _admit(
    rec: Record, req: ReserveRequest, rules: PlanRules, price: PriceUnits, now: int
) -> tuple[ReserveReply, bool]:
    """Admit or refuse one request.

    The budget is asked first: a request it refuses is answered as such (a spent budget is not worth
    retrying soon, a rate limit is) and is not counted against the rate."""
    existing = rec.holds.get(req.request_id)
    if existing is not None or rec.settled_cost(req.request_id) is not None:
        # a retried reserve of a request already admitted: answer the same, hold nothing twice
        roll(rec, rules, now)
        pools = pool_states(figures(rec, rules, now), rules.plan)
        return ReserveReply(
            True,
            pools,
            hold=existing.credits if existing else 0,
            requests=request_rate(rec, rules, now),
            max_output_tokens=existing.output_tokens if existing else 0,
        ), False
    roll(rec, rules, now)
    f = figures(rec, rules, now)
    hold = 0
    if not req.byok:
        hold = hold_cost(req, price)
        denied = _denial(f, rules.plan, hold, req)
        if denied is not None and 0 < req.min_output_tokens < req.max_output_tokens:
            # the request fits with a shorter answer: hold (and let it generate) what the pools cover,
            # decided here, inside the compare-and-set, so no concurrent request can take it meanwhile
            grant = _largest_output(f, rules.plan, req, price)
            if grant >= req.min_output_tokens:
                req = msgspec.structs.replace(req, max_output_tokens=grant)
                hold = hold_cost(req, price)
                denied = _denial(f, rules.plan, hold, req)
        if denied is not None:
            pool, message = denied
            return ReserveReply(
                False,
                pool_states(f, rules.plan),
                denied_pool=pool,
                message=message,
                requests=request_rate(rec, rules, now),
            ), False
    rate, refused = _count_request(rec, rules, now)
    if refused:
        assert rate is not None
        return ReserveReply(
            False,
            pool_states(f, rules.plan),
            denied_pool="requests",
            message=refused,
            requests=rate,
            retry_after=rate.reset,
        ), False
    if req.byok:
        # charged nothing, so no hold; the record changed only if the request was counted
        return ReserveReply(True, pool_states(f, rules.plan), requests=rate), rate is not None
    if not rec.session_start:
        rec.session_start, rec.session_used = now, 0
    rec.plan = rules.name
    h = rec.holds[req.request_id] = Hold(
        hold, max(req.input_tokens, 0), max(req.max_output_tokens, 0), req.model, req.bot, now
    )
    _held(rec, h, 1)
    pools = pool_states(figures(rec, rules, now), rules.plan)
    return ReserveReply(True, pools, hold=hold, requests=rate, max_output_tokens=h.output_tokens), True


@dataclass(slots=True)
class Outcome:
    result: str  # "charged" | "released" | "late" | "byok" | "duplicate" | UNPROVABLE
    entry: LedgerEntry
    # credits the reported usage came to above the hold, not charged: the hold is what the request
    # could cost, so more is an estimate far off or a worker reporting false usage
    over_hold: int = 0
    reported: int = 0  # what the usage came to before the cap


# a redelivery published before the record's floor: it may have been applied, nothing can tell
UNPROVABLE = "unprovable"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What JetStream says about the message a settlement came in."""

    published: int  # unix seconds when the stream stored it
    redelivered: bool  # delivered before: it may have been applied already


def settle(
    rec: Record,
    s: Settlement,
    rules: PlanRules,
    price: PriceUnits | None,
    now: int,
    bounds: Bounds,
    delivery: Delivery | None = None,
    prices: Mapping[str, PriceUnits] | None = None,
) -> tuple[Outcome, bool]:
    """Replace the hold by the actual cost. Idempotent by request id: a settled id is a no-op that
    still returns its ledger entry, so a redelivery after a crash re-publishes the same entry. A
    redelivery older than what the record remembers is refused as ``UNPROVABLE``, unchanged.

    ``price`` prices ``s.model`` (the model that served the answer); ``prices`` the models of
    earlier attempts in ``s.other``, each charged at its own price."""
    delivery = delivery or Delivery(now, False)
    known = rec.settled_cost(s.request_id)
    if known is not None:
        return Outcome("duplicate", _entry(s, known, 0, now)), False
    if delivery.redelivered and delivery.published <= rec.settled_floor:
        return Outcome(UNPROVABLE, _entry(s, 0, 0, now)), False
    roll(rec, rules, now)
    hold = rec.holds.pop(s.request_id, None)
    if hold is not None:
        _held(rec, hold, -1)
    ceiling = hold
    if hold is None and s.lease:
        # admitted by its gateway on a lease: the part it drew is this request's hold
        drawn, found = leases.draw(rec, s, now)
        hold = drawn if found else None
        ceiling = drawn
    parts = [
        (s.model, s.usage, price),
        *((o.model, o.usage, (prices or {}).get(o.model, price)) for o in s.other),
    ]
    costs: list[int] = []
    for _, usage, p in parts:
        if s.byok:
            costs.append(0)
        elif p is not None:
            costs.append(cost_credits(usage, p))
        else:
            # the model left the catalog between admission and settlement: charge what was held
            costs.append(hold.credits if hold is not None and s.ok and not costs else 0)
    reported = sum(costs)
    if ceiling is not None and reported > ceiling.credits:
        # the hold is a ceiling: a worker (the only source of usage) cannot charge a user past it;
        # the parts keep their order, the later ones are cut so the per-model tallies add up
        room = ceiling.credits
        for i, c in enumerate(costs):
            costs[i] = min(c, room)
            room -= costs[i]
    cost = sum(costs)
    at = hold.at if hold is not None else w.now_s(s.at or now)
    if rec.session_start and at >= rec.session_start:
        rec.session_used += cost
    prompt = sum(max(u.prompt_tokens, 0) for _, u, _ in parts)
    completion = sum(max(u.completion_tokens, 0) for _, u, _ in parts)
    if at >= rec.week_start:
        rec.week_used += cost
        for (model, usage, _), c in zip(parts, costs, strict=True):
            rec.week_by_model.setdefault(model, Tally()).add(
                c, max(usage.prompt_tokens, 0), max(usage.completion_tokens, 0)
            )
        _bot_tally(rec, s.bot or "default", bounds.bots).add(cost, prompt, completion)
    if at >= rec.month_start and not s.byok:
        # quotas bound what the platform pays for; a user's own key spends nothing of it
        rec.month_input_tokens += prompt
        rec.month_output_tokens += completion
    rec.remember_settled(s.request_id, cost, delivery.published, now, bounds)
    if s.byok:
        result = "byok"
    elif hold is None:
        result = "late"
    elif not s.ok and cost == 0:
        result = "released"
    else:
        result = "charged"
    out = Outcome(result, _entry(s, cost, hold.credits if hold else 0, now), reported - cost, reported)
    return out, True


def _bot_tally(rec: Record, bot: str, most: int) -> Tally:
    """The week's tally for ``bot``; past ``most`` distinct bots, the shared "other" one, so a
    caller sending a new X-Bot-ID with every request cannot grow the record."""
    key = bot_key(bot)
    tally = rec.week_by_bot.get(key)
    if tally is None:
        if sum(k != OTHER_BOT for k in rec.week_by_bot) >= most:
            key, bot = OTHER_BOT, OTHER_BOT
            tally = rec.week_by_bot.get(key)
        if tally is None:
            tally = rec.week_by_bot[key] = Tally(name=bot if key != bot else "")
    return tally


def _entry(s: Settlement, cost: int, reserved: int, now: int) -> LedgerEntry:
    return LedgerEntry(
        request_id=s.request_id,
        user=s.user,
        model=s.model,
        credits=cost,
        usage=s.usage,
        bot=s.bot or "default",
        reserved=reserved,
        ok=s.ok,
        byok=s.byok,
        at=float(now),
    )


def renew(rec: Record, request_id: str, now: int) -> tuple[bool, bool]:
    """Mark a hold as still in use at ``now``: (whether it was found, whether the record changed)."""
    h = rec.holds.get(request_id)
    if h is None:
        return False, False  # settled (or reaped) already: nothing to keep
    if h.seen >= now:
        return True, False
    h.seen = now
    return True, True


def _dead(h: Hold, now: int, ttl: float, lease_ttl: float | None) -> bool:
    return now - h.last_sign_of_life() >= (lease_ttl if h.lease and lease_ttl is not None else ttl)


def stale(rec: Record, now: int, ttl: float, lease_ttl: float | None = None) -> bool:
    return any(_dead(h, now, ttl, lease_ttl) for h in rec.holds.values())


def reap(rec: Record, now: int, ttl: float, lease_ttl: float | None = None) -> list[str]:
    """Release holds with no sign of life for ``ttl`` seconds (their gateway died before settling),
    and leases for ``lease_ttl``; a long request's gateway renews its hold (or its lease), so a hold
    in use is never taken from it."""
    stale = [rid for rid, h in rec.holds.items() if _dead(h, now, ttl, lease_ttl)]
    for rid in stale:
        _held(rec, rec.holds.pop(rid), -1)
    return stale


def usage_report(rec: Record, rules: PlanRules, now: int) -> UsageReport:
    """A record rolled to ``now``, as the gateway's ``/v1/usage`` needs it."""
    f = figures(rec, rules, now)
    plan = rules.plan

    def rows(d: dict[str, Tally]) -> list[TallyRow]:
        return [
            TallyRow(t.name or k, t.credits, t.requests, t.input_tokens, t.output_tokens)
            for k, t in sorted(d.items())
        ]

    return UsageReport(
        plan=rules.name,
        session=PoolUsage(plan.session.credits, f.session_used, f.session_reserved, f.session_reset),
        session_active=f.session_open,
        weekly=PoolUsage(plan.weekly.credits, f.week_used, f.week_reserved, f.week_reset),
        month_input=QuotaUsage(plan.monthly_tokens.input, f.month_in, f.month_in_reserved),
        month_output=QuotaUsage(plan.monthly_tokens.output, f.month_out, f.month_out_reserved),
        month_reset=f.month_reset,
        week_start=rec.week_start,
        by_model=rows(rec.week_by_model),
        by_bot=rows(rec.week_by_bot),
    )


def usage_document(rec: Record, rules: PlanRules, now: int) -> dict[str, object]:
    """The ``/v1/usage`` body for a record rolled to ``now``, for gateways of the previous release
    (which pass it on as it is); current ones render ``usage_report``. Goes in the next release."""
    f = figures(rec, rules, now)
    plan = rules.plan

    def pool(limit: int, used: int, reserved: int, reset: int) -> dict[str, object]:
        return {
            "limit": limit,
            "used": used,
            "reserved": reserved,
            "remaining": max(0, limit - used - reserved),
            "reset": w.iso(reset),
        }

    def quota(limit: int | None, used: int, reserved: int) -> dict[str, object]:
        return {
            "limit": limit,
            "used": used,
            "reserved": reserved,
            "remaining": None if limit is None else max(0, limit - used - reserved),
        }

    def tallies(d: dict[str, Tally]) -> dict[str, object]:
        return {
            t.name or k: {
                "credits": t.credits,
                "requests": t.requests,
                "input_tokens": t.input_tokens,
                "output_tokens": t.output_tokens,
            }
            for k, t in sorted(d.items())
        }

    return {
        "object": "usage",
        "plan": rules.name,
        "unit": "credits",
        "session": {
            **pool(plan.session.credits, f.session_used, f.session_reserved, f.session_reset),
            "active": f.session_open,
        },
        "weekly": pool(plan.weekly.credits, f.week_used, f.week_reserved, f.week_reset),
        "monthly_tokens": {
            "input": quota(plan.monthly_tokens.input, f.month_in, f.month_in_reserved),
            "output": quota(plan.monthly_tokens.output, f.month_out, f.month_out_reserved),
            "reset": w.iso(f.month_reset),
        },
        "week": {
            "start": w.iso(rec.week_start),
            "by_model": tallies(rec.week_by_model),
            "by_bot": tallies(rec.week_by_bot),
        },
    }
