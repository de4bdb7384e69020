"""Backup and restore of everything Janus keeps in JetStream, for ``janus backup`` / ``janus restore``.

    backup:  every entry of the budget, API-key and BYOK buckets, every message of the ledger and of
             the settlements not yet applied  ->  one JSON object per line (values in base64)
    restore: into a fresh JetStream: the buckets and streams created as the services create them,
             the entries put back, the messages published again with their message ids

The file holds budgets, key hashes and sealed BYOK keys (never a key in clear: API keys are stored
hashed and BYOK keys sealed with JANUS_BYOK_KEY, which the file does not contain); keep it as
private as the cluster's volumes. Settlements are published again with their request id as the
message id, and metering settles idempotently by request id, so restoring a settlement already
applied to a restored budget changes nothing.

A backup is a consistent picture of each bucket or stream, not of all of them at one instant: take
it with the gateways scaled to zero (or accept that requests in flight during the backup may be
missing from it, as after any crash).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import IO, Any

from shared import subjects
from shared.bus import Bus, KeyNotFound
from shared.streams import ensure_ledger_stream, ensure_settlement_stream

BUCKETS = (subjects.BUDGET_BUCKET, subjects.KEYS_BUCKET, subjects.BYOK_BUCKET)
STREAMS = (subjects.LEDGER_STREAM, subjects.SETTLE_STREAM)
FORMAT = "janus-backup/1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def backup(bus: Bus, out: IO[str]) -> dict[str, int]:
    """Write every bucket entry and stream message; returns the counts written per bucket or stream."""
    counts: dict[str, int] = {}
    out.write(json.dumps({"format": FORMAT}) + "\n")
    for bucket in BUCKETS:
        kv = await bus.kv(bucket)
        n = 0
        for key in await Bus.kv_keys(kv):
            try:
                value, _rev = await Bus.kv_get(kv, key)
            except KeyNotFound:
                continue  # deleted since the listing
            out.write(json.dumps({"bucket": bucket, "key": key, "value": _b64(value)}) + "\n")
            n += 1
        counts[bucket] = n
    for stream in STREAMS:
        n = 0
        async for msg in _messages(bus, stream):
            out.write(json.dumps(msg) + "\n")
            n += 1
        counts[stream] = n
    return counts


async def _messages(bus: Bus, stream: str) -> AsyncIterator[dict[str, str]]:
    async for subject, data, headers in bus.stream_messages(stream):
        msg_id = headers.get("Nats-Msg-Id", "")
        yield {"stream": stream, "subject": subject, "data": _b64(data), "msg_id": msg_id}


def _lines(src: Iterable[str]) -> Iterator[dict[str, Any]]:
    it = iter(src)
    head = json.loads(next(it, "{}") or "{}")
    if head.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    for line in it:
        if line.strip():
            yield json.loads(line)


async def restore(
    bus: Bus, src: Iterable[str], replicas: int = 1, *, ledger_max_age: float = 0.0, ledger_max_bytes: int = 0
) -> dict[str, int]:
    """Put a backup back; returns the counts restored per bucket or stream."""
    kvs = {b: await bus.kv(b, replicas=replicas) for b in BUCKETS}
    await ensure_settlement_stream(bus, replicas)
    await ensure_ledger_stream(bus, replicas, max_age=ledger_max_age, max_bytes=ledger_max_bytes)
    counts = dict.fromkeys([*BUCKETS, *STREAMS], 0)
    for rec in _lines(src):
        if "bucket" in rec:
            await Bus.kv_put(kvs[rec["bucket"]], rec["key"], base64.b64decode(rec["value"]))
            counts[rec["bucket"]] += 1
        elif rec.get("stream") in STREAMS:
            data = base64.b64decode(rec["data"])
            msg_id = rec["msg_id"] or f"restore-{rec['stream']}-{counts[rec['stream']]}"
            await bus.js_publish(rec["subject"], data, msg_id=msg_id)
            counts[rec["stream"]] += 1
    return counts
