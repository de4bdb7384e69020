"""CORS for browser clients: off unless ``JANUS_CORS_ORIGINS`` names the origins allowed.

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is answered
204 before routing; every response to an allowed origin, errors and streams included, names it in
``Access-Control-Allow-Origin`` and exposes the headers a client reads (credit headers, request id,
route). Credentials (cookies) are never allowed: callers authenticate with a bearer token, which a
page sends explicitly. A disallowed origin gets no CORS headers, so its browser blocks the answer.
"""

from __future__ import annotations

from aiohttp import web

from services.gateway.edge import Handler

_EXPOSE = ", ".join(
    (
        "X-Request-Id",
        "X-Janus-Route",
        "Retry-After",
        "x-should-retry",
        "X-RateLimit-Session-Limit-Credits",
        "X-RateLimit-Session-Remaining-Credits",
        "X-RateLimit-Session-Reset",
        "X-RateLimit-Weekly-Limit-Credits",
        "X-RateLimit-Weekly-Remaining-Credits",
        "X-RateLimit-Weekly-Reset",
        "X-RateLimit-Limit-Requests",
        "X-RateLimit-Remaining-Requests",
        "X-RateLimit-Reset-Requests",
    )
)
_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
_MAX_AGE = "600"
# the OpenAI SDKs send their own x-stainless-* headers; these are the ones a page may name otherwise
_HEADERS = "Authorization, Content-Type, X-Bot-ID, OpenAI-Organization, OpenAI-Project"


class Cors:
    def __init__(self, origins: str) -> None:
        allowed = [o.strip().rstrip("/") for o in origins.split(",") if o.strip()]
        self.any = "*" in allowed
        self.origins = frozenset(allowed)

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        return bool(origin) and (self.any or origin in self.origins)

    def install(self, app: web.Application) -> None:
        app.middlewares.insert(0, self.preflight)
        app.on_response_prepare.append(self.on_prepare)

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = request.headers.get("Origin")
        if not self.allows(origin):
            return web.Response(status=403, headers={"Vary": "Origin"})
        requested = request.headers.get("Access-Control-Request-Headers", "")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*" if self.any else str(origin),
                "Access-Control-Allow-Methods": _METHODS,
                # echoing what was asked covers the SDKs' x-stainless-* headers; auth is the token's job
                "Access-Control-Allow-Headers": requested or _HEADERS,
                "Access-Control-Max-Age": _MAX_AGE,
                "Vary": "Origin, Access-Control-Request-Headers",
            },
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if "Access-Control-Allow-Origin" in response.headers:
            return  # a preflight, answered above
        # on every answer, allowed origin or not: a cache must not hand one origin's answer to another
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if self.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if self.any else str(origin)
            response.headers["Access-Control-Expose-Headers"] = _EXPOSE
