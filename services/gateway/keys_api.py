"""Self-service API keys over HTTP: a signed-in caller creates, lists and revokes their own keys.

    POST   /v1/keys        {"name": "ci"}  -> 201 the key record with "key": "sk-janus-..." (shown once)
    GET    /v1/keys                        -> {"object": "list", "data": [records, newest first]}
    DELETE /v1/keys/{id}                   -> {"object": "api_key.deleted", "id": ..., "deleted": true}

Who may do what, and why:
- Only a JWT manages keys. A request authenticated by an API key gets 403 ``sign_in_required``: a
  leaked key must not be able to mint keys that outlive its own revocation.
- A new key's user and plan are the caller's (the body cannot name either), so a key never holds
  more than its owner does, and it spends its owner's budget.
- Listing and revoking read only the caller's index; another user's key id answers exactly as an
  unknown id does (404 ``key_not_found``), so ids cannot be probed.
- A key is named in a URL by its id only; the key itself there is a 400, unread, since URLs end up
  in access logs.
- The plaintext key is in the creation response only (``Cache-Control: no-store``) and never
  logged; listings carry its last four characters.
- At most ``shared.apikeys.MAX_ACTIVE`` active keys per user (403 ``too_many_keys`` past that).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from services.gateway.auth import Authenticator, Principal
from services.gateway.dispatch import Call
from services.gateway.edge import CALL
from shared.apikeys import KeyRecord, KeyStore
from shared.bus import Bus
from shared.errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from shared.logging import get_logger

log = get_logger("gateway.keys")

_JSON = "application/json"


class _CreateBody(msgspec.Struct):
    name: str = ""


class _Key(msgspec.Struct, omit_defaults=True):
    object: str  # "api_key"; no default, so omit_defaults never drops it
    id: str
    name: str
    plan: str
    hint: str  # "sk-janus-...abcd"
    created: int
    revoked: int | None = None
    key: str | None = None  # only in the creation response


class _KeyList(msgspec.Struct):
    data: list[_Key]
    object: str = "list"


class _Deleted(msgspec.Struct):
    id: str
    deleted: bool = True
    object: str = "api_key.deleted"


_create_decoder = msgspec.json.Decoder(_CreateBody)
_encode = msgspec.json.Encoder().encode


def _view(rec: KeyRecord, key: str | None = None) -> _Key:
    return _Key(
        object="api_key",
        id=rec.id,
        name=rec.name,
        plan=rec.plan,
        hint=f"sk-janus-...{rec.hint}",
        created=int(rec.created),
        revoked=None if rec.revoked is None else int(rec.revoked),
        key=key,
    )


class KeysApi:
    """The ``/v1/keys`` handlers. ``read_body`` is the gateway's bounded body reader."""

    def __init__(
        self,
        auth: Authenticator,
        bus: Bus,
        replicas: int,
        read_body: Callable[[web.Request], Awaitable[bytes]],
    ) -> None:
        self.auth = auth
        self.bus = bus
        self.replicas = replicas
        self.read_body = read_body
        self._store: KeyStore | None = None
        self._opening = asyncio.Lock()  # one store per gateway: it serialises each user's index writes

    async def store(self) -> KeyStore:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    try:
                        self._store = await KeyStore.open(self.bus, self.replicas, create=False, wait=0)
                    except Exception as exc:
                        raise ServiceUnavailable(
                            "The API key store is unavailable; try again shortly.",
                            code="key_store_unavailable",
                        ) from exc
        return self._store

    async def _owner(self, request: web.Request) -> tuple[Call, Principal]:
        call: Call = request[CALL]
        principal = await self.auth.authenticate(request.headers.get("Authorization"))
        call.user, call.plan_name = principal.user, principal.plan
        if principal.key_id:
            raise PermissionDenied(
                "API keys are managed only when signed in with your account's token, not with an API key.",
                code="sign_in_required",
            )
        return call, principal

    @staticmethod
    def _json(call: Call, body: bytes, status: int = 200) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            headers={**call.headers, "Content-Type": _JSON, "Cache-Control": "no-store"},
        )

    async def create(self, request: web.Request) -> web.StreamResponse:
        call, principal = await self._owner(request)
        body = await self.read_body(request)
        try:
            name = _create_decoder.decode(body or b"{}").name.strip()
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise InvalidRequest(
                "The body must be a JSON object with an optional string field 'name'.",
                param="name",
                code="invalid_value",
            ) from None
        store = await self.store()
        key, rec = await store.create(principal.user, principal.plan, name)
        log.info("api_key_created", key_id=rec.id)
        return self._json(call, _encode(_view(rec, key)), status=201)

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        call, principal = await self._owner(request)
        records = await (await self.store()).list(principal.user)
        return self._json(call, _encode(_KeyList([_view(r) for r in records])))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        call, principal = await self._owner(request)
        cache = self.auth.api_keys
        rec = await (await self.store()).revoke(
            request.match_info["key_id"], owner=principal.user, evict=cache.revoke if cache else None
        )
        log.info("api_key_revoked", key_id=rec.id)
        return self._json(call, _encode(_Deleted(rec.id)))


def add_routes(router: web.UrlDispatcher, api: KeysApi) -> None:
    router.add_post("/v1/keys", api.create)
    router.add_get("/v1/keys", api.list_keys)
    router.add_delete("/v1/keys/{key_id}", api.delete)
