"""Auth, input validation and the HTTP edge: every refusal in OpenAI's shape, never a 5xx."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway, auth, token
from tests.gateway.test_flow import CHAT, assert_error
from tools.localnats import free_port
from tools.localstack import DEV_SECRET, base_env, start_service


def _none_alg_token() -> str:
    claims = {"sub": "alice", "plan": "pro", "exp": int(time.time()) + 600}
    return jwt.encode(claims, None, algorithm="none")


AUTH_CASES = {
    "missing": None,
    "not_bearer": "Basic YWxpY2U6cHc=",
    "malformed": "Bearer not.a.jwt",
    "expired": "Bearer " + token(ttl_seconds=-120),
    "wrong_signature": "Bearer "
    + jwt.encode(
        {"sub": "a", "plan": "pro", "exp": int(time.time()) + 600},
        "another-secret-of-enough-length!",
        algorithm="HS256",
    ),
    "alg_none": "Bearer " + _none_alg_token(),
    "no_exp": "Bearer " + jwt.encode({"sub": "a", "plan": "pro"}, DEV_SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("case", list(AUTH_CASES))
async def test_unauthenticated_is_401(case: str, gateway: Gateway, http: aiohttp.ClientSession) -> None:
    header = AUTH_CASES[case]
    headers = {"Authorization": header} if header else {}
    async with http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers) as r:
        assert r.status == 401
        assert_error(await r.read(), "invalid_api_key")
        assert r.headers["X-Request-Id"]


async def test_unknown_plan_is_403_and_tier_claim_works(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.answer})
    async with http.get(gateway.url + "/v1/models", headers=auth(plan="platinum")) as r:
        assert r.status == 403
        assert_error(await r.read())
    tier_token = jwt.encode(
        {"sub": "carol", "tier": "developer", "exp": int(time.time()) + 600}, DEV_SECRET, algorithm="HS256"
    )
    async with http.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {tier_token}"}
    ) as r:
        assert r.status == 200
    assert fakes.reserves[-1].plan == "developer"


BAD_BODIES: dict[str, tuple[Any, str | None]] = {
    "not_json": (b"{not json", None),
    "empty": (b"", None),
    "array": ([1, 2], None),
    "messages_not_list": ({"model": "m", "messages": "hi"}, "messages"),
    "messages_missing": ({"model": "m"}, "messages"),
    "messages_empty": ({"model": "m", "messages": []}, "messages"),
    "no_role": ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    "bad_role": ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    "stream_not_bool": ({**CHAT, "stream": "yes"}, "stream"),
    "max_tokens_negative": ({**CHAT, "max_tokens": -1}, "max_tokens"),
    "max_tokens_float": ({**CHAT, "max_tokens": 1.5}, "max_tokens"),
    "temperature_string": ({**CHAT, "temperature": "hot"}, "temperature"),
    "content_number": ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    "tools_not_list": ({**CHAT, "tools": {"x": 1}}, "tools"),
    # shapes OpenAI refuses and provider adapters would otherwise have to guess at
    "image_url_a_string": (
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "https://example.com/a.png"}]}
            ],
        },
        "messages[0].content[0].image_url",
    ),
    "image_url_missing": (
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        "messages[0].content[0].image_url",
    ),
    "tool_message_without_id": (
        {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "18C"}]},
        "messages[1].tool_call_id",
    ),
    "function_tool_without_function": ({**CHAT, "tools": [{"type": "function"}]}, "tools[0].function"),
    "tool_parameters_not_an_object": (
        {**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": "city"}}]},
        "tools[0].function.parameters",
    ),
    "tool_choice_unknown_word": ({**CHAT, "tool_choice": "sometimes"}, "tool_choice"),
    "tool_choice_function_unnamed": ({**CHAT, "tool_choice": {"type": "function"}}, "tool_choice.function"),
    "json_schema_missing": (
        {**CHAT, "response_format": {"type": "json_schema"}},
        "response_format.json_schema",
    ),
    "json_schema_a_string": (
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": "x"}},
        "response_format.json_schema",
    ),
    "json_schema_schema_not_an_object": (
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
        "response_format.json_schema.schema",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_chat_input_is_400(case: str, gateway: Gateway, http: aiohttp.ClientSession) -> None:
    body, param = BAD_BODIES[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(
        gateway.url + "/v1/chat/completions",
        data=data,
        headers={**auth(), "Content-Type": "application/json"},
    ) as r:
        assert r.status == 400, await r.read()
        err = assert_error(await r.read())
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        {"model": "text-embedding-3-small", "input": ""},
        {"model": "text-embedding-3-small", "input": []},
        {"model": "text-embedding-3-small", "input": ["a", 1]},
        {"model": "text-embedding-3-small", "input": "a", "encoding_format": "hex"},
        {"model": "text-embedding-3-small", "input": {"a": 1}},
        {"input": "a"},
    ],
)
async def test_bad_embeddings_input_is_400(
    body: dict[str, Any], gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(gateway.url + "/v1/embeddings", json=body, headers=auth()) as r:
        assert r.status == 400
        assert_error(await r.read())


async def test_edge_errors_then_a_good_request(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.answer})
    async with http.post(gateway.url + "/v1/chat/completions", data=b"x" * 300_000, headers=auth()) as r:
        assert r.status == 413
        assert_error(await r.read())

    async def chunks():  # no Content-Length: aiohttp's own limit must answer 413 too
        for _ in range(30):
            yield b"x" * 10_000

    async with http.post(gateway.url + "/v1/chat/completions", data=chunks(), headers=auth()) as r:
        assert r.status == 413
        assert_error(await r.read())
    async with http.get(gateway.url + "/v1/nothing-here", headers=auth()) as r:
        assert r.status == 404
        assert_error(await r.read())
    async with http.get(gateway.url + "/v1/chat/completions", headers=auth()) as r:
        assert r.status == 405
        assert_error(await r.read(), "method_not_allowed")
    async with http.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={**auth(), "X-Bot-ID": "bad\tbot"}
    ) as r:
        assert r.status == 400
    async with http.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={**auth(), "X-Bot-ID": "my-bot"}
    ) as r:
        assert r.status == 200
        await r.read()
    assert fakes.reserves[-1].bot == "my-bot"
    async with http.get(f"http://127.0.0.1:{gateway.proc.ops_port}/metrics") as r:
        text = await r.text()
    assert 'janus_http_requests_total{method="POST",route="/v1/chat/completions",status="413"}' in text
    assert 'route="/v1/nothing-here"' not in text
    assert "Traceback" not in gateway.proc.log_tail(100_000)


def test_refuses_to_start_without_a_secret(gw_nats, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = base_env(gw_nats.url, JANUS_PORT=str(free_port()), JANUS_JWT_SECRET="")
    proc = start_service("gateway", env, tmp_path, wait=False)
    assert proc.proc.wait(30) == 2
    assert "JANUS_JWT_SECRET" in proc.log_tail()
