"""Bring-your-own-key: a user's provider API key, encrypted at rest in KV ``janus_byok``.

The key is sealed with AES-256-GCM under ``JANUS_BYOK_KEY`` (32 random bytes, URL-safe base64;
``janus byok genkey`` prints one). The user id and provider are the associated data, so a sealed
key copied onto another user's or provider's entry fails to open instead of being used.

    store = await ByokStore.open(bus, Sealer.from_key(settings.byok_key))
    await store.set(user, provider, secret)      # the CLI and the gateway's /v1/byok API
    secret = await store.get(user, provider)     # the worker, per request; None when absent
    sealed = await store.info(user, provider)    # what a listing shows (``masked``), never decrypted
"""

from __future__ import annotations

import base64
import secrets
import time

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared import subjects
from shared.bus import Bus, KeyNotFound, KeyValue
from shared.catalog import ConfigError
from shared.errors import JanusError

ENV = "JANUS_BYOK_KEY"


class SealedKey(msgspec.Struct, omit_defaults=True):
    user: str
    provider: str
    nonce: bytes
    ciphertext: bytes
    created: float = 0.0
    hint: str = ""  # last 4 characters, to tell keys apart without decrypting
    prefix: str = ""  # first 3 characters (``sk-``) of a long key, for the same reason


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(SealedKey)


def generate_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError(f"{ENV} must be 32 bytes of URL-safe base64 (janus byok genkey)")
        self._aead = AESGCM(key)

    @classmethod
    def from_key(cls, raw: str) -> Sealer:
        """From the setting's text (``JANUS_BYOK_KEY``)."""
        if not raw:
            raise ConfigError(f"{ENV} is not set (janus byok genkey prints a fresh one)")
        try:
            key = base64.urlsafe_b64decode(raw.encode())
        except ValueError:
            raise ConfigError(f"{ENV} is not URL-safe base64") from None
        return cls(key)

    @staticmethod
    def _aad(user: str, provider: str) -> bytes:
        return f"janus-byok\x00{user}\x00{provider}".encode()

    def seal(self, user: str, provider: str, secret: str) -> SealedKey:
        nonce = secrets.token_bytes(12)
        ct = self._aead.encrypt(nonce, secret.encode(), self._aad(user, provider))
        # a short key shows nothing of itself: 7 known characters of 12 would leave too little secret
        return SealedKey(
            user,
            provider,
            nonce,
            ct,
            time.time(),
            secret[-4:] if len(secret) >= 12 else "",
            secret[:3] if len(secret) >= 20 else "",
        )

    def open(self, sealed: SealedKey, user: str, provider: str) -> str:
        """Decrypt for the entry it was read from: the AAD is who asks, not what the record says."""
        try:
            return self._aead.decrypt(sealed.nonce, sealed.ciphertext, self._aad(user, provider)).decode()
        except InvalidTag:
            # never the user's fault, and never worth the key in a log line
            raise JanusError(
                "a stored provider key cannot be decrypted (wrong JANUS_BYOK_KEY?)", code="byok_undecryptable"
            ) from None


MIN_SECRET, MAX_SECRET = 8, 4096


def clean_secret(secret: str) -> str:
    """The key without surrounding whitespace, or ValueError (whose message never repeats the key).

    A key travels in an HTTP header to the provider: a control character or space inside it could
    split or forge headers there, so only printable ASCII without spaces is accepted."""
    secret = secret.strip()
    if not secret:
        raise ValueError("the provider key is empty")
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise ValueError(f"a provider key must be {MIN_SECRET} to {MAX_SECRET} characters long")
    if not (secret.isascii() and secret.isprintable()) or " " in secret:
        raise ValueError("a provider key may contain only printable ASCII characters without spaces")
    return secret


def masked(sealed: SealedKey) -> str:
    """``sk-...abcd``: enough to recognise a key, never enough to use it."""
    return f"{sealed.prefix}...{sealed.hint}"


def entry_key(user: str, provider: str) -> str:
    return f"{subjects.kv_key('y', user)}.{subjects.token(provider)}"


class ByokStore:
    """``sealer`` None: a store that can list and delete entries but neither seal nor open a key."""

    def __init__(self, kv: KeyValue, sealer: Sealer | None) -> None:
        self.kv = kv
        self._sealer = sealer

    @property
    def sealer(self) -> Sealer:
        if self._sealer is None:
            raise ConfigError(f"{ENV} is not set: provider keys can be neither stored nor used")
        return self._sealer

    @property
    def can_seal(self) -> bool:
        return self._sealer is not None

    @classmethod
    async def open(
        cls, bus: Bus, sealer: Sealer | None, replicas: int = 1, *, create: bool = True
    ) -> ByokStore:
        """``create=False``: wait for metering to have made the bucket (a worker may not make it)."""
        return cls(await bus.kv(subjects.BYOK_BUCKET, replicas=replicas, create=create), sealer)

    async def set(self, user: str, provider: str, secret: str) -> SealedKey:
        sealed = self.sealer.seal(user, provider, clean_secret(secret))
        await Bus.kv_put(self.kv, entry_key(user, provider), _enc.encode(sealed))
        return sealed

    async def get(self, user: str, provider: str) -> str | None:
        """The user's plaintext key for ``provider``, or None when they registered none."""
        try:
            data, _ = await Bus.kv_get(self.kv, entry_key(user, provider))
        except KeyNotFound:
            return None
        return self.sealer.open(_dec.decode(data), user, provider)

    async def info(self, user: str, provider: str) -> SealedKey | None:
        """The sealed entry as stored (its hint and creation time), without decrypting it."""
        try:
            data, _ = await Bus.kv_get(self.kv, entry_key(user, provider))
        except KeyNotFound:
            return None
        return _dec.decode(data)

    async def delete(self, user: str, provider: str) -> bool:
        key = entry_key(user, provider)
        try:
            await Bus.kv_get(self.kv, key)
        except KeyNotFound:
            return False
        await Bus.kv_delete(self.kv, key)
        return True
