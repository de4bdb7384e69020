"""What the gateway refuses to trust: the published development secret outside a development stack,
a JWKS fetched in clear text from another host, and a cached token whose key was withdrawn or that
has been cached longer than the bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest

from services.gateway.auth import Authenticator
from services.gateway.jwt_verify import DEV_JWT_SECRET, JwtVerifier
from services.gateway.settings import GatewaySettings
from shared.catalog import ConfigError, load_plans
from shared.errors import AuthenticationFailed
from tests.gateway.jwks_server import JwksServer, claims, jwk, rsa_key


def test_the_development_secret_needs_a_development_stack() -> None:
    with pytest.raises(ConfigError, match="published development secret"):
        JwtVerifier(GatewaySettings(jwt_secret=DEV_JWT_SECRET))
    assert "HS256" in JwtVerifier(GatewaySettings(jwt_secret=DEV_JWT_SECRET, dev_stack=True)).algorithms
    assert "HS256" in JwtVerifier(GatewaySettings(jwt_secret="x" * 40)).algorithms


@pytest.mark.parametrize("url", ["http://idp.example.com/jwks.json", "http://10.0.0.5/jwks", "ftp://x/y"])
def test_a_jwks_in_clear_text_from_another_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="https"):
        JwtVerifier(GatewaySettings(jwt_jwks_url=url))


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.com/jwks.json",
        "http://127.0.0.1:9/jwks",
        "http://localhost/jwks",
        "http://[::1]:8/jwks",
    ],
)
def test_https_and_loopback_jwks_urls_are_taken(url: str) -> None:
    assert JwtVerifier(GatewaySettings(jwt_jwks_url=url)).jwks is not None


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    srv = JwksServer().start()
    try:
        yield srv
    finally:
        srv.stop()


async def authenticator(**settings: Any) -> AsyncIterator[Authenticator]:
    auth = Authenticator(GatewaySettings(**settings), load_plans())
    await auth.jwt.start()
    try:
        yield auth
    finally:
        await auth.jwt.close()


def counting(auth: Authenticator) -> list[str]:
    """Every token the verifier is asked to check (a cache hit never reaches it)."""
    seen: list[str] = []
    verify = auth.jwt.verify

    async def wrapped(token: str) -> dict[str, Any]:
        seen.append(token)
        return await verify(token)

    auth.jwt.verify = wrapped  # type: ignore[method-assign]
    return seen


async def test_a_withdrawn_key_stops_working_for_cached_tokens(idp: JwksServer) -> None:
    old, new = rsa_key(), rsa_key()
    idp.keys = [jwk(old, "k1", "RS256")]
    token = jwt.encode(claims(), old, algorithm="RS256", headers={"kid": "k1"})
    async for auth in authenticator(jwt_jwks_url=idp.url):
        seen = counting(auth)
        assert (await auth.authenticate(f"Bearer {token}")).user == "alice"
        assert (await auth.authenticate(f"Bearer {token}")).user == "alice"
        assert seen == [token]  # the second came from the cache
        idp.keys = [jwk(new, "k2", "RS256")]  # the identity provider rotated k1 out
        assert auth.jwt.jwks is not None and await auth.jwt.jwks.refresh(force=True)
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"Bearer {token}")
        fresh = jwt.encode(claims(), new, algorithm="RS256", headers={"kid": "k2"})
        assert (await auth.authenticate(f"Bearer {fresh}")).user == "alice"


async def test_a_cached_token_is_verified_again_after_the_bound() -> None:
    token = jwt.encode(claims(), "s" * 40, algorithm="HS256")
    async for auth in authenticator(jwt_secret="s" * 40, auth_cache_seconds=0):
        seen = counting(auth)
        for _ in range(3):
            assert (await auth.authenticate(f"Bearer {token}")).user == "alice"
        assert seen == [token] * 3
    async for auth in authenticator(jwt_secret="s" * 40):
        seen = counting(auth)
        for _ in range(3):
            await auth.authenticate(f"Bearer {token}")
        assert seen == [token]
