"""Who is calling: ``Authorization: Bearer <token>`` -> ``Principal``.

    header -> "Bearer <token>", at most max_token_bytes (longer: 401 before any parsing)
           -> sk-janus-...  -> ApiKeys (KV by SHA-256 digest, cached, revocations evict)
           -> otherwise JWT -> token cache hit? -> Principal
                            -> JwtVerifier (HS256 secret | PEM public keys | JWKS) -> cache

Verified JWTs are cached (bounded, evicted once expired) so the hot path does not re-run signature
checks and JSON decoding for every request of a client that reuses its token. An entry is trusted
for at most ``JANUS_AUTH_CACHE_SECONDS`` and only while no key has left the JWKS since it was
verified; then the token is verified again against the keys of the moment. Nothing here logs a
token; failure messages never echo one.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from services.gateway.apikeys import ApiKeys
from services.gateway.jwt_verify import JwtVerifier, fail
from services.gateway.settings import GatewaySettings
from shared import metrics
from shared.apikeys import PREFIX as API_KEY_PREFIX
from shared.catalog import Plans
from shared.errors import PermissionDenied


class Principal(msgspec.Struct, frozen=True):
    user: str
    email: str
    plan: str
    key_id: str = ""  # set when the caller signed in with an issued API key rather than a JWT
    admin: bool = False  # the JWT carries the operator role (see ``admin_claim``)


class Authenticator:
    def __init__(self, settings: GatewaySettings, plans: Plans, *, api_keys: ApiKeys | None = None) -> None:
        self.jwt = JwtVerifier(settings)
        self.api_keys = api_keys
        self._plans = plans
        self._max_token = settings.max_token_bytes
        self._leeway = settings.jwt_leeway_seconds
        self._admin_role = settings.admin_role
        self._cache_size = max(1, settings.auth_cache_size)
        self._cache_seconds = settings.auth_cache_seconds
        # token -> (principal, token usable until, cached until, key revision); insertion order doubles
        # as age order for eviction
        self._cache: dict[str, tuple[Principal, float, float, int]] = {}

    async def authenticate(self, header: str | None) -> Principal:
        """The caller, or ``AuthenticationFailed`` (401) / ``PermissionDenied`` (403)."""
        token = self._bearer(header)
        hit = self._cache.get(token)
        if hit is not None:
            principal, usable, fresh, revision = hit
            now = time.time()
            if usable <= now:
                del self._cache[token]
                raise fail("expired", "The access token has expired.")
            if fresh > now and revision == self.jwt.key_revision:
                return principal
            del self._cache[token]  # held too long, or its key may have been withdrawn: verify again
        if token.startswith("sk-"):
            return await self._api_key(token)
        revision = self.jwt.key_revision  # before verifying: a withdrawal meanwhile drops the entry
        claims = await self.jwt.verify(token)
        principal, exp = self._principal(claims)
        self._remember(token, principal, exp + self._leeway, revision)
        return principal

    async def _api_key(self, token: str) -> Principal:
        if self.api_keys is None or not token.startswith(API_KEY_PREFIX):
            raise fail("api_key", "Incorrect API key provided.")
        record = await self.api_keys.lookup(token)
        if record is None:
            raise fail("api_key", "Incorrect API key provided.")
        return Principal(record.user, "", self._plan(record.plan), key_id=record.id)

    def _principal(self, claims: dict[str, Any]) -> tuple[Principal, float]:
        user, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(user, str) or not user:
            raise fail("claims", "The access token's 'sub' claim must be a non-empty string.")
        if not isinstance(exp, (int, float)):
            raise fail("claims", "The access token's 'exp' claim must be a number.")
        plan = claims.get("plan") or claims.get("tier") or self._plans.default_plan
        email = claims.get("email")
        return Principal(user, email if isinstance(email, str) else "", self._plan(plan),
                         admin=self._is_admin(claims)), float(exp)

    def _is_admin(self, claims: dict[str, Any]) -> bool:
        """The operator role: ``roles`` (a list, as Keycloak and most IdPs issue it) or ``role``
        (a string) names ``admin_role``. Only a signed JWT can carry it; an API key never does."""
        if not self._admin_role:
            return False
        roles = claims.get("roles")
        if isinstance(roles, list) and self._admin_role in roles:
            return True
        return claims.get("role") == self._admin_role

    def _plan(self, plan: object) -> str:
        if not isinstance(plan, str) or self._plans.get(plan) is None:
            metrics.AUTH_FAILURES.labels("plan").inc()
            shown = plan if isinstance(plan, str) and len(plan) <= 64 else "given"
            raise PermissionDenied(f"The plan {shown!r} of these credentials is not offered here.",
                                   code="unknown_plan")
        return plan

    def _bearer(self, header: str | None) -> str:
        if not header:
            raise fail("missing", "You didn't provide an API key. Send 'Authorization: Bearer <token>'.")
        if len(header) > self._max_token + 7:
            raise fail("oversized", f"The bearer token is longer than {self._max_token} bytes.")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise fail("malformed", "The Authorization header must be 'Bearer <token>'.")
        if len(token) > self._max_token:
            raise fail("oversized", f"The bearer token is longer than {self._max_token} bytes.")
        return token

    def _remember(self, token: str, principal: Principal, until: float, revision: int) -> None:
        cache = self._cache
        now = time.time()
        if len(cache) >= self._cache_size:
            for key in [k for k, (_, e, f, _r) in cache.items() if min(e, f) <= now]:
                del cache[key]
            # still full: drop the oldest quarter rather than one entry per insert
            if len(cache) >= self._cache_size:
                for key in list(cache)[: max(1, self._cache_size // 4)]:
                    del cache[key]
        cache[token] = (principal, until, now + self._cache_seconds, revision)
