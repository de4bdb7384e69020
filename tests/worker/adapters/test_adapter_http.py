"""Each adapter through the worker's real transport against its provider's fake upstream, over real
sockets on 127.0.0.1: buffered, streamed, rate-limited (Retry-After), refused, and cut mid-stream."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext, TextDelta
from services.worker.transport import Transport
from shared.catalog import Deployment, Provider
from shared.errors import JanusError, StreamInterrupted
from tests.fakes.anthropic_upstream import AnthropicUpstream
from tests.fakes.bedrock_upstream import BedrockUpstream
from tests.fakes.cohere_upstream import CohereUpstream
from tests.fakes.gemini_upstream import GeminiUpstream
from tests.fakes.ollama_upstream import OllamaUpstream
from tests.fixtures import wire
from tests.fixtures.client_requests import chat
from tests.fixtures.replay import Drop, Fail

FAKES: dict[str, Any] = {
    "anthropic": AnthropicUpstream,
    "gemini": GeminiUpstream,
    "bedrock": BedrockUpstream,
    "ollama": OllamaUpstream,
    "cohere": CohereUpstream,
}
BODY = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50}


def context(kind: str, base_url: str, stream: bool) -> ChatContext:
    dep = Deployment(id=f"{kind}-fake", base_url=base_url, region="us-east-1")
    return ChatContext(
        provider=Provider(id=kind, kind=kind, deployments=[dep]),  # type: ignore[arg-type]
        deployment=dep,
        upstream_model="test-model",
        **chat(BODY),
        stream=stream,
        api_key=None if kind == "bedrock" else "sk-test",
    )


async def stream_text(transport: Transport, adapter: Any, ctx: ChatContext) -> str:
    parser = adapter.stream_parser(ctx)
    text = ""
    reads = transport.stream(adapter.chat_request(ctx), adapter)
    async with contextlib.aclosing(reads):  # type: ignore[type-var]
        async for msgs, _ in reads:
            for msg in msgs:
                text += "".join(ev.text for ev in parser.feed(msg) if isinstance(ev, TextDelta))
    parser.finish()
    return text


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(FAKES))
async def test_adapter_against_fake_upstream(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    want = wire.expected(kind)
    adapter = ADAPTERS[kind]()
    transport = Transport(connect_timeout=5, read_timeout=10)
    await transport.start()
    try:
        async with FAKES[kind]() as fake:
            buffered, streamed = context(kind, fake.base_url, False), context(kind, fake.base_url, True)

            done = adapter.parse_chat(await transport.fetch(adapter.chat_request(buffered), adapter))
            assert done.content == want["chat_text"]["content"]
            assert await stream_text(transport, adapter, streamed) == want["stream_text"]["content"]

            fake.script(Fail(429, retry_after=2))
            with pytest.raises(JanusError) as limited:
                await transport.fetch(adapter.chat_request(buffered), adapter)
            assert limited.value.retryable and limited.value.retry_after == 2
            assert want["error_429"] in limited.value.message

            fake.script(Fail(400))
            with pytest.raises(JanusError) as refused:
                await stream_text(transport, adapter, streamed)
            assert not refused.value.retryable and want["error_400"] in refused.value.message

            fake.script(Drop())
            with pytest.raises(StreamInterrupted):
                await stream_text(transport, adapter, streamed)

            fake.script(Drop(abort=True))
            with pytest.raises(JanusError):
                await stream_text(transport, adapter, streamed)

            if kind == "bedrock":
                seen = fake.requests[0]
                assert seen.path == "/model/test-model/converse"
                assert seen.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    finally:
        await transport.close()
