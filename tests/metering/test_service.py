"""The metering service in this process against a real nats-server with JetStream, driven over the
bus exactly as the gateway drives it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.metering.service import MeteringService
from shared import contract, metrics, subjects
from shared.bus import Bus
from shared.errors import ModelNotFound, PermissionDenied
from tests.metering.conftest import HOLD, MODEL, TINY_SESSION, record, reserve, settle, usage, wait_for

Start = Callable[..., Awaitable[MeteringService]]


async def test_concurrent_reserves_admit_only_what_fits(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    replies = await asyncio.gather(*(reserve(bus, "burst", f"r{i}") for i in range(200)))
    admitted = [f"r{i}" for i, r in enumerate(replies) if r.admitted]
    # every hold is exact here (no settlement has run), so the overshoot bound is zero
    assert len(admitted) == TINY_SESSION // HOLD
    refused = [r for r in replies if not r.admitted]
    assert all(r.denied_pool == "session" for r in refused)
    assert all(r.pools[0].remaining < HOLD for r in refused)

    # settle at less than the worst case: 1000 prompt + 500 completion tokens = 250 credits
    await asyncio.gather(*(settle(bus, "burst", rid, completion=500) for rid in admitted))

    async def settled() -> bool:
        return not (await record(bus, "burst")).holds

    await wait_for(settled, what="every hold settled")
    rec = await record(bus, "burst")
    assert rec.session_used == 250 * len(admitted) <= TINY_SESSION
    assert rec.week_used == rec.session_used


async def test_refused_request_and_failed_call_charge_nothing(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    too_big = await reserve(bus, "u1", "big", max_output_tokens=100_000)
    assert not too_big.admitted and too_big.hold == 0
    assert too_big.message.startswith("session budget exhausted: 4500 of 4500 credits remaining")
    assert "resets at " in too_big.message

    ok = await reserve(bus, "u1", "fail")
    assert ok.admitted and ok.hold == HOLD
    assert ok.pools[0].remaining == TINY_SESSION - HOLD
    await settle(bus, "u1", "fail", prompt=0, completion=0, ok=False)

    async def released() -> bool:
        doc = await usage(bus, "u1")
        return doc["session"]["reserved"] == 0  # type: ignore[index]

    await wait_for(released, what="hold released")
    doc = await usage(bus, "u1")
    assert doc["session"]["used"] == 0 and doc["weekly"]["used"] == 0  # type: ignore[index]
    assert doc["session"]["remaining"] == TINY_SESSION  # type: ignore[index]
    # the same settlement again (past the stream's de-duplication) is a no-op
    rec = await record(bus, "u1")
    assert rec.settled_count == 1 and rec.settled_cost("fail") == 0


async def test_reaper_releases_an_orphaned_hold_and_a_late_settlement_is_still_charged(
    bus: Bus, start_metering: Start
) -> None:
    await start_metering(hold_ttl_seconds=1.0, reap_interval_seconds=0.3)
    assert (await reserve(bus, "u2", "orphan")).admitted

    async def reaped() -> bool:
        return not (await record(bus, "u2")).holds

    await wait_for(reaped, what="the reaper")
    assert (await record(bus, "u2")).session_used == 0
    # the provider did produce it after all: charged although its hold is gone
    await settle(bus, "u2", "orphan", completion=10)

    async def charged() -> bool:
        return (await record(bus, "u2")).week_used > 0

    await wait_for(charged, what="the late settlement")
    assert (await record(bus, "u2")).week_used == 50 + 4


async def test_usage_document(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    await reserve(bus, "u3", "a", bot="mail")
    await reserve(bus, "u3", "b")
    await reserve(bus, "u3", "open")
    await settle(bus, "u3", "a", completion=100, bot="mail")
    await settle(bus, "u3", "b", completion=200)

    async def two_settled() -> bool:
        return (await record(bus, "u3")).settled_count == 2

    await wait_for(two_settled, what="settlements")
    doc = await usage(bus, "u3")
    assert doc["object"] == "usage" and doc["plan"] == "tiny"
    session = doc["session"]
    assert session == {
        "limit": 4500,
        "used": 90 + 130,
        "reserved": HOLD,
        "remaining": 4500 - 220 - HOLD,
        "reset": session["reset"],
        "active": True,
    }  # type: ignore[index]
    assert str(session["reset"]).endswith("Z")  # type: ignore[index]
    week = doc["week"]
    assert week["by_bot"]["mail"]["credits"] == 90  # type: ignore[index]
    assert week["by_bot"]["default"]["credits"] == 130  # type: ignore[index]
    assert week["by_model"]["gpt-5-nano"] == {
        "credits": 220,
        "requests": 2,
        "input_tokens": 2000,  # type: ignore[index]
        "output_tokens": 300,
    }
    assert doc["monthly_tokens"]["input"]["used"] == 2000  # type: ignore[index]


async def test_monthly_token_quota_refuses(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    assert (await reserve(bus, "u4", "a", plan="quota", max_output_tokens=2000)).admitted
    r = await reserve(bus, "u4", "b", plan="quota", max_output_tokens=2000)
    assert not r.admitted and r.denied_pool == "monthly_output_tokens"
    assert "monthly output tokens quota exhausted: 1000 of 3000 tokens remaining" in r.message


async def test_byok_is_admitted_without_a_hold_and_charged_nothing(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    r = await reserve(bus, "u5", "k", max_output_tokens=1_000_000, byok=True)
    assert r.admitted and r.hold == 0
    await settle(bus, "u5", "k", completion=5000, byok=True)

    async def recorded() -> bool:
        return (await record(bus, "u5")).settled_count > 0

    await wait_for(recorded, what="byok settlement")
    rec = await record(bus, "u5")
    assert rec.week_used == 0 and rec.week_by_model["gpt-5-nano"].output_tokens == 5000


async def test_bad_requests_are_error_replies(bus: Bus, start_metering: Start) -> None:
    await start_metering()
    with pytest.raises(ModelNotFound):
        await reserve(bus, "u6", "x", model="no-such-model")
    with pytest.raises(PermissionDenied):
        await reserve(bus, "u6", "x", plan="no-such-plan")


async def test_usage_above_the_hold_is_charged_the_hold_and_counted(bus: Bus, start_metering: Start) -> None:
    """A worker reporting a million completion tokens for a request held at 1000 + 1000 tokens."""
    await start_metering()
    counter = metrics.USAGE_OVER_HOLD.labels(MODEL)
    before = counter.value
    assert (await reserve(bus, "liar", "r1")).hold == HOLD
    await settle(bus, "liar", "r1", completion=1_000_000)

    async def settled() -> bool:
        # counted once its ledger entry is stored, a moment after the record is written
        return not (await record(bus, "liar")).holds and counter.value > before

    await wait_for(settled, what="the hold settled and counted")
    rec = await record(bus, "liar")
    assert rec.session_used == rec.week_used == HOLD
    assert counter.value == before + 1


async def test_a_renewal_over_the_bus_keeps_a_hold_from_the_reaper(bus: Bus, start_metering: Start) -> None:
    await start_metering(hold_ttl_seconds=2.0, reap_interval_seconds=0.3)
    assert (await reserve(bus, "u7", "long")).admitted
    assert (await reserve(bus, "u7", "abandoned")).admitted
    renewal = contract.encode(contract.HoldRenewal("u7", "long"))

    async def abandoned_reaped() -> bool:
        await bus.publish(subjects.METER_RENEW, renewal)  # the long request's gateway, meanwhile
        return "abandoned" not in (await record(bus, "u7")).holds

    # the reaper has run past the TTL of both holds: only the renewed one is still there
    await wait_for(abandoned_reaped, what="the abandoned hold reaped")
    rec = await record(bus, "u7")
    assert "long" in rec.holds and rec.holds["long"].seen > rec.holds["long"].at


async def test_models_a_settlement_invents_are_counted_under_other_not_as_series_of_their_own(
    bus: Bus, start_metering: Start
) -> None:
    """Settlements naming models the catalog lacks (a compromised gateway inventing one per request):
    each is still charged what it held, and the credits metric counts them under "other" instead of
    growing a series per invented name."""
    await start_metering()
    charged = metrics.CREDITS_CHARGED.labels(metrics.OTHER, "tiny")
    before = charged.value
    for i in range(3):
        assert (await reserve(bus, "inventor", f"r{i}")).admitted
        await settle(bus, "inventor", f"r{i}", model=f"invented-{i}")

    async def settled() -> bool:
        return not (await record(bus, "inventor")).holds and charged.value >= before + 3 * HOLD

    await wait_for(settled, what="the three settlements applied and counted")
    # the model left the catalog between admission and settlement, as far as metering can tell:
    # what was held is charged
    assert (await record(bus, "inventor")).session_used == 3 * HOLD
    assert charged.value == before + 3 * HOLD
    named = {
        s.labels.get("gen_ai_request_model", "")
        for m in (metrics.CREDITS_CHARGED, metrics.USAGE_OVER_HOLD)
        for family in m.collect()
        for s in family.samples
    }
    assert not [n for n in named if n.startswith("invented-")]
