"""A gateway's bundle of settlements against a real nats-server with JetStream: each settlement in
it is charged exactly once, also when the bundle is delivered again or another bundle repeats it;
its ledger entries are one ledger message, stored once, and written whole even when a settlement
of it must come again; one settlement that cannot be applied goes to the dead letters alone while
the rest are charged; a bundle longer than metering takes is kept whole in the dead letters, never
applied in part."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from services.metering.record import user_key
from services.metering.service import MeteringService
from shared import contract, subjects
from shared.bus import Bus, Msg
from shared.contract import Settlement, SettlementBundle, Usage
from shared.errors import ServiceUnavailable
from tests.metering.conftest import (
    MODEL,
    dead_letters,
    ledger,
    ledger_count,
    newer_record,
    record,
    reserve,
    stream_empty,
    wait_for,
)

Start = Callable[..., Awaitable[MeteringService]]


def _settlement(user: str, rid: str, completion: int = 1000) -> Settlement:
    return Settlement(rid, user, "pro", MODEL, Usage(1000, completion), at=time.time())


async def _publish(bus: Bus, settlements: list[Settlement], bundle_id: str) -> None:
    bundle = SettlementBundle(bundle_id, settlements)
    await bus.js_publish(subjects.SETTLE, contract.encode(bundle), msg_id=bundle_id)


async def test_a_bundle_redelivered_and_repeated_charges_each_settlement_once(
    bus: Bus, start_metering: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliveries: list[int] = []
    real_ack = Msg.ack

    async def ack(self: Msg) -> None:
        if self.subject == subjects.SETTLE:
            deliveries.append(self.metadata.num_delivered)
            if self.metadata.num_delivered == 1:
                return  # applied, but the ack is lost: JetStream delivers the bundle again
        await real_ack(self)

    monkeypatch.setattr(Msg, "ack", ack)
    await start_metering(settle_ack_wait_seconds=1.0)
    users = {"ann": ["a1", "a2", "a3"], "bob": ["b1"]}
    for user, rids in users.items():
        for rid in rids:
            assert (await reserve(bus, user, rid, plan="pro")).admitted
    first = [_settlement(u, rid) for u, rids in users.items() for rid in rids]
    await _publish(bus, first, "bundle-1")
    # a second bundle repeating a2 beside a new settlement: a gateway's retry can never do this,
    # but nothing it carries may be charged twice either way
    assert (await reserve(bus, "ann", "a4", plan="pro")).admitted
    await _publish(bus, [_settlement("ann", "a2"), _settlement("ann", "a4", completion=10)], "bundle-2")

    await wait_for(lambda: stream_empty(bus), what="both bundles acknowledged")
    assert max(deliveries) >= 2, "the first delivery's ack was dropped, so a redelivery must have come"
    ann, bob = await record(bus, "ann"), await record(bus, "bob")
    # gpt-5-nano: 0.05 credits an input token, 0.40 an output token
    assert ann.week_used == 3 * (50 + 400) + (50 + 4)
    assert bob.week_used == 50 + 400
    assert not ann.holds and not bob.holds
    ids = sorted(e.request_id for e in await ledger(bus))
    assert ids == ["a1", "a2", "a3", "a4", "b1"]
    # one ledger message per bundle, each stored once however often its bundle came
    assert await ledger_count(bus) == 2
    assert await dead_letters(bus) == []


async def test_a_bundle_with_a_settlement_to_come_again_reaches_the_ledger_whole_once(
    bus: Bus, start_metering: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = await start_metering(settle_ack_wait_seconds=0.5)
    real = svc._submit_settlement
    failed: list[str] = []

    def flaky(s: Settlement, delivery: object) -> object:
        if s.request_id == "k2" and not failed:
            failed.append(s.request_id)  # its budget write fails once (an election, say)
            raise ServiceUnavailable("budget bucket unavailable")
        return real(s, delivery)  # type: ignore[arg-type]

    monkeypatch.setattr(svc, "_submit_settlement", flaky)
    for rid in ("k1", "k2", "k3"):
        assert (await reserve(bus, "kim", rid, plan="pro")).admitted
    await _publish(bus, [_settlement("kim", rid) for rid in ("k1", "k2", "k3")], "bundle-again")

    await wait_for(lambda: stream_empty(bus), what="the bundle applied on its second delivery")
    assert failed == ["k2"]
    rec = await record(bus, "kim")
    assert rec.week_used == 3 * (50 + 400) and not rec.holds
    # nothing of it went to the ledger on the first delivery: on the second, all three together
    assert await ledger_count(bus) == 1
    assert sorted(e.request_id for e in await ledger(bus)) == ["k1", "k2", "k3"]
    assert [e.credits for e in await ledger(bus)] == [450, 450, 450]


async def test_without_ledger_bundles_each_settlement_of_a_bundle_has_its_own_ledger_message(
    bus: Bus, start_metering: Start
) -> None:
    # the form metering of an earlier release reads, for a rollout from it or a rollback to it
    await start_metering(ledger_bundles=False)
    for rid in ("p1", "p2", "p3"):
        assert (await reserve(bus, "pat", rid, plan="pro")).admitted
    await _publish(bus, [_settlement("pat", rid) for rid in ("p1", "p2", "p3")], "bundle-plain")
    await wait_for(lambda: stream_empty(bus), what="the bundle applied")
    assert await ledger_count(bus) == 3
    sub = await bus.js.pull_subscribe(subjects.LEDGER, stream=subjects.LEDGER_STREAM)
    msgs = await Bus.fetch(sub, 10, 2.0)
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == ["p1", "p2", "p3"]  # type: ignore[index]
    assert all(isinstance(contract.ledger_message_decoder.decode(m.data), contract.LedgerEntry) for m in msgs)


async def test_one_settlement_of_a_bundle_that_cannot_be_applied_is_dead_lettered_alone(
    bus: Bus, start_metering: Start
) -> None:
    newer = await newer_record(bus, "stuck")
    kv = await bus.kv(subjects.BUDGET_BUCKET)
    await start_metering(settle_ack_wait_seconds=0.5, settle_max_deliver=3)
    assert (await reserve(bus, "fine", "f1", plan="pro")).admitted
    await _publish(bus, [_settlement("fine", "f1"), _settlement("stuck", "s1")], "bundle-mixed")

    await wait_for(lambda: stream_empty(bus), what="the bundle given up on after its last delivery")
    letters = await dead_letters(bus)
    assert [(d.reason, d.request_id, d.user, d.deliveries) for d in letters] == [
        ("max_deliveries", "s1", "stuck", 3)
    ]
    # kept alone, in the form a gateway publishes a lone settlement: an operator can apply it by hand
    kept = contract.settlement_decoder.decode(letters[0].data)
    assert (kept.request_id, kept.user, kept.usage) == ("s1", "stuck", Usage(1000, 1000))
    fine = await record(bus, "fine")
    assert fine.week_used == 50 + 400 and not fine.holds
    assert [e.request_id for e in await ledger(bus)] == ["f1"]
    assert (await kv.get(user_key("stuck"))).value == newer


async def test_a_bundle_over_the_bound_is_dead_lettered_whole_and_nothing_of_it_applied(
    bus: Bus, start_metering: Start
) -> None:
    await start_metering()
    assert (await reserve(bus, "many", "m0", plan="pro")).admitted
    many = [_settlement("many", f"m{i}", completion=1) for i in range(contract.MAX_BUNDLE + 1)]
    await _publish(bus, many, "bundle-huge")
    await wait_for(lambda: stream_empty(bus), what="the bundle removed")
    [letter] = await dead_letters(bus)
    assert letter.reason == "undecodable" and str(contract.MAX_BUNDLE) in letter.error
    assert contract.settlement_message_decoder.decode(letter.data) == SettlementBundle("bundle-huge", many)
    rec = await record(bus, "many")
    assert rec.week_used == 0 and len(rec.holds) == 1, "no settlement of it was applied"
    assert await ledger(bus) == []


async def test_a_forged_bundle_cannot_double_an_entry_or_hide_one_behind_a_reused_id(
    bus: Bus, start_metering: Start
) -> None:
    await start_metering()
    for rid in ("z1", "z2", "z3"):
        assert (await reserve(bus, "zed", rid, plan="pro")).admitted
    # one bundle naming a settlement twice, and a second bundle (another message) reusing its id
    twice = SettlementBundle("same-id", [_settlement("zed", "z1"), _settlement("zed", "z1")])
    await bus.js_publish(subjects.SETTLE, contract.encode(twice), msg_id="message-1")
    other = SettlementBundle("same-id", [_settlement("zed", "z2"), _settlement("zed", "z3")])
    await bus.js_publish(subjects.SETTLE, contract.encode(other), msg_id="message-2")

    await wait_for(lambda: stream_empty(bus), what="both bundles applied")
    rec = await record(bus, "zed")
    assert rec.week_used == 3 * (50 + 400) and not rec.holds
    # z1 once, and the reused id did not make the second bundle's entries look like duplicates
    assert sorted(e.request_id for e in await ledger(bus)) == ["z1", "z2", "z3"]
    assert await ledger_count(bus) == 2
