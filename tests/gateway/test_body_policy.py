"""The parameter policy at the edge, the output cap decision and JSON nesting: each a clear 400,
never a 500, and never a request that can cost more than its hold."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.gateway.body import parse_chat, parse_embeddings
from services.worker import policy
from shared.catalog import Model, Serving
from shared.errors import InvalidRequest
from shared.openai_request import decode_chat

_enc = msgspec.json.encode
MODEL = Model(id="m", owned_by="o", serve=[Serving("d", "m")], context_window=10_000, max_output_tokens=2_000)


def _chat(**extra: Any) -> bytes:
    return _enc({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"service_tier": "priority"}, "service_tier"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"store": True}, "store"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ],
)
def test_cost_options_are_refused_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat(_chat(**extra))
    assert info.value.param == param and info.value.http_status == 400
    assert info.value.code == "unsupported_parameter"


@pytest.mark.parametrize(
    "extra",
    [
        {"service_tier": "auto"},
        {"service_tier": "default"},
        {"store": False},
        {"modalities": ["text"]},
        {"audio": None},
        {"web_search_options": None},
    ],
)
def test_harmless_values_of_those_options_pass(extra: dict[str, Any]) -> None:
    parse_chat(_chat(**extra))


def test_worker_strips_account_options_and_hashes_the_caller_into_user_fields() -> None:
    raw = _chat(
        service_tier="auto",
        store=False,
        metadata={"a": "b"},
        user="ceo@victim.example",
        safety_identifier="someone-else",
        top_k=3,
    )
    req = decode_chat(raw)
    policy.apply(req, "alice")
    principal = policy.principal_id("alice")
    assert req.user == req.safety_identifier == principal  # what a translating adapter reads
    sent = msgspec.json.decode(msgspec.json.encode(policy.passthrough(raw, req)))
    assert sent == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "user": principal,
        "safety_identifier": principal,
        "top_k": 3,
    }  # what an OpenAI-compatible one is sent
    assert policy.principal_id("alice") != policy.principal_id("bob")
    assert "alice" not in policy.principal_id("alice")


def test_n_above_one_cannot_be_streamed() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat(_chat(stream=True, n=4))
    assert info.value.param == "n"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_client_cap_above_the_models_limit_is_refused(field: str) -> None:
    facts = parse_chat(_chat(**{field: 2_001}))
    with pytest.raises(InvalidRequest) as info:
        facts.output_cap(MODEL, "m", 4096)
    assert info.value.param == field and "2000" in info.value.message


def test_the_cap_is_the_clients_or_the_default_within_the_models_limit_and_context() -> None:
    assert parse_chat(_chat(max_tokens=100)).output_cap(MODEL, "m", 4096) == 100
    assert parse_chat(_chat()).output_cap(MODEL, "m", 4096) == 2_000
    assert parse_chat(_chat()).output_cap(MODEL, "m", 500) == 500
    long = parse_chat(_enc({"messages": [{"role": "user", "content": "x" * 29_000}]}))
    assert long.output_cap(MODEL, "m", 4096) == 10_000 - long.prompt_tokens


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + _nested(5000) + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
        b'"function": {"name": "f", "parameters": {"a": ' + _nested(5000) + b"}}}]}",
        b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": '
        b'"json_schema", "json_schema": {"name": "s", "schema": {"a": ' + _nested(5000) + b"}}}}",
    ],
    ids=["unknown-field", "tool-schema", "response-schema"],
)
def test_deeply_nested_chat_json_is_a_400(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat(body)
    assert info.value.http_status == 400 and "nested" in info.value.message


def test_deeply_nested_embeddings_json_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_embeddings(b'{"model": "e", "input": "x", "extra": ' + _nested(5000) + b"}")
    assert info.value.http_status == 400 and "nested" in info.value.message
