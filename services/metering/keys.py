"""Issued API keys (``sk-janus-<random>``), stored only as SHA-256 hashes in KV ``janus_keys``.

    create(user, plan, name) -> the plaintext key, shown once, and its record
    lookup(hash)             -> the record (the gateway hashes the bearer token and looks it up)
    list(user=None)          -> records, newest first
    revoke(id or prefix)     -> marks the record revoked and broadcasts ``KeyRevoked`` on
                                ``janus.keys.revoked`` so every gateway drops its cached copy

A key is found by its hash alone, so the plaintext never needs to be stored or logged. The record's
``id`` is the first 16 hex digits of the hash: enough to name a key in a CLI, useless to forge one.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec

from shared import contract, subjects
from shared.bus import Bus, CasConflict, KeyNotFound, KeyValue, Msg
from shared.errors import InvalidRequest, NotFound

PREFIX = "sk-janus-"
_ID_LEN = 16


class KeyRecord(msgspec.Struct, omit_defaults=True):
    id: str
    user: str
    plan: str
    name: str = ""
    created: float = 0.0
    revoked: float | None = None  # unix seconds; None while the key is valid
    hint: str = ""  # the key's last 4 characters, for telling keys apart in a listing

    @property
    def active(self) -> bool:
        return self.revoked is None


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(KeyRecord)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(PREFIX) and len(token) > len(PREFIX) + 16


def _kv_key(key_hash: str) -> str:
    return f"k.{key_hash}"


class KeyStore:
    def __init__(self, bus: Bus, kv: KeyValue) -> None:
        self.bus = bus
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus, replicas: int = 1) -> KeyStore:
        return cls(bus, await bus.kv(subjects.KEYS_BUCKET, replicas=replicas))

    async def create(self, user: str, plan: str, name: str = "") -> tuple[str, KeyRecord]:
        if not user or not plan:
            raise InvalidRequest("a key needs a user and a plan")
        plaintext = PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(plaintext)
        rec = KeyRecord(id=digest[:_ID_LEN], user=user, plan=plan, name=name, created=time.time(),
                        hint=plaintext[-4:])
        await Bus.kv_cas(self.kv, _kv_key(digest), _enc.encode(rec), 0)
        return plaintext, rec

    async def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record for a key's hash (revoked ones included: the caller checks ``active``)."""
        try:
            data, _ = await Bus.kv_get(self.kv, _kv_key(key_hash))
        except KeyNotFound:
            return None
        return _dec.decode(data)

    async def authenticate(self, plaintext: str) -> KeyRecord | None:
        """The active record for a plaintext key, or None."""
        if not looks_like_key(plaintext):
            return None
        rec = await self.lookup(hash_key(plaintext))
        return rec if rec is not None and rec.active else None

    async def list(self, user: str | None = None) -> list[KeyRecord]:
        out = []
        for k in await Bus.kv_keys(self.kv):
            if not k.startswith("k."):
                continue
            rec = await self.lookup(k[2:])
            if rec is not None and (user is None or rec.user == user):
                out.append(rec)
        return sorted(out, key=lambda r: r.created, reverse=True)

    async def _resolve(self, ref: str) -> str:
        """A key's hash from its id, an id prefix, or the plaintext key itself."""
        ref = ref.strip()
        if looks_like_key(ref):
            return hash_key(ref)
        if len(ref) < 4:
            raise InvalidRequest("give at least 4 characters of the key id")
        hits = [k[2:] for k in await Bus.kv_keys(self.kv) if k.startswith("k." + ref.lower())]
        if not hits:
            raise NotFound(f"no key with id {ref!r}")
        if len(hits) > 1:
            raise InvalidRequest(f"{ref!r} matches {len(hits)} keys; give more of the id")
        return hits[0]

    async def revoke(self, ref: str) -> KeyRecord:
        digest = await self._resolve(ref)
        key = _kv_key(digest)
        for _ in range(16):
            try:
                data, rev = await Bus.kv_get(self.kv, key)
            except KeyNotFound:
                raise NotFound(f"no key with id {ref!r}") from None
            rec = _dec.decode(data)
            if rec.revoked is None:
                rec.revoked = time.time()
                try:
                    await Bus.kv_cas(self.kv, key, _enc.encode(rec), rev)
                except CasConflict:
                    continue
            # broadcast even when it was already revoked: a gateway that missed it hears it now
            await self.bus.publish(subjects.KEYS_REVOKED, contract.encode(contract.KeyRevoked(digest)))
            await self.bus.flush()
            return rec
        raise InvalidRequest("the key is changing too often to revoke; try again")


async def watch_revocations(bus: Bus, on_revoked: Callable[[str], Awaitable[None]]) -> None:
    """Call ``on_revoked(key_hash)`` for every revocation (every gateway hears every one)."""

    async def handle(msg: Msg) -> None:
        try:
            ev = contract.key_revoked_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        await on_revoked(ev.key_hash)

    await bus.serve(subjects.KEYS_REVOKED, handle)
