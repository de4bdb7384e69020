"""The encoder from canonical events to OpenAI's format, checked against OpenAI's published schemas."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from services.worker import openai
from services.worker.adapters.base import (
    Completion,
    Finish,
    ReasoningDelta,
    StreamMessage,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)
from services.worker.adapters.openai_compat import OpenAIStream
from services.worker.framing import SSEDecoder
from shared.contract import Usage
from shared.errors import StreamInterrupted
from tests.openai_schema import validate


def test_stream_chunks_are_valid_openai_chunks() -> None:
    enc = openai.StreamEncoder("r1", 1700000000, "gpt-5-mini", include_usage=True)
    events = [
        UsageEvent(Usage(prompt_tokens=20, cached_tokens=5)),  # Anthropic-style: input first
        ReasoningDelta("thinking"),
        TextDelta("Hello"),
        ToolCallDelta(0, "call_a", "lookup", ""),
        ToolCallDelta(0, arguments='{"q": '),
        ToolCallDelta(0, arguments='"x"}'),
        Finish("tool_calls"),
        UsageEvent(Usage(completion_tokens=9, reasoning_tokens=4)),  # ...then output
        UsageEvent(Usage(completion_tokens=9)),  # a repeated report is not added again
    ]
    chunks = [json.loads(b) for ev in events if (b := enc.encode(ev)) is not None]
    usage = enc.final_usage(prompt_estimate=999)
    tail = enc.usage_chunk(usage)
    assert tail is not None
    chunks.append(json.loads(tail))
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["id"] == "chatcmpl-r1" and c["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning_content": "thinking"}
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert chunks[2]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "lookup", "arguments": ""}}]
    assert chunks[3]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "function": {"arguments": '{"q": '}}]
    assert chunks[5]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 5}, "completion_tokens_details": {"reasoning_tokens": 4}}
    assert enc.produced and usage == Usage(20, 9, 5, 4)


def test_usage_is_counted_when_the_provider_reports_none() -> None:
    enc = openai.StreamEncoder("r2", 1, "m", include_usage=False)
    assert enc.encode(TextDelta("abcdef" * 3)) is not None
    assert enc.usage_chunk(Usage()) is None
    assert enc.final_usage(prompt_estimate=12) == Usage(prompt_tokens=12, completion_tokens=6)


def test_buffered_completion_body() -> None:
    c = Completion(None, [ToolCallDelta(0, "call_1", "f", '{"a": 1}')], "tool_calls", Usage(3, 4))
    body = json.loads(openai.completion_body(c, "r3", 1700000000, "m", Usage(3, 4)))
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"] == {
        "role": "assistant", "content": None, "refusal": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    text = openai.completion_body(Completion("hi", [], "stop", Usage()), "r4", 1, "m", Usage(1, 1))
    validate("CreateChatCompletionResponse", json.loads(text))


def test_assembler_joins_fragments() -> None:
    asm = openai.CompletionAssembler()
    for ev in (TextDelta("a"), TextDelta("b"), ToolCallDelta(1, "c1", "g", "{"),
               ToolCallDelta(1, arguments="}"), Finish("tool_calls"), UsageEvent(Usage(prompt_tokens=2)),
               UsageEvent(Usage(completion_tokens=3))):
        asm.add(ev)
    c = asm.completion()
    assert c.content == "ab" and c.tool_calls[0].arguments == "{}" and c.finish_reason == "tool_calls"
    assert c.usage == Usage(2, 3)


def test_embeddings_body_float_and_base64() -> None:
    vectors = [[0.5, -0.25, 1.0], [0.1, 0.2, 0.3]]
    floats = json.loads(openai.embeddings_body(vectors, "text-embedding-3-small", 4, "float"))
    validate("CreateEmbeddingResponse", floats)
    b64 = json.loads(openai.embeddings_body(vectors, "text-embedding-3-small", 4, "base64"))
    for i, item in enumerate(b64["data"]):
        got = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert np.allclose(got, np.asarray(vectors[i], dtype=np.float32))
    assert b64["usage"] == {"prompt_tokens": 4, "total_tokens": 4}


TRANSCRIPT = (Path(__file__).parent / "fixtures" / "openai_chat_stream.sse").read_bytes()


def test_openai_stream_parser_on_a_recorded_transcript() -> None:
    parser = OpenAIStream()
    events = [ev for m in SSEDecoder().feed(TRANSCRIPT) for ev in parser.feed(m)]
    parser.finish()
    assert events == [TextDelta("Hi"), Finish("stop"), UsageEvent(Usage(9, 1))]
    cut = OpenAIStream()
    cut.feed(StreamMessage(TRANSCRIPT.split(b"\n\n")[1][6:]))
    with pytest.raises(StreamInterrupted):
        cut.finish()
