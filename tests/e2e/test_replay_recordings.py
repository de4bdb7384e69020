"""The replay battery: every response recorded from a real provider API (``../shared/data/
provider-recordings``) served by a test upstream, through the real gateway and worker of one stack,
to the official openai SDK, and checked against what the recording itself says.

Each recording is replayed byte for byte and again in writes of odd sizes; a stream is also cut
before its final event. Per case: content, reasoning, tool calls, finish reason, usage (cache and
reasoning tokens included), the stream's termination, errors (status, OpenAI's error shape,
``x-should-retry``), and the credits charged: the price table applied to the usage the provider
reported, nothing held afterwards. The expectations come from ``tests/fixtures/recordings.py``,
which reads the recordings without the adapters' code. One stack serves the whole module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionToolParam

from shared import tokens
from shared.contract import Usage
from tests.e2e.test_providers_e2e import (
    KEY_ENV,
    PLANS,
    World,
    assert_openai_usage,
    chunks_of,
    sse_events,
)
from tests.fakes.host import stack_on_fakes
from tests.fakes.recorded_upstream import Mode, RecordedUpstream
from tests.fixtures import recordings
from tests.fixtures.recorded_answers import Counts
from tests.fixtures.recordings import KINDS, Expected
from tests.fixtures.replay import ReplayUpstream
from tests.openai_schema import validate

# whole credits per token, each different, so a count read into the wrong field costs differently
PRICE_INPUT, PRICE_CACHED, PRICE_OUTPUT = 3, 1, 11
PRICE_EMBED = 2
# embeddings models: recording name prefix -> (catalog id, provider kind, upstream model, dimensions)
EMBEDDERS = {
    "gem_embed": ("gemini-embed", "gemini", "gemini-embedding-001", 3072),
    "co_embed": ("cohere-embed", "cohere", "embed-v4.0", 1536),
    "br_embed_titan": ("titan-embed", "bedrock", "amazon.titan-embed-text-v2:0", 1024),
    "br_embed_cohere": ("bedrock-cohere-embed", "bedrock", "cohere.embed-english-v3", 1024),
    "ol_embed": ("ollama-embed", "ollama", "nomic-embed-text", 768),
}
EMBED_TEXT = "Hello, world!"
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
]

try:
    NAMES = recordings.names()
except recordings.RecordingsMissing as missing:
    # a missing team folder fails the run: never a silent skip
    pytest.fail(str(missing), pytrace=False)


def cases() -> list[Any]:
    out = []
    for name in NAMES:
        exp = recordings.load(name)
        modes: list[Mode] = ["whole", "odd"] + (["cut"] if exp.stream and exp.status < 400 else [])
        out += [pytest.param(name, mode, id=f"{name}-{mode}") for mode in modes]
    return out


def catalog_yaml(upstream: ReplayUpstream) -> str:
    providers, models = [], []
    price = f"{{input: {PRICE_INPUT}, cached_input: {PRICE_CACHED}, output: {PRICE_OUTPUT}}}"
    for kind in KINDS:
        key = "" if kind == "bedrock" else f", api_key_env: {KEY_ENV}"
        url = upstream.base_url + ("/v1" if kind == "openai_compat" else "")
        providers.append(
            f"  - id: {kind}\n    kind: {kind}\n    deployments:\n"
            f'      - {{id: {kind}-rec, base_url: "{url}", region: us-east-1{key}}}\n'
        )
        models.append(
            f"  - id: {kind}-chat\n    owned_by: {kind}\n    capabilities: [streaming, tools]\n"
            f"    price: {price}\n    serve: [{{deployment: {kind}-rec, model: recorded}}]\n"
        )
    for model_id, kind, upstream_model, dims in EMBEDDERS.values():
        models.append(
            f"  - id: {model_id}\n    kind: embeddings\n    owned_by: {kind}\n"
            f"    capabilities: [embeddings]\n    dimensions: {dims}\n"
            f"    price: {{input: {PRICE_EMBED}}}\n"
            f'    serve: [{{deployment: {kind}-rec, model: "{upstream_model}"}}]\n'
        )
    return "providers:\n" + "".join(providers) + "models:\n" + "".join(models)


class Replay(World):
    upstream: RecordedUpstream


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    env = {
        KEY_ENV: "sk-replay-provider-key",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }

    def config(fakes: dict[str, ReplayUpstream]) -> dict[str, str]:
        return {
            "catalog.yaml": catalog_yaml(fakes["recordings"]),
            "plans.yaml": PLANS,
            "routing.yaml": "routing: {rules: []}\n",
        }

    fakes: dict[str, ReplayUpstream] = {"recordings": RecordedUpstream()}
    with stack_on_fakes(tmp_path_factory.mktemp("replay"), fakes, config, env) as (stack, host):
        world = Replay(stack, host)
        world.upstream = host.fakes["recordings"]  # type: ignore[assignment]
        yield world


# --------------------------------------------------------------------------------------- helpers
def credits(u: Counts) -> int:
    return (u.prompt - u.cached) * PRICE_INPUT + u.cached * PRICE_CACHED + u.completion * PRICE_OUTPUT


def as_usage(u: Counts) -> Usage:
    return Usage(u.prompt, u.completion, u.cached, u.reasoning)


def assert_settled(world: World, client: openai.OpenAI, want: int) -> None:
    weekly = world.usage(client, want)["weekly"]
    assert weekly["reserved"] == 0, "no hold is left behind"
    assert weekly["used"] == want, "charged the price table applied to the provider's usage"


def assert_endpoint(world: Replay, exp: Expected, since: int) -> None:
    """Exactly one upstream call (a retryable failure: one per attempt); for an answer, to the
    endpoint the recording was answered on (an error body is the provider's on any endpoint)."""
    calls = world.upstream.requests[since:]
    if exp.should_retry:
        assert calls, "the provider was called"
        return  # each attempt of the gateway met the same failure
    assert len(calls) == 1, [c.path for c in calls]
    if exp.status >= 400:
        return
    recorded = exp.recorded_request.split()[1].split("?")[0].rsplit("/", 1)[-1]
    assert calls[0].path.split("?")[0].endswith(recorded.rsplit(":", 1)[-1].replace("%3A", ":"))


def tool_calls_of(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    assert all(c["id"] for c in calls), "every tool call has an id"
    return [(c["function"]["name"], json.loads(c["function"]["arguments"] or "{}")) for c in calls]


# ------------------------------------------------------------------------------------------ cases
@pytest.mark.parametrize(("name", "mode"), cases())
def test_replay(replay: Replay, name: str, mode: Mode) -> None:
    exp = recordings.load(name)
    client = replay.client(f"replay-{name}-{mode}")
    since = len(replay.upstream.requests)
    replay.upstream.serve(exp, mode)
    if exp.status >= 400:
        check_error(replay, client, exp)
    elif exp.embeddings:
        check_embeddings(replay, client, exp)
    elif mode == "cut":
        check_cut_stream(replay, client, exp)
    elif exp.stream:
        check_stream(replay, client, exp)
    else:
        check_buffered(replay, client, exp)
    assert_endpoint(replay, exp, since)


def chat_kwargs(exp: Expected) -> dict[str, Any]:
    kw: dict[str, Any] = {"model": f"{exp.kind}-chat", "messages": [{"role": "user", "content": "Hello"}]}
    if exp.tool_calls:
        kw["tools"] = TOOLS
    return kw


def check_buffered(world: Replay, client: openai.OpenAI, exp: Expected) -> None:
    raw = client.chat.completions.with_raw_response.create(**chat_kwargs(exp))
    body = json.loads(raw.http_response.content)
    validate("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert (message["content"] or "") == exp.content
    assert message.get("reasoning_content", "") == exp.reasoning
    assert tool_calls_of(message.get("tool_calls") or []) == exp.tool_calls
    assert body["choices"][0]["finish_reason"] == exp.finish
    assert_openai_usage(body["usage"], as_usage(exp.usage))
    assert_settled(world, client, credits(exp.usage))


def check_stream(world: Replay, client: openai.OpenAI, exp: Expected) -> None:
    with client.chat.completions.with_streaming_response.create(
        stream=True, stream_options={"include_usage": True}, **chat_kwargs(exp)
    ) as response:
        assert response.status_code == 200
        events = sse_events(response)
    chunks = chunks_of(events)  # ends with [DONE], every chunk valid
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1] if json.loads(e)["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == exp.content
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == exp.reasoning
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        for tc in d.get("tool_calls") or []:
            call = calls.setdefault(tc["index"], {"id": "", "function": {"name": "", "arguments": ""}})
            call["id"] += tc.get("id") or ""
            call["function"]["name"] += (tc.get("function") or {}).get("name") or ""
            call["function"]["arguments"] += (tc.get("function") or {}).get("arguments") or ""
    assert tool_calls_of([calls[i] for i in sorted(calls)]) == exp.tool_calls
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        exp.finish
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert_openai_usage(chunks[-1].usage.model_dump(), as_usage(exp.usage))
    assert_settled(world, client, credits(exp.usage))


def check_cut_stream(world: Replay, client: openai.OpenAI, exp: Expected) -> None:
    with client.chat.completions.with_streaming_response.create(
        stream=True, stream_options={"include_usage": True}, **chat_kwargs(exp)
    ) as response:
        status = response.status_code
        events = sse_events(response) if status == 200 else []
        body = response.json() if status != 200 else json.loads(events[-1])
    assert "[DONE]" not in events, "a cut stream must never look complete"
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "stream_interrupted"
    assert status in (200, 502)
    text = ""
    for e in events[:-1]:
        doc = json.loads(e)
        validate("CreateChatCompletionStreamResponse", doc)
        text += "".join(c["delta"].get("content") or "" for c in doc["choices"])
    assert exp.content.startswith(text), "what arrived is the provider's answer, in order"
    weekly = world.usage(client, 0)["weekly"]
    assert weekly["reserved"] == 0, "the hold is settled, whatever was produced"


def check_error(world: Replay, client: openai.OpenAI, exp: Expected) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        if exp.embeddings:
            client.embeddings.create(model=embedder(exp)[0], input=EMBED_TEXT)
        elif exp.stream:
            with client.chat.completions.create(stream=True, **chat_kwargs(exp)) as stream:
                list(stream)
        else:
            client.chat.completions.create(**chat_kwargs(exp))
    err = failed.value
    assert err.status_code == exp.client_status
    validate("ErrorResponse", err.response.json())
    assert err.response.headers["x-should-retry"] == ("true" if exp.should_retry else "false")
    if exp.credentials_refused:
        # the provider's words about our key may quote it: the worker logs them, the caller does not
        # see them
        assert err.code == "upstream_auth"
        assert exp.error_message not in err.message and "credentials" in err.message
    else:
        assert exp.error_message in err.message
    assert_settled(world, client, 0)


def embedder(exp: Expected) -> tuple[str, str, str, int]:
    return next(e for prefix, e in EMBEDDERS.items() if exp.name.startswith(prefix))


def check_embeddings(world: Replay, client: openai.OpenAI, exp: Expected) -> None:
    model = embedder(exp)[0]
    raw = client.embeddings.with_raw_response.create(model=model, input=EMBED_TEXT, encoding_format="float")
    body = json.loads(raw.http_response.content)
    validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == list(range(len(exp.vectors)))
    for got, want in zip(body["data"], exp.vectors, strict=True):
        assert len(got["embedding"]) == len(want)
        assert all(
            math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-9)
            for g, w in zip(got["embedding"], want, strict=True)
        )
    prompt = exp.embed_tokens if exp.embed_tokens is not None else tokens.estimate_text(EMBED_TEXT)
    assert body["usage"] == {"prompt_tokens": prompt, "total_tokens": prompt}
    assert_settled(world, client, prompt * PRICE_EMBED)
