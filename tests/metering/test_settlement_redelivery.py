"""Settlement redelivery against a real nats-server with JetStream: a settlement applied but never
acknowledged (metering died between its KV write and its ack) comes back, and is not charged again
however many of the user's other settlements came in between; one that cannot be applied stops
after ``settle_max_deliver`` deliveries and waits in the dead-letter stream."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from services.metering.record import user_key
from services.metering.service import MeteringService
from shared import contract, subjects
from shared.bus import Bus, Msg
from tests.metering.conftest import (
    dead_letters,
    ledger,
    ledger_count,
    newer_record,
    record,
    reserve,
    settle,
    stream_empty,
    wait_for,
)

Start = Callable[..., Awaitable[MeteringService]]
OTHERS = 300  # more than the 256 ids a record used to keep


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_redelivery_after_300_other_settlements_of_the_user_is_not_charged_twice(
    bus: Bus, start_metering: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = {"first"}  # request ids whose acks are lost
    deliveries: list[int] = []
    real_ack = Msg.ack

    async def ack(self: Msg) -> None:
        if (
            self.subject == subjects.SETTLE
            and contract.settlement_decoder.decode(self.data).request_id == "first"
        ):
            deliveries.append(self.metadata.num_delivered)
            if "first" in held:
                return  # applied to the record, but the ack never reaches JetStream
        await real_ack(self)

    monkeypatch.setattr(Msg, "ack", ack)
    await start_metering(settle_ack_wait_seconds=1.0)
    assert (await reserve(bus, "busy", "first", plan="pro")).admitted
    await settle(bus, "busy", "first", plan="pro", completion=100)
    await wait_for(lambda: _has(deliveries, 1), what="the first delivery applied")
    for i in range(OTHERS):
        assert (await reserve(bus, "busy", f"other{i}", plan="pro")).admitted
        await settle(bus, "busy", f"other{i}", plan="pro", completion=10)

    async def others_settled() -> bool:
        return not (await record(bus, "busy")).holds and await ledger_count(bus) == OTHERS + 1

    await wait_for(others_settled, what="the other settlements applied")
    seen = len(deliveries)
    held.clear()  # the next redelivery is acknowledged

    async def acked() -> bool:
        return len(deliveries) > seen and await stream_empty(bus)

    await wait_for(acked, what="the redelivery after the others, acknowledged")
    assert deliveries[-1] >= 2
    rec = await record(bus, "busy")
    # gpt-5-nano: 0.05 credits an input token, 0.40 an output token
    assert rec.week_used == (50 + 40) + OTHERS * (50 + 4)
    assert sorted(e.request_id for e in await ledger(bus)).count("first") == 1


async def _has(items: list[int], n: int) -> bool:
    return len(items) >= n


async def test_a_settlement_that_cannot_be_applied_stops_at_max_deliver_and_is_dead_lettered(
    bus: Bus, start_metering: Start
) -> None:
    newer = await newer_record(bus, "stuck")
    kv = await bus.kv(subjects.BUDGET_BUCKET)
    before = _metric("janus_settlements_dead_lettered_total", reason="max_deliveries")
    await start_metering(settle_ack_wait_seconds=0.5, settle_max_deliver=3)
    await settle(bus, "stuck", "r1", plan="pro")

    await wait_for(lambda: stream_empty(bus), what="the settlement given up")
    letters = await dead_letters(bus)
    assert [(d.reason, d.request_id, d.user, d.deliveries) for d in letters] == [
        ("max_deliveries", "r1", "stuck", 3)
    ]
    assert "newer metering" in letters[0].error
    assert contract.settlement_decoder.decode(letters[0].data).request_id == "r1"
    assert _metric("janus_settlements_dead_lettered_total", reason="max_deliveries") == before + 1
    assert (await kv.get(user_key("stuck"))).value == newer  # nothing was half-applied


async def test_an_undecodable_settlement_is_dead_lettered_not_lost(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    await bus.js_publish(subjects.SETTLE, b"\xc1 not msgpack", msg_id="garbage")
    await wait_for(lambda: stream_empty(bus), what="the message removed")
    letters = await dead_letters(bus)
    assert [(d.reason, d.data) for d in letters] == [("undecodable", b"\xc1 not msgpack")]
