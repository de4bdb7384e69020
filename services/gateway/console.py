"""The console's static files at ``/console``: read once at start, served with a strict policy.

The console is a page of static HTML, CSS and JavaScript that calls the same public API as any
client (``/v1/usage``, ``/v1/usage/daily``, ``/v1/keys``, ``/v1/byok``, ``/v1/models``,
``/v1/chat/completions``, ``/v1/admin/overview``); nothing here knows who is calling. Files are
listed from ``console/`` at start and served only by exact name, so no request path ever reaches
the file system.

Every response carries a Content-Security-Policy that allows scripts, styles and connections only
from this origin (no inline script or style, no eval, no framing, no form posts elsewhere) and
``Referrer-Policy: no-referrer``, so the console cannot be made to run or leak what it did not ship.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path

from aiohttp import web

from services.gateway.dispatch import Call
from services.gateway.edge import CALL
from shared.errors import NotFound

ROOT = Path(__file__).with_name("console")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
}


class _File:
    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.type = (
            _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'


class Console:
    def __init__(self, root: Path = ROOT) -> None:
        self.files = {
            p.relative_to(root).as_posix(): _File(p) for p in sorted(root.rglob("*")) if p.is_file()
        }

    def _serve(self, request: web.Request, name: str) -> web.StreamResponse:
        call: Call = request[CALL]
        f = self.files.get(name)
        if f is None:
            raise NotFound(f"Unknown console file: {name[:100]!r}.", code="unknown_url")
        headers = {**call.headers, **_HEADERS, "Content-Type": f.type, "ETag": f.etag}
        if request.headers.get("If-None-Match") == f.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=f.body, headers=headers)

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, "index.html")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request, request.match_info["name"])

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        return web.Response(status=302, headers={**call.headers, "Location": "/console/"})


def add_routes(router: web.UrlDispatcher, console: Console) -> None:
    router.add_get("/console", console.redirect)
    router.add_get("/console/", console.index)
    router.add_get("/console/{name:.+}", console.asset)
