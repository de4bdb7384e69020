"""The worker's transport refuses an upstream answer larger than it takes as soon as it knows:
by its Content-Length, or while a body without one arrives, never after holding it whole."""

from __future__ import annotations

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

    app = web.Application()
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/declared", declared)
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
        for path in ("/chunked", "/declared"):
            with pytest.raises(PayloadTooLarge) as err:
                await t.fetch(UpstreamRequest("POST", url + path, {}, b"{}", "json"), Adapter())
            assert err.value.code == "response_too_large" and err.value.status == 413
        # the connection went away a little past the limit, not at the end of 64 MiB
        assert sent["pieces"] < PIECES // 4
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
