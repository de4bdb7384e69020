"""Who is calling: ``Authorization: Bearer <token>`` -> ``Principal``.

The interface is deliberately small (``await authenticator.authenticate(header)``) because issued API
keys (``sk-janus-...``, looked up by hash in JetStream KV) and RS256/ES256/JWKS verification come
later and must slot in behind it without touching the request path.

Today a token is an HS256 JWT signed with ``JANUS_JWT_SECRET``. Only HS256 is accepted: the algorithm
list is pinned, so ``alg: none`` or an algorithm-confusion token is refused by the library itself.
Verified tokens are cached (bounded, evicted once expired) so the hot path does not re-run HMAC and
JSON decoding for every request of a client that reuses its token.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import msgspec

from shared import metrics
from shared.catalog import Plans
from shared.errors import AuthenticationFailed, PermissionDenied

ALGORITHMS = ["HS256"]
_REQUIRED = ["exp", "sub"]


class Principal(msgspec.Struct, frozen=True):
    user: str
    email: str
    plan: str


def _fail(reason: str, message: str) -> AuthenticationFailed:
    metrics.AUTH_FAILURES.labels(reason).inc()
    return AuthenticationFailed(message)


class Authenticator:
    def __init__(self, secret: str, plans: Plans, *, cache_size: int = 10_000) -> None:
        if not secret:
            raise ValueError("a JWT secret is required")
        self._secret = secret
        self._plans = plans
        self._cache_size = max(1, cache_size)
        # token -> (principal, exp); insertion order doubles as age order for eviction
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, header: str | None) -> Principal:
        """The caller, or ``AuthenticationFailed`` (401) / ``PermissionDenied`` (403)."""
        token = _bearer(header)
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > time.time():
                return hit[0]
            del self._cache[token]
            raise _fail("expired", "The access token has expired.")
        if token.startswith("sk-"):
            raise _fail("api_key", "Incorrect API key provided.")
        principal, exp = self._verify(token)
        self._remember(token, principal, exp)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._secret, algorithms=ALGORITHMS, options={"require": _REQUIRED}
            )
        except jwt.ExpiredSignatureError:
            raise _fail("expired", "The access token has expired.") from None
        except jwt.InvalidSignatureError:
            raise _fail("signature", "The access token's signature is invalid.") from None
        except jwt.InvalidAlgorithmError:
            raise _fail("algorithm", "The access token's signing algorithm is not accepted.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _fail("claims", f"The access token lacks the '{exc.claim}' claim.") from None
        except jwt.PyJWTError:
            raise _fail("malformed", "The access token is malformed.") from None
        user, exp = claims.get("sub"), claims.get("exp")
        if not isinstance(user, str) or not user:
            raise _fail("claims", "The access token's 'sub' claim must be a non-empty string.")
        if not isinstance(exp, (int, float)):
            raise _fail("claims", "The access token's 'exp' claim must be a number.")
        plan = claims.get("plan") or claims.get("tier") or self._plans.default_plan
        if not isinstance(plan, str) or self._plans.get(plan) is None:
            metrics.AUTH_FAILURES.labels("plan").inc()
            raise PermissionDenied(f"The plan {plan!r} in the access token is not offered here.",
                                   code="unknown_plan")
        email = claims.get("email")
        return Principal(user, email if isinstance(email, str) else "", plan), float(exp)

    def _remember(self, token: str, principal: Principal, exp: float) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            now = time.time()
            for key in [k for k, (_, e) in cache.items() if e <= now]:
                del cache[key]
            # still full: drop the oldest quarter rather than one entry per insert
            if len(cache) >= self._cache_size:
                for key in list(cache)[: max(1, self._cache_size // 4)]:
                    del cache[key]
        cache[token] = (principal, exp)


def _bearer(header: str | None) -> str:
    if not header:
        raise _fail("missing", "You didn't provide an API key. Send 'Authorization: Bearer <token>'.")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _fail("malformed", "The Authorization header must be 'Bearer <token>'.")
    return token
