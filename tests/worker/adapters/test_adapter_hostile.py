"""Whatever the gateway lets through, no provider adapter crashes on.

The gateway forwards the client's body to the worker unchanged, and each adapter reads the OpenAI
shapes it translates (image parts, tools, tool calls, tool choice, response formats). A shape the
gateway accepts but an adapter cannot read would be a 500 from the worker for a client's mistake.
Here every odd conversation is crossed with every odd option; each body the gateway's own parser
accepts must build a request, or be refused with a clear ``JanusError``, in every adapter.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.gateway.body import parse_chat
from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext
from shared.catalog import Deployment, Provider
from shared.errors import JanusError
from tests.fixtures.client_requests import chat

USER = {"role": "user", "content": "hi"}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "r"}
FN = {"type": "function", "function": {"name": "f"}}


def calling(**function: Any) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [{**CALL, "function": function}]}


CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "tool_message_without_id": [USER, {"role": "tool", "content": "x"}],
    "only_a_tool_message": [{"role": "tool", "content": "x", "tool_call_id": "c1"}],
    "unknown_tool_call_id": [
        USER,
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "nope", "content": "r"},
    ],
    "arguments_not_json": [USER, calling(name="f", arguments="{"), RESULT],
    "arguments_a_list": [USER, calling(name="f", arguments="[1]"), RESULT],
    "tool_call_without_name": [USER, calling(arguments="{}"), RESULT],
    "tool_call_without_function": [USER, {"role": "assistant", "tool_calls": [{"id": "c1"}]}],
    "tool_call_without_id": [USER, {"role": "assistant", "tool_calls": [{"function": {}}]}],
    "legacy_function_role": [USER, {"role": "function", "name": "f", "content": "x"}],
    "developer_message": [{"role": "developer", "content": "be brief"}, USER],
    "only_a_system_message": [{"role": "system", "content": "s"}],
    "only_an_assistant_message": [{"role": "assistant", "content": "a"}],
    "empty_content": [{"role": "user", "content": ""}],
    "null_content": [{"role": "user", "content": None}],
    "no_parts": [{"role": "user", "content": []}],
    "unknown_part": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}],
    "image_url_a_string": [
        {"role": "user", "content": [{"type": "image_url", "image_url": "http://x/a.png"}]}
    ],
    "image_without_url": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
    "image_data_url_cut": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64"}}]}
    ],
    "image_http_url": [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
        }
    ],
    "system_as_parts": [{"role": "system", "content": [{"type": "text", "text": "s"}]}, USER],
    "named_user": [{"role": "user", "content": "hi", "name": "bob"}],
}
OPTIONS: dict[str, dict[str, Any]] = {
    "none": {},
    "tool_without_function": {"tools": [{"type": "function"}]},
    "tool_parameters_a_string": {
        "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]
    },
    "tool_without_parameters": {"tools": [FN]},
    "custom_tool": {"tools": [{"type": "custom", "custom": {"name": "grammar"}}]},
    "tool_choice_unknown_word": {"tools": [FN], "tool_choice": "sometimes"},
    "tool_choice_unnamed": {"tools": [FN], "tool_choice": {"type": "function"}},
    "tool_choice_unknown_tool": {
        "tools": [FN],
        "tool_choice": {"type": "function", "function": {"name": "g"}},
    },
    "tool_choice_without_tools": {"tool_choice": "required"},
    "tool_choice_allowed_tools": {"tools": [FN], "tool_choice": {"type": "allowed_tools"}},
    "json_schema_missing": {"response_format": {"type": "json_schema"}},
    "json_schema_a_string": {"response_format": {"type": "json_schema", "json_schema": "x"}},
    "json_schema_without_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
    "json_schema_schema_a_list": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}
    },
    "stop_many": {"stop": ["a", "b", "c", "d", "e", "f"]},
    "stop_empty": {"stop": []},
    "huge_max_tokens": {"max_tokens": 10**12},
    "huge_seed": {"seed": 2**70},
    "n_two": {"n": 2},
    "unknown_options": {
        "metadata": {"a": 1},
        "reasoning_effort": "turbo",
        "top_k": "x",
        "logit_bias": {"x": 1000},
    },
}
KINDS = sorted(k for k, cls in ADAPTERS.items() if hasattr(cls, "chat_request"))


def accepted() -> list[tuple[str, dict[str, Any]]]:
    """Every crossed body the gateway's parser accepts (the others never reach a worker)."""
    out = []
    for cname, messages in CONVERSATIONS.items():
        for oname, options in OPTIONS.items():
            body = {"model": "m", "messages": messages, **options}
            try:
                parse_chat(json.dumps(body).encode())
            except JanusError:
                continue
            out.append((f"{cname}+{oname}", body))
    return out


def test_the_gateway_refuses_the_shapes_no_adapter_can_read() -> None:
    names = {name for name, _ in accepted()}
    for refused in ("image_url_a_string", "tool_message_without_id"):
        assert not any(n.startswith(refused + "+") for n in names)
    for refused in (
        "tool_without_function",
        "tool_parameters_a_string",
        "tool_choice_unknown_word",
        "tool_choice_unnamed",
        "json_schema_missing",
        "json_schema_a_string",
        "json_schema_schema_a_list",
    ):
        assert not any(n.endswith("+" + refused) for n in names)
    assert len(names) > 200  # the rest still goes through: odd, but the provider's to judge


@pytest.mark.parametrize("kind", KINDS)
def test_no_adapter_crashes_on_what_the_gateway_accepts(kind: str) -> None:
    crashed = []
    for name, body in accepted():
        for stream in (False, True):
            deployment = Deployment(id=f"{kind}-1")
            ctx = ChatContext(
                provider=Provider(id=kind, kind=kind, deployments=[deployment]),  # type: ignore[arg-type]
                deployment=deployment,
                upstream_model="m",
                **chat(body),
                stream=stream,
                api_key="k",
            )
            try:
                ADAPTERS[kind]().chat_request(ctx)
            except JanusError:
                pass  # a clear refusal, passed to the client as it is
            except Exception as exc:  # any other exception is the defect looked for
                crashed.append(f"{name} stream={stream}: {type(exc).__name__}: {exc}")
    assert not crashed, "\n".join(crashed[:20])
