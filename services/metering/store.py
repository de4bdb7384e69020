"""Read-modify-write of budget records over JetStream KV, always by compare-and-set.

Replicas never coordinate except through the record's revision: every write names the revision it
read, and a write that lost to another replica re-reads and applies the change again. A local cache
of (bytes, revision) saves the read on the hot path; it is only a guess, because a stale entry just
costs one CAS conflict. Within one process a per-key lock queues changes to the same user, so a
burst from one user does not turn into a storm of conflicts against itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from services.metering.record import Record, decode_record, encode_record, user_key
from shared import metrics
from shared.bus import Bus, CasConflict, KeyNotFound, KeyValue
from shared.errors import ServiceUnavailable

T = TypeVar("T")

MAX_ATTEMPTS = 64


class _KeyLocks:
    """asyncio locks per key, dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, n = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, n + 1)
        try:
            async with lock:
                yield
        finally:
            _, n = self._locks[key]
            if n <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, n - 1)


class BudgetStore:
    def __init__(self, kv: KeyValue, *, cache_size: int = 20_000) -> None:
        self.kv = kv
        self._cache: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._cache_size = cache_size
        self._locks = _KeyLocks()

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

    async def update(self, user: str, change: Callable[[Record], tuple[T, bool]], *,
                     key: str | None = None) -> T:
        """Apply ``change`` to the user's record and write it back by CAS, retrying on conflicts.

        ``change`` gets a freshly decoded record (never one a failed attempt has mutated) and
        returns (result, changed); nothing is written when ``changed`` is False.
        """
        key = key or user_key(user)
        async with self._locks.hold(key):
            cached = self._cache.get(key)
            for attempt in range(MAX_ATTEMPTS):
                if cached is None:
                    try:
                        data, rev = await Bus.kv_get(self.kv, key)
                    except KeyNotFound:
                        data, rev = b"", 0
                else:
                    data, rev = cached
                rec = decode_record(data) if data else Record(user=user)
                result, changed = change(rec)
                if not changed:
                    return result
                new = encode_record(rec)
                try:
                    new_rev = await Bus.kv_cas(self.kv, key, new, rev)
                except CasConflict:
                    metrics.CAS_RETRIES.inc()
                    self._cache.pop(key, None)
                    cached = None
                    if attempt > 2:
                        # replicas racing on one user: spread them out a little
                        await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                    continue
                except Exception:
                    # unknown outcome (timeout, reconnect): the next attempt must re-read
                    self._cache.pop(key, None)
                    raise
                self._remember(key, new, new_rev)
                return result
        raise ServiceUnavailable("budget record is too contended, try again", code="metering_contention")

    def _remember(self, key: str, data: bytes, rev: int) -> None:
        self._cache[key] = (data, rev)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def keys(self) -> list[str]:
        return [k for k in await Bus.kv_keys(self.kv) if k.startswith("b.")]
