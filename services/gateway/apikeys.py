"""Issued API keys (``sk-janus-...``): looked up by SHA-256 digest in JetStream KV, cached briefly.

    key -> sha256 hex -> cache hit?  -> Principal
                       -> KV bucket subjects.KEYS_BUCKET -> KeyRecord -> cache (positive, short)
                       -> absent / revoked / expired      -> cache (negative, briefer) -> 401

Every gateway replica subscribes to ``subjects.KEYS_REVOKED`` (a broadcast, no queue group) and
drops a revoked digest from its cache as soon as the message arrives, so a revocation holds
everywhere within the bus's latency. A lookup that was already reading KV when a revocation arrived
does not cache its answer (the epoch check below), so a stale read cannot resurrect the key. If a
revocation is missed while NATS is down, the positive TTL bounds how long the key keeps working.

Concurrent requests with the same uncached key share one KV read.

The record, its format and the revocation broadcast live in ``shared.apikeys``; this module is the
gateway's cache in front of them.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from shared import subjects
from shared.apikeys import KeyRecord, decode_record, hash_key, record_key, watch_revocations
from shared.bus import Bus, KeyNotFound, KeyValue, map_exception
from shared.errors import JanusError, ServiceUnavailable
from shared.logging import get_logger

log = get_logger("gateway.apikeys")

_MAX_CACHE = 50_000


class ApiKeys:
    def __init__(self, *, ttl: float, negative_ttl: float, replicas: int = 1) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.replicas = replicas
        # digest -> (record or None for "no such usable key", valid until)
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        self._inflight: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self._epoch = 0  # bumped by every revocation
        self._bus: Bus | None = None
        self._kv: KeyValue | None = None
        self._kv_lock = asyncio.Lock()

    async def start(self, bus: Bus) -> None:
        self._bus = bus
        await watch_revocations(bus, self.revoke)

    def revoke(self, digest: str) -> None:
        self._epoch += 1
        self._cache[digest] = (None, time.monotonic() + max(self.ttl, self.negative_ttl))

    async def lookup(self, key: str) -> KeyRecord | None:
        """The key's record when it is usable (exists, not revoked, not expired), else None."""
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return _usable(hit[0])
        pending = self._inflight.get(digest)
        if pending is not None:
            return _usable(await asyncio.shield(pending))
        fut: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        epoch = self._epoch
        try:
            record = await self._read(digest)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: sharers re-raise it; nobody else needs to see it logged
            raise
        finally:
            del self._inflight[digest]
        fut.set_result(record)
        if epoch == self._epoch:
            self._remember(digest, record)
        return _usable(record)

    async def _read(self, digest: str) -> KeyRecord | None:
        try:
            kv = await self._bucket()
            value, _ = await Bus.kv_get(kv, record_key(digest))
        except KeyNotFound:
            return None
        except JanusError:
            raise
        except Exception as exc:
            # the key store is unreachable: an outage, not a wrong key
            err = map_exception(exc)
            raise ServiceUnavailable("The API key store is unavailable; try again shortly.",
                                     code="key_store_unavailable") from err
        try:
            return decode_record(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("bad_key_record")
            return None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            async with self._kv_lock:
                if self._kv is None:
                    if self._bus is None:
                        raise ServiceUnavailable("The API key store is not connected.")
                    self._kv = await self._bus.kv(subjects.KEYS_BUCKET, create=False, wait=0)
        return self._kv

    def _remember(self, digest: str, record: KeyRecord | None) -> None:
        cache = self._cache
        if len(cache) >= _MAX_CACHE:
            now = time.monotonic()
            for k in [k for k, (_, until) in cache.items() if until <= now]:
                del cache[k]
            if len(cache) >= _MAX_CACHE:
                for k in list(cache)[: _MAX_CACHE // 4]:
                    del cache[k]
        usable = _usable(record) is not None
        ttl = self.ttl if usable else self.negative_ttl
        if usable and record is not None and record.expires is not None:
            # never hold a key past its expiry (the cache clock is monotonic, expiry is wall time)
            ttl = min(ttl, max(0.0, record.expires - time.time()))
        cache[digest] = (record, time.monotonic() + ttl)


def _usable(record: KeyRecord | None) -> KeyRecord | None:
    if record is None or record.revoked is not None:
        return None
    if record.expires is not None and record.expires <= time.time():
        return None
    return record
