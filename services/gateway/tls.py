"""HTTPS served by the gateway itself, and the plain-HTTP listener that sends clients to it.

Use it where nothing in front of the gateway ends TLS (a single host, a LoadBalancer Service passing
TCP through); behind an Ingress or a cloud load balancer that ends TLS, leave it off and let that
tier redirect. The redirect is a 308, so a POST stays a POST with its body (a 301 lets clients turn
it into a GET), and it answers before reading any body.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from aiohttp import web

from services.gateway.settings import GatewaySettings
from shared.catalog import ConfigError

# a Host header is the client's to write: only a plain host name or address goes into Location
_HOST = re.compile(r"^(?:[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*|\[[0-9A-Fa-f:.]+\])$")


def server_context(s: GatewaySettings) -> ssl.SSLContext | None:
    """The TLS context for ``JANUS_TLS_CERT`` / ``JANUS_TLS_KEY``; None when TLS is off."""
    if not s.tls_cert and not s.tls_key:
        if s.http_redirect_port:
            raise ConfigError("JANUS_HTTP_REDIRECT_PORT needs JANUS_TLS_CERT and JANUS_TLS_KEY")
        return None
    if not (s.tls_cert and s.tls_key):
        raise ConfigError("JANUS_TLS_CERT and JANUS_TLS_KEY go together")
    for var, path in (("JANUS_TLS_CERT", s.tls_cert), ("JANUS_TLS_KEY", s.tls_key)):
        if not Path(path).is_file():
            raise ConfigError(f"{var}: {path} is not a readable file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"JANUS_TLS_CERT / JANUS_TLS_KEY: cannot load the certificate and key: {exc}"
        ) from None
    return ctx


def redirect_app(https_port: int) -> web.Application:
    """Every request, whatever its method and path, answered with a 308 to the same URL on https."""
    suffix = "" if https_port == 443 else f":{https_port}"

    async def redirect(request: web.Request) -> web.StreamResponse:
        host = request.host or ""
        if not host.endswith("]"):  # "[::1]" has colons of its own; "name:port" loses its port
            host = host.rsplit(":", 1)[0]
        if not _HOST.match(host):
            body = (
                b'{"error": {"message": "Use https.", "type": "invalid_request_error", '
                b'"param": null, "code": "https_required"}}'
            )
            return web.Response(status=400, body=body, content_type="application/json")
        resp = web.Response(status=308, headers={"Location": f"https://{host}{suffix}{request.path_qs}"})
        resp.force_close()  # an unread body is not worth keeping the connection for
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app
