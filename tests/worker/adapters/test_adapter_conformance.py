"""One conformance battery for every provider adapter, fed by recorded wire transcripts.

What is checked is driven by each adapter's declared capabilities: an adapter that declares tools
must ship tool transcripts and pass them, one that declares embeddings must parse an embeddings
body. Every streaming adapter must refuse to look complete when its stream is cut anywhere before
the provider's terminal event.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import (
    ChatContext,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
    batch_limit,
)
from shared.catalog import Deployment, Provider
from shared.contract import Usage
from shared.errors import JanusError, StreamInterrupted, upstream_error_for_status
from tests.fixtures import wire
from tests.fixtures.client_requests import chat, embeddings

CANDIDATES = ("anthropic", "gemini", "bedrock", "ollama", "cohere", "openai_compat")
PROVIDERS = [p for p in CANDIDATES if (wire.folder(p) / "expected.json").exists()]


def adapter(provider: str) -> Any:
    return ADAPTERS[provider]()


CHAT_REQUEST = {"messages": [{"role": "user", "content": "hi"}]}
EMBED_REQUEST = {"model": "e", "input": "hi"}


def context(provider: str, stream: bool, embed: bool = False) -> ChatContext:
    dep = Deployment(id=f"{provider}-test", base_url="http://127.0.0.1:9")
    return ChatContext(
        provider=Provider(id=provider, kind=provider, deployments=[dep]),  # type: ignore[arg-type]
        deployment=dep,
        upstream_model="m",
        **(embeddings(EMBED_REQUEST) if embed else chat(CHAT_REQUEST)),
        stream=stream,
        api_key="k",
    )


def scenarios(prefix: str) -> list[Any]:
    return [
        pytest.param(p, name, id=f"{p}-{name}")
        for p in PROVIDERS
        for name in wire.expected(p)
        if name.startswith(prefix)
    ]


@dataclass
class Collected:
    text: str = ""
    reasoning: str = ""
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finishes: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)


def collect(provider: str, name: str) -> Collected:
    """Feed a whole transcript, as the worker does, and gather what an OpenAI client would see."""
    parser = adapter(provider).stream_parser(context(provider, True))
    out = Collected()
    for msg in wire.stream_messages(provider, name):
        for ev in parser.feed(msg):
            if isinstance(ev, TextDelta):
                out.text += ev.text
            elif isinstance(ev, ReasoningDelta):
                out.reasoning += ev.text
            elif isinstance(ev, ToolCallDelta):
                call = out.calls.setdefault(ev.index, {"id": None, "name": None, "arguments": ""})
                if ev.id is not None:
                    assert call["id"] is None, "a tool call's id is sent once, on its first fragment"
                    call["id"] = ev.id
                if ev.name is not None:
                    call["name"] = ev.name
                assert call["id"] is not None, "the first fragment of a tool call carries its id"
                call["arguments"] += ev.arguments
            elif isinstance(ev, Finish):
                out.finishes.append(ev.reason)
            elif isinstance(ev, UsageEvent):
                # the encoder's rule: per field, the latest non-zero value wins
                for k, v in _usage_dict(ev.usage).items():
                    if v:
                        out.usage[k] = v
    parser.finish()
    return out


def _usage_dict(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens,
        "reasoning_tokens": u.reasoning_tokens,
    }


def assert_usage(got: dict[str, int], want: dict[str, int]) -> None:
    for key in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        assert got.get(key, 0) == want.get(key, 0), key


def assert_calls(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g["name"] == w["name"]
        assert json.loads(g["arguments"]) == w["arguments"], "argument fragments reassemble to the call"
        assert g["id"], "every tool call has an id the client can answer"
        if "id" in w:
            assert g["id"] == w["id"]
    assert len({g["id"] for g in got}) == len(got), "tool call ids are unique"


# ---------------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("provider", PROVIDERS)
def test_transcripts_cover_declared_capabilities(provider: str) -> None:
    caps = adapter(provider).capabilities
    have = set(wire.expected(provider))
    need = {"chat_text", "chat_length", "error_400", "error_429"}
    if caps.streaming:
        need |= {"stream_text"}
    if caps.tools:
        need |= {"chat_tools"} | ({"stream_tools"} if caps.streaming else set())
    if caps.embeddings:
        need |= {"embed"}
    assert need <= have, f"missing transcripts: {sorted(need - have)}"


# --------------------------------------------------------------------------------------- buffered
@pytest.mark.parametrize(("provider", "name"), scenarios("chat_"))
def test_buffered(provider: str, name: str) -> None:
    want = wire.expected(provider)[name]
    got = adapter(provider).parse_chat(wire.body(provider, name))
    assert got.finish_reason == want["finish"]
    assert got.content == want["content"]
    assert_usage(_usage_dict(got.usage), want["usage"])
    assert_calls(
        [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in got.tool_calls],
        want.get("tool_calls", []),
    )
    assert [c.index for c in got.tool_calls] == list(range(len(got.tool_calls)))


# -------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize(("provider", "name"), scenarios("stream_text") + scenarios("stream_tools"))
def test_stream(provider: str, name: str) -> None:
    want = wire.expected(provider)[name]
    got = collect(provider, name)
    assert got.finishes == [want["finish"]], "exactly one finish"
    assert got.text == (want["content"] or "")
    assert got.reasoning == want.get("reasoning", got.reasoning)
    assert_usage(got.usage, want["usage"])
    assert sorted(got.calls) == list(range(len(got.calls))), "tool call indexes count from 0 with no gaps"
    assert_calls([got.calls[i] for i in sorted(got.calls)], want.get("tool_calls", []))


@pytest.mark.parametrize(("provider", "name"), scenarios("stream_text") + scenarios("stream_tools"))
def test_stream_cut_short_is_interrupted(provider: str, name: str) -> None:
    """Any prefix that stops before the provider's terminal event must raise, never look complete."""
    messages = wire.stream_messages(provider, name)
    for cut in range(len(messages)):
        parser = adapter(provider).stream_parser(context(provider, True))
        for msg in messages[:cut]:
            parser.feed(msg)
        with pytest.raises(StreamInterrupted):
            parser.finish()


@pytest.mark.parametrize(("provider", "name"), scenarios("stream_error"))
def test_in_band_error_is_classified(provider: str, name: str) -> None:
    want = wire.expected(provider)[name]
    parser = adapter(provider).stream_parser(context(provider, True))
    messages = wire.stream_messages(provider, name)
    with pytest.raises(JanusError) as info:
        for msg in messages:
            parser.feed(msg)
    err = info.value
    assert err.kind == want["kind"]  # the wire kind
    assert err.retryable is want["retryable"]
    assert want["message_contains"] in err.message


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("provider", PROVIDERS)
def test_error_bodies(provider: str) -> None:
    want = wire.expected(provider)
    a = adapter(provider)
    msg400 = a.error_message(400, wire.body(provider, "error_400"))
    assert msg400.strip() == want["error_400"]
    err = upstream_error_for_status(400, msg400)
    assert not err.retryable and err.http_status == 400

    msg429 = a.error_message(429, wire.body(provider, "error_429"))
    assert msg429.strip() == want["error_429"]
    limited = upstream_error_for_status(429, msg429, retry_after=7.0)
    assert limited.retryable and limited.retry_after == 7.0
    assert limited.headers()["Retry-After"] == "7"
    assert upstream_error_for_status(503, a.error_message(503, b"<html>Service Unavailable</html>")).retryable


@pytest.mark.parametrize("provider", PROVIDERS)
def test_error_message_survives_a_non_json_body(provider: str) -> None:
    assert adapter(provider).error_message(502, b"Bad Gateway") == "Bad Gateway"


# ------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize(
    ("provider", "name"), [p for p in scenarios("embed") if adapter(p.values[0]).capabilities.embeddings]
)
def test_embeddings(provider: str, name: str) -> None:
    want = wire.expected(provider)[name]
    got = adapter(provider).parse_embeddings(wire.body(provider, name))
    assert len(got.vectors) == want["count"]
    assert {len(v) for v in got.vectors} == {want["dimensions"]}
    assert all(isinstance(x, float) for v in got.vectors for x in v)
    assert_usage(_usage_dict(got.usage), want["usage"])


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if adapter(p).capabilities.embeddings])
def test_embeddings_request_asks_for_floats_within_the_batch_limit(provider: str) -> None:
    a = adapter(provider)
    ctx = context(provider, False, embed=True)
    limit = batch_limit(a, ctx)
    assert limit >= 1
    req = a.embeddings_request(ctx, [f"text {i}" for i in range(limit)])
    assert req.method == "POST" and req.framing == "json"
    body = json.loads(req.body)
    # base64 is made once, by the worker's encoder: no adapter may ask the provider for it
    assert "base64" not in json.dumps(body)
    assert body.get("encoding_format", "float") == "float"
