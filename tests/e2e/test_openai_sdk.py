"""End to end: the official openai SDK against the whole stack (nats-server + the four services, the
built-in fake provider), every response checked against OpenAI's published schemas."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest

from tests.openai_schema import validate
from tools.localstack import Stack
from tools.token import make_token

RATE_HEADERS = (
    "x-ratelimit-session-limit-credits",
    "x-ratelimit-session-remaining-credits",
    "x-ratelimit-session-reset",
    "x-ratelimit-weekly-limit-credits",
    "x-ratelimit-weekly-remaining-credits",
    "x-ratelimit-weekly-reset",
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]


def token(stack: Stack, user: str, plan: str = "pro") -> str:
    return make_token(user, plan, f"{user}@example.com", secret=stack.env["JANUS_JWT_SECRET"])


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=token(stack, "sdk-user"), max_retries=0)


def test_buffered_chat_is_openai_shaped_and_metered(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-5-mini", messages=[{"role": "user", "content": "Say hello to the gateway"}]
    )
    body = json.loads(raw.http_response.content)
    validate("CreateChatCompletionResponse", body)
    completion = raw.parse()
    assert completion.model == "gpt-5-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage and completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    for h in RATE_HEADERS:
        assert h in raw.headers, h
    assert int(raw.headers["x-ratelimit-session-remaining-credits"]) < int(
        raw.headers["x-ratelimit-session-limit-credits"]
    )
    assert raw.headers["x-ratelimit-weekly-reset"].endswith("Z")
    assert raw.headers["x-janus-route"].startswith("model=gpt-5-mini; reason=direct")


def test_auto_routes_and_says_so(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    route = raw.headers["x-janus-route"]
    assert route.startswith(f"model={completion.model};")
    assert "reason=" in route


def test_streaming_with_usage_chunk(client: openai.OpenAI, stack: Stack) -> None:
    stream = client.chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "Write a haiku about APIs"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_stream_wire_format_matches_schema(stack: Stack) -> None:
    """Read the raw SSE bytes: every event is a schema-valid chunk and the stream ends with [DONE]."""
    headers = {"Authorization": f"Bearer {token(stack, 'raw-stream')}"}
    body = {
        "model": "gpt-5-nano",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "count to five"}],
    }
    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for h in RATE_HEADERS:
            assert h in r.headers
        events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    ids = set()
    for e in events[:-1]:
        chunk = json.loads(e)
        validate("CreateChatCompletionStreamResponse", chunk)
        ids.add(chunk["id"])
    assert len(ids) == 1


async def test_async_client_streams(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key=token(stack, "async-user"), max_retries=0)
    async with client:
        completion = await client.chat.completions.create(
            model="qwen.qwen3-32b", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.choices[0].message.content
        stream = await client.chat.completions.create(
            model="qwen.qwen3-32b", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(parts)


def test_tool_call_round_trip(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="gpt-5-mini",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,
        tool_choice="required",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    second = client.chat.completions.create(
        model="gpt-5-mini",
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'},
        ],
        tools=TOOLS,
        tool_choice="none",
    )
    assert second.choices[0].message.content


def test_streamed_tool_call_arguments_reassemble(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-5-mini",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    name, args = "", ""
    finish = None
    for c in stream:
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            name += tc.function.name or "" if tc.function else ""
            args += tc.function.arguments or "" if tc.function else ""
        finish = c.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert "city" in json.loads(args)
    assert finish == "tool_calls"


@pytest.mark.parametrize(
    ("model", "dims", "underlying"),
    [
        ("neboloop/nebo-embed-small", 1536, "text-embedding-3-small"),
        ("text-embedding-3-large", 3072, "text-embedding-3-large"),
    ],
)
def test_embeddings_float_and_base64(client: openai.OpenAI, model: str, dims: int, underlying: str) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=model, input=["first doc", "second doc"], encoding_format="float"
    )
    body = json.loads(raw.http_response.content)
    validate("CreateEmbeddingResponse", body)
    assert body["model"] == underlying
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(len(d["embedding"]) == dims for d in body["data"])
    assert body["usage"]["prompt_tokens"] > 0
    raw64 = client.embeddings.with_raw_response.create(
        model=model, input="first doc", encoding_format="base64"
    )
    b64 = json.loads(raw64.http_response.content)["data"][0]["embedding"]
    floats = struct.unpack(f"<{dims}f", base64.b64decode(b64))
    # the same input gives the same vector either way
    assert floats == pytest.approx(body["data"][0]["embedding"], rel=1e-6)
    # the SDK's default path (it asks for base64 and decodes) works too
    assert len(client.embeddings.create(model=model, input="x").data[0].embedding) == dims


def test_embeddings_of_token_ids(client: openai.OpenAI) -> None:
    """Token-id inputs, as LangChain's OpenAIEmbeddings sends them by default."""
    ids = [[9906, 1917], [15339, 11, 1917, 0]]
    res = client.embeddings.create(model="neboloop/nebo-embed-small", input=ids)
    assert [d.index for d in res.data] == [0, 1] and all(len(d.embedding) == 1536 for d in res.data)
    assert res.usage.prompt_tokens == 6  # token ids count exactly
    one = client.embeddings.create(model="neboloop/nebo-embed-small", input=[9906, 1917])
    assert one.data[0].embedding == pytest.approx(res.data[0].embedding)


def test_models_list_and_retrieve(client: openai.OpenAI, stack: Stack) -> None:
    listed = client.models.with_raw_response.list()
    validate("ListModelsResponse", json.loads(listed.http_response.content))
    ids = {m.id for m in listed.parse().data}
    assert {
        "gpt-5.2",
        "gpt-5-mini",
        "gpt-5-nano",
        "deepseek.v3.2",
        "qwen.qwen3-32b",
        "neboloop/nebo-embed-small",
        "neboloop/nebo-embed-large",
    } <= ids
    one = client.models.retrieve("neboloop/nebo-embed-small")
    assert one.id == "neboloop/nebo-embed-small" and one.object == "model"
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-model")
    validate("ErrorResponse", ei.value.response.json())
    assert ei.value.code == "model_not_found"


def test_unknown_model_in_chat_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-9-ultra", messages=[{"role": "user", "content": "x"}])
    assert ei.value.code == "model_not_found"


def test_usage_reports_pools_and_spend(stack: Stack) -> None:
    c = openai.OpenAI(base_url=stack.base_url, api_key=token(stack, "usage-user"), max_retries=0)
    c.chat.completions.create(model="gpt-5-mini", messages=[{"role": "user", "content": "hello"}])
    r = httpx.get(f"{stack.base_url}/usage", headers={"Authorization": f"Bearer {c.api_key}"}, timeout=10)
    assert r.status_code == 200
    u = r.json()
    for pool in ("session", "weekly"):
        p = u[pool]
        assert {"limit", "used", "remaining", "reset"} <= set(p)
        assert p["limit"] >= p["remaining"]
    # settlement is asynchronous (after the response): the spend shows up shortly
    deadline = 50
    while u["weekly"]["used"] == 0 and deadline:
        import time

        time.sleep(0.1)
        deadline -= 1
        u = httpx.get(
            f"{stack.base_url}/usage", headers={"Authorization": f"Bearer {c.api_key}"}, timeout=10
        ).json()
    assert u["weekly"]["used"] > 0


def test_budget_refusal_is_429_with_headers_and_no_retry(stack: Stack) -> None:
    c = openai.OpenAI(base_url=stack.base_url, api_key=token(stack, "poor-user", plan="free"), max_retries=2)
    # gpt-5.2 output is $14/1M: 100k output tokens need 1.4M credits, more than a free session holds,
    # so the request is served with the cap lowered to what the budget covers
    served = c.chat.completions.create(
        model="gpt-5.2", max_tokens=100_000, messages=[{"role": "user", "content": "write a novel"}]
    )
    assert served.choices[0].message.content
    with pytest.raises(openai.RateLimitError) as ei:
        # a prompt of about 107k tokens: more than the free plan's monthly input quota (100k) holds
        c.chat.completions.create(
            model="gpt-5.2",
            max_tokens=100_000,
            messages=[{"role": "user", "content": "write a novel " * 23_000}],
        )
    r = ei.value.response
    assert r.headers["x-should-retry"] == "false"
    for h in RATE_HEADERS:
        assert h in r.headers
    validate("ErrorResponse", r.json())
    # the message names the pool that refused and when it resets
    msg = r.json()["error"]["message"]
    assert "exhausted" in msg and "resets at" in msg


@pytest.mark.parametrize(
    "auth",
    [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "expired", "wrong-secret", "alg-none"],
)
def test_unauthenticated_is_401(stack: Stack, auth: str | None) -> None:
    import jwt as pyjwt

    headers = {}
    if auth == "expired":
        headers["Authorization"] = "Bearer " + make_token(
            "u", "pro", secret=stack.env["JANUS_JWT_SECRET"], ttl_seconds=-60
        )
    elif auth == "wrong-secret":
        headers["Authorization"] = "Bearer " + make_token("u", "pro", secret="another-secret-entirely-x")
    elif auth == "alg-none":
        headers["Authorization"] = "Bearer " + pyjwt.encode(
            {"sub": "u", "plan": "pro", "exp": 4102444800}, key=None, algorithm="none"
        )
    elif auth:
        headers["Authorization"] = auth
    r = httpx.post(
        f"{stack.base_url}/chat/completions",
        headers=headers,
        timeout=10,
        json={"model": "auto", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 401
    validate("ErrorResponse", r.json())
