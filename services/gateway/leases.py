"""Credit leases on the gateway's side: admit a user's requests locally, within a slice metering
reserved for this gateway, so a typical request does not wait on metering.

    request ──> admit(): the lease of (user, plan) holds this request's worst case in every pool
                 │ yes: taken out locally; the settlement names the lease and what it drew
                 │ no:  one reserve per user at a time asks metering for this request's hold and a
                 │      new lease (the old one's rest goes back in the same write); the requests
                 │      that arrive meanwhile wait for it and try the new lease
    sweep  ───> a lease idle for ``idle_seconds`` or past its life goes back to metering

What a lease is and why the budget stays exact: ``services/metering/leases.py``. The slice's size is
the user's recent rate (requests seen in the last few seconds, decayed), at least ``MIN_ASK``, at
most ``max_requests`` requests like the one that asked; metering cuts it to a fraction of what each
pool has left, and grants none near the end of a budget.

Credit headers from a lease are what metering answered at its grant (after every hold and lease),
plus the lease's unused part: they show this gateway's own admissions at once, and other gateways'
admissions and settled refunds only at the next answer from metering, at most a lease's life
(30 s) later. They never show more than metering would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping
from itertools import count

from shared import contract, subjects
from shared.bus import Bus
from shared.contract import (
    LeaseDraw,
    LeaseGrant,
    LeaseReturn,
    PoolState,
    RequestRate,
    ReserveReply,
    ReserveRequest,
    Usage,
)
from shared.errors import JanusError
from shared.logging import get_logger
from shared.money import PriceUnits, cost_credits

log = get_logger("gateway.leases")

MIN_ASK = 4
DECAY_SECONDS = 5.0  # the recent rate is the requests seen over about this long
MAX_USERS = 100_000

Key = tuple[str, str]  # (user, plan)


class Lease:
    __slots__ = (
        "credits",
        "expires",
        "granted",
        "id",
        "input_tokens",
        "last_used",
        "output_tokens",
        "pools",
        "rate",
        "requests",
    )

    def __init__(
        self, grant: LeaseGrant, pools: list[PoolState], rate: RequestRate | None, now: float
    ) -> None:
        self.id = grant.lease_id
        self.credits = grant.credits
        self.input_tokens = grant.input_tokens
        self.output_tokens = grant.output_tokens
        self.requests = grant.requests if rate is not None else -1  # -1: the plan counts no rate
        self.expires = now + grant.seconds
        self.granted = self.last_used = now
        self.pools = pools
        self.rate = rate

    def unused(self, user: str) -> LeaseReturn:
        return LeaseReturn(
            user, self.id, self.credits, self.input_tokens, self.output_tokens, max(self.requests, 0)
        )

    def pools_now(self) -> list[PoolState]:
        return [PoolState(p.name, p.limit, p.remaining + self.credits, p.reset) for p in self.pools]

    def rate_now(self, now: float) -> RequestRate | None:
        r = self.rate
        if r is None:
            return None
        return RequestRate(
            r.limit, r.remaining + self.requests, max(0, math.ceil(r.reset - (now - self.granted)))
        )


class _User:
    __slots__ = ("flight", "lease", "recent", "seen")

    def __init__(self, now: float) -> None:
        self.lease: Lease | None = None
        self.flight: asyncio.Future[bool] | None = None  # resolves to: a lease was granted
        self.recent = 0.0  # requests seen, decayed over DECAY_SECONDS
        self.seen = now


class LeaseBook:
    def __init__(
        self,
        bus: Bus,
        prices: Mapping[str, PriceUnits],
        *,
        max_requests: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = MAX_USERS,
    ) -> None:
        self.bus = bus
        self.prices = prices
        self.max_requests = max_requests
        self.idle_seconds = idle_seconds
        self.clock = clock
        self.max_users = max_users
        self._users: dict[Key, _User] = {}
        self._leased: set[Key] = set()  # the keys with a lease: what the sweep looks at
        self._prefix = "lse_" + os.urandom(6).hex() + "_"
        self._ids = count(1)
        self._sweeper: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------- admission
    def arrive(self, key: Key) -> _User:
        now = self.clock()
        u = self._users.get(key)
        if u is None:
            if len(self._users) >= self.max_users:
                self._evict()
            u = self._users[key] = _User(now)
        u.recent = u.recent * math.exp(-(now - u.seen) / DECAY_SECONDS) + 1.0
        u.seen = now
        return u

    def admit(self, key: Key, req: ReserveRequest) -> tuple[ReserveReply, LeaseDraw, str] | None:
        """Take ``req``'s worst case out of the user's lease: (the reply metering would have made,
        what was drawn, the lease id), or None when the lease cannot hold it."""
        u = self._users.get(key)
        lease = u.lease if u is not None else None
        if lease is None:
            return None
        now = self.clock()
        if now >= lease.expires:
            self.retire(key, send=True)
            return None
        price = self.prices.get(req.model)
        if price is None:
            return None
        tokens_in, tokens_out = max(req.input_tokens, 0), max(req.max_output_tokens, 0)
        need = cost_credits(Usage(prompt_tokens=tokens_in, completion_tokens=tokens_out), price)
        if (
            need > lease.credits
            or tokens_in > lease.input_tokens
            or tokens_out > lease.output_tokens
            or lease.requests == 0
        ):
            return None
        lease.credits -= need
        lease.input_tokens -= tokens_in
        lease.output_tokens -= tokens_out
        if lease.requests > 0:
            lease.requests -= 1
        lease.last_used = now
        reply = ReserveReply(
            True, lease.pools_now(), hold=need, requests=lease.rate_now(now), max_output_tokens=tokens_out
        )
        return reply, LeaseDraw(need, tokens_in, tokens_out), lease.id

    def ask(self, key: Key) -> tuple[int, str]:
        """How many requests the next lease of ``key`` should hold, and its id."""
        u = self._users.get(key)
        recent = u.recent if u is not None else 1.0
        want = max(MIN_ASK, math.ceil(2 * recent))
        return min(self.max_requests, want), f"{self._prefix}{next(self._ids)}"

    def install(self, key: Key, grant: LeaseGrant, pools: list[PoolState], rate: RequestRate | None) -> Lease:
        u = self._users.get(key)
        if u is None:
            u = self._users[key] = _User(self.clock())
        if u.lease is not None:
            self.retire(key, send=True)  # not expected (the flight gave it back), but never lose one
        lease = u.lease = Lease(grant, pools, rate, self.clock())
        self._leased.add(key)
        return lease

    def retire(self, key: Key, *, send: bool = False) -> LeaseReturn | None:
        """Stop admitting on the lease of ``key``: what it still holds, to give back (sent now with
        ``send``, else by the caller in its own message)."""
        u = self._users.get(key)
        if u is None or u.lease is None:
            return None
        ret = u.lease.unused(key[0])
        u.lease = None
        self._leased.discard(key)
        if send:
            self.send(ret)
        return ret

    # ------------------------------------------------------------------------------ single flight
    def flight(self, key: Key) -> asyncio.Future[bool] | None:
        u = self._users.get(key)
        return u.flight if u is not None else None

    def take_off(self, key: Key) -> asyncio.Future[bool]:
        u = self._users.get(key) or self.arrive(key)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        u.flight = fut
        return fut

    def land(self, key: Key, fut: asyncio.Future[bool], granted: bool) -> None:
        u = self._users.get(key)
        if u is not None and u.flight is fut:
            u.flight = None
        if not fut.done():
            fut.set_result(granted)

    # ------------------------------------------------------------------------------ giving back
    def send(self, ret: LeaseReturn) -> None:
        """Give a lease back, in the background: a lost return is freed by metering's reaper."""
        task = asyncio.get_running_loop().create_task(self._send(ret))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, ret: LeaseReturn) -> None:
        try:
            await self.bus.publish(subjects.METER_RENEW, contract.encode(ret))
        except JanusError as exc:
            log.warning("lease_return_failed", error=exc.message)

    def sweep(self) -> int:
        """Give back every lease idle for ``idle_seconds`` or past its life; returns how many."""
        now = self.clock()
        done = [
            k
            for k in self._leased
            if (lease := self._users[k].lease) is not None
            and (now - lease.last_used >= self.idle_seconds or now >= lease.expires)
        ]
        for key in done:
            self.retire(key, send=True)
        return len(done)

    def _evict(self) -> None:
        # the oldest quiet users go first; one with a lease gives it back
        for key in list(self._users)[: max(1, self.max_users // 10)]:
            if self._users[key].flight is None:
                self.retire(key, send=True)
                del self._users[key]

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.idle_seconds / 2)
            self.sweep()

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def close(self) -> None:
        """Give back every lease (shutdown): a stopped gateway parks no credits."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for key in list(self._leased):
            self.retire(key, send=True)
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=2.0)
