"""The output cap the gateway held is the cap every provider is sent, whatever the client wrote.

A client's ``max_tokens`` larger than the hold (or none at all) must never reach the provider: each
adapter writes ``ChatContext.max_output_tokens`` under its provider's own name for the cap, and the
OpenAI-compatible one leaves no second, larger cap in the body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext, Finish, UsageEvent
from shared.catalog import Deployment, Provider
from tests.fixtures.client_requests import chat

HELD = 321

# where each provider reads its output cap, in the JSON body an adapter builds
CAP_PATH: dict[str, tuple[str, ...]] = {
    "openai_compat": ("max_completion_tokens",),
    "anthropic": ("max_tokens",),
    "gemini": ("generationConfig", "maxOutputTokens"),
    "bedrock": ("inferenceConfig", "maxTokens"),
    "ollama": ("options", "num_predict"),
    "cohere": ("max_tokens",),
}
CLIENT_BODIES = [
    pytest.param({}, id="no-cap"),
    pytest.param({"max_tokens": 100_000}, id="max_tokens"),
    pytest.param({"max_completion_tokens": 90_000, "max_tokens": 100_000}, id="both"),
]


def _ctx(kind: str, body: dict[str, Any], stream: bool, options: dict[str, str] | None = None) -> ChatContext:
    dep = Deployment(id=f"{kind}-test", base_url="http://127.0.0.1:9", region="us-east-1")
    return ChatContext(
        provider=Provider(id=kind, kind=kind, deployments=[dep], options=options or {}),  # type: ignore[arg-type]
        deployment=dep,
        upstream_model="m",
        stream=stream,
        api_key="k",
        max_output_tokens=HELD,
        **chat({"messages": [{"role": "user", "content": "write a very long story"}], **body}),
    )


def _at(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for key in path:
        node = node[key]
    return node


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
@pytest.mark.parametrize("client", CLIENT_BODIES)
@pytest.mark.parametrize("kind", sorted(CAP_PATH))
def test_every_provider_is_sent_the_held_cap(kind: str, client: dict[str, Any], stream: bool) -> None:
    up = ADAPTERS[kind]().chat_request(_ctx(kind, client, stream))
    sent = json.loads(up.body)
    assert _at(sent, CAP_PATH[kind]) == HELD
    if kind == "openai_compat":
        assert "max_tokens" not in sent  # no second, larger cap beside the held one


def test_openai_compatible_provider_that_reads_only_max_tokens() -> None:
    ctx = _ctx("openai_compat", {"max_completion_tokens": 90_000}, False, {"max_tokens_param": "max_tokens"})
    sent = json.loads(ADAPTERS["openai_compat"]().chat_request(ctx).body)
    assert sent["max_tokens"] == HELD and "max_completion_tokens" not in sent


def test_builtin_fake_generates_no_more_than_the_held_cap() -> None:
    ctx = _ctx("fake", {"max_tokens": 100_000}, True)
    ctx.max_output_tokens = 3

    async def run() -> list[Any]:
        return [ev async for ev in ADAPTERS["fake"]().stream_events(ctx)]

    events = asyncio.run(run())
    assert [e.reason for e in events if isinstance(e, Finish)] == ["length"]
    usage = [e.usage for e in events if isinstance(e, UsageEvent)][-1]
    assert usage.completion_tokens == 3


SCHEMA = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 400}},
    "required": ["story"],
}
FAKE_MODES = [
    pytest.param({"response_format": {"type": "json_object"}}, id="json_object"),
    pytest.param(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}},
        id="json_schema",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "look it up"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "found"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        },
        id="tool-result",
    ),
    pytest.param({"stop": ["never-said"]}, id="stop"),
]


@pytest.mark.parametrize("mode", FAKE_MODES)
def test_builtin_fake_answers_in_every_mode_end_at_the_held_cap(mode: dict[str, Any]) -> None:
    ctx = _ctx("fake", mode, False)  # no client cap: the held one alone bounds the answer
    ctx.max_output_tokens = 2

    async def run() -> list[Any]:
        return [ev async for ev in ADAPTERS["fake"]().stream_events(ctx)]

    events = asyncio.run(run())
    assert [e.reason for e in events if isinstance(e, Finish)] == ["length"]
    assert [e.usage for e in events if isinstance(e, UsageEvent)][-1].completion_tokens == 2
