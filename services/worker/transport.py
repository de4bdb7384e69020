"""The one module that makes upstream HTTP calls.

One pooled ``aiohttp.ClientSession`` per worker (keep-alive, DNS cache, bounded connections), connect
and read timeouts, the adapter's optional ``sign`` hook just before sending, and response framing.
aiohttp's exceptions are mapped to the Janus error tree here, once:

    HTTP status >= 400              -> upstream_error_for_status(...) (Retry-After honoured)
    connect / connection reset      -> UpstreamError (retryable)
    connect or read timeout         -> UpstreamTimeout (retryable)
    body cut short while streaming  -> StreamInterrupted
    a redirect (3xx)                -> UpstreamError (never followed: it would carry the key elsewhere)
    a stream with not one event     -> UpstreamError (retryable: nothing was generated)

Cancelling the calling task closes the upstream response, so the provider stops generating. What a
caller sees names no host, address or URL (those are logged here); provider messages are redacted.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
import urllib.request
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import yarl

from services.worker.adapters.base import ReadsErrorCause, StreamMessage, UpstreamRequest
from services.worker.framing import decoder_for
from shared.errors import (
    JanusError,
    PayloadTooLarge,
    StreamInterrupted,
    UpstreamError,
    UpstreamTimeout,
    upstream_error_for_status,
)
from shared.logging import get_logger

log = get_logger("transport")

ERROR_BODY_LIMIT = 64 * 1024


def retry_after_of(headers: Any) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _read_error_body(resp: aiohttp.ClientResponse) -> bytes:
    """The error body to its end, at most ERROR_BODY_LIMIT bytes: one ``read(n)`` returns only what
    has arrived, the first piece of a body the provider sends in several."""
    body = bytearray()
    while len(body) < ERROR_BODY_LIMIT:
        piece = await resp.content.read(ERROR_BODY_LIMIT - len(body))
        if not piece:
            break
        body += piece
    return bytes(body)


def upstream_exception(exc: BaseException, *, streaming: bool = False) -> JanusError:
    """aiohttp's exceptions as Janus errors: this boundary's one table, as ``shared.bus.map_exception``
    is the bus's."""
    if isinstance(exc, JanusError):
        return exc
    if isinstance(exc, TimeoutError):  # aiohttp's connect/read timeouts subclass it
        return UpstreamTimeout(f"the provider did not answer in time ({type(exc).__name__})")
    if streaming and isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return StreamInterrupted("the provider's stream was cut off before it finished")
    # aiohttp's own words name the host, address and port: for the log, not for the caller
    log.warning("upstream_transport_error", error_type=type(exc).__name__, error=str(exc))
    if isinstance(exc, aiohttp.InvalidURL):
        return JanusError("the deployment's URL is not valid")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError(f"cannot reach the provider ({type(exc).__name__})")
    return JanusError(f"unexpected transport error: {type(exc).__name__}")


def _too_large(limit: int) -> PayloadTooLarge:
    mib = limit // (1024 * 1024)
    return PayloadTooLarge(
        f"the provider's answer is larger than this service takes ({mib} MiB); send less per request",
        code="response_too_large",
    )


_PARSED_URLS = 1024  # upstream URLs kept parsed; past it the table starts again


class Transport:
    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        pool_size: int = 1024,
        dns_ttl: int = 300,
        max_body_bytes: int = 0,
    ) -> None:
        self.max_body_bytes = max_body_bytes  # a buffered answer larger than this is refused; 0: any
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._pool_size = pool_size
        self._dns_ttl = dns_ttl
        self._session: aiohttp.ClientSession | None = None
        # each upstream URL parsed once: deployments and their model paths are few (bounded anyway)
        self._urls: dict[str, yarl.URL] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._pool_size, ttl_dns_cache=self._dns_ttl, keepalive_timeout=30.0
        )
        # No cookie jar: one session serves every caller, and a provider's cookies (OpenAI's API,
        # behind Cloudflare, sets __cf_bm and _cfuvid on every answer) would otherwise ride on every
        # other caller's calls, their own keys' included, and be parsed on every answer.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=True,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # Proxies are read once here: aiohttp's trust_env re-reads the environment and ~/.netrc in a
        # thread on every request, which cost a third of the worker's CPU in the benchmark.
        self._proxies = {
            k: v for k, v in urllib.request.getproxies_environment().items() if k in ("http", "https")
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self, req: UpstreamRequest) -> Any:
        if self._session is None:
            raise JanusError("transport used before start")
        if req.sign is not None:
            headers = req.sign(req)
            if isinstance(headers, dict):
                req.headers = headers
        # encoded=True: send the URL exactly as the adapter built (and, for Bedrock, signed) it;
        # yarl would otherwise decode %3A in a model id back to ':' and break the signature
        url = self._urls.get(req.url)
        if url is None:
            if len(self._urls) >= _PARSED_URLS:
                self._urls.clear()
            url = self._urls[req.url] = yarl.URL(req.url, encoded=True)
        proxy = None
        # not in typeshed, but part of urllib.request since Python 3.0
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if self._proxies and not bypass(url.host or ""):
            proxy = self._proxies.get(url.scheme)
        # a redirect is never followed: the request's key would go to wherever it points
        return self._session.request(
            req.method, url, data=req.body, headers=req.headers, proxy=proxy, allow_redirects=False
        )

    @staticmethod
    async def _raise_for_status(resp: aiohttp.ClientResponse, adapter: Any) -> None:
        if resp.status < 300:
            return
        if resp.status < 400:
            log.warning(
                "upstream_redirect_refused", status=resp.status, location=resp.headers.get("Location")
            )
            raise UpstreamError(
                f"the provider answered with a redirect ({resp.status}), which is not followed",
                code="upstream_redirect",
            )
        body = await _read_error_body(resp)
        status = resp.status
        if isinstance(adapter, ReadsErrorCause):
            status = adapter.error_status(status, body)
        message = adapter.error_message(resp.status, body)
        if status in (401, 403):
            log.warning("upstream_refused_credentials", status=status, message=message)
        raise upstream_error_for_status(status, message, retry_after=retry_after_of(resp.headers))

    async def fetch(self, req: UpstreamRequest, adapter: Any) -> bytes:
        """A buffered call: the whole response body (framing "json"), refused as soon as it is
        larger than ``max_body_bytes`` (by its Content-Length, or while it arrives), never after
        holding it whole."""
        try:
            async with self._open(req) as resp:
                await self._raise_for_status(resp, adapter)
                limit = self.max_body_bytes
                length = resp.content_length
                if not limit:
                    return await resp.read()
                if length is not None and "Content-Encoding" not in resp.headers:
                    if length > limit:
                        raise _too_large(limit)
                    # the parser stops at the stated length: read whole, the body is that size
                    return await resp.read()
                # no stated length, or a compressed one (what it inflates to is counted)
                parts: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(limit)
                    parts.append(chunk)
                return b"".join(parts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise upstream_exception(exc) from None

    async def stream(
        self, req: UpstreamRequest, adapter: Any
    ) -> AsyncGenerator[tuple[list[StreamMessage], bool], None]:
        """A streamed call, framed by ``req.framing``: the messages of each read from the provider
        together (the worker sends them on as one frame), and whether the provider's stream ended
        with them: its end had already arrived, so saying so waits for nothing. Use under
        ``contextlib.aclosing`` so a cancel closes the response at once."""
        decoder = decoder_for(req.framing)
        started = False
        try:
            async with self._open(req) as resp:
                await self._raise_for_status(resp, adapter)
                started = True
                events = 0
                content = resp.content
                ended = False
                async for chunk in content.iter_any():
                    msgs = decoder.feed(chunk)
                    if content.at_eof():
                        ended = True
                        msgs += decoder.end()
                    if msgs:
                        events += len(msgs)
                        yield msgs, ended
                if not ended and (msgs := decoder.end()):
                    events += len(msgs)
                    yield msgs, True
                if not events:
                    # not one event in the whole body (a proxy's error page, an empty 200): the
                    # deployment did not stream, nothing was generated, and another may answer
                    raise UpstreamError(
                        f"the provider answered a streaming request with no events "
                        f"(content type {resp.content_type!r})",
                        code="upstream_unreadable",
                    )
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise upstream_exception(exc, streaming=started) from None
