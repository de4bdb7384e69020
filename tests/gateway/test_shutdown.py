"""Graceful shutdown: the socket closes, open streams get until the grace bound, then an in-band error;
their settlements still go out. The in-flight gauge shows the open stream before it."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp

from tests.gateway import fakes as F
from tests.gateway.conftest import auth, start_gateway
from tests.gateway.test_flow import CHAT, sse_events
from tests.kit.metrics import parse_metric
from tools.localnats import NatsServer


async def test_sigterm_ends_open_streams_in_band_and_settles(
    gw_nats: NatsServer, fakes: F.Fakes, tmp_path: Path
) -> None:
    gw = start_gateway(gw_nats, tmp_path, tag="-drain", JANUS_SHUTDOWN_GRACE_SECONDS="5")
    await fakes.start({"pa": F.endless})
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(gw.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth()) as r,
        ):
            assert r.status == 200
            rid = r.headers["X-Request-Id"]
            await r.content.readuntil(b"\n\n")
            # the gauge the autoscaler reads, from the count the drain waits on
            assert parse_metric(await asyncio.to_thread(gw.proc.metrics), "janus_in_flight_requests") == 1
            gw.proc.proc.send_signal(signal.SIGTERM)
            raw = b"data: " + (await r.content.read()).split(b"data: ", 1)[-1]
        events = sse_events(raw)
        err = json.loads(events[-1])
        assert err["error"]["code"] == "shutting_down"
        settled = await fakes.settlement_for(rid)
        assert len(settled) == 1 and not settled[0].ok and settled[0].usage.completion_tokens >= 1
        assert await asyncio.to_thread(gw.proc.proc.wait, 15) == 0
        try:
            async with aiohttp.ClientSession() as http, http.get(gw.url + "/v1/models", headers=auth()):
                raise AssertionError("the gateway still accepts connections")
        except aiohttp.ClientConnectionError:
            pass
    finally:
        gw.proc.stop()
