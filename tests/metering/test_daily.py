"""Daily usage aggregates: bounded whatever bot ids a caller sends, idempotent by ledger sequence,
and only the last ``KEEP_DAYS`` days kept."""

from __future__ import annotations

import msgspec

from services.metering import daily
from shared.contract import LedgerEntry, Usage

DAY = 86_400
TODAY = 20_000


def entry(
    bot: str = "default", model: str = "gpt-5-mini", credits: int = 10, day: int = TODAY
) -> LedgerEntry:
    return LedgerEntry(
        request_id="r",
        user="u",
        model=model,
        credits=credits,
        bot=bot,
        usage=Usage(prompt_tokens=3, completion_tokens=4),
        at=float(day * DAY + 5),
    )


def test_a_redelivered_entry_counts_once() -> None:
    rec = daily.DailyRecord()
    assert daily.apply(rec, [entry()], 7, TODAY)
    assert not daily.apply(rec, [entry()], 7, TODAY)
    assert daily.apply(rec, [entry()], 8, TODAY)
    t = rec.days[TODAY].by_model["gpt-5-mini"]
    assert (t.credits, t.requests, t.input_tokens, t.output_tokens) == (20, 2, 6, 8)


def test_a_bundles_entries_count_together_under_one_sequence() -> None:
    rec = daily.DailyRecord()
    bundle = [entry(credits=1), entry(credits=2, model="big"), entry(credits=4)]
    assert daily.apply(rec, bundle, 9, TODAY)
    # the same message read again (a raced or failed batch) counts nothing more
    assert not daily.apply(rec, bundle, 9, TODAY)
    assert not daily.apply(rec, [entry(credits=100)], 8, TODAY)
    by_model = rec.days[TODAY].by_model
    assert (by_model["gpt-5-mini"].credits, by_model["gpt-5-mini"].requests) == (5, 2)
    assert (by_model["big"].credits, by_model["big"].requests) == (2, 1)
    assert rec.seqs == [9] and rec.upto == 9


def test_bots_past_the_cap_are_pooled_and_the_record_stays_small() -> None:
    rec = daily.DailyRecord()
    for i in range(1000):
        daily.apply(rec, [entry(bot=f"bot-{i}")], i, TODAY)
    bots = rec.days[TODAY].by_bot
    assert len(bots) == daily.MAX_KEYS + 1
    assert bots[daily.OTHER].requests == 1000 - daily.MAX_KEYS
    assert sum(t.credits for t in bots.values()) == 10_000
    assert len(rec.seqs) <= daily.KEEP_SEQS
    assert len(msgspec.msgpack.encode(rec)) < 16_000


def test_old_days_are_dropped_and_the_document_lists_every_day() -> None:
    rec = daily.DailyRecord()
    assert not daily.apply(rec, [entry(day=TODAY - daily.KEEP_DAYS)], 1, TODAY)
    daily.apply(rec, [entry(day=TODAY - 3)], 2, TODAY - 3)
    daily.apply(rec, [entry(day=TODAY, credits=5)], 3, TODAY)
    doc = msgspec.json.decode(daily.document(rec, 7, TODAY))
    assert [d["credits"] for d in doc["data"]] == [0, 0, 0, 10, 0, 0, 5]
    assert doc["data"][-1]["date"] == "2024-10-04"
    daily.apply(rec, [entry(day=TODAY + daily.KEEP_DAYS)], 4, TODAY + daily.KEEP_DAYS)
    assert list(rec.days) == [TODAY + daily.KEEP_DAYS]
