"""Issued API keys (``sk-janus-<random>``): the one record, format, store and revocation listener.

    create(user, plan, name) -> the plaintext key, shown once, and its record
    lookup(hash)             -> the record (the gateway hashes the bearer token and looks it up)
    list(user)               -> one owner's records, newest first (from the owner's index)
    list()                   -> every record (a scan: the operator's CLI only)
    revoke(ref, owner=None)  -> marks the record revoked and broadcasts ``KeyRevoked`` on
                                ``janus.keys.revoked`` so every gateway drops its cached copy

Stored in KV ``janus_keys``:

    k.<sha256 hex of the key>   msgpack KeyRecord (the plaintext is never stored or logged)
    o.<user kv key>             msgpack list of the owner's key hashes, oldest first (the index)

The record's ``id`` is the first 16 hex digits of the hash: enough to name a key, useless to forge
one. A user holds at most ``MAX_ACTIVE`` usable keys and the index at most ``MAX_LISTED`` entries
(the oldest revoked ones drop out of the listing first), so a caller cannot grow the store or the
listing without bound. Readers ignore fields they do not know, so a newer writer's records still
read during a rolling upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable

import msgspec

from shared import contract, subjects
from shared.bus import Bus, CasConflict, KeyNotFound, KeyValue, Msg
from shared.errors import InvalidRequest, NotFound, PermissionDenied

PREFIX = "sk-janus-"
ID_LEN = 16
MAX_ACTIVE = 20
MAX_LISTED = 50
MAX_NAME = 64
_CAS_TRIES = 16


class KeyRecord(msgspec.Struct, omit_defaults=True):
    id: str
    user: str
    plan: str
    name: str = ""
    created: float = 0.0
    revoked: float | None = None  # unix seconds; None while the key is valid
    expires: float | None = None  # unix seconds; None: never
    hint: str = ""  # the key's last 4 characters, for telling keys apart in a listing

    @property
    def active(self) -> bool:
        return self.revoked is None and (self.expires is None or self.expires > time.time())


_enc = msgspec.msgpack.Encoder()
decode_record = msgspec.msgpack.Decoder(KeyRecord).decode
_decode_index = msgspec.msgpack.Decoder(list[str]).decode


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def looks_like_key(token: str) -> bool:
    return token.startswith(PREFIX) and len(token) > len(PREFIX) + 16


def record_key(digest: str) -> str:
    return f"k.{digest}"


def _index_key(user: str) -> str:
    return subjects.kv_key("o", user)


class KeyStore:
    def __init__(self, bus: Bus, kv: KeyValue) -> None:
        self.bus = bus
        self.kv = kv
        # one index update per user at a time in this process, so a burst of creates by one caller
        # queues here instead of losing compare-and-set races (other replicas still race, and retry)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    async def open(cls, bus: Bus, replicas: int = 1, *, create: bool = True, wait: float = 30.0) -> KeyStore:
        """``create=False``: the bucket is metering's to make (the gateway may only write records)."""
        return cls(bus, await bus.kv(subjects.KEYS_BUCKET, replicas=replicas, create=create, wait=wait))

    async def create(self, user: str, plan: str, name: str = "") -> tuple[str, KeyRecord]:
        if not user or not plan:
            raise InvalidRequest("a key needs a user and a plan")
        if len(name) > MAX_NAME or not name.isprintable():
            raise InvalidRequest(
                f"a key's name is at most {MAX_NAME} printable characters", param="name", code="invalid_value"
            )
        plaintext = PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(plaintext)
        rec = KeyRecord(
            id=digest[:ID_LEN], user=user, plan=plan, name=name, created=time.time(), hint=plaintext[-4:]
        )
        # the index first: a record that exists must always be listed (and so revocable by its owner)
        await self._index_add(user, digest)
        await Bus.kv_cas(self.kv, record_key(digest), _enc.encode(rec), 0)
        return plaintext, rec

    async def lookup(self, digest: str) -> KeyRecord | None:
        """The record for a key's hash (revoked ones included: the caller checks ``active``)."""
        try:
            data, _ = await Bus.kv_get(self.kv, record_key(digest))
        except KeyNotFound:
            return None
        try:
            return decode_record(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def authenticate(self, plaintext: str) -> KeyRecord | None:
        """The active record for a plaintext key, or None."""
        if not looks_like_key(plaintext):
            return None
        rec = await self.lookup(hash_key(plaintext))
        return rec if rec is not None and rec.active else None

    async def _index(self, user: str) -> tuple[list[str], int]:
        try:
            data, rev = await Bus.kv_get(self.kv, _index_key(user))
        except KeyNotFound:
            return [], 0
        try:
            return _decode_index(data), rev
        except (msgspec.DecodeError, msgspec.ValidationError):
            return [], rev

    async def _index_add(self, user: str, digest: str) -> None:
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = asyncio.Lock()
        async with lock:
            await self._index_add_locked(user, digest)

    async def _index_add_locked(self, user: str, digest: str) -> None:
        for _ in range(_CAS_TRIES):
            digests, rev = await self._index(user)
            records = [(d, await self.lookup(d)) for d in digests]
            live = [(d, r) for d, r in records if r is not None]
            if sum(1 for _, r in live if r.active) >= MAX_ACTIVE:
                raise PermissionDenied(
                    f"You have {MAX_ACTIVE} active API keys; revoke one to create another.",
                    code="too_many_keys",
                )
            # records that never got written (a create that failed half way) and, past the cap,
            # the oldest revoked keys leave the listing
            kept = [d for d, _ in live]
            while len(kept) >= MAX_LISTED:
                oldest_revoked = next(d for d, r in live if not r.active and d in kept)
                kept.remove(oldest_revoked)
            kept.append(digest)
            try:
                await Bus.kv_cas(self.kv, _index_key(user), _enc.encode(kept), rev)
                return
            except CasConflict:
                continue
        raise InvalidRequest("Your keys are changing too often; try again.", status=409, code="conflict")

    async def list(self, user: str | None = None) -> list[KeyRecord]:
        if user is not None:
            digests = (await self._index(user))[0]
        else:
            digests = [k[2:] for k in await Bus.kv_keys(self.kv) if k.startswith("k.")]
        out = []
        for d in digests:
            rec = await self.lookup(d)
            if rec is not None and (user is None or rec.user == user):
                out.append(rec)
        return sorted(out, key=lambda r: r.created, reverse=True)

    async def _resolve(self, ref: str, owner: str | None) -> str:
        """A key's hash from its id, an id prefix, or the plaintext key itself (the operator's
        CLI). With ``owner`` (the HTTP API, where ``ref`` is in a URL), only a full id of that
        user's own keys: a key itself is refused unread, so no secret ends up in access logs, and
        another user's key is as absent as one that never existed."""
        ref = ref.strip()
        if owner is not None:
            if ref.startswith("sk-"):
                raise InvalidRequest(
                    "Name a key by its id, never by the key itself: URLs end up in logs.",
                    param="id",
                    code="invalid_value",
                )
            ref = ref.lower()
            if len(ref) == ID_LEN:
                for d in (await self._index(owner))[0]:
                    if d[:ID_LEN] == ref:
                        return d
            raise NotFound("You have no API key with this id.", param="id", code="key_not_found")
        if looks_like_key(ref):
            return hash_key(ref)
        ref = ref.lower()
        if len(ref) < 4:
            raise InvalidRequest("give at least 4 characters of the key id")
        hits = [k[2:] for k in await Bus.kv_keys(self.kv) if k.startswith("k." + ref)]
        if not hits:
            raise NotFound(f"no key with id {ref!r}")
        if len(hits) > 1:
            raise InvalidRequest(f"{ref!r} matches {len(hits)} keys; give more of the id")
        return hits[0]

    async def revoke(
        self, ref: str, owner: str | None = None, *, evict: Callable[[str], object] | None = None
    ) -> KeyRecord:
        """``evict(key_hash)`` runs once the record says revoked, before the broadcast goes out: the
        revoking gateway drops its own cached copy at once, so the caller's next request is refused
        even if it beats the broadcast back to this replica."""
        digest = await self._resolve(ref, owner)
        key = record_key(digest)
        for _ in range(_CAS_TRIES):
            try:
                data, rev = await Bus.kv_get(self.kv, key)
            except KeyNotFound:
                raise NotFound(f"no key with id {ref[:ID_LEN]!r}", code="key_not_found") from None
            rec = decode_record(data)
            if owner is not None and rec.user != owner:
                raise NotFound("You have no API key with this id.", param="id", code="key_not_found")
            if rec.revoked is None:
                rec.revoked = time.time()
                try:
                    await Bus.kv_cas(self.kv, key, _enc.encode(rec), rev)
                except CasConflict:
                    continue
            if evict is not None:
                evict(digest)
            # broadcast even when it was already revoked: a gateway that missed it hears it now
            await self.bus.publish(subjects.KEYS_REVOKED, contract.encode(contract.KeyRevoked(digest)))
            await self.bus.flush()
            return rec
        raise InvalidRequest("the key is changing too often to revoke; try again")


async def watch_revocations(bus: Bus, on_revoked: Callable[[str], Awaitable[None] | None]) -> None:
    """Call ``on_revoked(key_hash)`` for every revocation (every gateway hears every one: a
    broadcast, no queue group)."""

    async def handle(msg: Msg) -> None:
        try:
            ev = contract.key_revoked_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        done = on_revoked(ev.key_hash)
        if done is not None:
            await done

    await bus.serve(subjects.KEYS_REVOKED, handle, concurrency=16)


__all__ = [
    "MAX_ACTIVE",
    "PREFIX",
    "KeyRecord",
    "KeyStore",
    "hash_key",
    "looks_like_key",
    "watch_revocations",
]
