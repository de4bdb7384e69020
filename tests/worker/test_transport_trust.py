"""What the worker's transport lets out, over real sockets: no redirect is followed (the key would go
with it), and what reaches a caller names no host, address, URL or key fragment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from services.worker.adapters import ADAPTERS
from services.worker.transport import Transport
from shared.errors import JanusError, redact
from tests.fakes.openai_compat_upstream import Fail, OpenAICompatUpstream
from tests.worker.adapters.test_adapter_http import context
from tools.localnats import free_port

KEY_ECHO = (
    b'{"error": {"message": "Incorrect API key provided: sk-proj-abcd************wxyz. You can '
    b'find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error"}}'
)
INTERNAL = b'{"error": {"message": "backend 10.2.3.4:8000 (http://vllm-7.internal:8000/v1) is overloaded"}}'


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = Transport(connect_timeout=5, read_timeout=10)
    await t.start()
    try:
        yield t
    finally:
        await t.close()


async def test_a_redirect_is_not_followed(transport: Transport) -> None:
    reached: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        reached.append(request.headers.get("Authorization"))
        return web.json_response({})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{other_port}/steal")

    app, other = web.Application(), web.Application()
    app.router.add_post("/v1/chat/completions", redirect)
    other.router.add_post("/steal", elsewhere)
    runners = [web.AppRunner(a) for a in (app, other)]
    port, other_port = free_port(), free_port()
    for runner, p in zip(runners, (port, other_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p).start()
    try:
        adapter = ADAPTERS["openai_compat"]()
        req = adapter.chat_request(context("openai_compat", f"http://127.0.0.1:{port}/v1", False))
        with pytest.raises(JanusError) as err:
            await transport.fetch(req, adapter)
        assert err.value.code == "upstream_redirect" and err.value.retryable
        assert str(other_port) not in err.value.message
        assert reached == []
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_errors_carry_no_key_fragment_url_or_address(transport: Transport) -> None:
    adapter = ADAPTERS["openai_compat"]()
    async with OpenAICompatUpstream() as fake:
        req = adapter.chat_request(context("openai_compat", fake.base_url + "/v1", False))
        fake.script(Fail(401, body=KEY_ECHO))
        with pytest.raises(JanusError) as refused:
            await transport.fetch(req, adapter)
        assert refused.value.code == "upstream_auth" and refused.value.http_status == 502
        assert "sk-" not in refused.value.message and "wxyz" not in refused.value.message

        fake.script(Fail(503, body=INTERNAL))
        with pytest.raises(JanusError) as busy:
            await transport.fetch(req, adapter)
        assert "overloaded" in busy.value.message
        assert "10.2.3.4" not in busy.value.message and "internal" not in busy.value.message

        fake.script(Fail(400, body=KEY_ECHO))
        with pytest.raises(JanusError) as bad:
            await transport.fetch(req, adapter)
        assert "Incorrect API key provided" in bad.value.message and "sk-proj" not in bad.value.message

    closed = adapter.chat_request(context("openai_compat", f"http://127.0.0.1:{free_port()}/v1", False))
    with pytest.raises(JanusError) as unreachable:
        await transport.fetch(closed, adapter)
    assert unreachable.value.retryable and "127.0.0.1" not in unreachable.value.message


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Incorrect API key provided: sk-ant-api03-AbCd...XyZ9", "Incorrect API key provided"),
        ("API key not valid: AIzaSyA-1234567890abcdef", "API key not valid"),
        ("upstream https://10.0.0.7:8443/v1?key=abc failed", "failed"),
        ("connect to fd00::1:8080 refused", "refused"),
        ("token Bearer eyJhbGciOi.x.y rejected", "rejected"),
    ],
)
def test_redact(text: str, kept: str) -> None:
    out = redact(text)
    assert kept in out and "[redacted]" in out
    for secret in ("sk-ant", "AIza", "10.0.0.7", "fd00", "eyJ"):
        assert secret not in out


async def test_a_providers_cookies_never_ride_on_another_call(transport: Transport) -> None:
    """OpenAI's API (behind Cloudflare) sets ``__cf_bm`` and ``_cfuvid`` on its answers. One session
    serves every caller, so a cookie kept from one call would go out with the next caller's, their
    own key's calls included: none is kept. Reached by a host name, as a provider is (a cookie jar
    keeps nothing for a bare IP address, which would let this pass for the wrong reason)."""
    sent: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append(request.headers.get("Cookie"))
        resp = web.json_response(
            {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
        )
        resp.headers.add("Set-Cookie", "__cf_bm=abc; path=/; HttpOnly; SameSite=None")
        resp.headers.add("Set-Cookie", "_cfuvid=def; path=/; HttpOnly; SameSite=None")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        adapter = ADAPTERS["openai_compat"]()
        for _ in range(3):
            req = adapter.chat_request(context("openai_compat", f"http://localhost:{port}/v1", False))
            await transport.fetch(req, adapter)
        assert sent == [None, None, None]
    finally:
        await runner.cleanup()
