"""A test upstream that answers the next call with one response recorded from a real provider API
(``tests/fixtures/recordings.py``), on any path, with the recorded status and content type:

    upstream.serve(recording, "whole")   # the recorded bytes, byte for byte, in one write
    upstream.serve(recording, "odd")     # the same bytes in writes of odd sizes
    upstream.serve(recording, "cut")     # a stream up to its final event, then a clean close

Every call gets the recording last served, so a retried failure (a 529, each attempt of the
gateway) meets the same answer again. One instance stands in for every provider kind at once (each
deployment's adapter builds its own path on the same base URL); each call's path and body are kept
in ``requests``.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web

from tests.fixtures.recordings import Expected, cut_before_final_event, odd_pieces
from tests.fixtures.replay import ReplayUpstream

Mode = Literal["whole", "odd", "cut"]


class RecordedUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("recordings", ["/{tail:.*}"])
        self.current: tuple[Expected, Mode] | None = None

    def serve(self, recording: Expected, mode: Mode) -> None:
        self.current = (recording, mode)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        _, _, failure = await self._take(request)
        if failure is not None:
            return failure
        if self.current is None:
            # loud, and in no provider's format: a test that forgot to serve fails on it
            return web.Response(status=599, text="no recording served")
        recording, mode = self.current
        data = cut_before_final_event(recording) if mode == "cut" else recording.body
        headers = {"Content-Type": recording.content_type}
        if mode == "whole":
            return web.Response(status=recording.status, body=data, headers=headers)
        resp = web.StreamResponse(status=recording.status, headers=headers)
        await resp.prepare(request)
        for piece in odd_pieces(data) if mode == "odd" else [data]:
            await resp.write(piece)
            await asyncio.sleep(0)  # let each piece leave as its own segment where the kernel allows
        await resp.write_eof()
        return resp
