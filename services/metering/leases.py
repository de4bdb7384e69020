"""Credit leases: a slice of a user's pools reserved for one gateway, as pure functions on a ``Record``.

A lease is a hold (``Hold.lease``) in the same record and the same compare-and-set as every other
hold, so ``used + open holds + leases <= limit`` holds for every pool whatever the gateways do:

    grant      the reserve that asked for it, after its own hold: up to ``fraction`` of what each
               pool (session, week, monthly tokens, request rate) still has, in units of that
               request; fewer than ``MIN_REQUESTS`` of them near the end of a budget: no lease
    draw       each settlement that names the lease takes the request's own hold out of it (never
               more than is left) and is charged at most that, in the lease's windows
    give back  the gateway admits no more on it (idle, spent, expired, or a /v1/usage read): the
               unused part goes back, rate allowance included while its window is open; the rest
               goes as the settlements of the requests that drew on it arrive
    reap       a lease with no sign of life (grant, draw, renewal) for the lease TTL: its gateway died

The request-rate allowance is counted in the user's window when the lease is granted (the window
is the limit, not the admissions), so a lease never outlives the window, nor any credit window it
was reserved in: ``seconds`` stops the gateway from admitting on it past the first reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.metering import windows as w
from services.metering.record import Bounds, Hold, Record
from shared.contract import LeaseDraw, LeaseGrant, LeaseReturn, Settlement

# a slice that would hold fewer requests than this is not worth a lease: near the end of a budget
# every request is reserved on its own, so no credit is parked where another gateway cannot use it
MIN_REQUESTS = 4


@dataclass(frozen=True, slots=True)
class LeaseTerms:
    """Metering's bounds on every lease."""

    fraction: float = 0.25  # of what each pool has left: two gateways of one user both get one
    seconds: int = 30  # longest a gateway may admit on one lease

    @property
    def enabled(self) -> bool:
        return self.fraction > 0 and self.seconds > 0


def _stale_sums(rec: Record) -> None:
    # admission's running sums (budget._reserved) no longer match the holds: recount next time
    rec.__dict__.pop("_reserved", None)


def grant(
    rec: Record,
    unit: Hold,
    want: int,
    lease_id: str,
    room: dict[str, tuple[int | None, int]],
    rate: tuple[int | None, int, int],
    resets: list[int],
    now: int,
    terms: LeaseTerms,
) -> LeaseGrant | None:
    """Reserve up to ``want`` requests like ``unit`` for a gateway, bounded by ``terms``.

    ``room`` maps a pool to (limit, used and held) in the unit's measure ("credits", "input",
    "output"); ``rate`` is (limit, counted, seconds to the window's reset); ``resets`` the unix
    seconds when the credit windows reset."""
    if not terms.enabled or want < 1 or not lease_id or lease_id in rec.holds:
        return None
    if rec.settled_cost(lease_id) is not None:
        return None  # given back before it was granted (see ``give_back``)
    per = {"credits": unit.credits, "input": unit.input_tokens, "output": unit.output_tokens}
    k = want
    for pool, (limit, taken) in room.items():
        if limit is not None and per[pool] > 0:
            k = min(k, int(max(0, limit - taken) * terms.fraction) // per[pool])
    rate_limit, counted, rate_reset = rate
    if rate_limit is not None:
        k = min(k, int(max(0, rate_limit - counted) * terms.fraction))
    life = min([terms.seconds, *(r - now for r in resets)] + ([rate_reset] if rate_limit is not None else []))
    if k < MIN_REQUESTS or life < 1:
        return None
    requests = k if rate_limit is not None else 0
    rec.rate_count += requests
    rec.holds[lease_id] = Hold(
        k * unit.credits,
        k * unit.input_tokens,
        k * unit.output_tokens,
        "",
        "",
        now,
        lease=True,
        requests=requests,
        rate_start=rec.rate_start,
    )
    _stale_sums(rec)
    return LeaseGrant(
        lease_id, k * unit.credits, k * unit.input_tokens, k * unit.output_tokens, requests, int(life)
    )


def give_back(rec: Record, ret: LeaseReturn, now: int = 0, memory: Bounds | None = None) -> bool:
    """Return a lease's unused part; whether the record changed. Once per lease: a repeated or
    unknown return (the reaper took it, or it was never granted) changes nothing.

    Except one: a gateway whose reserve asking for a lease timed out gives the whole lease back at
    once, and that return may overtake the reserve still on its way. Given ``memory``, such a return
    of a lease not (yet) in the record is remembered among the settled ids, as a release that
    overtook its reserve is, and the late grant is refused: the lease is never parked unused until
    the reaper."""
    h = rec.holds.get(ret.lease_id)
    if h is None and ret.whole and memory is not None and ret.lease_id:
        if rec.settled_cost(ret.lease_id) is not None:
            return False
        rec.remember_settled(ret.lease_id, 0, now, now, memory)
        return True
    if h is None or not h.lease or h.returned:
        return False
    if ret.whole:
        credits, tokens_in, tokens_out, requests = h.credits, h.input_tokens, h.output_tokens, h.requests
    else:
        credits, tokens_in, tokens_out, requests = (
            ret.credits,
            ret.input_tokens,
            ret.output_tokens,
            ret.requests,
        )
    h.credits -= min(max(credits, 0), h.credits)
    h.input_tokens -= min(max(tokens_in, 0), h.input_tokens)
    h.output_tokens -= min(max(tokens_out, 0), h.output_tokens)
    if h.requests and h.rate_start == rec.rate_start:
        rec.rate_count -= min(max(requests, 0), h.requests, rec.rate_count)
    h.returned = True
    _drop_if_spent(rec, ret.lease_id, h)
    _stale_sums(rec)
    return True


def draw(rec: Record, s: Settlement, now: int) -> tuple[Hold, bool]:
    """The hold a settlement of a leased request replaces, taken out of its lease: (that hold,
    whether the lease was there). Without the lease (reaped) the hold the gateway says it drew still
    caps the charge, in the windows of the settlement's time."""
    held = s.held or LeaseDraw(0, 0, 0)
    lease = rec.holds.get(s.lease)
    if lease is None or not lease.lease:
        return Hold(
            max(held.credits, 0),
            max(held.input_tokens, 0),
            max(held.output_tokens, 0),
            s.model,
            s.bot,
            w.now_s(s.at or now),
        ), False
    take = min(max(held.credits, 0), lease.credits)
    tokens_in = min(max(held.input_tokens, 0), lease.input_tokens)
    tokens_out = min(max(held.output_tokens, 0), lease.output_tokens)
    lease.credits -= take
    lease.input_tokens -= tokens_in
    lease.output_tokens -= tokens_out
    lease.seen = max(lease.seen, now)
    _drop_if_spent(rec, s.lease, lease)
    _stale_sums(rec)
    return Hold(take, tokens_in, tokens_out, s.model, s.bot, lease.at), True


def _drop_if_spent(rec: Record, lease_id: str, h: Hold) -> None:
    if h.returned and h.credits <= 0 and h.input_tokens <= 0 and h.output_tokens <= 0:
        del rec.holds[lease_id]
