"""The gateway's Meter against a real nats-server: a settlement JetStream cannot take yet is retried
until its deadline (not a fixed handful of tries), is stored once however often it was sent, is
counted and logged as lost when the deadline passes, and shutdown's drain stays bounded. A reserve
that fails in a way that may have left a hold releases it."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from services.gateway.meter import Meter, backoff
from services.gateway.service import GatewayService
from services.gateway.settings import GatewaySettings
from shared import contract, subjects
from shared.bus import Bus, Msg
from shared.catalog import ConfigError
from shared.contract import ReserveRequest, Settlement, Usage
from shared.errors import BudgetExceeded, ServiceUnavailable
from shared.settings import load_settings
from shared.streams import ensure_settlement_stream
from tests.eventually import eventually
from tools.localnats import NatsServer

pytestmark = pytest.mark.timeout(60)


def lost() -> float:
    return REGISTRY.get_sample_value("janus_settlements_total", {"result": "lost"}) or 0.0


def settlement(rid: str = "", tokens: int = 7) -> Settlement:
    return Settlement(
        rid or f"req-{uuid.uuid4().hex}",
        "meter-user",
        "free",
        "gpt-5-nano",
        Usage(prompt_tokens=3, completion_tokens=tokens),
        at=1.0,
    )


async def stored(bus: Bus) -> list[Settlement]:
    """Every settlement in the (work-queue) stream, read without acknowledging."""
    info = await bus.js.stream_info(subjects.SETTLE_STREAM)
    out: list[Settlement] = []
    if not info.state.messages:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.js.get_msg(subjects.SETTLE_STREAM, seq)
        out.extend(contract.settlements_of(msg.data or b""))
    return out


async def until_done(meter: Meter, timeout: float) -> None:
    meter.flush()
    if meter.tasks:
        await asyncio.wait_for(asyncio.gather(*meter.tasks), timeout)


def count_publishes(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The message ids of every publish the meter tries, each still sent to the real server."""
    tries: list[str] = []
    real = bus.js_publish

    async def counted(subject: str, data: bytes, *, msg_id: str, timeout: float = 5.0) -> bool:
        tries.append(msg_id)
        return await real(subject, data, msg_id=msg_id, timeout=timeout)

    monkeypatch.setattr(bus, "js_publish", counted)
    return tries


def test_backoff_is_capped_and_jittered() -> None:
    samples = [backoff(a) for a in range(40) for _ in range(20)]
    assert all(0.0 <= d <= 2.0 for d in samples)
    assert len(set(samples)) > 100, "the pause must be random (jitter)"
    assert max(backoff(0) for _ in range(200)) <= 0.05
    assert max(backoff(30) for _ in range(200)) > 1.0, "late retries back off up to the cap"


async def test_a_settlement_outlives_a_missing_stream_and_is_stored_once(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries = count_publishes(bus, monkeypatch)
    meter = Meter(bus, 1.0, settle_deadline=30)
    s = settlement()
    before = lost()
    meter.settle(s)
    # more than the old fixed schedule of five tries: still retrying, not given up
    await eventually(lambda: len(tries) > 6, 20, "a seventh try")
    assert meter.tasks, "the settlement was given up before its deadline"
    await ensure_settlement_stream(bus)
    await until_done(meter, 20)
    # sent again (a retry whose acknowledgement was lost looks exactly like this): stored once
    meter.settle(s)
    await until_done(meter, 20)
    assert [x.request_id for x in await stored(bus)] == [s.request_id]
    assert lost() == before


async def test_a_settlement_survives_a_nats_restart(
    nats_server: NatsServer, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ensure_settlement_stream(bus)
    tries = count_publishes(bus, monkeypatch)
    meter = Meter(bus, 1.0, settle_deadline=40)
    await asyncio.to_thread(nats_server.stop)
    s = settlement()
    meter.settle(s)
    await eventually(lambda: len(tries) > 1, 20, "a retry while the server is down")
    await asyncio.to_thread(nats_server.restart)
    await until_done(meter, 35)
    assert [x.request_id for x in await stored(bus)] == [s.request_id]


async def test_a_settlement_past_its_deadline_is_counted_lost(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries = count_publishes(bus, monkeypatch)
    now = [0.0]
    meter = Meter(bus, 1.0, settle_deadline=30, clock=lambda: now[0])
    before = lost()
    meter.settle(settlement("req-lost-by-deadline"))
    # no stream at all: every try fails; the retries go on while the deadline is ahead
    await eventually(lambda: len(tries) > 2, 20, "retries before the deadline")
    assert meter.tasks and lost() == before
    now[0] = 31.0
    await until_done(meter, 15)
    assert lost() == before + 1
    assert not meter.tasks


async def test_drain_is_bounded_and_counts_what_it_gives_up(bus: Bus) -> None:
    meter = Meter(bus, 1.0, settle_deadline=60)
    before = lost()
    for _ in range(3):
        meter.settle(settlement())
    await asyncio.wait_for(meter.drain(within=0.5), 10)
    await eventually(lambda: not meter.tasks, 5, "the drained tasks forgotten")
    assert lost() == before + 3


async def test_drain_waits_for_settlements_that_get_through(bus: Bus) -> None:
    await ensure_settlement_stream(bus)
    meter = Meter(bus, 1.0)
    sent = [settlement() for _ in range(5)]
    for s in sent:
        meter.settle(s)
    await meter.drain(within=20)
    assert sorted(x.request_id for x in await stored(bus)) == sorted(s.request_id for s in sent)


def reserve_request() -> ReserveRequest:
    return ReserveRequest(f"req-{uuid.uuid4().hex}", "meter-user", "free", "gpt-5-nano", 10, 100)


async def released(bus: Bus, meter: Meter, req: ReserveRequest) -> list[Settlement]:
    await until_done(meter, 20)
    return [s for s in await stored(bus) if s.request_id == req.request_id]


async def test_reserve_without_metering_releases_what_it_may_have_held(bus: Bus) -> None:
    await ensure_settlement_stream(bus)
    meter = Meter(bus, 0.5)
    req = reserve_request()
    with pytest.raises(ServiceUnavailable):
        await meter.reserve(req, {})
    [rel] = await released(bus, meter, req)
    assert not rel.ok and rel.usage == Usage() and rel.user == req.user


async def test_reserve_answered_with_a_retryable_error_releases(bus: Bus) -> None:
    """Metering answered, but with an error whose outcome is unknown (its store timed out)."""
    await ensure_settlement_stream(bus)

    async def metering(msg: Msg) -> None:
        err = ServiceUnavailable("budget store unavailable", code="store_timeout")
        await msg.respond(contract.encode(contract.error_reply(err)))

    await bus.serve(subjects.METER_RESERVE, metering)
    await bus.flush()
    meter = Meter(bus, 2.0)
    req = reserve_request()
    with pytest.raises(ServiceUnavailable):
        await meter.reserve(req, {})
    assert len(await released(bus, meter, req)) == 1


async def test_reserve_refused_for_budget_releases_nothing(bus: Bus) -> None:
    await ensure_settlement_stream(bus)

    async def metering(msg: Msg) -> None:
        reply = contract.ReserveReply(False, [], message="no credits left", denied_pool="session")
        await msg.respond(contract.encode(reply))

    await bus.serve(subjects.METER_RESERVE, metering)
    await bus.flush()
    meter = Meter(bus, 2.0)
    req = reserve_request()
    with pytest.raises(BudgetExceeded):
        await meter.reserve(req, {})
    assert not meter.tasks
    assert await released(bus, meter, req) == []


async def messages(bus: Bus) -> list[contract.Settlement | contract.SettlementBundle]:
    """Every message in the settlement stream, as published."""
    info = await bus.js.stream_info(subjects.SETTLE_STREAM)
    seqs = range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else range(0)
    decode = contract.settlement_message_decoder.decode
    return [decode((await bus.js.get_msg(subjects.SETTLE_STREAM, q)).data or b"") for q in seqs]


async def test_settlements_finishing_together_go_as_one_bundle_and_a_lone_one_as_itself(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ensure_settlement_stream(bus)
    tries = count_publishes(bus, monkeypatch)
    meter = Meter(bus, 1.0, bundle_seconds=0.05)
    together = [settlement() for _ in range(5)]
    for s in together:
        meter.settle(s)
    assert not meter.tasks, "gathered for the window, not published one by one"
    await eventually(lambda: bool(meter.tasks), 5, "the window's bundle published")
    await until_done(meter, 20)
    alone = settlement()
    meter.settle(alone)
    await eventually(lambda: len(tries) == 2, 5, "the lone settlement published after its window")
    await until_done(meter, 20)

    first, second = await messages(bus)
    assert isinstance(first, contract.SettlementBundle) and first.settlements == together
    assert tries[0] == first.bundle_id and first.bundle_id.startswith("bundle-")
    # alone: the form from before bundles, de-duplicated by its request id
    assert second == alone and tries[1] == alone.request_id


async def test_a_full_bundle_goes_at_once_and_bundle_max_1_sends_each_alone(bus: Bus) -> None:
    await ensure_settlement_stream(bus)
    meter = Meter(bus, 1.0, bundle_max=3, bundle_seconds=30.0)
    sent = [settlement() for _ in range(7)]
    for s in sent:
        meter.settle(s)
    # two full bundles are on their way without the 30 s window; the seventh waits for it
    assert len(meter.tasks) == 2
    await until_done(meter, 20)
    got = await messages(bus)
    sizes = [len(m.settlements) if isinstance(m, contract.SettlementBundle) else 1 for m in got]
    assert sizes == [3, 3, 1]
    single = Meter(bus, 1.0, bundle_max=1)
    more = [settlement() for _ in range(2)]
    for s in more:
        single.settle(s)
    assert len(single.tasks) == 2
    await until_done(single, 20)
    assert (await messages(bus))[-2:] == more
    assert sorted(x.request_id for x in await stored(bus)) == sorted(s.request_id for s in sent + more)


async def test_a_bundle_whose_acknowledgement_was_lost_is_stored_once(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ensure_settlement_stream(bus)
    tries: list[str] = []
    real = bus.js_publish

    async def ack_lost_once(subject: str, data: bytes, *, msg_id: str, timeout: float = 5.0) -> bool:
        tries.append(msg_id)
        stored_ = await real(subject, data, msg_id=msg_id, timeout=timeout)
        if len(tries) == 1:
            raise ServiceUnavailable("no acknowledgement in time", code="timeout")  # stored, ack lost
        return stored_

    monkeypatch.setattr(bus, "js_publish", ack_lost_once)
    meter = Meter(bus, 1.0)
    before = lost()
    sent = [settlement() for _ in range(4)]
    for s in sent:
        meter.settle(s)
    await until_done(meter, 20)
    assert len(tries) == 2 and tries[0] == tries[1], "retried under the same bundle id"
    assert [x.request_id for x in await stored(bus)] == [s.request_id for s in sent]
    assert lost() == before


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"JANUS_SETTLE_BUNDLE_MAX": "0"}, "JANUS_SETTLE_BUNDLE_MAX (0)"),
        ({"JANUS_SETTLE_BUNDLE_MAX": str(contract.MAX_BUNDLE + 1)}, "metering refuses a longer bundle"),
        ({"JANUS_SETTLE_BUNDLE_MS": "5000"}, "JANUS_SETTLE_BUNDLE_MS (5000)"),
        ({"JANUS_SETTLE_BUNDLE_MS": "-1"}, "JANUS_SETTLE_BUNDLE_MS (-1)"),
    ],
)
def test_a_gateway_refuses_a_bundle_setting_out_of_bounds(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayService(load_settings(GatewaySettings, env))
    assert named in str(caught.value)
