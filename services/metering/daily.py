"""Daily usage history: per user, per UTC day, spend by model and by bot, kept for ``KEEP_DAYS``.

    every ``interval`` seconds, in whichever metering replica gets there first:
        the cursor (KV ``janus_daily``, key ``cursor``: the last ledger sequence folded in)
        -> the next ``batch`` JANUS_LEDGER messages in one direct get (``read_ledger``), each an
           entry or a bundle's entries
        -> grouped by user -> one CAS write per user in KV ``janus_daily`` -> the cursor moved on
    janus.meter.daily (queue "metering")  DailyQuery -> DailyReply (the JSON document) | ErrorReply

It reads the ledger (the settlements metering has already applied), not the settlements
themselves, so the hot budget record and the settlement path are untouched: a slow or failing
history write delays only the history. It reads in batches a few seconds apart rather than as a
consumer of every entry: a history may lag by seconds, and that way it costs the bus a few
messages per batch instead of four per request (a delivery request, an acknowledgement, a read
and a write each). The ledger keeps every entry, so a new deployment builds the history of the
entries it still holds on its first start.

Exact whoever reads: the cursor moves only by compare-and-set and only after every user of the
batch was written, so a failed or raced batch is read again; a user's record remembers the
highest ledger sequence it counted (``upto``), and entries of one user are always counted in
sequence order, so an entry read again (two replicas on one batch, a replica that stalled while
others moved on) counts once.

Bounded whatever callers send: a record keeps ``KEEP_DAYS`` days; a day keeps at most ``MAX_KEYS``
models and bots each (``X-Bot-ID`` is the caller's choice; past the cap, spend is counted under
``OTHER``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Sequence

import msgspec
import nats.js.errors

from services.metering.record import Tally
from services.metering.streams import read_ledger
from shared import contract, metrics, subjects
from shared.bus import Bus, CasConflict, KeyNotFound, KeyValue, Msg, map_exception
from shared.contract import LedgerEntry
from shared.logging import get_logger

log = get_logger("metering.daily")

DAILY_BUCKET = "janus_daily"
CURSOR = "cursor"  # never a user's key: those are "d.u.<id>" or "d.h.<digest>"
# the ledger consumer that kept the history before the cursor: where it stopped is where the cursor
# starts, and it is removed
DURABLE = "daily"
KEEP_DAYS = 90
MAX_KEYS = 32
# recently counted sequences, besides ``upto``: what a replica of the former consumer (which knew
# no ``upto`` and may drop it when it rewrites a record) still dedups by while a rollout runs
KEEP_SEQS = 1024
OTHER = "(other)"
_DAY = 86_400


class Day(msgspec.Struct, omit_defaults=True):
    by_model: dict[str, Tally] = {}
    by_bot: dict[str, Tally] = {}


class DailyRecord(msgspec.Struct, omit_defaults=True):
    days: dict[int, Day] = {}  # day number (unix seconds // 86400, UTC) -> that day's tallies
    seqs: list[int] = []  # ledger sequence numbers recently applied, oldest first
    upto: int = 0  # the highest ledger sequence counted: every entry of this user at or below it is in


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(DailyRecord)
_json = msgspec.json.Encoder()


def _key(user: str) -> str:
    return subjects.kv_key("d", user)


def _bounded(d: dict[str, Tally], name: str) -> Tally:
    if name not in d and len(d) >= MAX_KEYS:
        name = OTHER
    return d.setdefault(name, Tally())


def apply(rec: DailyRecord, entries: Sequence[LedgerEntry], seq: int, today: int) -> bool:
    """Count the entries of one ledger message (its sequence ``seq``; the entries of one user, as a
    bundle may hold several) into ``rec``; False when nothing changed (already applied, too old)."""
    if 0 < seq <= rec.upto or seq in rec.seqs:
        return False
    counted = False
    for entry in entries:
        day = int(entry.at) // _DAY
        if day <= today - KEEP_DAYS:
            continue
        tally = rec.days.setdefault(day, Day())
        prompt, completion = max(entry.usage.prompt_tokens, 0), max(entry.usage.completion_tokens, 0)
        _bounded(tally.by_model, entry.model).add(entry.credits, prompt, completion)
        _bounded(tally.by_bot, entry.bot or "default").add(entry.credits, prompt, completion)
        counted = True
    if not counted:
        return False
    rec.seqs.append(seq)
    rec.upto = seq
    if len(rec.seqs) > KEEP_SEQS:
        del rec.seqs[: len(rec.seqs) - KEEP_SEQS]
    for old in [d for d in rec.days if d <= today - KEEP_DAYS]:
        del rec.days[old]
    return True


def _tallies(d: dict[str, Tally]) -> dict[str, dict[str, int]]:
    return {
        k: {
            "credits": t.credits,
            "requests": t.requests,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
        }
        for k, t in sorted(d.items())
    }


def usage_days(rec: DailyRecord, days: int, today: int) -> list[contract.DayUsage]:
    """The last ``days`` days up to ``today``, oldest first, empty days included."""

    def rows(d: dict[str, Tally]) -> list[contract.TallyRow]:
        return [
            contract.TallyRow(k, t.credits, t.requests, t.input_tokens, t.output_tokens)
            for k, t in sorted(d.items())
        ]

    out = []
    for n in range(today - days + 1, today + 1):
        day = rec.days.get(n, Day())
        out.append(contract.DayUsage(n, rows(day.by_model), rows(day.by_bot)))
    return out


def document(rec: DailyRecord, days: int, today: int) -> bytes:
    """The ``GET /v1/usage/daily`` body, for gateways of the previous release (current ones render
    ``usage_days``). Goes in the next release."""
    data = []
    for n in range(today - days + 1, today + 1):
        day = rec.days.get(n, Day())
        models = day.by_model.values()
        data.append(
            {
                "date": time.strftime("%Y-%m-%d", time.gmtime(n * _DAY)),
                "credits": sum(t.credits for t in models),
                "requests": sum(t.requests for t in models),
                "input_tokens": sum(t.input_tokens for t in models),
                "output_tokens": sum(t.output_tokens for t in models),
                "by_model": _tallies(day.by_model),
                "by_bot": _tallies(day.by_bot),
            }
        )
    return _json.encode({"object": "usage.daily", "unit": "credits", "days": days, "data": data})


class DailyHistory:
    """The sweeps that keep the history and the queries that read it."""

    def __init__(self, batch: int = 512, interval: float = 2.0) -> None:
        self.batch = batch
        self.interval = interval
        self.bus: Bus | None = None
        self.kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def open(self, bus: Bus, replicas: int) -> None:
        """The bucket, and the cursor where the former ledger consumer stopped: ready to sweep."""
        self.bus = bus
        self.kv = await bus.kv(DAILY_BUCKET, replicas=replicas)
        await self._adopt_consumer()

    async def start(self, bus: Bus, replicas: int) -> None:
        await self.open(bus, replicas)
        await bus.serve(subjects.METER_DAILY, self._on_query, queue=subjects.METERING_QUEUE, concurrency=64)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, grace: float) -> None:
        self._closing.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, grace)

    async def _adopt_consumer(self) -> None:
        """Start the cursor where the former ledger consumer stopped, and remove that consumer."""
        assert self.bus is not None and self.kv is not None
        js = self.bus.js
        try:
            info = await js.consumer_info(subjects.LEDGER_STREAM, DURABLE)
        except nats.js.errors.NotFoundError:
            return
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        with contextlib.suppress(CasConflict):  # a cursor already there is further on
            await Bus.kv_cas(self.kv, CURSOR, str(floor).encode(), 0)
        with contextlib.suppress(Exception):
            await js.delete_consumer(subjects.LEDGER_STREAM, DURABLE)
        log.info("daily_consumer_adopted", cursor=floor)

    async def read(self, user: str) -> tuple[DailyRecord, int]:
        assert self.kv is not None
        try:
            data, rev = await Bus.kv_get(self.kv, _key(user))
        except KeyNotFound:
            return DailyRecord(), 0
        return _dec.decode(data), rev

    async def _write_user(self, user: str, entries: list[tuple[list[LedgerEntry], int]]) -> None:
        """Count (this user's entries of one ledger message, its sequence), in sequence order."""
        assert self.kv is not None
        today = int(time.time()) // _DAY
        for _ in range(16):
            rec, rev = await self.read(user)
            changed = [apply(rec, es, seq, today) for es, seq in entries]
            if not any(changed):
                return
            try:
                await Bus.kv_cas(self.kv, _key(user), _enc.encode(rec), rev)
                return
            except CasConflict:
                continue  # another replica wrote this user's record meanwhile
        raise CasConflict(f"daily record of a user kept changing ({len(entries)} ledger messages)")

    async def cursor(self) -> tuple[int, int]:
        """(the last ledger sequence folded in, the cursor's revision; 0 when it does not exist)."""
        assert self.kv is not None
        try:
            data, rev = await Bus.kv_get(self.kv, CURSOR)
        except KeyNotFound:
            return 0, 0
        return int(data or b"0"), rev

    async def apply_entries(self, got: list[tuple[int, bytes]]) -> bool:
        """Count ledger messages (sequence, data), each an entry or a bundle of them, in sequence
        order; True when every user's record was written. A message nobody can read is logged and
        passed over: reading it again would not help."""
        by_user: dict[str, list[tuple[list[LedgerEntry], int]]] = defaultdict(list)
        for seq, data in got:
            try:
                entries = contract.ledger_entries_of(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("ledger_entry_undecodable", sequence=seq)
                continue
            mine: dict[str, list[LedgerEntry]] = {}
            for entry in entries:
                mine.setdefault(entry.user, []).append(entry)
            for user, es in mine.items():
                by_user[user].append((es, seq))
        users = list(by_user)
        results = await asyncio.gather(
            *(self._write_user(u, by_user[u]) for u in users), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("daily_write_failed", users=len(failed), error=map_exception(failed[0]).message)
        return not failed

    async def sweep(self) -> int:
        """Fold the next batch of the ledger in; how many entries were read (0: caught up)."""
        assert self.bus is not None and self.kv is not None
        at, rev = await self.cursor()
        got, pending = await read_ledger(self.bus, at + 1, self.batch)
        metrics.DAILY_LAG.set(len(got) + pending)
        if not got or not await self.apply_entries(got):
            return 0  # a failed batch is read again by the next sweep; what was written counts once
        metrics.DAILY_LAG.set(pending)
        with contextlib.suppress(CasConflict):  # another replica moved it on: this batch was its too
            await Bus.kv_cas(self.kv, CURSOR, str(got[-1][0]).encode(), rev)
        return len(got)

    async def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                read = await self.sweep()
            except Exception as exc:
                log.warning("daily_sweep_failed", error=map_exception(exc).message)
                read = 0
            if read < self.batch:
                # caught up: the next batch gathers for a while; jitter keeps replicas out of step
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self.interval * random.uniform(0.8, 1.2))

    async def query(self, q: contract.DailyQuery) -> contract.UsageReply:
        rec, _ = await self.read(q.user)
        days = max(1, min(q.days, KEEP_DAYS))
        today = int(time.time()) // _DAY
        return contract.UsageReply(document(rec, days, today), daily=usage_days(rec, days, today))

    async def _on_query(self, msg: Msg) -> None:
        try:
            q = contract.daily_query_decoder.decode(msg.data)
            out = contract.encode(await self.query(q))
        except Exception as exc:
            out = contract.encode(contract.error_reply(map_exception(exc)))
        if msg.reply:
            await msg.respond(out)
