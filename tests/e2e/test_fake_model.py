"""The built-in fake provider behaves like a model where client code depends on it, through the whole
stack with the official SDK: JSON mode, structured outputs (the SDK's ``parse`` and ``stream``
helpers), a text answer after a tool's result, stop sequences, and the same answer every time."""

from __future__ import annotations

import json
from enum import StrEnum

import openai
import pytest
from pydantic import BaseModel

from tools.localstack import Stack
from tools.token import make_token

MODEL = "gpt-5-mini"


class Unit(StrEnum):
    celsius = "c"
    fahrenheit = "f"


class Reading(BaseModel):
    city: str
    temperature: float
    unit: Unit


class Forecast(BaseModel):
    summary: str
    readings: list[Reading]
    note: str | None
    days: int


@pytest.fixture(scope="module")
def client(stack: Stack) -> openai.OpenAI:
    tok = make_token("fake-model-user", "pro", secret=stack.env["JANUS_JWT_SECRET"])
    return openai.OpenAI(base_url=stack.base_url, api_key=tok, max_retries=0)


def _user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_mode_answers_a_json_object(client: openai.OpenAI, stream: bool) -> None:
    kw = {
        "model": MODEL,
        "messages": _user("Describe a cat in JSON"),
        "response_format": {"type": "json_object"},
    }
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(**kw, stream=True)
            if c.choices
        )
    else:
        text = client.chat.completions.create(**kw).choices[0].message.content or ""
    assert isinstance(json.loads(text), dict)


def test_parse_helper_gets_an_instance_of_the_schema(client: openai.OpenAI) -> None:
    completion = client.beta.chat.completions.parse(
        model=MODEL, messages=_user("Forecast for Paris"), response_format=Forecast
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Forecast)
    assert message.parsed.readings == [] and message.parsed.note is not None


def test_stream_helper_gets_an_instance_of_the_schema(client: openai.OpenAI) -> None:
    with client.beta.chat.completions.stream(
        model=MODEL, messages=_user("Forecast for Oslo"), response_format=Forecast
    ) as stream:
        deltas = [e for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1  # streamed in pieces, not one blob
    assert isinstance(final.choices[0].message.parsed, Forecast)


def test_strict_schema_answers_every_property(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name"],
        "additionalProperties": False,
    }
    for strict, keys in ((True, {"name", "tags"}), (False, {"name"})):
        fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": strict}}
        text = client.chat.completions.create(model=MODEL, messages=_user("A thing"), response_format=fmt)
        assert set(json.loads(text.choices[0].message.content or "")) == keys


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def test_a_tool_result_is_answered_with_text(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=_user("Weather in Rome?"), tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls"
    messages = [
        *_user("Weather in Rome?"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    choice = second.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls and choice.message.content


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence_from_the_prompt_cuts_the_answer(client: openai.OpenAI, stream: bool) -> None:
    messages = _user("Repeat after me: alpha beta OVER gamma delta")
    whole = client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content or ""
    assert "OVER" in whole  # the answer draws on the prompt's words
    if stream:
        chunks = list(
            client.chat.completions.create(model=MODEL, messages=messages, stop=["OVER"], stream=True)
        )
        cut = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        done = client.chat.completions.create(model=MODEL, messages=messages, stop=["OVER"])
        cut, finish = done.choices[0].message.content or "", [done.choices[0].finish_reason]
    assert finish == ["stop"]
    assert cut == whole[: whole.index("OVER")] and "OVER" not in cut


def test_the_same_request_gets_the_same_answer(client: openai.OpenAI) -> None:
    answers = {
        client.chat.completions.create(model=MODEL, messages=_user("Tell me about NATS"))
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert len(answers) == 1
