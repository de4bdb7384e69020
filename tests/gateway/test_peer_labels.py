"""A worker's frame names error codes the gateway counts by: a compromised or broken worker naming a
new code in every frame must not grow the gateway's series (its memory, and Prometheus's) without
bound. Through the real gateway process, with its own fakes (a module of its own: a fresh gateway,
so the series counted are this test's)."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from shared import contract, metrics
from shared.contract import Accepted, Chunk, Failed, Usage, WorkRequest
from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway, auth

CHAT = {"model": "gpt-5-nano", "messages": [{"role": "user", "content": "Say hello"}]}
CODES = metrics.PEER_LABEL_SETS + 40  # past the bound, each code once
_serial = itertools.count()


def _fresh_error() -> contract.ErrorInfo:
    return contract.ErrorInfo(
        kind="upstream", message="invented", status=503, code=f"invented_{next(_serial)}"
    )


async def fail_with_a_new_code(f: F.Fakes, work: WorkRequest, send: F.Send) -> None:
    await send(Failed(0, _fresh_error(), usage=Usage(1, 0)))


async def chunk_then_fail_with_a_new_code(f: F.Fakes, work: WorkRequest, send: F.Send) -> None:
    await send(Accepted(0))
    await send(Chunk(1, F.chunk_data(work, {"role": "assistant", "content": "Hi"})))
    await send(Failed(2, _fresh_error(), usage=Usage(1, 1), produced=True))


async def _send_all(
    http: aiohttp.ClientSession, gateway: Gateway, body: dict[str, object], status: int
) -> None:
    """At least ``CODES`` requests (rounds of 16), each answered with ``status``."""

    async def one() -> None:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=auth()) as r:
            await r.read()
            assert r.status == status

    for _ in range(0, CODES, 16):
        await asyncio.gather(*(one() for _ in range(16)))


async def _series(http: aiohttp.ClientSession, gateway: Gateway, name: str) -> dict[str, float]:
    async with http.get(f"http://127.0.0.1:{gateway.proc.ops_port}/metrics") as r:
        text = await r.text()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(name + "{"))
    return {key: float(value) for key, value in samples}


async def test_error_codes_a_worker_invents_stay_a_bounded_set_of_series(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    fakes.providers = ("pa", "pb")
    await fakes.start({"pa": fail_with_a_new_code, "pb": chunk_then_fail_with_a_new_code})
    # buffered: every attempt fails with a new code (pb's after a chunk the gateway only held), so
    # each request falls back at least once and ends in an error response
    await _send_all(http, gateway, CHAT, 503)
    # streamed: pa fails, then pb's error comes after its first chunk went out: in-band, by its code
    await _send_all(http, gateway, {**CHAT, "stream": True}, 200)

    fallbacks = await _series(http, gateway, "janus_fallbacks_total")
    stream_errors = await _series(http, gateway, "janus_stream_errors_total")
    for name, series, sent in (
        ("janus_fallbacks_total", fallbacks, 2 * CODES),
        ("janus_stream_errors_total", stream_errors, CODES),
    ):
        # every failure counted, but in at most the bound's series plus the one they overflow into
        assert len(series) <= metrics.PEER_LABEL_SETS + 1, (name, len(series))
        assert sum(series.values()) >= sent, (name, sum(series.values()))
        other = [v for k, v in series.items() if f'"{metrics.OTHER}"' in k]
        assert other and other[0] >= sent - metrics.PEER_LABEL_SETS, (name, other)
