"""The gateway's side of metering: reserve before the call (or admit on a credit lease, see
``leases.py``), settle after it.

Settlements go to JetStream in background tasks tracked in a set so ``drain()`` can wait for them.
Those that finish within ``bundle_seconds`` of each other (at most ``bundle_max``) go as one
message, a ``SettlementBundle`` de-duplicated by its bundle id (``Nats-Msg-Id``); a settlement
alone goes as itself, de-duplicated by its request id. A request's own path never waits for any of
this: a bundle only moves the moment metering replaces the hold by the charge, by up to
``bundle_seconds``, and pays the publish and metering's acknowledgement (two of the five
messages a request cost on the bus) once per bundle instead of once per request.

A message the stream did not acknowledge is retried with capped, jittered exponential backoff until
a deadline (``settle_deadline_seconds``): a JetStream leader election or a NATS reconnect takes
seconds, and a settlement given up leaves the caller's credits held until metering's reaper
releases them, uncharged. Retrying is safe because the stream drops a second copy of the same
message id (its duplicate window is far longer than the deadline), and metering applies a request
id at most once whichever message brings it, so a publish whose acknowledgement was lost never
charges twice.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable

import msgspec

from services.gateway.credits import Credits, request_rate_headers
from services.gateway.leases import LeaseBook
from shared import contract, metrics, subjects
from shared.bus import Bus, map_exception
from shared.contract import (
    HoldRenewal,
    LeaseDraw,
    LeaseReturn,
    ReserveReply,
    ReserveRequest,
    Settlement,
    SettlementBundle,
    Usage,
)
from shared.errors import BudgetExceeded, JanusError, RateLimited
from shared.logging import get_logger

log = get_logger("gateway.meter")

SETTLE_DEADLINE_SECONDS = 60.0
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 2.0
_ACK_TIMEOUT = 5.0  # one publish's wait for the stream's acknowledgement
BUNDLE_MAX = 64
BUNDLE_SECONDS = 0.02

# metering's dashboard shows janus_settlements_total by result; the gateway adds the ones it gave up
_LOST = metrics.SETTLEMENTS.labels("lost")
_LEASED = metrics.LEASE_ADMISSIONS


def output_hold(cap: int, n: int, floor: int) -> tuple[int, int]:
    """(max, min) output tokens to reserve for ``n`` choices of at most ``cap`` tokens each: every
    choice is held, and a budget that cannot hold ``cap`` may grant down to ``floor`` a choice."""
    floor = min(floor, cap)
    return cap * n, (floor * n if 0 < floor < cap else 0)


def granted_cap(reply: ReserveReply, cap: int, n: int) -> int:
    """The cap per choice the hold pays for: ``cap``, or less when metering granted less."""
    if cap and 0 < reply.max_output_tokens < cap * n:
        return reply.max_output_tokens // n
    return cap


def backoff(attempt: int, first: float = _BACKOFF_FIRST, cap: float = _BACKOFF_CAP) -> float:
    """The pause before retry number ``attempt`` (0-based): "full jitter", uniform below an
    exponentially growing ceiling, so gateways that failed together do not retry together."""
    return random.uniform(0.0, min(cap, first * 2.0 ** min(attempt, 30)))


class Meter:
    def __init__(
        self,
        bus: Bus,
        reserve_timeout: float,
        *,
        settle_deadline: float = SETTLE_DEADLINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        leases: LeaseBook | None = None,
        bundle_max: int = BUNDLE_MAX,
        bundle_seconds: float = BUNDLE_SECONDS,
    ) -> None:
        self.bus = bus
        self.leases = leases
        self.clock = clock  # the settle deadline's clock; tests move it instead of waiting
        self.reserve_timeout = reserve_timeout
        self.credits = Credits(bus, reserve_timeout)
        self.settle_deadline = settle_deadline
        self.tasks: set[asyncio.Task[None]] = set()
        self.bundle_max = max(1, min(bundle_max, contract.MAX_BUNDLE))
        self.bundle_seconds = bundle_seconds
        self._pending: list[Settlement] = []
        self._timer: asyncio.TimerHandle | None = None

    async def admit(
        self, req: ReserveRequest, headers: dict[str, str]
    ) -> tuple[ReserveReply, str, LeaseDraw | None]:
        """Hold the worst-case cost: on this gateway's lease of the user when it can, else with
        metering, asking for a new lease at most once at a time per user. Returns the reply, and the
        lease id and draw the settlement must name ("" and None: a hold of its own)."""
        book = self.leases
        if book is None or req.byok:
            return await self.reserve(req, headers), "", None
        key = (req.user, req.plan)
        book.arrive(key)
        # a crowd waits for one reserve at a time and tries each new lease, never longer than a
        # reserve of its own could take; without a lease to be had it reserves on its own
        deadline = self.clock() + self.reserve_timeout
        while True:
            got = book.admit(key, req)
            if got is not None:
                reply, drawn, lease_id = got
                _LEASED.inc()
                self._headers(req, reply, headers)
                return reply, lease_id, drawn
            flight = book.flight(key)
            if flight is None:
                return await self._fly(book, key, req, headers), "", None
            try:
                granted = await asyncio.wait_for(asyncio.shield(flight), max(0.0, deadline - self.clock()))
            except TimeoutError:
                break
            if not granted:
                break  # no lease to be had (the end of a budget): reserve on its own
        return await self.reserve(req, headers), "", None

    async def _fly(
        self, book: LeaseBook, key: tuple[str, str], req: ReserveRequest, headers: dict[str, str]
    ) -> ReserveReply:
        """Reserve ``req`` and ask for a lease; the previous lease's rest goes back in the same write."""
        flight = book.take_off(key)
        ret = book.retire(key)
        want, lease_id = book.ask(key)
        try:
            reply = await self.reserve(
                msgspec.structs.replace(req, lease_requests=want, lease_id=lease_id, lease_return=ret),
                headers,
            )
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) or (isinstance(exc, JanusError) and exc.retryable):
                # the write may have happened: a lease nobody will use, and the return it carried
                # (both applied at most once), given back again. This return may overtake the reserve;
                # metering then remembers it and refuses the late grant.
                book.send(LeaseReturn(req.user, lease_id, whole=True))
                if ret is not None:
                    book.send(ret)
            book.land(key, flight, False)
            raise
        if reply.lease is not None:
            lease = book.install(key, reply.lease, reply.pools, reply.requests)
            # the headers count the lease's unused part as the caller's, as later admissions on it will
            self._headers(
                req,
                msgspec.structs.replace(
                    reply, pools=lease.pools_now(), requests=lease.rate_now(lease.granted)
                ),
                headers,
            )
        book.land(key, flight, reply.lease is not None)
        return reply

    def _headers(self, req: ReserveRequest, reply: ReserveReply, headers: dict[str, str]) -> None:
        view = self.credits.remember(req.user, req.plan, reply.pools)
        if view is not None:
            headers.update(view.headers)
        if reply.requests is not None:
            headers.update(request_rate_headers(reply.requests))

    async def close(self) -> None:
        if self.leases is not None:
            await self.leases.close()

    async def reserve(self, req: ReserveRequest, headers: dict[str, str]) -> ReserveReply:
        """Hold the worst-case cost. Adds the credit headers to ``headers`` as soon as metering has
        answered, so a refusal (429) carries them too."""
        try:
            data = await self.bus.request(subjects.METER_RESERVE, contract.encode(req), self.reserve_timeout)
            reply = contract.reserve_reply_decoder.decode(data)
            if isinstance(reply, contract.ErrorReply):
                raise reply.exception()
        except (JanusError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) or exc.retryable:
                # the hold may have been taken: the request reached metering and only the reply was lost
                # (a timeout, a reconnect, the caller gone), or metering's write had an unknown outcome.
                # Release it; releasing a hold that was never taken costs nothing.
                self.release(req)
            raise
        self._headers(req, reply, headers)
        if not reply.admitted:
            if reply.denied_pool == "requests":
                raise RateLimited(reply.message or "Too many requests.", retry_after=reply.retry_after)
            pool = reply.denied_pool or "budget"
            raise BudgetExceeded(
                reply.message or f"Your {pool} credit pool cannot cover this request.", param=None
            )
        return reply

    async def renew(self, user: str, request_id: str) -> None:
        """Tell metering the hold of ``request_id`` is still in use (lost: the next one follows)."""
        try:
            await self.bus.publish(subjects.METER_RENEW, contract.encode(HoldRenewal(user, request_id)))
        except JanusError as exc:
            log.warning("renew_failed", request_id=request_id, error=exc.message)

    def release(self, req: ReserveRequest) -> None:
        """Settle ``req`` as failed with nothing produced: its hold (if any) goes, nothing is charged."""
        self.settle(
            Settlement(
                req.request_id, req.user, req.plan, req.model, Usage(), bot=req.bot, ok=False, at=time.time()
            )
        )

    def settle(self, settlement: Settlement) -> None:
        """Publish ``settlement`` in the background: with the others that finish within
        ``bundle_seconds`` (at most ``bundle_max``), as one message. Never on the request's path."""
        pending = self._pending
        pending.append(settlement)
        if len(pending) >= self.bundle_max:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.bundle_seconds, self.flush)

    def flush(self) -> None:
        """Publish what is gathered now (drain, and tests, do not wait for the window)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._pending
        if not batch:
            return
        self._pending = []
        if len(batch) == 1:
            # alone: the settlement itself, de-duplicated by its request id (what every release of
            # metering reads, so JANUS_SETTLE_BUNDLE_MAX=1 is the form from before bundles)
            data, msg_id = contract.encode(batch[0]), batch[0].request_id
        else:
            msg_id = f"bundle-{uuid.uuid4().hex}"
            data = contract.encode(SettlementBundle(msg_id, batch))
        task = asyncio.get_running_loop().create_task(self._publish(data, msg_id, batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _publish(self, data: bytes, msg_id: str, batch: list[Settlement]) -> None:
        deadline = self.clock() + self.settle_deadline
        attempt = 0
        error: JanusError | None = None
        try:
            while True:
                left = deadline - self.clock()
                try:
                    await self.bus.js_publish(
                        subjects.SETTLE, data, msg_id=msg_id, timeout=max(0.1, min(_ACK_TIMEOUT, left))
                    )
                    return
                except Exception as exc:  # a JetStream API error (503 during an election) included
                    error = map_exception(exc)
                left = deadline - self.clock()
                if not error.retryable or left <= 0:
                    _lost(batch, error.message, attempt + 1)
                    return
                await asyncio.sleep(min(backoff(attempt), left))
                attempt += 1
        except asyncio.CancelledError:
            _lost(
                batch,
                "the gateway stopped before the settlement was acknowledged"
                + (f" ({error.message})" if error else ""),
                attempt + 1,
            )
            raise

    async def drain(self, within: float) -> None:
        """Publish what is gathered at once, then wait up to ``within`` seconds for the settlements
        still being published; the ones left after that are given up (and counted lost) so that
        shutdown stays bounded."""
        self.flush()
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _lost(batch: list[Settlement], error: str, attempts: int) -> None:
    _LOST.inc(len(batch))
    for s in batch:
        log.error("settlement_lost", request_id=s.request_id, error=error, attempts=attempts)
