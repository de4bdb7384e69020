"""Daily usage history: per user, per UTC day, spend by model and by bot, kept for ``KEEP_DAYS``.

    JANUS_LEDGER stream -> durable pull consumer "daily" (shared by every metering replica)
        -> a fetched batch grouped by user -> one CAS write per user in KV ``janus_daily``
        -> acks
    janus.meter.daily (queue "metering")  DailyQuery -> DailyReply (the JSON document) | ErrorReply

It reads the ledger (the settlements metering has already applied), not the settlements
themselves, so the hot budget record and the settlement path are untouched: a slow or failing
history write delays only the history. The ledger keeps every entry, so a new deployment builds
the history of the entries it still holds on its first start.

Bounded whatever callers send: a record keeps ``KEEP_DAYS`` days; a day keeps at most ``MAX_KEYS``
models and bots each (``X-Bot-ID`` is the caller's choice; past the cap, spend is counted under
``OTHER``), and the last ``KEEP_SEQS`` ledger sequence numbers applied, which make a redelivered
entry a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

import msgspec

from services.metering.record import Tally
from shared import contract, subjects
from shared.bus import Bus, CasConflict, KeyNotFound, KeyValue, Msg, map_exception
from shared.contract import LedgerEntry
from shared.logging import get_logger

log = get_logger("metering.daily")

DAILY_BUCKET = "janus_daily"
DURABLE = "daily"
KEEP_DAYS = 90
MAX_KEYS = 32
KEEP_SEQS = 1024
OTHER = "(other)"
_DAY = 86_400


class Day(msgspec.Struct, omit_defaults=True):
    by_model: dict[str, Tally] = {}
    by_bot: dict[str, Tally] = {}


class DailyRecord(msgspec.Struct, omit_defaults=True):
    days: dict[int, Day] = {}  # day number (unix seconds // 86400, UTC) -> that day's tallies
    seqs: list[int] = []  # ledger sequence numbers recently applied, oldest first


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(DailyRecord)
_json = msgspec.json.Encoder()


def _key(user: str) -> str:
    return subjects.kv_key("d", user)


def _bounded(d: dict[str, Tally], name: str) -> Tally:
    if name not in d and len(d) >= MAX_KEYS:
        name = OTHER
    return d.setdefault(name, Tally())


def apply(rec: DailyRecord, entry: LedgerEntry, seq: int, today: int) -> bool:
    """Count one ledger entry into ``rec``; False when nothing changed (already applied, too old)."""
    if seq in rec.seqs:
        return False
    day = int(entry.at) // _DAY
    if day <= today - KEEP_DAYS:
        return False
    tally = rec.days.setdefault(day, Day())
    prompt, completion = max(entry.usage.prompt_tokens, 0), max(entry.usage.completion_tokens, 0)
    _bounded(tally.by_model, entry.model).add(entry.credits, prompt, completion)
    _bounded(tally.by_bot, entry.bot or "default").add(entry.credits, prompt, completion)
    rec.seqs.append(seq)
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


def document(rec: DailyRecord, days: int, today: int) -> bytes:
    """The ``GET /v1/usage/daily`` body: one entry per day, oldest first, empty days included."""
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
    """The consumer that keeps the history and the queries that read it."""

    def __init__(self, batch: int = 256) -> None:
        self.batch = batch
        self.kv: KeyValue | None = None
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def start(self, bus: Bus, replicas: int) -> None:
        self.kv = await bus.kv(DAILY_BUCKET, replicas=replicas)
        self._sub = await bus.pull_consumer(subjects.LEDGER_STREAM, DURABLE, subjects.LEDGER, ack_wait=30.0)
        await bus.serve(subjects.METER_DAILY, self._on_query, queue=subjects.METERING_QUEUE, concurrency=64)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, grace: float) -> None:
        self._closing.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, grace)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def read(self, user: str) -> tuple[DailyRecord, int]:
        assert self.kv is not None
        try:
            data, rev = await Bus.kv_get(self.kv, _key(user))
        except KeyNotFound:
            return DailyRecord(), 0
        return _dec.decode(data), rev

    async def _write_user(self, user: str, entries: list[tuple[LedgerEntry, int]]) -> None:
        assert self.kv is not None
        today = int(time.time()) // _DAY
        for _ in range(16):
            rec, rev = await self.read(user)
            changed = [apply(rec, e, seq, today) for e, seq in entries]
            if not any(changed):
                return
            try:
                await Bus.kv_cas(self.kv, _key(user), _enc.encode(rec), rev)
                return
            except CasConflict:
                continue  # another replica wrote this user's record meanwhile
        raise CasConflict(f"daily record of a user kept changing ({len(entries)} entries)")

    async def apply_batch(self, msgs: list[Msg]) -> None:
        by_user: dict[str, list[tuple[LedgerEntry, int, Msg]]] = defaultdict(list)
        for m in msgs:
            try:
                entry = contract.ledger_entry_decoder.decode(m.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("ledger_entry_undecodable")
                with contextlib.suppress(Exception):
                    await m.term()
                continue
            by_user[entry.user].append((entry, m.metadata.sequence.stream, m))
        for user, items in by_user.items():
            try:
                await self._write_user(user, [(e, seq) for e, seq, _ in items])
            except Exception as exc:
                # not acked: redelivered after ack_wait, and the sequence numbers make it a no-op
                # for whatever did get written
                log.warning("daily_write_failed", error=map_exception(exc).message)
                continue
            for _, _, m in items:
                with contextlib.suppress(Exception):
                    await m.ack()

    async def _loop(self) -> None:
        while not self._closing.is_set():
            try:
                msgs = await Bus.fetch(self._sub, self.batch, 1.0)
            except Exception as exc:
                log.warning("daily_fetch_failed", error=map_exception(exc).message)
                await asyncio.sleep(0.5)
                continue
            if msgs:
                try:
                    await self.apply_batch(msgs)
                except Exception:
                    log.exception("daily_batch_failed")

    async def query(self, q: contract.DailyQuery) -> bytes:
        rec, _ = await self.read(q.user)
        days = max(1, min(q.days, KEEP_DAYS))
        return document(rec, days, int(time.time()) // _DAY)

    async def _on_query(self, msg: Msg) -> None:
        try:
            q = contract.daily_query_decoder.decode(msg.data)
            out = contract.encode(contract.UsageReply(await self.query(q)))
        except Exception as exc:
            out = contract.encode(contract.error_reply(map_exception(exc)))
        if msg.reply:
            await msg.respond(out)
