"""One user's budget record stays the same size whatever the user sends: a new X-Bot-ID with every
request folds into "other" past the weekly bound, and settled ids leave after the horizon."""

from __future__ import annotations

from services.metering import budget
from services.metering.record import OTHER_BOT, Bounds, Record, bot_key, encode_record
from shared.catalog import Plan, SessionPool, WeeklyPool
from shared.contract import ReserveRequest, Settlement, Usage
from shared.money import PriceUnits

RULES = budget.PlanRules.of(
    "p",
    Plan(session=SessionPool(credits=10**12, hours=24), weekly=WeeklyPool(credits=10**13), default_model="m"),
)
PRICE = PriceUnits(input=1_000_000, cached_input=1_000_000, output=1_000_000)
MONDAY = 1_795_996_800  # a Monday 00:00 UTC: the whole test stays in one week
BOUNDS = Bounds(horizon=60, bots=20)


def _request(rec: Record, i: int, bot: str, now: int) -> None:
    rid = f"r{i}"
    reply, _ = budget.reserve(rec, ReserveRequest(rid, "u", "p", "m", 10, 10, bot=bot), RULES, PRICE, now)
    assert reply.admitted
    budget.settle(rec, Settlement(rid, "u", "p", "m", Usage(10, 5), bot=bot), RULES, PRICE, now, BOUNDS)


def test_the_record_size_stays_flat_under_10000_distinct_bot_ids() -> None:
    rec = Record(user="u")
    sizes = []
    for i in range(10_000):
        # a second apart: the settled ids of the last minute are kept, older ones leave
        _request(rec, i, f"bot \N{SNOWMAN} {i} " + "x" * 100, MONDAY + 3600 + i)
        if i in (200, 9_999):
            sizes.append(len(encode_record(rec)))
    assert sizes[1] <= sizes[0] + 16, sizes  # a few bytes of larger integers, nothing per bot
    assert len(rec.week_by_bot) == BOUNDS.bots + 1
    other = rec.week_by_bot[OTHER_BOT]
    assert other.requests == 10_000 - BOUNDS.bots and other.credits == (10_000 - BOUNDS.bots) * 15
    assert rec.week_used == 10_000 * 15  # folded, never dropped


def test_usage_names_each_bot_as_the_caller_sent_it() -> None:
    rec = Record(user="u")
    names = ["plain-bot.v2:prod", "Mon Bot (été) #1", "a/b?c=d", "x" * 128]
    for i, name in enumerate(names):
        _request(rec, i, name, MONDAY + 3600)
    doc = budget.usage_document(rec, RULES, MONDAY + 3600)
    by_bot = doc["week"]["by_bot"]  # type: ignore[index]
    assert sorted(by_bot) == sorted(names)
    # stored under a short key made of safe characters, whatever the name
    assert all(len(k) <= 64 and k.isascii() and k.isprintable() for k in rec.week_by_bot)
    assert bot_key("plain-bot.v2:prod") == "plain-bot.v2:prod"
    assert bot_key("Mon Bot (été) #1").startswith("#")
