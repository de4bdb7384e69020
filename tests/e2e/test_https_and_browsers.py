"""HTTPS served by the gateway itself, a plain listener that redirects (308) to it, and CORS for
browser clients: the official SDK over TLS, a plain request sent on, a preflight answered."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.kit.trickle import trickle
from tools.localnats import free_port
from tools.localstack import Stack, start_stack
from tools.token import make_token

ORIGIN = "https://app.example.com"


def self_signed(work: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = work / "tls.crt", work / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path, int]]:
    work = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(work)
    plain = free_port()
    env = {
        "JANUS_TLS_CERT": str(cert),
        "JANUS_TLS_KEY": str(key),
        "JANUS_HTTP_REDIRECT_PORT": str(plain),
        "JANUS_CORS_ORIGINS": f"{ORIGIN}, https://other.example.com",
        "JANUS_HEADER_TIMEOUT_SECONDS": "1",
    }
    s = start_stack(work, env=env)
    try:
        yield s, cert, plain
    finally:
        s.stop()


def _https(stack: Stack) -> str:
    assert stack.base_url.startswith("https://")  # what `make run` prints with TLS on
    return stack.base_url


def test_the_sdk_talks_to_the_gateway_over_tls(tls_stack: tuple[Stack, Path, int]) -> None:
    stack, cert, _ = tls_stack
    tok = make_token("tls-user", "pro", secret=stack.env["JANUS_JWT_SECRET"])
    with httpx.Client(verify=str(cert)) as http:
        client = openai.OpenAI(base_url=_https(stack), api_key=tok, http_client=http, max_retries=0)
        done = client.chat.completions.create(
            model="gpt-5-nano", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content
    with pytest.raises(httpx.RemoteProtocolError):  # the TLS port speaks nothing but TLS
        httpx.get(f"http://127.0.0.1:{stack.gateway_port}/v1/models", timeout=5)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_plain_http_is_sent_to_https_with_a_308(tls_stack: tuple[Stack, Path, int], method: str) -> None:
    stack, _, plain = tls_stack
    r = httpx.request(method, f"http://127.0.0.1:{plain}/v1/chat/completions?x=1", content=b"{}", timeout=5)
    assert r.status_code == 308  # a POST stays a POST, with its body
    assert r.headers["Location"] == f"https://127.0.0.1:{stack.gateway_port}/v1/chat/completions?x=1"


def test_a_host_header_that_is_not_a_host_is_not_redirected_to(tls_stack: tuple[Stack, Path, int]) -> None:
    _, _, plain = tls_stack
    r = httpx.get(f"http://127.0.0.1:{plain}/v1/models", headers={"Host": "evil.example/@x"}, timeout=5)
    assert r.status_code == 400 and "Location" not in r.headers


def test_the_plain_listener_cuts_off_slow_and_garbled_clients(tls_stack: tuple[Stack, Path, int]) -> None:
    """The redirect listener faces the internet as the gateway's own does, with the same bounds: a
    client trickling its headers is answered 408 and cut off (this stack allows 1 s for them), and
    bytes that are not HTTP get an OpenAI-shaped 400, not aiohttp's text."""
    _, _, plain = tls_stack
    bound = 6.0
    with socket.create_connection(("127.0.0.1", plain), timeout=bound) as s:
        start = time.monotonic()
        raw = trickle(s, b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"z" * 200, bound, 0.1)
        elapsed = time.monotonic() - start
    assert elapsed < bound, "the plain listener waited for a client trickling its headers"
    assert raw.startswith(b"HTTP/1.1 408"), raw[:200]
    with socket.create_connection(("127.0.0.1", plain), timeout=bound) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        garbled = s.recv(65536)
    head, _, body = garbled.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", garbled
    assert json.loads(body)["error"]["code"] == "bad_http_request", garbled


def test_preflight_from_an_allowed_origin_is_answered(tls_stack: tuple[Stack, Path, int]) -> None:
    stack, cert, _ = tls_stack
    asked = "authorization, content-type, x-stainless-os"
    r = httpx.options(
        f"{_https(stack)}/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
        verify=str(cert),
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert r.headers["Access-Control-Allow-Headers"] == asked
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_answers_and_errors_name_an_allowed_origin_only(tls_stack: tuple[Stack, Path, int]) -> None:
    stack, cert, _ = tls_stack
    tok = make_token("cors-user", "pro", secret=stack.env["JANUS_JWT_SECRET"])
    with httpx.Client(
        base_url=_https(stack), verify=str(cert), headers={"Authorization": f"Bearer {tok}"}
    ) as c:
        body = {"model": "gpt-5-nano", "messages": [{"role": "user", "content": "hi"}]}
        ok = c.post("/chat/completions", json=body, headers={"Origin": ORIGIN})
        streamed = c.post("/chat/completions", json={**body, "stream": True}, headers={"Origin": ORIGIN})
        refused = c.post("/chat/completions", json={"model": "gpt-5-nano"}, headers={"Origin": ORIGIN})
        for r in (ok, streamed, refused):
            assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert (
                "x-ratelimit-session-remaining-credits" in r.headers["Access-Control-Expose-Headers"].lower()
            )
        assert (ok.status_code, streamed.status_code, refused.status_code) == (200, 200, 400)
        stranger = c.post("/chat/completions", json=body, headers={"Origin": "https://evil.example.com"})
        assert stranger.status_code == 200 and "Access-Control-Allow-Origin" not in stranger.headers
        assert "Origin" in stranger.headers.get("Vary", "")  # a cache keeps origins apart
        denied = c.options(
            "/chat/completions",
            headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert "Access-Control-Allow-Origin" not in denied.headers


def test_cors_is_off_by_default(stack: Stack) -> None:
    r = httpx.options(
        f"{stack.base_url}/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 405 and "Access-Control-Allow-Origin" not in r.headers
