"""The worker's transport refuses an upstream answer larger than it takes as soon as it knows:
by its Content-Length, or while a body without one (or a compressed one) arrives, never after
holding it whole."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from services.worker.adapters.base import UpstreamRequest
from services.worker.transport import Transport
from shared.errors import PayloadTooLarge

LIMIT = 1024 * 1024
PIECE = 64 * 1024
PIECES = 1024  # 64 MiB if it were read whole


class Adapter:
    @staticmethod
    def error_message(status: int, body: bytes) -> str:
        return body.decode()


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, int]]]:
    sent = {"pieces": 0}

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(PIECES):
                await resp.write(b"1" * PIECE)
                sent["pieces"] += 1
        except ConnectionError:
            pass  # the client hung up: what it refused is never sent
        return resp

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=b"2" * (LIMIT + 1))

    # a small declared length that inflates to 64 MiB: what counts is what the worker would hold
    bomb = zlib.compress(b"3" * (PIECE * PIECES), 9)
    sent["bomb_bytes"] = len(bomb)

    async def inflating(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "deflate"})

    async def small_compressed(request: web.Request) -> web.Response:
        return web.Response(body=zlib.compress(b"4" * 1000), headers={"Content-Encoding": "deflate"})

    app = web.Application()
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/declared", declared)
    app.router.add_post("/inflating", inflating)
    app.router.add_post("/small-compressed", small_compressed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", sent
    finally:
        await runner.cleanup()


async def test_a_body_larger_than_the_limit_is_refused_as_it_arrives(
    server: tuple[str, dict[str, int]],
) -> None:
    url, sent = server
    t = Transport(max_body_bytes=LIMIT)
    await t.start()
    try:
        for path in ("/chunked", "/declared", "/inflating"):
            with pytest.raises(PayloadTooLarge) as err:
                await t.fetch(UpstreamRequest("POST", url + path, {}, b"{}", "json"), Adapter())
            assert err.value.code == "response_too_large" and err.value.status == 413
        # the connection went away a little past the limit, not at the end of 64 MiB
        assert sent["pieces"] < PIECES // 4
        assert sent["bomb_bytes"] < LIMIT  # its stated length alone would have let it through
        got = await t.fetch(UpstreamRequest("POST", url + "/small-compressed", {}, b"{}", "json"), Adapter())
        assert got == b"4" * 1000
        small = Transport(max_body_bytes=0)
        await small.start()
        try:
            assert (
                len(
                    await small.fetch(
                        UpstreamRequest("POST", url + "/declared", {}, b"{}", "json"), Adapter()
                    )
                )
                == LIMIT + 1
            )
        finally:
            await small.close()
    finally:
        await t.close()
