"""A client that stops reading a stream: the gateway's writes time out, the request ends (499), the
worker is told to stop and what it produced is charged, long before metering's reaper could free
the hold; and while the request lives, its hold is renewed. A worker reply larger than the gateway
holds for one request is cut off, not buffered."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway, auth, start_gateway
from tests.gateway.test_flow import assert_error
from tools.localnats import NatsServer

WRITE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def slow_gateway(gw_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(
        gw_nats,
        tmp_path_factory.mktemp("slow"),
        tag="slow",
        JANUS_STREAM_WRITE_TIMEOUT_SECONDS=str(WRITE_TIMEOUT),
        JANUS_HOLD_RENEW_SECONDS="0.2",
        JANUS_STALL_TIMEOUT_SECONDS="30",
        JANUS_MAX_REPLY_BYTES="100000",
    )
    try:
        yield gw
    finally:
        gw.proc.stop()


async def _open_and_stop_reading(gw: Gateway) -> tuple[socket.socket, str]:
    """Send a streaming request on a real socket with a small receive buffer, read the response
    head, then never read again. Returns the socket and the request id."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", gw.port))
    body = json.dumps(
        {"model": "gpt-5-nano", "stream": True, "messages": [{"role": "user", "content": "go on for ever"}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head + body)
    got = b""
    async with asyncio.timeout(10):
        while b"\r\n\r\n" not in got:
            got += await loop.sock_recv(sock, 1024)
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    rid = next(
        line.split(b":", 1)[1].strip().decode()
        for line in got.split(b"\r\n")
        if line.lower().startswith(b"x-request-id:")
    )
    return sock, rid


async def test_a_client_that_stops_reading_is_ended_and_charged_for_what_was_produced(
    slow_gateway: Gateway, fakes: F.Fakes
) -> None:
    await fakes.start({"pa": F.flood})
    sock, rid = await _open_and_stop_reading(slow_gateway)
    try:
        # ended by the write timeout (1 s) plus the worker's word on its usage, far inside the
        # 900 s hold lifetime; without the timeout the request would live as long as the socket
        [s] = await fakes.settlement_for(rid, within=20)
        assert rid in fakes.cancels  # the worker was told to stop
        assert not s.ok and s.usage.prompt_tokens == 12 and s.usage.completion_tokens > 0
        assert any(r.request_id == rid for r in fakes.renewals)  # its hold was kept meanwhile
    finally:
        sock.close()
    lines = [json.loads(x) for x in slow_gateway.proc.log_tail(200_000).splitlines() if x.startswith("{")]
    [done] = [x for x in lines if x.get("event") == "request" and x.get("request_id") == rid]
    assert done["status"] == 499  # the client's side ended it, not an error of ours
    assert not any("Traceback" in str(x) for x in lines)


async def test_a_reply_larger_than_the_gateway_holds_is_cut_off_and_the_prompt_charged(
    slow_gateway: Gateway, fakes: F.Fakes
) -> None:
    await fakes.start({"pa": F.oversized})
    async with aiohttp.ClientSession() as http:
        async with http.post(
            slow_gateway.url + "/v1/embeddings",
            headers=auth(),
            json={"model": "text-embedding-3-small", "input": "four words of text"},
        ) as r:
            assert r.status == 502
            assert_error(await r.read(), "reply_too_large")
            rid = r.headers["X-Request-Id"]
    [s] = await fakes.settlement_for(rid)
    assert not s.ok and s.usage.prompt_tokens > 0  # the worker's own usage was in what was dropped
    assert rid in fakes.cancels
