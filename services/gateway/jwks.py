"""Public keys for RS*/PS*/ES* tokens: PEM files named in the settings, and a JWKS URL.

A JWKS is fetched with aiohttp (``jwt.PyJWKClient`` would block the event loop on urllib) and
cached by ``kid``. A token naming an unknown ``kid`` triggers a refresh, at most one per
``min_interval`` however many such tokens arrive (concurrent callers share one fetch), so forged
kids cannot turn the gateway into a flood against the identity provider. A background task refreshes
the set every ``refresh_interval`` so a key the provider withdrew stops being accepted.

Symmetric (``kty: oct``) and encryption (``use: enc``) keys are never taken from a JWKS: a token
signed with a published key must not verify as HMAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate

from shared.catalog import ConfigError
from shared.logging import get_logger

log = get_logger("gateway.jwks")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def key_fits(alg: str, key: object) -> bool:
    """Whether ``key`` may verify a token of algorithm ``alg`` (no cross-family use)."""
    if alg[:2] in ("RS", "PS"):
        return isinstance(key, rsa.RSAPublicKey)
    if alg.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey)
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey)
    return False


def load_pem_keys(paths: str) -> list[PublicKey]:
    """Every public key (or certificate's key) in the comma-separated PEM files."""
    keys: list[PublicKey] = []
    for raw in paths.split(","):
        path = raw.strip()
        if not path:
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"JANUS_JWT_PUBLIC_KEYS: cannot read {path}: {exc.strerror}") from None
        for block in _pem_blocks(data):
            try:
                if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
                    key: Any = load_pem_x509_certificate(block).public_key()
                else:
                    key = load_pem_public_key(block)
            except ValueError:
                raise ConfigError(f"JANUS_JWT_PUBLIC_KEYS: {path} holds a PEM block that is not a public "
                                  "key or certificate") from None
            if not isinstance(key, PublicKey):
                raise ConfigError(f"JANUS_JWT_PUBLIC_KEYS: {path}: only RSA, EC and Ed25519 keys are used")
            keys.append(key)
    if paths.strip() and not keys:
        raise ConfigError("JANUS_JWT_PUBLIC_KEYS names no PEM public key")
    return keys


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks: list[bytes] = []
    start = data.find(b"-----BEGIN ")
    while start != -1:
        end_marker = data.find(b"-----END ", start)
        if end_marker == -1:
            break
        end = data.find(b"-----", end_marker + 9)
        if end == -1:
            break
        blocks.append(data[start:end + 5])
        start = data.find(b"-----BEGIN ", end + 5)
    return blocks


class JwksKeys:
    def __init__(self, url: str, *, refresh_interval: float, min_interval: float, timeout: float) -> None:
        self.url = url
        self.refresh_interval = refresh_interval
        self.min_interval = min_interval
        self.timeout = timeout
        self.keys: dict[str, jwt.PyJWK] = {}
        self.unnamed: list[jwt.PyJWK] = []  # keys published without a kid
        self.loaded = False
        self.revision = 0  # bumped when a fetch drops a key the previous set had
        self._seen: frozenset[str] = frozenset()
        self._last_fetch = float("-inf")
        self._inflight: asyncio.Future[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        await self.refresh(force=True)
        self._task = asyncio.get_running_loop().create_task(self._refresher())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def lookup(self, kid: str | None) -> list[jwt.PyJWK]:
        if kid is None:
            return [*self.unnamed, *self.keys.values()]
        key = self.keys.get(kid)
        return [key] if key is not None else []

    async def refresh(self, *, force: bool = False) -> bool:
        """Fetch the set unless one was fetched within ``min_interval``. True when a fetch ran."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return True
        if not force and time.monotonic() - self._last_fetch < self.min_interval:
            return False
        self._last_fetch = time.monotonic()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight = fut
        try:
            await self._fetch()
        finally:
            self._inflight = None
            fut.set_result(None)
        return True

    async def _fetch(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(self.url, headers={"Accept": "application/json"}) as r:
                if r.status != 200:
                    log.warning("jwks_fetch_failed", status=r.status)
                    return
                doc = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("jwks_fetch_failed", error=type(exc).__name__)
            return
        keys: dict[str, jwt.PyJWK] = {}
        unnamed: list[jwt.PyJWK] = []
        seen: set[str] = set()
        raw = doc.get("keys") if isinstance(doc, dict) else None
        for item in raw if isinstance(raw, list) else []:
            if not isinstance(item, dict) or item.get("kty") == "oct" or item.get("use") == "enc":
                continue
            try:
                jwk = jwt.PyJWK(item)
            except jwt.PyJWTError:
                continue  # a key type this build cannot use; the others still count
            if jwk.key_id:
                keys[jwk.key_id] = jwk
            else:
                unnamed.append(jwk)
            seen.add(json.dumps(item, sort_keys=True))
        if not self._seen <= seen:
            self.revision += 1  # a withdrawn key: tokens it signed must not live on in caches
        self._seen = frozenset(seen)
        self.keys, self.unnamed, self.loaded = keys, unnamed, True
        log.info("jwks_loaded", keys=len(keys) + len(unnamed))

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh(force=True)
