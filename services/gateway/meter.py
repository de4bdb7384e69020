"""The gateway's side of metering: reserve before the call, settle after it, the credit headers.

Settlements go to JetStream de-duplicated by request id, in background tasks tracked in a set so
``stop()`` can wait for them; a settlement the stream did not acknowledge is retried a few times,
because a lost one leaves the caller's credits held until metering's reaper releases them.
"""

from __future__ import annotations

import asyncio
import math
import time

from shared import contract, subjects
from shared.bus import Bus
from shared.contract import PoolState, ReserveReply, ReserveRequest, Settlement, Usage
from shared.errors import BudgetExceeded, JanusError
from shared.logging import get_logger

log = get_logger("gateway.meter")

_SETTLE_ATTEMPTS = 5


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(ts)))


def credit_headers(pools: list[PoolState]) -> dict[str, str]:
    """The six ``X-RateLimit-*`` headers from metering's view of the caller's pools."""
    out: dict[str, str] = {}
    for p in pools:
        if p.name == "session":
            prefix = "X-RateLimit-Session-"
        elif p.name == "weekly":
            prefix = "X-RateLimit-Weekly-"
        else:
            continue
        out[prefix + "Limit-Credits"] = str(p.limit)
        out[prefix + "Remaining-Credits"] = str(max(p.remaining, 0))
        out[prefix + "Reset"] = _iso(p.reset)
    return out


class Meter:
    def __init__(self, bus: Bus, reserve_timeout: float) -> None:
        self.bus = bus
        self.reserve_timeout = reserve_timeout
        self.tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, req: ReserveRequest, headers: dict[str, str]) -> ReserveReply:
        """Hold the worst-case cost. Adds the credit headers to ``headers`` as soon as metering has
        answered, so a refusal (429) carries them too."""
        try:
            data = await self.bus.request(subjects.METER_RESERVE, contract.encode(req), self.reserve_timeout)
        except JanusError as exc:
            if exc.code == "bus_timeout":
                # metering may have taken the hold and lost only the reply: release it
                self.settle(Settlement(req.request_id, req.user, req.plan, req.model, Usage(),
                                       bot=req.bot, ok=False, at=time.time()))
            raise
        reply = contract.reserve_reply_decoder.decode(data)
        if isinstance(reply, contract.ErrorReply):
            raise reply.exception()
        headers.update(credit_headers(reply.pools))
        if not reply.admitted:
            pool = reply.denied_pool or "budget"
            raise BudgetExceeded(reply.message or f"Your {pool} credit pool cannot cover this request.",
                                 param=None)
        return reply

    def settle(self, settlement: Settlement) -> None:
        task = asyncio.get_running_loop().create_task(self._publish(settlement))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _publish(self, s: Settlement) -> None:
        data = contract.encode(s)
        delay = 0.1
        for attempt in range(_SETTLE_ATTEMPTS):
            try:
                await self.bus.js_publish(subjects.SETTLE, data, msg_id=s.request_id)
                return
            except JanusError as exc:
                if attempt == _SETTLE_ATTEMPTS - 1:
                    log.error("settlement_lost", request_id=s.request_id, error=exc.message)
                    return
            await asyncio.sleep(delay)
            delay *= 2

    async def drain(self, within: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=within)
