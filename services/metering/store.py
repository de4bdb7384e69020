"""Read-modify-write of budget records over JetStream KV, always by compare-and-set, with group commit.

Replicas never coordinate except through the record's revision: every write names the revision it
read, and a write that lost to another replica re-reads and applies the change again. A local cache
of (bytes, revision) saves the read on the hot path; it is only a guess, because a stale entry just
costs one CAS conflict. A batch that changes nothing is never answered from the cache: with no
write there is no conflict to reveal a stale copy, so it is decided again on a fresh read.

Group commit: within one process each user has at most one write in flight. Changes (reserves,
settlements, reaps) that arrive for that user while it is in flight queue up; when it completes,
all of them are applied together to one decoded record, in arrival order, and persisted with ONE
CAS write. Every waiter is answered only after the write that contains its change succeeded (or
with the error that write met). On a conflict the whole batch is re-applied to the fresh record,
so a batch is exactly as if its changes had been written one after the other. A burst from one user
therefore costs one KV round trip per batch instead of one per request, and no conflicts against
itself.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from services.metering.record import Record, decode_record, encode_record, user_key
from shared import metrics
from shared.bus import Bus, CasConflict, KeyNotFound, KeyValue
from shared.errors import ServiceUnavailable

T = TypeVar("T")

MAX_ATTEMPTS = 64

Change = Callable[[Record], tuple[Any, bool]]


class _Op:
    """One queued change and the future its caller awaits."""

    __slots__ = ("change", "future")

    def __init__(self, change: Change, future: asyncio.Future[Any]) -> None:
        self.change = change
        self.future = future

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():  # a caller that gave up has cancelled it
            self.future.set_exception(exc)


class _Queue:
    """The changes waiting for one key while its committer writes the previous batch."""

    __slots__ = ("ops", "user")

    def __init__(self, user: str) -> None:
        self.user = user
        self.ops: list[_Op] = []


def _apply(
    user: str, data: bytes, batch: list[_Op], rec: Record | None = None
) -> tuple[Record, list[_Op], list[Any], bool]:
    """Apply ``batch`` in order to ``rec`` (the decoded ``data``, decoded here when not given).

    A change that raises fails its own caller only; the record it may have half-mutated is thrown
    away and the batch re-applied to a fresh decode without it. Returns (record, surviving ops,
    their results, changed).
    """
    while True:
        if rec is None:
            rec = decode_record(data) if data else Record(user=user)
        results: list[Any] = []
        changed = False
        for i, op in enumerate(batch):
            try:
                result, ch = op.change(rec)
            except Exception as exc:
                op.fail(exc)
                batch = batch[:i] + batch[i + 1 :]
                rec = None
                break
            results.append(result)
            changed = changed or ch
        else:
            return rec, batch, results, changed


class BudgetStore:
    def __init__(self, kv: KeyValue, *, cache_size: int = 20_000, decoded_size: int = 512) -> None:
        self.kv = kv
        self._cache: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._cache_size = cache_size
        # the record each recent write left behind, still decoded, by revision: a busy user's next
        # batch starts from it instead of decoding every hold and settled id again. Smaller than the
        # bytes cache, because a decoded record takes about three times the memory.
        self._decoded: OrderedDict[str, tuple[int, Record]] = OrderedDict()
        self._decoded_size = decoded_size
        self._queues: dict[str, _Queue] = {}
        # strong references: the loop keeps only weak ones to running tasks
        self._committers: set[asyncio.Task[None]] = set()
        self.bytes_written = 0  # by every successful write: what the settlement loop paces itself on

    async def read(self, key: str) -> tuple[Record | None, int]:
        """The stored record and its revision, fresh from KV (never from the cache)."""
        try:
            data, rev = await Bus.kv_get(self.kv, key)
        except KeyNotFound:
            self._cache.pop(key, None)
            return None, 0
        self._remember(key, data, rev)
        return decode_record(data), rev

    async def read_user(self, user: str) -> Record:
        rec, _ = await self.read(user_key(user))
        return rec if rec is not None else Record(user=user)

    async def update(
        self, user: str, change: Callable[[Record], tuple[T, bool]], *, key: str | None = None
    ) -> T:
        """Apply ``change`` to the user's record and write it back by CAS, retrying on conflicts.

        ``change`` must be a pure function of the record (it may run again on a fresh copy after a
        conflict) and returns (result, changed); a batch in which no change reports ``changed`` is
        not written. The result is returned once the write that contains the change succeeded.
        """
        return await self.submit(user, change, key=key)

    def submit(
        self, user: str, change: Callable[[Record], tuple[T, bool]], *, key: str | None = None
    ) -> asyncio.Future[T]:
        """``update`` as a future, so a caller can queue many changes without a task for each."""
        key = key or user_key(user)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(user)
            # started on the next loop turn, so changes arriving in this one join the first batch
            task = loop.create_task(self._commit_loop(key, q))
            self._committers.add(task)
            task.add_done_callback(self._committers.discard)
        q.ops.append(_Op(change, future))
        return future

    async def _commit_loop(self, key: str, q: _Queue) -> None:
        batch: list[_Op] = []
        try:
            while q.ops:
                batch, q.ops = q.ops, []
                await self._commit(key, q.user, batch)
                batch = []
        except BaseException as exc:
            # cancelled (shutdown) or a bug: nobody may wait for ever
            err = exc if isinstance(exc, Exception) else ServiceUnavailable("metering is stopping")
            for op in (*batch, *q.ops):
                op.fail(err)
            q.ops = []
            raise
        finally:
            # no await between the loop's last check of q.ops and here: nothing can slip in
            if self._queues.get(key) is q:
                del self._queues[key]

    async def _commit(self, key: str, user: str, batch: list[_Op]) -> None:
        cached = self._cache.get(key)
        # taken out: the batch mutates it, and it goes back only as the record of a successful write
        decoded = self._decoded.pop(key, None)
        for attempt in range(MAX_ATTEMPTS):
            try:
                if cached is None:
                    try:
                        data, rev = await Bus.kv_get(self.kv, key)
                    except KeyNotFound:
                        data, rev = b"", 0
                else:
                    data, rev = cached
                start = decoded[1] if decoded is not None and decoded[0] == rev else None
                decoded = None
                rec, batch, results, changed = _apply(user, data, batch, start)
                if not changed:
                    if cached is not None:
                        # a decision without a write was taken on the cached copy, which may be
                        # behind another replica's write (a lease it granted and a return for it
                        # that came here): only the current record may answer "nothing to do"
                        self._cache.pop(key, None)
                        cached = None
                        continue
                    if rev:
                        self._remember(key, data, rev)
                    _deliver(batch, results)
                    return
                new = encode_record(rec)
                new_rev = await Bus.kv_cas(self.kv, key, new, rev)
            except CasConflict:
                metrics.CAS_RETRIES.inc()
                self._cache.pop(key, None)
                cached = None
                if attempt > 2:
                    # replicas racing on one user: spread them out a little
                    await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                continue
            except Exception as exc:
                # unknown outcome (timeout, reconnect): the next attempt must re-read
                self._cache.pop(key, None)
                for op in batch:
                    op.fail(exc)
                return
            self.bytes_written += len(new)
            metrics.METER_RECORD_BYTES.observe(len(new))
            self._remember(key, new, new_rev)
            self._decoded[key] = (new_rev, rec)
            while len(self._decoded) > self._decoded_size:
                self._decoded.popitem(last=False)
            metrics.METER_COMMIT_OPS.observe(len(batch))
            _deliver(batch, results)
            return
        err = ServiceUnavailable("budget record is too contended, try again", code="metering_contention")
        for op in batch:
            op.fail(err)

    def _remember(self, key: str, data: bytes, rev: int) -> None:
        self._cache[key] = (data, rev)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def keys(self) -> list[str]:
        return [k for k in await Bus.kv_keys(self.kv) if k.startswith("b.")]


def _deliver(batch: list[_Op], results: list[Any]) -> None:
    for op, result in zip(batch, results, strict=True):
        if not op.future.done():
            op.future.set_result(result)
