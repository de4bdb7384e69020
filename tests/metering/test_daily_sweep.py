"""The daily history read from the ledger in batches, against a real nats-server: exact whichever
replica reads a batch, however often a batch is read, and continuing where the former ledger
consumer stopped. Each history here signs in as metering, so the bus permissions are real too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.js.errors
import pytest

from services.metering import daily
from services.metering.streams import read_ledger
from shared import contract, metrics, subjects
from shared.bus import Bus
from shared.contract import LedgerEntry, Usage
from shared.streams import ensure_ledger_stream
from tools.localnats import NatsServer

Open = Callable[..., Awaitable[daily.DailyHistory]]
USERS = ("ann", "ben", "cid")


@pytest.fixture
async def history(nats_server: NatsServer) -> AsyncIterator[Open]:
    """Open a daily history on its own metering connection (as a replica would)."""
    buses: list[Bus] = []

    async def open_(batch: int = 7) -> daily.DailyHistory:
        b = await Bus.connect(nats_server.url, "metering")
        buses.append(b)
        h = daily.DailyHistory(batch=batch)
        await h.open(b, 1)
        return h

    yield open_
    for b in buses:
        with contextlib.suppress(Exception):
            await b.close()


async def publish(bus: Bus, n: int, users: tuple[str, ...] = USERS) -> list[LedgerEntry]:
    """``n`` ledger entries, as metering writes them, over ``users``, two models and two bots."""
    await ensure_ledger_stream(bus)
    now = time.time()
    entries = [
        LedgerEntry(
            request_id=f"r{i}",
            user=users[i % len(users)],
            model=("gpt-5-mini", "gpt-5-nano")[i % 2],
            credits=10 + i,
            bot=("app-a", "app-b")[i % 3 == 0],
            usage=Usage(prompt_tokens=i, completion_tokens=2 * i),
            at=now,
        )
        for i in range(n)
    ]
    for e in entries:
        await bus.js_publish(subjects.LEDGER, contract.encode(e), msg_id=e.request_id)
    return entries


async def drain(h: daily.DailyHistory, last: int) -> None:
    """Sweep until the cursor reaches ``last``: a failed sweep is simply swept again."""
    for _ in range(1000):
        if (await h.cursor())[0] >= last:
            return
        await h.sweep()
    raise AssertionError("the history never caught up with the ledger")


async def totals(h: daily.DailyHistory, user: str) -> Counter[str]:
    rec, _ = await h.read(user)
    out: Counter[str] = Counter()
    for day in rec.days.values():
        for model, t in day.by_model.items():
            out[f"credits {model}"] += t.credits
            out[f"requests {model}"] += t.requests
            out["input"] += t.input_tokens
            out["output"] += t.output_tokens
        for bot, t in day.by_bot.items():
            out[f"credits {bot}"] += t.credits
    return out


def expected(entries: list[LedgerEntry], user: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for e in entries:
        if e.user == user:
            out[f"credits {e.model}"] += e.credits
            out[f"requests {e.model}"] += 1
            out["input"] += e.usage.prompt_tokens
            out["output"] += e.usage.completion_tokens
            out[f"credits {e.bot}"] += e.credits
    return out


async def test_two_replicas_sweeping_one_ledger_count_every_entry_once(bus: Bus, history: Open) -> None:
    entries = await publish(bus, 60)
    a, b = await history(), await history()
    assert await a.sweep() == 7
    assert metrics.DAILY_LAG._value.get() == 60 - 7  # what an operator sees of a history behind
    # both sweep at once, so they often read the same batch and race on the cursor and the records
    await asyncio.gather(drain(a, 60), drain(b, 60))
    for u in USERS:
        assert await totals(a, u) == expected(entries, u)


async def test_bundled_and_lone_ledger_messages_count_every_entry_once(bus: Bus, history: Open) -> None:
    # as metering appends them: a bundle's entries in one message, a settlement sent alone by itself
    entries = await publish(bus, 5)
    more = [
        LedgerEntry(f"b{i}", USERS[i % 2], "gpt-5-nano", 100 + i, Usage(i, i), at=time.time())
        for i in range(40)
    ]
    for n, part in enumerate((more[:17], more[17:18], more[18:])):
        bundle = contract.LedgerBundle(part)
        await bus.js_publish(subjects.LEDGER, contract.encode(bundle), msg_id=f"bundle-{n}")
    a, b = await history(batch=3), await history(batch=3)
    await asyncio.gather(drain(a, 8), drain(b, 8))
    for u in USERS:
        assert await totals(a, u) == expected(entries + more, u)


async def test_a_batch_read_again_after_others_moved_on_counts_once(
    bus: Bus, history: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    # remember few sequences, so only the high-water mark can recognise an old batch
    monkeypatch.setattr(daily, "KEEP_SEQS", 4)
    entries = await publish(bus, 40, users=("ann",))
    stalled, other = await history(), await history()
    late, _ = await read_ledger(stalled.bus, 1, 10)  # type: ignore[arg-type]
    await drain(other, 40)
    # the stalled replica wakes up and writes the batch it read long ago
    assert await stalled.apply_entries(late)
    assert await totals(stalled, "ann") == expected(entries, "ann")
    # and a sweep from a cursor read before the others moved it cannot move it back
    assert (await stalled.cursor())[0] == 40


async def test_the_history_continues_where_the_former_consumer_stopped(bus: Bus, history: Open) -> None:
    entries = await publish(bus, 12)
    # the former history: a durable consumer of the ledger that acknowledged the first five
    sub = await bus.pull_consumer(subjects.LEDGER_STREAM, daily.DURABLE, subjects.LEDGER)
    taken = await Bus.fetch(sub, 5, 2.0)
    assert len(taken) == 5
    for m in taken:
        await m.ack_sync()
    await sub.unsubscribe()
    h = await history()
    assert (await h.cursor())[0] == 5
    with pytest.raises(nats.js.errors.NotFoundError):  # removed once adopted
        await bus.js.consumer_info(subjects.LEDGER_STREAM, daily.DURABLE)
    await drain(h, 12)
    for u in USERS:
        assert await totals(h, u) == expected(entries[5:], u)
