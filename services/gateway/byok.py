"""Does this user bring their own key for this provider? Asked once per request, answered from a
short cache, so the hot path almost never leaves the process.

The gateway only checks that an entry exists (it never holds the decryption key); the worker opens
it. A request served on the user's own key is reserved and settled with ``byok=True``: recorded as
usage, charged no credits, and kept on deployments of that provider only.
"""

from __future__ import annotations

import time

from shared import subjects
from shared.bus import Bus, KeyNotFound, KeyValue
from shared.byok import entry_key
from shared.logging import get_logger

log = get_logger("gateway.byok")


class ByokProbe:
    def __init__(self, ttl_seconds: float = 5.0, max_entries: int = 50_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._kv: KeyValue | None = None
        self._cache: dict[tuple[str, str], tuple[bool, float]] = {}

    async def start(self, bus: Bus, replicas: int = 1) -> None:
        self._kv = await bus.kv(subjects.BYOK_BUCKET, replicas=replicas)

    async def has(self, user: str, provider: str) -> bool:
        now = time.monotonic()
        hit = self._cache.get((user, provider))
        if hit is not None and hit[1] > now:
            return hit[0]
        found = False
        if self._kv is not None:
            try:
                await Bus.kv_get(self._kv, entry_key(user, provider))
                found = True
            except KeyNotFound:
                found = False
            except Exception as exc:  # the store is an optimisation for the user: serve on ours
                log.warning("byok_lookup_failed", error=type(exc).__name__)
                return False
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[(user, provider)] = (found, now + self.ttl)
        return found
