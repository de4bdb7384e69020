"""The gateway's credit leases against a real nats-server, with metering's subjects answered by the
test: requests a lease holds are admitted without a reserve, the next reserve gives the spent
lease back in the same message, an idle lease goes back on its own, a reserve that asked for a
lease and timed out gives the lease back whole, and a crowd of one user sends one reserve."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.gateway.leases import LeaseBook
from services.gateway.meter import Meter
from shared import contract, subjects
from shared.bus import Bus, Msg
from shared.contract import LeaseGrant, LeaseReturn, PoolState, ReserveReply, ReserveRequest
from shared.errors import ServiceUnavailable
from shared.money import PriceUnits
from shared.streams import ensure_settlement_stream
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(60)

PRICES = {"m": PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)}  # 1 credit a token
POOLS = [PoolState("session", 10_000, 5_000, 2e9), PoolState("weekly", 50_000, 45_000, 2e9)]


def request(n: int) -> ReserveRequest:
    return ReserveRequest(f"req_{n}", "u", "p", "m", input_tokens=40, max_output_tokens=60)


class Metering:
    """Answers reserves (granting a lease of ``grant`` requests when asked) and records upkeep."""

    def __init__(self, bus: Bus, grant: int = 3, answer: bool = True) -> None:
        self.bus, self.grant, self.answer = bus, grant, answer
        self.reserves: list[ReserveRequest] = []
        self.returns: list[LeaseReturn] = []

    async def start(self) -> None:
        await self.bus.serve(subjects.METER_RESERVE, self._reserve)
        await self.bus.serve(subjects.METER_RENEW, self._upkeep)
        await self.bus.flush()

    async def _reserve(self, msg: Msg) -> None:
        req = contract.reserve_request_decoder.decode(msg.data)
        self.reserves.append(req)
        if not self.answer:
            return
        lease = None
        if req.lease_requests and self.grant:
            n = min(self.grant, req.lease_requests)
            lease = LeaseGrant(req.lease_id, 100 * n, 40 * n, 60 * n, 0, 30)
        await msg.respond(contract.encode(ReserveReply(True, POOLS, hold=100, lease=lease)))

    async def _upkeep(self, msg: Msg) -> None:
        upkeep = contract.upkeep_decoder.decode(msg.data)
        if isinstance(upkeep, LeaseReturn):
            self.returns.append(upkeep)


def meter(bus: Bus, clock: list[float] | None = None, timeout: float = 2.0) -> Meter:
    now = clock if clock is not None else [0.0]
    book = LeaseBook(bus, PRICES, max_requests=64, idle_seconds=2.0, clock=lambda: now[0])
    return Meter(bus, timeout, leases=book)


async def test_a_lease_admits_without_metering_and_goes_back_with_the_next_reserve(bus: Bus) -> None:
    m = Metering(bus)
    await m.start()
    gw = meter(bus)
    headers: list[dict[str, str]] = [{} for _ in range(5)]
    first, lease_id, drawn = await gw.admit(request(0), headers[0])
    assert first.lease is not None and lease_id == "" and drawn is None  # its own hold, with metering
    for n in range(1, 4):
        reply, lease_id, drawn = await gw.admit(request(n), headers[n])
        assert lease_id == first.lease.lease_id and drawn == contract.LeaseDraw(100, 40, 60)
        assert reply.admitted and reply.hold == 100
    assert len(m.reserves) == 1
    remaining = [int(h["X-RateLimit-Session-Remaining-Credits"]) for h in headers[:4]]
    # metering's answer after the whole lease, plus what the lease still had: 5,000 + 300, then less
    assert remaining == [5_300, 5_200, 5_100, 5_000]
    await gw.admit(request(4), headers[4])  # the lease is spent: a reserve, which gives it back
    assert len(m.reserves) == 2
    back = m.reserves[1].lease_return
    assert back is not None and back.lease_id == first.lease.lease_id and back.credits == 0


async def test_an_idle_lease_goes_back_on_its_own(bus: Bus) -> None:
    m = Metering(bus)
    await m.start()
    clock = [0.0]
    gw = meter(bus, clock)
    assert gw.leases is not None
    await gw.admit(request(0), {})
    await gw.admit(request(1), {})
    assert gw.leases.sweep() == 0
    clock[0] = 2.5
    assert gw.leases.sweep() == 1
    await eventually(lambda: bool(m.returns), 5, "the lease given back")
    [back] = m.returns
    assert (back.credits, back.input_tokens, back.output_tokens) == (200, 80, 120) and not back.whole


async def test_a_reserve_that_asked_for_a_lease_and_timed_out_gives_it_back_whole(bus: Bus) -> None:
    await ensure_settlement_stream(bus)
    m = Metering(bus, answer=False)
    await m.start()
    gw = meter(bus, timeout=0.3)
    with pytest.raises(ServiceUnavailable):
        await gw.admit(request(0), {})
    await eventually(lambda: bool(m.returns), 5, "the lease it may have been granted given back")
    [back] = m.returns
    assert back.whole and back.lease_id == m.reserves[0].lease_id


async def test_a_reserve_cancelled_in_flight_releases_its_hold_and_gives_the_lease_back_whole(
    bus: Bus,
) -> None:
    """The caller went away while metering was still answering: the hold and the lease it may have
    been granted are given back, as for a timeout, instead of waiting minutes for the reapers."""
    await ensure_settlement_stream(bus)
    m = Metering(bus, answer=False)
    await m.start()
    gw = meter(bus, timeout=30)
    task = asyncio.ensure_future(gw.admit(request(0), {}))
    await eventually(lambda: bool(m.reserves), 5, "the reserve reached metering")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: bool(m.returns), 5, "the lease it may have been granted given back")
    [back] = m.returns
    assert back.whole and back.lease_id == m.reserves[0].lease_id

    async def hold_released() -> bool:
        # release() settles the request as failed with nothing produced, through the stream
        info = await bus.js.stream_info(subjects.SETTLE_STREAM)
        return int(info.state.messages) == 1

    check: Callable[[], Awaitable[bool]] = hold_released
    await eventually(check, 5, "the request's hold released through the settlement stream")


async def test_a_crowd_of_one_user_sends_one_reserve_at_a_time(bus: Bus) -> None:
    m = Metering(bus, grant=64)
    await m.start()
    gw = meter(bus)
    got = await asyncio.gather(*(gw.admit(request(n), {}) for n in range(60)))
    assert all(reply.admitted for reply, _, _ in got)
    assert len(m.reserves) <= 3 and sum(1 for _, lease, _ in got if lease) >= 57
