"""JWT verification against the attacks a public gateway meets, with HS256, RS256 from a PEM file and
ES256 from a JWKS served on 127.0.0.1 (with key rotation)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.gateway.conftest import Gateway, start_gateway
from tests.gateway.jwks_server import (
    JwksServer,
    claims,
    ec_key,
    forge_hs256,
    jwk,
    public_pem,
    rsa_key,
    write_pem,
)
from tests.gateway.test_flow import assert_error
from tools.localnats import NatsServer
from tools.localstack import DEV_SECRET

ISS, AUD = "https://id.example.com/", "janus"
RSA_PEM = rsa_key()  # configured as a PEM file
EC_K1 = ec_key()  # in the JWKS from the start
EC_K2 = ec_key()  # published later (rotation)
STRANGER = rsa_key()  # never configured anywhere


@pytest.fixture(scope="module")
def jwks() -> Iterator[JwksServer]:
    srv = JwksServer().start()
    srv.keys = [jwk(EC_K1, "k1", "ES256")]
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def strict_gw(
    gw_nats: NatsServer, jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """HS256 secret + an RSA PEM + a JWKS, with issuer and audience required."""
    work = tmp_path_factory.mktemp("gw-jwt")
    pem = write_pem(work / "rsa.pem", RSA_PEM)
    gw = start_gateway(
        gw_nats,
        work,
        tag="-jwt",
        JANUS_JWT_PUBLIC_KEYS=str(pem),
        JANUS_JWT_JWKS_URL=jwks.url,
        JANUS_JWT_ISSUER=ISS,
        JANUS_JWT_AUDIENCE=f"other-api,{AUD}",
        JANUS_JWKS_MIN_REFRESH_SECONDS="0.5",
    )
    try:
        yield gw
    finally:
        gw.proc.stop()


def good(**extra: Any) -> dict[str, Any]:
    return claims(iss=ISS, aud=AUD, **extra)


async def status_of(gw: Gateway, token: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.read()


async def test_accepted_signatures(strict_gw: Gateway, jwks: JwksServer) -> None:
    ok = {
        "hs256": jwt.encode(good(), DEV_SECRET, algorithm="HS256"),
        "rs256_pem": jwt.encode(good(), RSA_PEM, algorithm="RS256"),
        "es256_jwks": jwt.encode(good(), EC_K1, algorithm="ES256", headers={"kid": "k1"}),
        "second_audience": jwt.encode(claims(iss=ISS, aud=["x", "other-api"]), DEV_SECRET, algorithm="HS256"),
    }
    for name, tok in ok.items():
        status, body = await status_of(strict_gw, tok)
        assert status == 200, (name, body)
    # rotation: a kid the gateway has not seen makes it fetch the set again
    jwks.keys = [jwk(EC_K1, "k1", "ES256"), jwk(EC_K2, "k2", "ES256")]
    await asyncio.sleep(0.6)  # past the refresh rate limit
    status, body = await status_of(
        strict_gw, jwt.encode(good(), EC_K2, algorithm="ES256", headers={"kid": "k2"})
    )
    assert status == 200, body


def _unsigned(header: dict[str, Any]) -> str:
    def b64(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(good())}."


def _attacks() -> dict[str, str]:
    rsa_pub = public_pem(RSA_PEM)
    return {
        "alg_none": jwt.encode(good(), None, algorithm="none"),
        "alg_None_unsigned": _unsigned({"alg": "None", "typ": "JWT"}),
        "alg_none_with_kid": _unsigned({"alg": "none", "kid": "k1"}),
        "hs256_signed_with_rsa_public_key": forge_hs256(good(), rsa_pub),
        "rs256_unknown_key": jwt.encode(good(), STRANGER, algorithm="RS256"),
        "es256_unknown_kid": jwt.encode(good(), STRANGER, algorithm="RS256", headers={"kid": "k-forged"}),
        "es256_kid_of_other_key": jwt.encode(good(), ec_key(), algorithm="ES256", headers={"kid": "k1"}),
        "hs256_wrong_secret": jwt.encode(good(), "x" * 40, algorithm="HS256"),
        "expired": jwt.encode(good(exp=1_600_000_000), DEV_SECRET, algorithm="HS256"),
        "nbf_future": jwt.encode(good(nbf=int(claims()["iat"]) + 3600), DEV_SECRET, algorithm="HS256"),
        "iat_future": jwt.encode(good(iat=int(claims()["iat"]) + 3600), DEV_SECRET, algorithm="HS256"),
        "wrong_issuer": jwt.encode(
            claims(iss="https://evil.example.com/", aud=AUD), DEV_SECRET, algorithm="HS256"
        ),
        "no_issuer": jwt.encode(claims(aud=AUD), DEV_SECRET, algorithm="HS256"),
        "wrong_audience": jwt.encode(claims(iss=ISS, aud="someone-else"), DEV_SECRET, algorithm="HS256"),
        "no_audience": jwt.encode(claims(iss=ISS), DEV_SECRET, algorithm="HS256"),
        "no_sub": jwt.encode({k: v for k, v in good().items() if k != "sub"}, DEV_SECRET, algorithm="HS256"),
        "hs512_not_offered": jwt.encode(good(), DEV_SECRET, algorithm="HS512"),
        "garbage": "eyJhbGciOiJIUzI1NiJ9.%%%.@@@",
        "oversized": jwt.encode(good(pad="x" * 9000), DEV_SECRET, algorithm="HS256"),
    }


@pytest.mark.parametrize("attack", list(_attacks()))
async def test_attacks_are_401(attack: str, strict_gw: Gateway) -> None:
    status, body = await status_of(strict_gw, _attacks()[attack])
    assert status == 401, (attack, body)
    err = assert_error(body, "invalid_api_key")
    assert DEV_SECRET not in err["message"]


async def test_oversized_token_is_refused_before_parsing(strict_gw: Gateway) -> None:
    status, _ = await status_of(strict_gw, "A" * 9000)  # not even base64url JSON: never looked at
    assert status == 401
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{strict_gw.proc.ops_port}/metrics") as r,
    ):
        assert 'janus_auth_failures_total{reason="oversized"}' in await r.text()


async def test_unknown_kids_do_not_flood_the_identity_provider(strict_gw: Gateway, jwks: JwksServer) -> None:
    await asyncio.sleep(0.6)
    before = jwks.fetches
    forged = [
        jwt.encode(good(), ec_key(), algorithm="ES256", headers={"kid": f"forged-{i}"}) for i in range(20)
    ]
    results = await asyncio.gather(*(status_of(strict_gw, t) for t in forged))
    assert {s for s, _ in results} == {401}
    assert jwks.fetches - before <= 2  # one shared refresh (two if the window ended mid-burst)


async def test_public_keys_only_gateway(gw_nats: NatsServer, jwks: JwksServer, tmp_path: Path) -> None:
    """No secret configured: HS256 is not offered at all, so key confusion has nothing to meet."""
    gw = start_gateway(gw_nats, tmp_path, tag="-jwks-only", JANUS_JWT_SECRET="", JANUS_JWT_JWKS_URL=jwks.url)
    try:
        rs_pub = json.dumps(jwk(EC_K1, "k1", "ES256")).encode()
        for tok in (
            jwt.encode(claims(), DEV_SECRET, algorithm="HS256"),
            forge_hs256(claims(), rs_pub),
            forge_hs256(claims(), public_pem(EC_K1)),
        ):
            status, body = await status_of(gw, tok)
            assert status == 401, body
        es256 = jwt.encode(claims(), EC_K1, algorithm="ES256", headers={"kid": "k1"})
        status, body = await status_of(gw, es256)
        assert status == 200, body
    finally:
        gw.proc.stop()
