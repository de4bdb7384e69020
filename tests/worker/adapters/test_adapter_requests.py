"""Request translation: one realistic OpenAI conversation (system prompt, an image, parallel tool
calls and their results, a forced tool, stop, limits) into each provider's documented request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext
from shared.catalog import Deployment, Provider
from shared.errors import InvalidRequest
from tests.fixtures.client_requests import chat, embeddings

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAfbLI3wAAAABJRU5ErkJggg=="
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def conversation(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Paris and Tokyo?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "rainy"},
            {"role": "user", "content": "Thanks, summarise."},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": "END",
        "max_tokens": 100,
        "temperature": 1.5,
        "top_p": 0.9,
    }
    body.update(extra)
    return body


def build(
    kind: str,
    body: dict[str, Any],
    *,
    stream: bool = False,
    model: str = "m",
    api_key: str | None = "sk-test",
    **dep: Any,
) -> tuple[Any, dict[str, Any]]:
    deployment = Deployment(id=f"{kind}-1", **dep)
    ctx = ChatContext(
        provider=Provider(id=kind, kind=kind, deployments=[deployment]),  # type: ignore[arg-type]
        deployment=deployment,
        upstream_model=model,
        **chat(body),
        stream=stream,
        api_key=api_key,
    )
    req = ADAPTERS[kind]().chat_request(ctx)
    return req, json.loads(req.body)


def test_anthropic_request() -> None:
    req, body = build("anthropic", conversation())
    assert req.url == "https://api.anthropic.com/v1/messages" and req.framing == "json"
    assert req.headers["x-api-key"] == "sk-test" and req.headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    first, calls, results = (t["content"] for t in body["messages"])
    assert first[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert [c["input"] for c in calls] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert [b["type"] for b in results] == ["tool_result", "tool_result", "text"]  # merged into one turn
    assert results[0] == {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 18}'}
    assert body["max_tokens"] == 100 and body["temperature"] == 1.0 and body["stop_sequences"] == ["END"]
    assert body["tools"][0]["input_schema"] == TOOL["function"]["parameters"]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert "stream" not in body

    req, body = build(
        "anthropic",
        {
            "messages": [{"role": "user", "content": "hi"}],
            "parallel_tool_calls": False,
            "tools": [TOOL],
            "tool_choice": "required",
        },
        stream=True,
    )
    assert req.framing == "sse" and body["stream"] is True
    assert body["max_tokens"] == 4096, "max_tokens is required: a default is sent"
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_gemini_request() -> None:
    req, body = build("gemini", conversation(), model="gemini-2.5-flash")
    assert (
        req.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert req.headers["x-goog-api-key"] == "sk-test"
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    first, calls, results = (c["parts"] for c in body["contents"])
    assert first[1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert [p["functionCall"] for p in calls] == [
        {"name": "get_weather", "args": {"city": "Paris"}},
        {"name": "get_weather", "args": {"city": "Tokyo"}},
    ]
    assert "thoughtSignature" in calls[0] and "thoughtSignature" not in calls[1]
    assert results[0] == {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}}
    assert results[1] == {"functionResponse": {"name": "get_weather", "response": {"result": "rainy"}}}
    assert results[2] == {"text": "Thanks, summarise."}
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 1.5,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    decl = body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather" and decl["parametersJsonSchema"] == TOOL["function"]["parameters"]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }

    req, body = build(
        "gemini",
        {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
        stream=True,
        model="gemini-2.5-flash",
    )
    assert req.url.endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse") and req.framing == "sse"
    assert body["generationConfig"] == {"responseMimeType": "application/json"}

    with pytest.raises(InvalidRequest):
        build("gemini", {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]})


def test_bedrock_request_is_sigv4_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    req, body = build(
        "bedrock", conversation(), model="qwen.qwen3-32b-v1:0", api_key=None, region="us-west-2"
    )
    assert req.url == "https://bedrock-runtime.us-west-2.amazonaws.com/model/qwen.qwen3-32b-v1%3A0/converse"
    assert req.framing == "json"
    assert body["system"] == [{"text": "Be brief."}]
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    first, calls, results = (t["content"] for t in body["messages"])
    assert first[1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert calls[0] == {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}
    assert results[0] == {"toolResult": {"toolUseId": "call_1", "content": [{"text": '{"temp": 18}'}]}}
    assert results[2] == {"text": "Thanks, summarise."}
    assert body["inferenceConfig"] == {
        "maxTokens": 100,
        "temperature": 1.0,
        "topP": 0.9,
        "stopSequences": ["END"],
    }
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {
        "json": TOOL["function"]["parameters"]
    }

    assert req.sign is not None
    req.sign(req)
    auth = req.headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/us-west-2/bedrock/aws4_request" in auth and "SignedHeaders=" in auth
    assert "X-Amz-Date" in req.headers

    stream_req, _ = build("bedrock", conversation(), stream=True, model="deepseek.v3.2", api_key=None)
    assert stream_req.url.endswith("/model/deepseek.v3.2/converse-stream")
    assert stream_req.framing == "aws-eventstream"


def test_bedrock_api_key_replaces_signing() -> None:
    req, _ = build("bedrock", conversation(), api_key="bedrock-key", region="eu-west-1")
    assert req.sign is None and req.headers["authorization"] == "Bearer bedrock-key"
    assert req.url.startswith("https://bedrock-runtime.eu-west-1.amazonaws.com/")


def test_bedrock_missing_credentials_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    req, _ = build("bedrock", conversation(), api_key=None)
    with pytest.raises(Exception, match="AWS_ACCESS_KEY_ID"):
        req.sign(req)


def test_ollama_request() -> None:
    req, body = build(
        "ollama",
        conversation(response_format={"type": "json_object"}),
        model="qwen3:latest",
        api_key=None,
        base_url="http://127.0.0.1:11434",
    )
    assert req.url == "http://127.0.0.1:11434/api/chat" and req.framing == "json"
    assert body["stream"] is False, "Ollama streams unless told not to"
    assert body["options"] == {"num_predict": 100, "temperature": 1.5, "top_p": 0.9, "stop": ["END"]}
    assert body["format"] == "json"
    msgs = body["messages"]
    assert msgs[1] == {"role": "user", "content": "Weather in Paris and Tokyo?", "images": [PNG]}
    assert msgs[2]["tool_calls"][0] == {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert msgs[3] == {"role": "tool", "content": '{"temp": 18}', "tool_name": "get_weather"}
    assert body["tools"] == [TOOL]
    req, body = build("ollama", {"messages": [{"role": "user", "content": "hi"}]}, stream=True)
    assert req.framing == "ndjson" and body["stream"] is True


def test_cohere_request() -> None:
    req, body = build("cohere", conversation(), model="command-a-03-2025")
    assert req.url == "https://api.cohere.com/v2/chat" and req.headers["authorization"] == "Bearer sk-test"
    assert body["stream"] is False and body["p"] == 0.9 and body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 100
    assert body["tool_choice"] == "REQUIRED" and [t["function"]["name"] for t in body["tools"]] == [
        "get_weather"
    ]
    msgs = body["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[2]["tool_calls"][1]["function"]["arguments"] == '{"city":"Tokyo"}'
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'}


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "bedrock", "ollama", "cohere"])
def test_unsupported_requests_are_refused_before_calling_out(kind: str) -> None:
    with pytest.raises(InvalidRequest):
        build(kind, conversation(n=2), api_key="k")
    if kind != "cohere":  # cohere passes arguments through as the string OpenAI sent
        bad = conversation()
        bad["messages"][2]["tool_calls"][0]["function"]["arguments"] = "{not json"
        with pytest.raises(InvalidRequest):
            build(kind, bad, api_key="k")


SAMPLING_PATH = {"gemini": ("generationConfig",), "ollama": ("options",), "cohere": ()}


@pytest.mark.parametrize("kind", list(SAMPLING_PATH))
def test_numbers_reach_the_provider_as_the_client_wrote_them(kind: str) -> None:
    """The typed request keeps each number's JSON type: a whole temperature is sent whole, a
    fraction as written."""
    for temperature in (1, 0.5):
        _, body = build(kind, {"messages": [{"role": "user", "content": "hi"}], "temperature": temperature})
        node = body
        for key in SAMPLING_PATH[kind]:
            node = node[key]
        assert node["temperature"] == temperature and type(node["temperature"]) is type(temperature)


def build_embed(
    kind: str,
    inputs: list[str],
    *,
    model: str,
    api_key: str | None = "sk-test",
    body: dict[str, Any] | None = None,
    **dep: Any,
) -> tuple[Any, dict[str, Any]]:
    deployment = Deployment(id=f"{kind}-1", **dep)
    ctx = ChatContext(
        provider=Provider(id=kind, kind=kind, deployments=[deployment]),  # type: ignore[arg-type]
        deployment=deployment,
        upstream_model=model,
        **embeddings({"model": "e", "input": inputs, **(body or {})}),
        stream=False,
        api_key=api_key,
    )
    req = ADAPTERS[kind]().embeddings_request(ctx, inputs)
    return req, json.loads(req.body)


def test_gemini_embeddings_request() -> None:
    req, body = build_embed("gemini", ["a", "b"], model="gemini-embedding-001", body={"dimensions": 768})
    assert req.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
    )
    assert req.headers["x-goog-api-key"] == "sk-test"
    assert body == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "outputDimensionality": 768,
                "content": {"parts": [{"text": "a"}]},
            },
            {
                "model": "models/gemini-embedding-001",
                "outputDimensionality": 768,
                "content": {"parts": [{"text": "b"}]},
            },
        ]
    }


def test_cohere_embeddings_request() -> None:
    req, body = build_embed("cohere", ["a", "b"], model="embed-v4.0")
    assert req.url == "https://api.cohere.com/v2/embed" and req.headers["authorization"] == "Bearer sk-test"
    assert body == {
        "model": "embed-v4.0",
        "texts": ["a", "b"],
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    _, body = build_embed(
        "cohere", ["q"], model="embed-v4.0", body={"dimensions": 512}, options={"input_type": "search_query"}
    )
    assert body["input_type"] == "search_query" and body["output_dimension"] == 512


def test_bedrock_embeddings_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    adapter = ADAPTERS["bedrock"]()
    req, body = build_embed(
        "bedrock",
        ["a"],
        model="amazon.titan-embed-text-v2:0",
        api_key=None,
        region="eu-west-1",
        body={"dimensions": 256},
    )
    assert (
        req.url
        == "https://bedrock-runtime.eu-west-1.amazonaws.com/model/amazon.titan-embed-text-v2%3A0/invoke"
    )
    assert body == {"inputText": "a", "normalize": True, "dimensions": 256}
    assert req.sign is not None, "InvokeModel is SigV4-signed like Converse"
    req, body = build_embed("bedrock", ["a", "b"], model="cohere.embed-english-v3", region="us-east-1")
    assert req.url.endswith("/model/cohere.embed-english-v3/invoke")
    assert body == {"texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"]}
    dep = Deployment(id="b")
    titan = "amazon.titan-embed-text-v2:0"
    provider = Provider(id="b", kind="bedrock", deployments=[dep])
    ctx = ChatContext(
        provider, dep, titan, stream=False, api_key="k", **embeddings({"model": "e", "input": "a"})
    )
    assert adapter.batch_size(ctx) == 1, "Titan embeds one text per call"
    ctx.upstream_model = "us.cohere.embed-v4:0"
    assert adapter.batch_size(ctx) == 96
