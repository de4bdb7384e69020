"""The one prompt estimate: what it counts, and that the gateway's hold and the worker's fallback
charge are the same number for the same request."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.body import parse_chat
from shared import prompt
from shared.openai_request import decode_chat

_enc = msgspec.json.encode


def _body(**extra: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


def _est(body: dict[str, object]) -> int:
    return parse_chat(_enc(body)).prompt_tokens


def _image(detail: str | None, size: int) -> dict[str, object]:
    url: dict[str, object] = {"url": "data:image/png;base64," + "A" * size}
    if detail is not None:
        url["detail"] = detail
    return {"role": "user", "content": [{"type": "image_url", "image_url": url}]}


@pytest.mark.parametrize("detail", ["low", "high", "auto", None])
def test_an_image_costs_its_allowance_by_detail_whatever_its_bytes(detail: str | None) -> None:
    small = _est(_body(messages=[_image(detail, 10)]))
    huge = _est(_body(messages=[_image(detail, 3_000_000)]))
    allowance = prompt.IMAGE_TOKENS[detail] if detail else prompt.IMAGE_DEFAULT
    assert small == huge == prompt.PER_REPLY + prompt.PER_MESSAGE + allowance


def test_tools_and_legacy_functions_count_alike() -> None:
    fn = {"name": "get_weather", "description": "x" * 300, "parameters": {"type": "object", "properties": {}}}
    base = _est(_body())
    with_tools = _est(_body(tools=[{"type": "function", "function": fn}]))
    with_functions = _est(_body(functions=[fn]))
    assert with_tools == with_functions >= base + prompt.PER_TOOL + 100


def test_audio_is_counted_by_its_bytes_and_format() -> None:
    data = base64.b64encode(b"\0" * 16_000).decode()
    part = {"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}}
    tokens = _est(_body(messages=[{"role": "user", "content": [part]}]))
    assert tokens == prompt.PER_REPLY + prompt.PER_MESSAGE + 16_000 // prompt.AUDIO_BYTES_PER_TOKEN["mp3"]


def test_legacy_function_call_turns_count() -> None:
    turn = {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "a" * 300}}
    assert _est(_body(messages=[{"role": "user", "content": "hi"}, turn])) >= _est(_body()) + 100


_text = st.text(max_size=60)
_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda d: _image(d, 40)["content"][0], st.sampled_from(["low", "high", "auto"])),  # type: ignore[index]
)
_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, _text),
    st.builds(lambda ps: {"role": "user", "content": ps}, st.lists(_part, min_size=1, max_size=4)),
    st.builds(
        lambda n, a: {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": n, "arguments": a}}],
        },
        _text,
        _text,
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(_message, min_size=1, max_size=5),
    functions=st.lists(st.builds(lambda n: {"name": n or "f"}, _text), max_size=3),
)
def test_gateway_and_worker_estimate_the_same_prompt_alike(
    messages: list[object], functions: list[object]
) -> None:
    body = _body(messages=messages, **({"functions": functions} if functions else {}))
    assert _est(body) == prompt.estimate_request(decode_chat(_enc(body)))
