"""Every provider adapter end to end: the official openai SDK against the whole stack (nats-server and
the four services), with each provider's models pointed at that provider's fake upstream on 127.0.0.1,
which answers in the provider's own wire format from the recorded transcripts (tests/fixtures).

Per provider: a buffered chat, a stream with ``include_usage`` (usage equal to what the provider
reported), a streamed tool call reassembled, an upstream refusal passed back without fallback, an
overloaded or rate-limited deployment falling back to the next one, a stream cut before the provider's
terminal event ending in an in-band error (never ``[DONE]``), and embeddings; every body and chunk is
checked against OpenAI's schemas and every call's credits against the provider-reported usage.
The stack starts once for the module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam, ChatCompletionToolParam

from shared import tokens
from shared.catalog import Price
from shared.contract import Usage
from shared.money import PriceUnits, cost_credits
from tests.fakes.anthropic_upstream import AnthropicUpstream
from tests.fakes.bedrock_upstream import BedrockUpstream
from tests.fakes.cohere_upstream import CohereUpstream
from tests.fakes.gemini_upstream import GeminiUpstream
from tests.fakes.host import FakeHost, stack_on_fakes
from tests.fakes.ollama_upstream import OllamaUpstream
from tests.fakes.openai_compat_upstream import OpenAICompatUpstream
from tests.fakes.openai_upstream import vector_for
from tests.faults.kit import ledger
from tests.fixtures import wire
from tests.fixtures.replay import Drop, Fail, Garbage, ReplayUpstream
from tests.openai_schema import validate
from tools.localstack import Stack
from tools.token import make_token

FAKES: dict[str, Callable[[], ReplayUpstream]] = {
    "anthropic": AnthropicUpstream,
    "gemini": GeminiUpstream,
    "bedrock": BedrockUpstream,
    "ollama": OllamaUpstream,
    "cohere": CohereUpstream,
    "openai_compat": OpenAICompatUpstream,
}
PROVIDERS = sorted(FAKES)
KEY_ENV = "JANUS_E2E_PROVIDER_KEY"
CHAT_PRICE = Price(input=1.0, cached_input=0.5, output=2.0)
EMBED_PRICE = Price(input=0.5)
# which retryable status each provider's primary deployment answers in the fallback test
OVERLOADED = {
    "anthropic": 529,
    "gemini": 503,
    "bedrock": 429,
    "ollama": 503,
    "cohere": 429,
    "openai_compat": 503,
}
# embedding models: (catalog id, provider, upstream model, whether the provider reports token counts)
EMBEDDERS = [
    ("gemini-embed", "gemini", "gemini-embedding-001", False),
    ("cohere-embed", "cohere", "embed-v4.0", True),
    ("bedrock-titan-embed", "bedrock", "amazon.titan-embed-text-v2:0", True),
    ("bedrock-cohere-embed", "bedrock", "cohere.embed-english-v3", False),
    ("ollama-embed", "ollama", "nomic-embed-text", True),
    ("openai_compat-embed", "openai_compat", "text-embedding-3-small", True),
]
EMBED_DIMS = 8  # what the fakes answer unless asked for a size
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]


# ------------------------------------------------------------------------------- the fake upstreams
def base_url(provider: str, fake: ReplayUpstream) -> str:
    return fake.base_url + "/v1" if provider == "openai_compat" else fake.base_url


def catalog_yaml(fakes: dict[str, ReplayUpstream]) -> str:
    """Two deployments per provider on the same fake: ``-a`` takes all traffic (``-b`` has weight 0),
    ``-b`` is the fallback. Each serves the model under its own upstream name, so the fake's log
    shows which deployment a call went to."""
    providers, models = [], []
    for p, fake in fakes.items():
        key = "" if p == "bedrock" else f", api_key_env: {KEY_ENV}"  # Bedrock signs with SigV4
        url = base_url(p, fake)
        providers.append(
            f"  - id: {p}\n    kind: {p}\n    deployments:\n"
            f'      - {{id: {p}-a, base_url: "{url}", region: us-east-1{key}}}\n'
            f'      - {{id: {p}-b, base_url: "{url}", region: us-east-1{key}}}\n'
        )
        models.append(
            f"  - id: {p}-chat\n    owned_by: {p}\n    capabilities: [streaming, tools]\n"
            f"    price: {{input: {CHAT_PRICE.input}, cached_input: {CHAT_PRICE.cached_input}, "
            f"output: {CHAT_PRICE.output}}}\n"
            f"    serve: [{{deployment: {p}-a, model: up-a}},"
            f" {{deployment: {p}-b, model: up-b, weight: 0}}]\n"
        )
    for model_id, p, upstream, _ in EMBEDDERS:
        models.append(
            f"  - id: {model_id}\n    kind: embeddings\n    owned_by: {p}\n    capabilities: [embeddings]\n"
            f"    dimensions: {EMBED_DIMS}\n    price: {{input: {EMBED_PRICE.input}}}\n"
            f'    serve: [{{deployment: {p}-a, model: "{upstream}"}}]\n'
        )
    models.append(
        "  - id: gemini-embed-large\n    kind: embeddings\n    owned_by: gemini\n"
        f"    capabilities: [embeddings]\n    dimensions: 3072\n    price: {{input: {EMBED_PRICE.input}}}\n"
        "    serve: [{deployment: gemini-a, model: gemini-embedding-001}]\n"
    )
    return "providers:\n" + "".join(providers) + "models:\n" + "".join(models)


PLANS = """
default_plan: pro
plans:
  pro:
    session: {credits: 1000000000, hours: 5}
    weekly: {credits: 5000000000}
    default_model: openai_compat-chat
    auto_models: [openai_compat-chat]
"""


class World:
    def __init__(self, stack: Stack, host: FakeHost) -> None:
        self.stack = stack
        self.fakes = host.fakes
        self.users: dict[str, str] = {}  # token -> user

    def client(self, user: str) -> openai.OpenAI:
        tok = make_token(user, "pro", f"{user}@example.com", secret=self.stack.env["JANUS_JWT_SECRET"])
        self.users[tok] = user
        return openai.OpenAI(base_url=self.stack.base_url, api_key=tok, max_retries=0, timeout=30)

    def usage(self, client: openai.OpenAI, want_used: int) -> dict[str, Any]:
        """The caller's /v1/usage once settlement (asynchronous, after the response) has landed."""
        deadline = time.monotonic() + 15
        while True:
            r = httpx.get(
                f"{self.stack.base_url}/usage",
                timeout=10,
                headers={"Authorization": f"Bearer {client.api_key}"},
            )
            assert r.status_code == 200
            doc: dict[str, Any] = r.json()
            weekly = doc["weekly"]
            settled = weekly["reserved"] == 0 and weekly["used"] >= want_used
            if settled or time.monotonic() > deadline:
                return doc


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    def config(fakes: dict[str, ReplayUpstream]) -> dict[str, str]:
        return {
            "catalog.yaml": catalog_yaml(fakes),
            "plans.yaml": PLANS,
            "routing.yaml": "routing: {rules: []}\n",
        }

    env = {
        KEY_ENV: "sk-e2e-provider-key",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }
    fakes = {name: cls() for name, cls in FAKES.items()}
    with stack_on_fakes(tmp_path_factory.mktemp("providers"), fakes, config, env) as (stack, host):
        yield World(stack, host)


# --------------------------------------------------------------------------------------- helpers
def reported(provider: str, scenario: str) -> Usage:
    u = wire.expected(provider)[scenario]["usage"]
    return Usage(
        u.get("prompt_tokens", 0),
        u.get("completion_tokens", 0),
        u.get("cached_tokens", 0),
        u.get("reasoning_tokens", 0),
    )


def assert_openai_usage(got: dict[str, Any], want: Usage) -> None:
    assert got["prompt_tokens"] == want.prompt_tokens
    assert got["completion_tokens"] == want.completion_tokens
    assert got["total_tokens"] == want.prompt_tokens + want.completion_tokens
    assert (got.get("prompt_tokens_details") or {}).get("cached_tokens", 0) == want.cached_tokens
    assert (got.get("completion_tokens_details") or {}).get("reasoning_tokens", 0) == want.reasoning_tokens


def assert_charged(world: World, client: openai.OpenAI, usage: Usage, price: Price) -> None:
    """Charged from the provider-reported usage, but never above the request's hold: the recorded
    transcripts report more tokens than a request for "Hello" with a small max_tokens can hold, as a
    worker reporting false usage would."""
    units = PriceUnits.of(price)
    assert cost_credits(usage, units) > 0
    weekly = world.usage(client, 1)["weekly"]
    assert weekly["reserved"] == 0, "the hold was released"
    user = world.users[client.api_key]
    deadline = time.monotonic() + 15
    while True:  # metering writes the budget first and the ledger entry right after
        entries = [e for e in asyncio.run(ledger(world.stack.harness_url)) if e.user == user]
        if sum(e.credits for e in entries) == weekly["used"] or time.monotonic() > deadline:
            break
    # the provider-reported usage reached metering (over one or several requests of this caller)
    assert sum(e.usage.prompt_tokens for e in entries) == usage.prompt_tokens
    assert sum(e.usage.completion_tokens for e in entries) == usage.completion_tokens
    for e in entries:
        assert e.credits == min(cost_credits(e.usage, units), e.reserved), "charged, capped at the hold"
    assert weekly["used"] == sum(e.credits for e in entries)


def sse_events(response: Any) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def stream_chat(client: openai.OpenAI, model: str, **kw: Any) -> tuple[int, list[str]]:
    """A streamed chat through the SDK, read as the raw SSE events the gateway sent."""
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=HELLO, stream=True, **kw
    ) as response:
        return response.status_code, sse_events(response)


def chunks_of(events: list[str]) -> list[ChatCompletionChunk]:
    assert events[-1] == "[DONE]", "a complete stream ends with [DONE]"
    out = []
    for e in events[:-1]:
        doc = json.loads(e)
        validate("CreateChatCompletionStreamResponse", doc)
        out.append(ChatCompletionChunk.model_validate(doc))
    assert len({c.id for c in out}) == 1
    return out


def upstream_names(fake: ReplayUpstream, since: int) -> list[str]:
    """Which deployment (by its upstream model name) each call since ``since`` went to."""
    names = []
    for seen in fake.requests[since:]:
        where = seen.path + " " + str(seen.body.get("model", ""))
        names.append("up-b" if "up-b" in where else "up-a" if "up-a" in where else "?")
    return names


# ------------------------------------------------------------------------------------------- chat
@pytest.mark.parametrize("provider", PROVIDERS)
def test_buffered_chat(world: World, provider: str) -> None:
    client = world.client(f"buffered-{provider}")
    raw = client.chat.completions.with_raw_response.create(
        model=f"{provider}-chat", messages=HELLO, max_tokens=50
    )
    body = json.loads(raw.http_response.content)
    validate("CreateChatCompletionResponse", body)
    want = wire.expected(provider)["chat_text"]
    completion = raw.parse()
    assert completion.model == f"{provider}-chat"
    assert completion.choices[0].message.content == want["content"]
    assert completion.choices[0].finish_reason == want["finish"]
    assert_openai_usage(body["usage"], reported(provider, "chat_text"))
    assert_charged(world, client, reported(provider, "chat_text"), CHAT_PRICE)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_with_usage(world: World, provider: str) -> None:
    client = world.client(f"stream-{provider}")
    status, events = stream_chat(client, f"{provider}-chat", stream_options={"include_usage": True})
    assert status == 200
    chunks = chunks_of(events)
    want = wire.expected(provider)["stream_text"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        want["finish"]
    ]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, "include_usage: a last chunk with usage"
    assert_openai_usage(last.usage.model_dump(), reported(provider, "stream_text"))
    assert all(c.usage is None for c in chunks[:-1])
    assert_charged(world, client, reported(provider, "stream_text"), CHAT_PRICE)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streamed_tool_call_reassembles(world: World, provider: str) -> None:
    client = world.client(f"tools-{provider}")
    status, events = stream_chat(client, f"{provider}-chat", tools=TOOLS, tool_choice="required")
    assert status == 200
    calls: dict[int, dict[str, str]] = {}
    finishes = []
    for c in chunks_of(events):
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            if tc.function is not None:
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
        if c.choices[0].finish_reason:
            finishes.append(c.choices[0].finish_reason)
    want = wire.expected(provider)["stream_tools"]
    assert finishes == ["tool_calls"]
    assert sorted(calls) == list(range(len(want["tool_calls"])))
    for i, w in enumerate(want["tool_calls"]):
        assert calls[i]["name"] == w["name"]
        assert json.loads(calls[i]["arguments"]) == w["arguments"]
        assert calls[i]["id"]
    assert_charged(world, client, reported(provider, "stream_tools"), CHAT_PRICE)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_refusal_is_passed_back_without_fallback(world: World, provider: str) -> None:
    fake = world.fakes[provider]
    client = world.client(f"refused-{provider}")
    before = len(fake.requests)
    fake.script(Fail(400))
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=f"{provider}-chat", messages=HELLO)
    validate("ErrorResponse", bad.value.response.json())
    assert wire.expected(provider)["error_400"] in bad.value.message
    assert len(fake.requests) == before + 1, "the same request would fail anywhere: no fallback"

    # our credentials refused: the caller is not at fault (502), and no other deployment is tried
    before = len(fake.requests)
    fake.script(Fail(401))
    with pytest.raises(openai.APIStatusError) as auth:
        client.chat.completions.create(model=f"{provider}-chat", messages=HELLO)
    assert auth.value.status_code == 502 and auth.value.code == "upstream_auth"
    validate("ErrorResponse", auth.value.response.json())
    assert len(fake.requests) == before + 1
    # nothing was produced: nothing charged, and both holds released
    weekly = world.usage(client, 0)["weekly"]
    assert weekly["reserved"] == 0 and weekly["used"] == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_overloaded_deployment_falls_back(world: World, provider: str) -> None:
    fake = world.fakes[provider]
    client = world.client(f"fallback-{provider}")
    before = len(fake.requests)
    fake.script(Fail(OVERLOADED[provider]))
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}-chat", messages=HELLO)
    validate("CreateChatCompletionResponse", json.loads(raw.http_response.content))
    assert raw.parse().choices[0].message.content == wire.expected(provider)["chat_text"]["content"]
    tried = upstream_names(fake, before)
    assert len(tried) == 2 and set(tried) == {"up-a", "up-b"}, "the second deployment answered"
    assert_charged(world, client, reported(provider, "chat_text"), CHAT_PRICE)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unreadable_answer_falls_back(world: World, provider: str) -> None:
    """A 200 whose body is not the provider's JSON (a proxy's error page) is the deployment's fault,
    not Janus's: a retryable upstream error inside Janus, so the second deployment answers."""
    fake = world.fakes[provider]
    client = world.client(f"garbage-{provider}")
    before = len(fake.requests)
    fake.script(Garbage())
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}-chat", messages=HELLO)
    assert raw.parse().choices[0].message.content == wire.expected(provider)["chat_text"]["content"]
    assert upstream_names(fake, before) == ["up-a", "up-b"]
    assert_charged(world, client, reported(provider, "chat_text"), CHAT_PRICE)
    # the same page where a stream was expected: nothing was sent yet, so it falls back too
    before = len(fake.requests)
    fake.script(Garbage())
    status, events = stream_chat(world.client(f"garbage-stream-{provider}"), f"{provider}-chat")
    assert status == 200 and events[-1] == "[DONE]"
    assert upstream_names(fake, before) == ["up-a", "up-b"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_cut_before_its_end_is_an_in_band_error(world: World, provider: str) -> None:
    fake = world.fakes[provider]
    client = world.client(f"dropped-{provider}")
    fake.script(Drop())  # everything but the provider's terminal event, then a clean close
    status, events = stream_chat(client, f"{provider}-chat", stream_options={"include_usage": True})
    assert status == 200
    assert "[DONE]" not in events, "a cut stream must never look complete"
    last = json.loads(events[-1])
    validate("ErrorResponse", last)
    assert last["error"]["code"] == "stream_interrupted"
    for e in events[:-1]:
        validate("CreateChatCompletionStreamResponse", json.loads(e))
    weekly = world.usage(client, 1)["weekly"]
    assert weekly["reserved"] == 0 and weekly["used"] > 0, "what the provider produced is charged"


# ------------------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize(
    ("model", "provider", "upstream", "reports_tokens"), EMBEDDERS, ids=[e[0] for e in EMBEDDERS]
)
def test_embeddings(world: World, model: str, provider: str, upstream: str, reports_tokens: bool) -> None:
    fake = world.fakes[provider]
    client = world.client(f"embed-{model}")
    texts = ["the first passage", "a second, longer passage of text", "third"]
    raw = client.embeddings.with_raw_response.create(model=model, input=texts, encoding_format="float")
    body = json.loads(raw.http_response.content)
    validate("CreateEmbeddingResponse", body)
    assert body["model"] == model
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    for d, text in zip(body["data"], texts, strict=True):
        assert d["embedding"] == vector_for(text, EMBED_DIMS)
    prompt = fake.count_tokens(texts) if reports_tokens else sum(tokens.estimate_text(t) for t in texts)
    assert body["usage"] == {"prompt_tokens": prompt, "total_tokens": prompt}

    b64 = client.embeddings.with_raw_response.create(model=model, input=texts[0], encoding_format="base64")
    item = json.loads(b64.http_response.content)["data"][0]["embedding"]
    assert np.frombuffer(base64.b64decode(item), dtype="<f4").tolist() == vector_for(texts[0], EMBED_DIMS)
    one = ReplayUpstream.count_tokens([texts[0]]) if reports_tokens else tokens.estimate_text(texts[0])
    assert_charged(world, client, Usage(prompt_tokens=prompt + one), EMBED_PRICE)


def test_token_ids_for_a_text_only_provider_are_a_clear_400(world: World) -> None:
    """Gemini embeds text only: token-id inputs are refused with a message that says so, no
    fallback, nothing charged, no hold left."""
    client = world.client("embed-token-ids")
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="gemini-embed-large", input=[[1, 2, 3]])
    err = bad.value
    assert err.code == "invalid_value" and "text only" in err.message
    assert err.body is not None and err.body["param"] == "input"  # type: ignore[index]
    validate("ErrorResponse", err.response.json())
    weekly = world.usage(client, 0)["weekly"]
    assert weekly["reserved"] == 0 and weekly["used"] == 0


def test_an_answer_over_one_bus_message_arrives_whole(world: World) -> None:
    """40 vectors of 3072 floats are ~2.5 MB, over nats-server's 1 MiB default message size: the
    worker sends the body in slices and the gateway answers with all of it, charged once."""
    client = world.client("embed-large")
    texts = [f"passage number {i}" for i in range(40)]
    raw = client.embeddings.with_raw_response.create(
        model="gemini-embed-large", input=texts, dimensions=3072, encoding_format="float"
    )
    assert len(raw.http_response.content) > 1 << 21
    assert raw.http_response.headers["content-length"] == str(len(raw.http_response.content))
    body = json.loads(raw.http_response.content)
    validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == list(range(40))
    for d, text in zip(body["data"], texts, strict=True):
        assert d["embedding"] == vector_for(text, 3072)
    counted = sum(tokens.estimate_text(t) for t in texts)  # Gemini reports no token count
    assert body["usage"] == {"prompt_tokens": counted, "total_tokens": counted}
    assert_charged(world, client, Usage(prompt_tokens=counted), EMBED_PRICE)
