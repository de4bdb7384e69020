"""The caller's credit pools as metering last reported them, for the ``X-RateLimit-*`` headers and
budget-aware ``auto``.

Every reservation's reply refreshes a user's entry, so the hot path costs one dictionary look-up.
A user this gateway has not seen yet (a new replica, an entry evicted) is asked of metering once,
with the ``/v1/usage`` query, before the request is parsed: a request refused with a 400, 404 or 413
then carries the headers too. The table is bounded (least recently used entries go first), so a
flood of distinct users costs memory in proportion to the bound, not to the flood.
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from shared import contract, subjects
from shared.bus import Bus
from shared.contract import PoolState, RequestRate, UsageQuery
from shared.errors import JanusError
from shared.logging import get_logger

log = get_logger("gateway.credits")

MAX_USERS = 100_000
QUIET_SECONDS = 1.0


def iso(ts: float) -> str:
    """ISO 8601 UTC, whole seconds rounded up: a stated reset is never early."""
    return _iso_second(math.ceil(ts))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # the resets of every caller's pools are few distinct seconds: formatted once each
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


# each pool's three header names (limit, remaining, reset); a pool of another name has none
_POOL_HEADERS = {
    pool: (
        f"X-RateLimit-{title}-Limit-Credits",
        f"X-RateLimit-{title}-Remaining-Credits",
        f"X-RateLimit-{title}-Reset",
    )
    for pool, title in (("session", "Session"), ("weekly", "Weekly"))
}


def credit_headers(pools: list[PoolState]) -> dict[str, str]:
    """The six ``X-RateLimit-*`` headers from metering's view of the caller's pools."""
    out: dict[str, str] = {}
    for p in pools:
        names = _POOL_HEADERS.get(p.name)
        if names is None:
            continue
        limit, remaining, reset = names
        out[limit] = str(p.limit)
        out[remaining] = str(p.remaining) if p.remaining > 0 else "0"
        out[reset] = iso(p.reset)
    return out


@functools.lru_cache(maxsize=4096)
def _duration(seconds: int) -> str:
    """``6m0s``, ``1h0m5s``, ``1s``: a request window's reset, formatted once per distinct value."""
    m, s = divmod(max(seconds, 0), 60)
    h, m = divmod(m, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


def request_rate_headers(rate: RequestRate) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*-requests`` headers (reset as a duration, like ``6m0s`` or ``1s``)."""
    return {
        "X-RateLimit-Limit-Requests": str(rate.limit),
        "X-RateLimit-Remaining-Requests": str(rate.remaining) if rate.remaining > 0 else "0",
        "X-RateLimit-Reset-Requests": _duration(rate.reset),
    }


class CreditView:
    """What one user's pools looked like at metering's last answer."""

    __slots__ = ("_pools", "headers")

    def __init__(self, pools: list[PoolState]) -> None:
        self.headers = credit_headers(pools)
        self._pools = pools

    @property
    def fraction(self) -> float | None:
        """How close to running out the caller is: the tightest pool's share left. Worked out only
        when asked (an ``auto`` request's routing), not for every view made."""
        fractions = [max(p.remaining, 0) / p.limit for p in self._pools if p.limit > 0]
        return min(fractions) if fractions else None


class Credits:
    def __init__(
        self,
        bus: Bus,
        timeout: float,
        max_users: int = MAX_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.max_users = max_users
        self._clock = clock
        self._views: OrderedDict[tuple[str, str], CreditView] = OrderedDict()
        # after metering failed to answer, unseen callers go without headers for a moment instead
        # of each waiting out a timeout before a reservation that would wait out another
        self._quiet_until = 0.0

    def remember(self, user: str, plan: str, pools: list[PoolState]) -> CreditView | None:
        if not pools:
            return None
        key = (user, plan)
        view = self._views[key] = CreditView(pools)
        self._views.move_to_end(key)
        while len(self._views) > self.max_users:
            self._views.popitem(last=False)
        return view

    async def view(self, user: str, plan: str) -> CreditView | None:
        """The user's last known pools; metering is asked only when there are none."""
        key = (user, plan)
        found = self._views.get(key)
        if found is not None:
            self._views.move_to_end(key)
            return found
        if self._clock() < self._quiet_until:
            return None
        try:
            data = await self.bus.request(
                subjects.METER_USAGE, contract.encode(UsageQuery(user, plan)), self.timeout
            )
            reply = contract.usage_reply_decoder.decode(data)
        except (JanusError, msgspec.DecodeError) as exc:
            # the request goes on: its reservation will fail or report the pools itself
            self._quiet_until = self._clock() + QUIET_SECONDS
            log.info("credits_unknown", error=str(exc))
            return None
        if isinstance(reply, contract.ErrorReply):
            return None
        return self.remember(user, plan, reply.pools)
