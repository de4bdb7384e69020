"""The one middleware every request passes: request id, errors in OpenAI's shape, metrics, the log line.

Every failure leaves here as ``{"error": {...}}`` with the status its class names: a ``JanusError``
from anywhere in the request, aiohttp's own 404/405/413, and anything unexpected (500 ``internal
error``, logged once with the request id, never a stack trace in the body).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.gateway.dispatch import Call
from shared import metrics
from shared.errors import JanusError, MethodNotAllowed, NotFound, PayloadTooLarge
from shared.logging import bind_request, get_logger, unbind_request

log = get_logger("gateway.http")

_requests = metrics.children(metrics.HTTP_REQUESTS)
_duration = metrics.children(metrics.HTTP_DURATION)
_overhead = metrics.children(metrics.OVERHEAD)

CALL = "janus.call"  # the request's Call, in the aiohttp request mapping

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _from_http(exc: web.HTTPException, request: web.Request) -> JanusError:
    if exc.status == 404:
        return NotFound(f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
    if exc.status == 405:
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.")
    err = JanusError(exc.reason, status=exc.status)
    return err


def _error_response(err: JanusError, call: Call, extra: dict[str, str] | None = None) -> web.Response:
    headers = {**call.headers, **err.headers(), "Content-Type": "application/json"}
    headers.pop("Content-Length", None)
    if extra:
        headers.update(extra)
    resp = web.Response(status=err.http_status, body=err.to_body(), headers=headers)
    if err.http_status == 408:
        # no keep-alive after a trickled body: aiohttp drains its rest for at most
        # JANUS_LINGERING_SECONDS (so the client reads this answer), then closes
        resp.force_close()
    return resp


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"


class Edge:
    """Counts requests in flight, so a draining gateway knows when it is idle; the in-flight gauge
    reads the count when scraped instead of being moved twice per request."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.idle = asyncio.Event()
        metrics.IN_FLIGHT.set_function(lambda: self.in_flight)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        call = Call("req_" + os.urandom(12).hex(), start)
        request[CALL] = call
        bind_request(request_id=call.request_id)
        self.in_flight += 1
        self.idle.clear()
        error: JanusError | None = None
        try:
            resp = await handler(request)
        except JanusError as exc:
            error = exc
            resp = _error_response(exc, call)
        except web.HTTPException as exc:
            error = _from_http(exc, request)
            allow = exc.headers.get("Allow") if exc.status == 405 else None
            resp = _error_response(error, call, {"Allow": allow} if allow else None)
        except Exception:
            log.exception("internal_error", path=request.path)
            error = JanusError("internal error")
            resp = _error_response(error, call)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
        duration = time.perf_counter() - start
        status = call.status or resp.status
        route = _route_label(request)
        _requests(route, request.method, str(status)).inc()
        _duration(route).observe(duration)
        if call.upstream_seconds:
            _overhead(route).observe(max(duration - call.upstream_seconds, 0.0))
        # a failure of ours at warning, with its message; everything else at info
        emit, extra = log.info, {}
        if error is not None and error.http_status >= 500:
            emit, extra = log.warning, {"error": error.message}
        emit(
            "request",
            route=route,
            method=request.method,
            status=status,
            model=call.model,
            duration_ms=round(duration * 1000, 2),
            code=error.code if error else call.error_code,
            **extra,
        )
        unbind_request("request_id")
        return resp
