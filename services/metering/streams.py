"""Metering's use of its streams: dead letters and ledger entries written, the ledger read in
ranges (the streams themselves are declared in ``shared.streams``)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import NamedTuple

from shared import subjects
from shared.bus import Bus
from shared.contract import DeadLetter, LedgerBundle, LedgerEntry, encode
from shared.errors import JanusError, ServiceUnavailable

_LEDGER_GET = f"$JS.API.DIRECT.GET.{subjects.LEDGER_STREAM}"
_READ_MAX_BYTES = 4 * 1024 * 1024  # one read's answer at most: a batch of large entries ends early


async def dead_letter(bus: Bus, letter: DeadLetter, sequence: int, part: int = -1) -> None:
    """Store ``letter``, de-duplicated by the settlement message's stream sequence and, for one
    settlement of a bundle, its place in it (a replica that crashed after storing it but before
    removing the message stores it once)."""
    key = f"settle-{sequence}" if part < 0 else f"settle-{sequence}.{part}"
    await bus.js_publish(subjects.SETTLE_DEAD, encode(letter), msg_id=key)


async def publish_ledger(
    bus: Bus, messages: list[tuple[LedgerEntry | LedgerBundle, str]], timeout: float = 5.0
) -> list[JanusError | None]:
    """Append each (entry or bundle of entries, its id) to the ledger, de-duplicated by that id, in
    one JetStream round trip; one outcome per message (None: stored). A failed message's
    settlements are redelivered and publish it again."""
    return await bus.js_publish_batch(
        subjects.LEDGER,
        [(encode(m), msg_id) for m, msg_id in messages],
        store=subjects.LEDGER_STREAM,
        timeout=timeout,
    )


class LedgerRange(NamedTuple):
    entries: list[tuple[int, bytes]]  # (stream sequence, data), in order
    pending: int  # entries after the last one read (0 when none was)


async def read_ledger(bus: Bus, first: int, batch: int, timeout: float = 5.0) -> LedgerRange:
    """Up to ``batch`` ledger entries from stream sequence ``first`` on, and how many follow them.

    One batched direct get (ADR-31): a single request, answered by any replica of the stream, and no
    consumer whose acknowledgements would cost a message per entry. The reader keeps its own
    position. An answer cut short by ``timeout`` is returned as far as it came (a prefix, so no
    entry is skipped); none at all raises ServiceUnavailable.
    """
    nc = bus.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    out: list[tuple[int, bytes]] = []
    pending = 0
    deadline = time.monotonic() + timeout
    request = json.dumps({"seq": first, "batch": batch, "max_bytes": _READ_MAX_BYTES}).encode()
    try:
        await nc.publish(_LEDGER_GET, request, reply=inbox)
        while len(out) < batch:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                m = await sub.next_msg(left)
            except TimeoutError:
                if out:
                    return LedgerRange(out, pending)
                raise ServiceUnavailable("the ledger did not answer a read in time") from None
            headers = m.headers or {}
            status = headers.get("Status")
            if status == "204" or status == "404":  # end of the batch; nothing at or after ``first``
                break
            if status:
                raise ServiceUnavailable(f"the ledger refused a read ({status})")
            out.append((int(headers["Nats-Sequence"]), m.data))
            pending = int(headers.get("Nats-Num-Pending") or 0)
        return LedgerRange(out, pending)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
