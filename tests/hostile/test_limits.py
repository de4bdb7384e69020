"""Header and body limits answer in OpenAI's shape, and a slow client is cut off after a bound
(the hostile stack's gateway: headers within 1 s of a request's first byte, the body within 1.5 s)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.hostile.conftest import Hostile
from tests.kit.trickle import trickle
from tests.openai_schema import validate

BOUND = 6.0  # seconds within which the gateway must have given up on a slow client


def _connect(h: Hostile) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", h.stack.gateway_port), timeout=BOUND + 4)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        out += data
    return out


def _status_and_body(raw: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    doc = json.loads(body)
    validate("ErrorResponse", doc)
    return status, doc


def _request(h: Hostile, head: bytes) -> bytes:
    with _connect(h) as s:
        s.sendall(head)
        return _read_all(s)


@pytest.mark.parametrize("case", ["huge_header", "huge_token", "too_many_headers"])
def test_oversized_headers_are_431(hostile: Hostile, case: str) -> None:
    if case == "huge_header":
        extra = b"X-Padding: " + b"a" * 40_000 + b"\r\n"
    elif case == "huge_token":
        extra = b"Authorization: Bearer " + b"e" * 40_000 + b"\r\n"
    else:
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    raw = _request(hostile, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    status, doc = _status_and_body(raw)
    assert status == 431, raw[:300]
    assert doc["error"]["code"] == "request_header_fields_too_large"
    assert _should_retry(raw) == b"false"


def _should_retry(raw: bytes) -> bytes | None:
    for line in raw.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-should-retry":
            return value.strip()
    return None


def test_garbage_request_is_400_in_openai_shape(hostile: Hostile) -> None:
    raw = _request(hostile, b"NOT HTTP AT ALL\r\n\r\n")
    status, doc = _status_and_body(raw)
    assert status == 400
    assert doc["error"]["type"] == "invalid_request_error"
    assert _should_retry(raw) == b"false", "the same bytes will be refused again: SDKs must not retry"


def test_slow_headers_are_cut_off(hostile: Hostile) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 200
    with _connect(hostile) as s:
        start = time.monotonic()
        closed = False
        for b in head:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.05)
            if time.monotonic() - start > BOUND:
                break
        raw = b"" if closed else _read_all(s)
        elapsed = time.monotonic() - start
    assert elapsed < BOUND, "the gateway waited for the slow client"
    if raw:
        status, doc = _status_and_body(raw)
        assert status == 408 and doc["error"]["code"] == "request_timeout"
        assert _should_retry(raw) == b"false"


@pytest.mark.parametrize("late_byte", [False, True], ids=["stops", "sends-after-the-answer"])
def test_slow_body_is_cut_off(hostile: Hostile, late_byte: bool) -> None:
    """One answer, 408, and the connection closed. A client that sent another byte of its body
    as the answer arrived gets no second one (the byte, read while aiohttp drains the unread
    body, once started the header timer, whose 408 followed the first on the same connection)."""
    body = json.dumps({"model": "gpt-5-nano", "messages": [{"role": "user", "content": "x" * 200}]}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + hostile.token("slow-body").encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with _connect(hostile) as s:
        s.sendall(head)
        start = time.monotonic()
        raw = trickle(s, body, BOUND)
        if late_byte and raw:
            try:
                s.sendall(body[-1:])
            except (BrokenPipeError, ConnectionResetError):
                pass
        s.settimeout(BOUND)
        raw += _read_all(s)
        elapsed = time.monotonic() - start
    assert elapsed < BOUND, "the gateway waited for the slow body"
    assert raw.count(b"HTTP/1.1 ") == 1, raw
    status, doc = _status_and_body(raw)
    assert status == 408 and doc["error"]["code"] == "request_timeout"
    assert b"Connection: close" in raw.split(b"\r\n\r\n")[0]


def test_gateway_still_serves(hostile: Hostile) -> None:
    tok = hostile.token("after-limits").encode()
    raw = _request(
        hostile,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Authorization: Bearer " + tok + b"\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
