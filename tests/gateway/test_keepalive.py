"""SSE keep-alive: a stream whose first token is slow is opened with comments, so that a load
balancer's idle timeout (30-60 s on common clouds) does not cut it, and it still falls back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest
from openai import AsyncOpenAI

from shared import contract
from shared.contract import Accepted, Chunk, Done, Failed, Heartbeat, Usage, WorkRequest
from shared.errors import JanusError
from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway, auth, start_gateway
from tests.gateway.test_flow import CHAT, assert_error
from tools.localnats import NatsServer

KEEPALIVE = 0.3
COMMENT = b": keep-alive\n\n"


@pytest.fixture(scope="module")
def gateway(gw_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(
        gw_nats, tmp_path_factory.mktemp("gw-keepalive"), JANUS_SSE_KEEPALIVE_SECONDS=str(KEEPALIVE)
    )
    try:
        yield gw
    finally:
        gw.proc.stop()


async def heartbeats(send: F.Send, seq: int, n: int) -> int:
    """``n`` heartbeats, each past the keep-alive interval (the worker is alive, the model thinks)."""
    for _ in range(n):
        await asyncio.sleep(KEEPALIVE * 1.5)
        await send(Heartbeat(seq))
        seq += 1
    return seq


async def slow_first_token(f: F.Fakes, work: WorkRequest, send: F.Send) -> None:
    await send(Accepted(0))
    seq = await heartbeats(send, 1, 3)
    for delta in ({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo!"}):
        await send(Chunk(seq, F.chunk_data(work, delta)))
        seq += 1
    await send(Chunk(seq, F.chunk_data(work, {}, "stop")))
    await send(Done(seq + 1, Usage(12, 3), finish_reason="stop", upstream_seconds=0.001))


async def slow_then_fail(f: F.Fakes, work: WorkRequest, send: F.Send) -> None:
    await send(Accepted(0))
    seq = await heartbeats(send, 1, 2)
    err = JanusError.from_wire(
        contract.ErrorInfo(
            kind="upstream", message="provider returned 503", status=503, code="upstream_error"
        )
    )
    await send(Failed(seq, err.to_wire(), usage=Usage(5, 0)))


async def read_stream(http: aiohttp.ClientSession, gw: Gateway) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth()) as r:
        return r, await r.read()


async def test_a_slow_first_token_is_preceded_by_keep_alive_comments(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": slow_first_token})
    r, raw = await read_stream(http, gateway)
    assert r.status == 200
    assert r.headers["X-RateLimit-Session-Remaining-Credits"]  # the credit headers still go out
    assert raw.startswith(COMMENT), raw[:80]
    first_data = raw.index(b"data: ")
    assert raw[:first_data].count(COMMENT) >= 2
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_the_official_sdk_reads_a_stream_with_comments(gateway: Gateway, fakes: F.Fakes) -> None:
    await fakes.start({"pa": slow_first_token})
    token = auth()["Authorization"].removeprefix("Bearer ")
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=CHAT["model"],
            messages=CHAT["messages"],
            stream=True,  # type: ignore[arg-type]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello!"


async def test_an_opened_stream_still_falls_back_before_its_first_token(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    fakes.providers = ("pa", "pb")
    await fakes.start({"pa": slow_then_fail, "pb": F.answer})
    r, raw = await read_stream(http, gateway)
    assert r.status == 200 and raw.startswith(COMMENT)
    assert raw.endswith(b"data: [DONE]\n\n")
    assert [w.provider for w, _ in fakes.works] == ["pa", "pb"]
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and settled[0].ok


async def test_an_opened_stream_that_fails_ends_with_an_error_event(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": slow_then_fail})
    r, raw = await read_stream(http, gateway)
    assert r.status == 200 and raw.startswith(COMMENT)
    last = raw.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: ") and b"[DONE]" not in raw
    assert_error(last.removeprefix(b"data: "), "upstream_error")
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and not settled[0].ok
    assert json.loads(last.removeprefix(b"data: "))["error"]["type"]
