"""SIGTERM to a gateway holding 32 open streams: readiness flips first, no new request is accepted,
and every open stream either finishes (``[DONE]``) or, past the grace bound, ends with an explicit
in-band error event; never a silent cut. The fake provider streams slowly (catalog options)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.hostile.conftest import write_catalog
from tools.localstack import start_stack
from tools.token import make_token

STREAMS = 32


async def _open_stream(
    http: aiohttp.ClientSession, url: str, token: str, max_tokens: int, started: asyncio.Queue[None]
) -> list[bytes]:
    body = {
        "model": "gpt-5-nano",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    }
    async with http.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200, await r.read()
        first = await r.content.readuntil(b"\n\n")
        started.put_nowait(None)
        rest = await r.content.read()
    raw = first + rest
    assert raw.endswith(b"\n\n"), raw[-200:]
    return [e[len(b"data: ") :] for e in raw.split(b"\n\n")[:-1]]


async def _ready_status(ops_port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{ops_port}/readyz") as r:
        return r.status


@pytest.mark.parametrize(
    ("grace", "tps", "max_tokens", "finishes"),
    [
        pytest.param("20", "25", 30, True, id="streams_finish_within_grace"),
        pytest.param("4", "4", 60, False, id="streams_end_in_band_after_grace"),
    ],
)
async def test_sigterm_with_32_open_streams(
    tmp_path: Path, grace: str, tps: str, max_tokens: int, finishes: bool
) -> None:
    env = {
        "JANUS_CATALOG": str(write_catalog(tmp_path / "catalog.yaml", "", tokens_per_second=tps)),
        "JANUS_SHUTDOWN_GRACE_SECONDS": grace,
    }
    stack = await asyncio.to_thread(start_stack, tmp_path, env=env)
    try:
        gw = stack.services["gateway"]
        url = f"http://127.0.0.1:{stack.gateway_port}"
        token = make_token("drainer", "enterprise", secret=stack.env["JANUS_JWT_SECRET"])
        started: asyncio.Queue[None] = asyncio.Queue()
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=STREAMS + 4)
        ) as http:
            tasks = [
                asyncio.create_task(_open_stream(http, url, token, max_tokens, started))
                for _ in range(STREAMS)
            ]
            for _ in range(STREAMS):
                await asyncio.wait_for(started.get(), 30)
            assert await _ready_status(gw.ops_port) == 200
            gw.proc.send_signal(signal.SIGTERM)
            # readiness flips while the streams are still open
            for _ in range(100):
                if await _ready_status(gw.ops_port) == 503:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("readiness did not flip")
            assert not all(t.done() for t in tasks)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with (
                    aiohttp.ClientSession() as fresh,
                    fresh.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"}),
                ):
                    pass
            results = await asyncio.gather(*tasks)
        for events in results:
            last = events[-1]
            if finishes:
                assert last == b"[DONE]", events[-3:]
                assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])
            else:
                assert json.loads(last)["error"]["code"] == "shutting_down", events[-3:]
        assert await asyncio.to_thread(gw.proc.wait, 30) == 0
    finally:
        await asyncio.to_thread(stack.stop)
