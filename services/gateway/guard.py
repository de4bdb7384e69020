"""The HTTP server's protection against hostile and slow clients, below the application.

aiohttp enforces header line and count limits in its parser but answers a violation with a text/plain
400 (and logs the offending line, which may hold a token), and it has no bound on how long a client
may take to send its headers: one byte a second keeps a connection, and its task, alive for ever.
Here:

- a parser error becomes an OpenAI-shaped error (431 for headers too large, 400 otherwise), logged
  without the request's bytes, and the connection is closed;
- from the first byte of a request to the end of its headers, a client has ``header_timeout``; past
  it the gateway answers 408 and closes. (An idle keep-alive connection is bounded separately by
  aiohttp's keep-alive timeout; the body by the handler's own timeout; the unread rest of a body
  after the answer by aiohttp's ``lingering_time``, and those bytes never start a header timer.)

The runner swaps aiohttp's ``Server`` for one that builds these handlers; it relies on aiohttp's
``Server``/``RequestHandler`` internals (``_kwargs``, ``_loop``, ``_request_count``, ``_messages``,
``_current_request``), which is why aiohttp is pinned exactly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from shared.errors import InvalidRequest, JanusError
from shared.logging import get_logger

log = get_logger("gateway.guard")


def _timeout_response() -> bytes:
    # written straight to the socket: no request object exists yet to answer through aiohttp
    err = InvalidRequest(
        "The client took too long to send the request headers.", status=408, code="request_timeout"
    )
    body = err.to_body()
    extra = "".join(f"{k}: {v}\r\n" for k, v in err.headers().items())
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


_TIMEOUT_RESPONSE = _timeout_response()


def parser_error(exc: BaseException | None) -> JanusError:
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
        return InvalidRequest(
            "The request's headers are too large.", status=431, code="request_header_fields_too_large"
        )
    return InvalidRequest("The HTTP request is malformed.", code="bad_http_request")


class GuardedHandler(RequestHandler):
    def __init__(self, manager: web.Server, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._payload: StreamReader | None = None  # the body of the last request parsed

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()
            self._payload = self._messages[-1][1] if self._messages else None
        elif (
            self._head_timer is None
            and self._current_request is None
            and self.transport is not None
            and (self._payload is None or self._payload.is_eof())
        ):
            # a request has begun arriving: its headers must be complete within the bound. Bytes
            # of the last request's unread body (aiohttp reads them for ``lingering_time`` after
            # its answer) are not a new request: timing them out would answer that request twice
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._current_request is not None or self.transport is None:
            return  # the head arrived and a handler runs; the body has its own bound
        log.info("slow_client_cut", phase="headers")
        transport = self.transport
        transport.write(_TIMEOUT_RESPONSE)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        # the base class logs the exception, whose text can carry a header value: never here
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        err = parser_error(exc) if status == 400 else JanusError("internal error")
        log.info("bad_http_request", status=err.http_status, reason=type(exc).__name__ if exc else None)
        resp = web.Response(
            status=err.http_status, body=err.to_body(), content_type="application/json", headers=err.headers()
        )
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    def __init__(self, base: web.Server, header_timeout: float) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, self._header_timeout, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self._header_timeout)
