"""/v1/usage: metering sends its figures typed, the gateway renders the document. The document is the
one clients have always had, and gateways and metering of this release and the previous one
understand each other while a rolling upgrade mixes them."""

from __future__ import annotations

import json

import msgspec

from services.gateway.usage import render, usage_body
from services.metering import budget, daily
from services.metering.record import Bounds, Record
from shared import contract
from shared.catalog import Plan, SessionPool, TokenQuota, WeeklyPool
from shared.contract import LedgerEntry, PoolState, ReserveRequest, Settlement, Usage
from shared.money import PriceUnits

RULES = budget.PlanRules.of(
    "pro",
    Plan(
        session=SessionPool(credits=50_000, hours=5),
        weekly=WeeklyPool(credits=400_000),
        monthly_tokens=TokenQuota(input=1_000_000),
        default_model="m",
    ),
)
PRICE = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)
NOW = 1_795_996_800 + 3 * 86400 + 1234  # a Thursday
TODAY = NOW // 86400


def _record() -> Record:
    rec = Record(user="u")
    for i, (bot, model) in enumerate([("mail", "m"), ("Mon Bot (été)", "m"), ("mail", "big"), ("", "m")]):
        rid = f"r{i}"
        req = ReserveRequest(rid, "u", "pro", model, 100 * (i + 1), 50, bot=bot or "default")
        assert budget.reserve(rec, req, RULES, PRICE, NOW)[0].admitted
        if i < 3:  # the last stays held
            settled = Settlement(rid, "u", "pro", model, Usage(100 * (i + 1), 20 + i), bot=bot or "default")
            budget.settle(rec, settled, RULES, PRICE, NOW, Bounds(horizon=600, bots=20))
    return rec


def test_the_rendered_document_is_the_one_clients_had() -> None:
    rec = _record()
    report = budget.usage_report(rec, RULES, NOW)
    assert json.loads(render(report)) == json.loads(
        msgspec.json.encode(budget.usage_document(rec, RULES, NOW))
    )
    assert json.loads(render(report))["week"]["by_bot"]["Mon Bot (été)"]["requests"] == 1


class _PreviousUsageReply(msgspec.Struct, tag="meter.usage_reply.v1", tag_field="type", omit_defaults=True):
    body: bytes
    pools: list[PoolState] = []


def test_old_and_new_replicas_understand_each_others_usage_replies() -> None:
    rec = _record()
    legacy = msgspec.json.encode(budget.usage_document(rec, RULES, NOW))
    new = contract.UsageReply(legacy, [], report=budget.usage_report(rec, RULES, NOW))
    # a previous release's gateway passes the body on as it is
    assert msgspec.msgpack.Decoder(_PreviousUsageReply).decode(contract.encode(new)).body == legacy
    # a gateway of this release, answered by a previous release's metering, does the same
    old = contract.usage_reply_decoder.decode(msgspec.msgpack.encode(_PreviousUsageReply(legacy)))
    assert isinstance(old, contract.UsageReply) and usage_body(old) == legacy
    # and renders the report when there is one
    decoded = contract.usage_reply_decoder.decode(contract.encode(new))
    assert isinstance(decoded, contract.UsageReply) and json.loads(usage_body(decoded)) == json.loads(legacy)


def test_the_daily_document_is_the_one_clients_had() -> None:
    rec = daily.DailyRecord()
    for seq, (day, bot, model) in enumerate(
        [(TODAY - 3, "mail", "m"), (TODAY, "mail", "big"), (TODAY, "x", "m")]
    ):
        entry = LedgerEntry("r", "u", model, 7 + seq, Usage(3, 4 + seq), bot=bot, at=float(day * 86400 + 5))
        assert daily.apply(rec, [entry], seq + 1, day)
    legacy = daily.document(rec, 7, TODAY)
    reply = contract.UsageReply(legacy, daily=daily.usage_days(rec, 7, TODAY))
    decoded = contract.usage_reply_decoder.decode(contract.encode(reply))
    assert isinstance(decoded, contract.UsageReply)
    assert json.loads(usage_body(decoded)) == json.loads(legacy)
    assert json.loads(usage_body(decoded))["data"][-1]["by_bot"]["x"]["credits"] == 9
