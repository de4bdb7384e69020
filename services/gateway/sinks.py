"""Where an answer goes: a buffered JSON body or an SSE stream, behind one ``Sink`` interface so the
dispatcher's attempt loop is the same for both. Every write to the client is bounded in time
(``JANUS_STREAM_WRITE_TIMEOUT_SECONDS``): a client that stops reading is treated as gone, and a
buffered answer is bounded in size (``JANUS_MAX_REPLY_BYTES``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from services.gateway.frames import REPLY_OVERFLOW
from shared import metrics
from shared.contract import Done
from shared.errors import JanusError

if TYPE_CHECKING:
    from services.gateway.dispatch import Call

_ttft = metrics.children(metrics.TTFT)
# an error's code may come from a worker's frame: bounded, whatever a worker sends
_STREAM_ERRORS = metrics.children(metrics.STREAM_ERRORS, most=metrics.PEER_LABEL_SETS)

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # reverse proxies must not hold back events
}
_DONE_EVENT = b"data: [DONE]\n\n"
# an SSE comment: clients skip it, load balancers see bytes on a quiet connection
_KEEPALIVE = b": keep-alive\n\n"
_JSON = "application/json"
_DATA = b"data: "
_END = b"\n\n"
# held chunks go out once they are this large even when more frames wait: a worker that sends
# faster than the client reads must meet the write timeout, not fill the gateway's memory
HELD_BYTES = 256 * 1024


class Sink(Protocol):
    started: bool
    chunks: int
    resp: web.StreamResponse | None

    # ``data`` then ``rest``: chunks that arrived in one frame; more: another frame has already
    # arrived, so the write may wait for it (one write, not many)
    async def chunk(self, data: bytes, more: bool = False, rest: Sequence[bytes] = ()) -> None: ...
    # a new attempt begins: what a failed one left is dropped (a started stream never retries)
    def reset(self) -> None: ...
    async def flush(self) -> None: ...
    # the worker is alive but has nothing new (a heartbeat): held chunks go out, a quiet stream is kept alive
    async def idle(self) -> None: ...
    async def done(self, frame: Done) -> web.StreamResponse: ...
    async def fail(self, err: JanusError) -> web.StreamResponse: ...


class ClientTooSlow(ConnectionError):
    """The client did not take a write within the stream write timeout: it is treated as gone."""


# what a chunked write adds around its data (the length line and the closing CRLF)
_CHUNK_FRAMING = 32


async def _write(
    request: web.Request,
    resp: web.StreamResponse,
    data: bytes,
    timeout: float,
    *,
    eof: bool = False,
    size: int | None = None,
) -> None:
    """One write to the client, bounded: a client that stops reading (its socket buffers full)
    would otherwise hold the request, its worker and its hold for as long as it likes. ``size``:
    what the write sends when it is not ``data`` (a ``web.Response`` ends with its own body).

    A write that fits under the socket's high-water mark while writing is not paused cannot wait
    (aiohttp waits only for a paused transport, the end of a response too), so it goes without a
    timer: one per streamed chunk was a measurable part of the gateway's cost per chunk."""
    transport = request.transport
    if (
        transport is not None
        and not request.protocol.writing_paused
        and transport.get_write_buffer_size() + (len(data) if size is None else size) + _CHUNK_FRAMING
        <= transport.get_write_buffer_limits()[1]
    ):
        await (resp.write_eof(data) if eof else resp.write(data))
        return
    try:
        async with asyncio.timeout(timeout):
            if eof:
                await resp.write_eof(data)
            else:
                await resp.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # the half-written response cannot be finished
        raise ClientTooSlow("the client stopped reading") from None


class BufferedSink:
    """A whole JSON body. It comes in the Done frame, or, when larger than one bus message (a big
    embeddings batch), as Chunk frames carrying consecutive slices of it, the last in Done."""

    started: bool = False
    chunks: int = 0
    resp: web.StreamResponse | None = None

    def __init__(
        self, request: web.Request, call: Call, write_timeout: float = 30.0, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self.request = request
        self.call = call
        self.write_timeout = write_timeout
        self.max_bytes = max_bytes
        self.size = 0
        self.parts: list[bytes] = []

    async def chunk(self, data: bytes, more: bool = False, rest: Sequence[bytes] = ()) -> None:
        self.size += len(data) + sum(map(len, rest))
        if self.size > self.max_bytes:
            raise JanusError(
                "the worker's answer is larger than the gateway holds for one request",
                code=REPLY_OVERFLOW,
                status=502,
            )
        self.parts.append(data)
        self.parts += rest

    def reset(self) -> None:
        self.parts.clear()
        self.size = 0

    async def flush(self) -> None:
        return

    async def idle(self) -> None:
        return

    async def done(self, frame: Done) -> web.StreamResponse:
        """Write the answer now, ahead of the request's bookkeeping (its settlement, metrics and log
        line), which the client need not wait for; the response returned is already sent."""
        headers = self.call.headers
        headers["Content-Type"] = _JSON
        if not self.parts:
            whole = self.resp = web.Response(body=frame.body, headers=headers)
            await whole.prepare(self.request)
            await _write(self.request, whole, b"", self.write_timeout, eof=True, size=len(frame.body))
            return whole
        # written slice by slice: joining them first would hold the answer twice
        parts, self.parts = [*self.parts, frame.body], []
        resp = web.StreamResponse(headers=headers)
        resp.content_length = sum(map(len, parts))
        self.resp = resp
        await resp.prepare(self.request)
        for part in parts:
            await _write(self.request, resp, part, self.write_timeout)
        await _write(self.request, resp, b"", self.write_timeout, eof=True)
        return resp

    async def fail(self, err: JanusError) -> web.StreamResponse:
        raise err


class StreamSink:
    """SSE. Headers go out with the first chunk, so that everything before it can still fall back to
    another deployment or end as an ordinary HTTP error; but a first token slower than
    ``keepalive`` (a reasoning model, a queue upstream) opens the stream with a comment instead, and
    a comment follows every ``keepalive`` of silence: load balancers cut idle connections at 30-60 s.
    An opened stream with no chunk yet still falls back; its errors are in-band.

    Chunks that arrived together leave in one write (a write per event costs a syscall each): those
    of one frame, and those of frames already waiting; a chunk is held only while another frame is
    already waiting, so nothing is ever delayed. The held events are pieces joined once, at the
    write."""

    def __init__(
        self, request: web.Request, call: Call, write_timeout: float = 30.0, keepalive: float = 15.0
    ) -> None:
        self.request = request
        self.call = call
        self.write_timeout = write_timeout
        self.keepalive = keepalive
        self.resp: web.StreamResponse | None = None
        self.started = False  # a chunk went out: the stream is the client's, no fallback
        self.chunks = 0
        self._held: list[bytes] = []  # "data: ", chunk, "\n\n", ...
        self._held_bytes = 0
        self._wrote = call.start  # perf_counter of the last write (the request's arrival at first)

    async def _open(self) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**self.call.headers, **_SSE_HEADERS})
        self.resp = resp
        await resp.prepare(self.request)
        return resp

    def reset(self) -> None:
        return  # nothing is kept before the first chunk, and after it there is no other attempt

    def _hold(self, chunks: Sequence[bytes]) -> None:
        held = self._held
        for data in chunks:
            held += (_DATA, data, _END)
            self._held_bytes += len(data) + 8
        self.chunks += len(chunks)

    async def chunk(self, data: bytes, more: bool = False, rest: Sequence[bytes] = ()) -> None:
        self.started = True  # from here on the stream is the client's: no fallback
        self._held += (_DATA, data, _END)
        self._held_bytes += len(data) + 8
        self.chunks += 1
        if rest:
            self._hold(rest)
        if not more or self._held_bytes >= HELD_BYTES:
            await self.flush()

    async def _take(self) -> bytes:
        """The held events as one payload, the response opened first if this is the first."""
        if self.resp is None:
            await self._open()
        held = self._held
        if not held:
            return b""
        now = time.perf_counter()
        if self.chunks * 3 == len(held):  # nothing written before: the answer's first chunks
            _ttft(self.call.model).observe(now - self.call.start)
        self._wrote = now
        self._held = []
        self._held_bytes = 0
        return b"".join(held)

    async def flush(self) -> None:
        if self._held:
            data = await self._take()
            assert self.resp is not None
            await _write(self.request, self.resp, data, self.write_timeout)

    async def idle(self) -> None:
        if self._held:
            await self.flush()
        elif time.perf_counter() - self._wrote >= self.keepalive:
            if self.resp is None:
                await self._open()
            assert self.resp is not None
            await _write(self.request, self.resp, _KEEPALIVE, self.write_timeout)
            self._wrote = time.perf_counter()

    async def done(self, frame: Done) -> web.StreamResponse:
        if frame.chunks:
            self.started = True
            self._hold(frame.chunks)
        data = await self._take()
        assert self.resp is not None
        # the last events and the terminator together
        await _write(self.request, self.resp, data + _DONE_EVENT, self.write_timeout, eof=True)
        return self.resp

    async def fail(self, err: JanusError) -> web.StreamResponse:
        if self.resp is None and not self._held:
            raise err
        _STREAM_ERRORS(err.code or "error").inc()
        self.call.error_code = err.code or "error"
        try:
            data = await self._take()
            assert self.resp is not None
            await _write(
                self.request,
                self.resp,
                data + b"data: " + err.to_body() + b"\n\n",
                self.write_timeout,
                eof=True,
            )
        except ConnectionError:
            self.call.status = 499
        assert self.resp is not None
        return self.resp
