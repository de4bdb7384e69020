"""Verifying a JWT: which algorithms, which key, which claims.

The algorithm is never the token's choice alone. HS256 is accepted only when a secret is configured
and is verified only with that secret; RS*/PS*/ES* only with a configured public key or a JWKS key
of the matching type. ``alg: none`` is never accepted. So an HS256 token "signed" with an RSA public
key, the classic key-confusion attack, meets the HMAC secret (or no HS key at all) and fails.

Claims: ``sub`` and ``exp`` are required; ``nbf`` and ``iat`` must not lie in the future beyond the
leeway; ``iss`` and ``aud`` must match when the deployment configures them (a token carrying an
``aud`` is refused when no audience is configured, as PyJWT does, so a token minted for another
service is not taken here by accident).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import jwt

from services.gateway.jwks import JwksKeys, PublicKey, key_fits, load_pem_keys
from services.gateway.settings import GatewaySettings
from shared import metrics
from shared.catalog import ConfigError
from shared.errors import AuthenticationFailed, ServiceUnavailable

ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                        "EdDSA"})
_MIN_SECRET_BYTES = 32  # below this HS256 is guessable offline
# the secret of the local stack, compose and the dev overlay: published, so anyone can sign with it
DEV_JWT_SECRET = "janus-dev-secret-not-for-production"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def fail(reason: str, message: str) -> AuthenticationFailed:
    metrics.AUTH_FAILURES.labels(reason).inc()
    return AuthenticationFailed(message)


class JwtVerifier:
    def __init__(self, s: GatewaySettings) -> None:
        if not (s.jwt_secret or s.jwt_public_keys.strip() or s.jwt_jwks_url):
            raise ConfigError("set JANUS_JWT_SECRET, JANUS_JWT_PUBLIC_KEYS or JANUS_JWT_JWKS_URL: the "
                              "gateway cannot verify tokens without one of them")
        if s.jwt_secret and len(s.jwt_secret.encode()) < _MIN_SECRET_BYTES:
            raise ConfigError(f"JANUS_JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes")
        if s.jwt_secret == DEV_JWT_SECRET and not s.dev_stack:
            raise ConfigError("JANUS_JWT_SECRET is the published development secret: anyone can sign "
                              "tokens with it. Set a secret of your own, or JANUS_DEV_STACK=true on a "
                              "development stack")
        self._secret = s.jwt_secret
        self._pem: list[PublicKey] = load_pem_keys(s.jwt_public_keys)
        self.jwks: JwksKeys | None = None
        if s.jwt_jwks_url:
            url = urllib.parse.urlsplit(s.jwt_jwks_url)
            if not (url.scheme == "https" or (url.scheme == "http" and url.hostname in _LOOPBACK)):
                # keys fetched in clear text could be swapped on the way for an attacker's
                raise ConfigError("JANUS_JWT_JWKS_URL must be an https:// URL (http:// only on loopback)")
            self.jwks = JwksKeys(s.jwt_jwks_url, refresh_interval=s.jwks_refresh_seconds,
                                 min_interval=s.jwks_min_refresh_seconds, timeout=s.jwks_timeout_seconds)
        algs: set[str] = set()
        if self._secret:
            algs.add("HS256")
        if self._pem or self.jwks is not None:
            algs |= ASYMMETRIC
        self.algorithms = frozenset(algs)
        self._issuer = s.jwt_issuer or None
        audience = [a.strip() for a in s.jwt_audience.split(",") if a.strip()]
        self._audience = audience or None
        self._leeway = s.jwt_leeway_seconds
        required = ["exp", "sub"]
        if self._issuer:
            required.append("iss")
        if self._audience:
            required.append("aud")
        self._options: Any = {"require": required}

    async def start(self) -> None:
        if self.jwks is not None:
            await self.jwks.start()

    @property
    def key_revision(self) -> int:
        """Changes whenever a key that verified tokens leaves the key set (cached tokens go stale)."""
        return self.jwks.revision if self.jwks is not None else 0

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or ``AuthenticationFailed``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise fail("malformed", "The access token is malformed.") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise fail("algorithm", "The access token's signing algorithm is not accepted.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise fail("malformed", "The access token's 'kid' header must be a string.")
        keys = await self._keys(alg, kid)
        if not keys:
            raise fail("signature", "The access token was signed with an unknown key.")
        last: jwt.PyJWTError | None = None
        for key in keys:
            try:
                return self._decode(token, key, alg)
            except jwt.InvalidSignatureError as exc:
                last = exc  # another configured key may still match
            except jwt.PyJWTError as exc:
                raise _claims_error(exc) from None
        raise _claims_error(last or jwt.InvalidSignatureError()) from None

    def _decode(self, token: str, key: Any, alg: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], options=self._options, leeway=self._leeway,
            issuer=self._issuer, audience=self._audience,
        )
        return claims

    async def _keys(self, alg: str, kid: str | None) -> list[Any]:
        if alg == "HS256":
            return [self._secret]
        keys: list[Any] = [k for k in self._pem if key_fits(alg, k)]
        jwks = self.jwks
        if jwks is None:
            return keys
        found = _usable(jwks.lookup(kid), alg)
        if not found and (kid is not None or not jwks.loaded) and await jwks.refresh():
            found = _usable(jwks.lookup(kid), alg)
        if not found and not keys and not jwks.loaded:
            # no word from the identity provider yet: that is our outage, not a bad token
            raise ServiceUnavailable("The token signing keys are not available yet; try again shortly.",
                                     code="jwks_unavailable")
        return keys + found


def _usable(jwks: list[jwt.PyJWK], alg: str) -> list[Any]:
    out: list[Any] = []
    for jwk in jwks:
        if jwk.algorithm_name and jwk.algorithm_name != alg and jwk._jwk_data.get("alg"):
            continue  # the key names its algorithm and it is not this one
        if key_fits(alg, jwk.key):
            out.append(jwk.key)
    return out


# the first matching class decides; order matters where PyJWT's classes inherit from each other
_CLAIM_ERRORS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "The access token has expired."),
    (jwt.ImmatureSignatureError, "not_yet_valid", "The access token is not valid yet."),
    (jwt.InvalidSignatureError, "signature", "The access token's signature is invalid."),
    (jwt.InvalidKeyError, "signature", "The access token's signature is invalid."),
    (jwt.InvalidAlgorithmError, "algorithm", "The access token's signing algorithm is not accepted."),
    (jwt.InvalidIssuerError, "issuer", "The access token's issuer is not accepted."),
    (jwt.InvalidAudienceError, "audience", "The access token's audience is not accepted."),
)


def _claims_error(exc: jwt.PyJWTError) -> AuthenticationFailed:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return fail("claims", f"The access token lacks the '{exc.claim}' claim.")
    for cls, reason, message in _CLAIM_ERRORS:
        if isinstance(exc, cls):
            return fail(reason, message)
    return fail("malformed", "The access token is malformed.")
