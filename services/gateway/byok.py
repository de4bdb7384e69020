"""Bring-your-own-key on the gateway: the per-request probe, and the caller's HTTP API for their keys.

The probe asks once per request whether the user brings their own key for the routed provider,
answered from a short cache, so the hot path almost never leaves the process. It only checks that an
entry exists; the worker opens it. A request served on the user's own key is reserved and settled
with ``byok=True``: recorded as usage, charged no credits, and kept on deployments of that provider.

The API (authenticated like every endpoint; a caller only ever sees or changes their own keys):

    PUT    /v1/byok/{provider}   {"api_key": "..."}  -> the entry, with a masked hint (sk-...abcd)
    GET    /v1/byok                                  -> every provider the caller has a key for, and
                                                        the providers that take one
    DELETE /v1/byok/{provider}                       -> {"deleted": true}

Keys are sealed with the store the CLI uses (AES-256-GCM under ``JANUS_BYOK_KEY``, bound to the user
and provider). The key itself is never logged, echoed or returned. A change is seen at once by the
replica that made it and by the others within the probe's cache lifetime (``ttl_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from services.gateway.auth import Authenticator
from services.gateway.dispatch import Call
from services.gateway.edge import CALL
from shared import subjects
from shared.bus import Bus, KeyNotFound, KeyValue
from shared.byok import ENV, ByokStore, SealedKey, Sealer, clean_secret, entry_key, masked
from shared.catalog import Catalog, ConfigError
from shared.errors import InvalidRequest, NotFound, PermissionDenied
from shared.logging import get_logger

log = get_logger("gateway.byok")

_JSON = "application/json"


class ByokProbe:
    def __init__(self, ttl_seconds: float = 5.0, max_entries: int = 50_000) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._kv: KeyValue | None = None
        self._cache: dict[tuple[str, str], tuple[bool, float]] = {}

    async def start(self, bus: Bus, replicas: int = 1) -> None:
        # metering makes the bucket; the gateway may only use it
        self._kv = await bus.kv(subjects.BYOK_BUCKET, create=False)

    @property
    def kv(self) -> KeyValue | None:
        return self._kv

    def forget(self, user: str, provider: str) -> None:
        """Drop a cached answer (this replica just stored or deleted that key)."""
        self._cache.pop((user, provider), None)

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


# ------------------------------------------------------------------------------------------ the API
class _PutBody(msgspec.Struct):
    api_key: str


class _Entry(msgspec.Struct):
    provider: str
    hint: str  # "sk-...abcd"
    created: int
    object: str = "byok.key"


class _EntryList(msgspec.Struct):
    data: list[_Entry]
    providers: list[str]  # every provider that takes the caller's own key here
    object: str = "list"


class _Deleted(msgspec.Struct):
    provider: str
    deleted: bool = True
    object: str = "byok.key.deleted"


_put_decoder = msgspec.json.Decoder(_PutBody)
_encode = msgspec.json.Encoder().encode


def _entry(sealed: SealedKey, provider: str) -> _Entry:
    return _Entry(provider, masked(sealed), int(sealed.created))


class ByokApi:
    """The ``/v1/byok`` handlers. ``read_body`` is the gateway's bounded body reader."""

    def __init__(
        self,
        auth: Authenticator,
        catalog: Catalog,
        probe: ByokProbe | None,
        byok_key: str,
        read_body: Callable[[web.Request], Awaitable[bytes]],
    ) -> None:
        self.auth = auth
        self.probe = probe
        self.read_body = read_body
        # keys are stored only for providers the catalog marks ``byok``; any other provider's keys
        # (stored before it lost the mark) can still be listed and deleted, but are never used
        self.byok_providers = sorted(catalog.byok_providers())
        self.providers = sorted(p.id for p in catalog.providers if p.kind != "fake")
        # a bad key stops the gateway at startup, like every other bad setting
        self.sealer = Sealer.from_key(byok_key) if byok_key else None
        self._store: ByokStore | None = None

    def store(self) -> ByokStore:
        if self._store is None:
            kv = self.probe.kv if self.probe is not None else None
            if kv is None:
                raise PermissionDenied(
                    "Bring-your-own-key is not enabled on this gateway.", code="byok_disabled"
                )
            self._store = ByokStore(kv, self.sealer)
        return self._store

    async def _caller(self, request: web.Request) -> tuple[Call, str]:
        call: Call = request[CALL]
        principal = await self.auth.authenticate(request.headers.get("Authorization"))
        call.user, call.plan_name = principal.user, principal.plan
        return call, principal.user

    def _provider(self, request: web.Request) -> str:
        provider = request.match_info["provider"]
        if provider not in self.providers:
            known = ", ".join(self.providers) or "none"
            raise NotFound(
                f"No provider {provider!r} takes your own key here (providers: {known}).",
                param="provider",
                code="provider_not_found",
            )
        return provider

    @staticmethod
    def _json(call: Call, body: bytes) -> web.Response:
        return web.Response(body=body, headers={**call.headers, "Content-Type": _JSON})

    async def put(self, request: web.Request) -> web.StreamResponse:
        call, user = await self._caller(request)
        provider = request.match_info["provider"]
        if provider not in self.byok_providers:
            known = ", ".join(self.byok_providers) or "none on this gateway"
            raise InvalidRequest(
                f"Provider {provider!r} does not take your own key; these do: {known}.",
                param="provider",
                code="byok_not_supported",
            )
        store = self.store()
        if not store.can_seal:
            raise PermissionDenied(
                f"Provider keys cannot be stored: {ENV} is not set on this gateway.", code="byok_disabled"
            )
        body = await self.read_body(request)
        try:
            secret = clean_secret(_put_decoder.decode(body).api_key)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            # msgspec's message could quote the body, and the body holds the key
            raise InvalidRequest(
                "The body must be a JSON object with a string field 'api_key'.",
                param="api_key",
                code="invalid_value",
            ) from None
        except ValueError as exc:
            raise InvalidRequest(
                f"'api_key' is not valid: {exc}.", param="api_key", code="invalid_value"
            ) from None
        try:
            sealed = await store.set(user, provider, secret)
        except ConfigError as exc:  # not reachable with a sealer, kept for a clear answer
            raise PermissionDenied(str(exc), code="byok_disabled") from None
        if self.probe is not None:
            self.probe.forget(user, provider)
        log.info("byok_stored", provider=provider)
        return self._json(call, _encode(_entry(sealed, provider)))

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        call, user = await self._caller(request)
        store = self.store()
        out = []
        for provider in self.providers:  # a handful: one KV read each, no scan of other users' keys
            sealed = await store.info(user, provider)
            if sealed is not None:
                out.append(_entry(sealed, provider))
        return self._json(call, _encode(_EntryList(out, self.providers)))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        call, user = await self._caller(request)
        provider = self._provider(request)
        if not await self.store().delete(user, provider):
            raise NotFound(f"You have no key stored for {provider!r}.", param="provider", code="not_found")
        if self.probe is not None:
            self.probe.forget(user, provider)
        log.info("byok_deleted", provider=provider)
        return self._json(call, _encode(_Deleted(provider)))
