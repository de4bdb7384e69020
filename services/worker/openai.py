"""Canonical events -> OpenAI's wire format: stream chunks, the buffered chat response, embeddings.

Every client-visible byte of a chat answer is built here, once, by msgspec Structs whose encoders are
created at import. The same Structs decode an OpenAI-compatible upstream's buffered response, so a
pass-through answer is decoded once, has ``id``/``model``/``created`` set, and is encoded once.

Usage: providers report it whole (OpenAI), in pieces (Anthropic: input first, output at the end), or
not at all. ``merge_usage`` keeps, per field, the latest non-zero report so pieces are never added
twice; when nothing was reported, tokens are counted (``shared.tokens``) so metering always gets a
number.
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from services.worker.adapters.base import (
    Completion,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UsageEvent,
)
from shared import tokens
from shared.contract import Usage


# ------------------------------------------------------------------------------------------- usage
class PromptDetails(msgspec.Struct):
    cached_tokens: int | None = 0


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = 0


class OAUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptDetails | UnsetType | None = UNSET
    completion_tokens_details: CompletionDetails | UnsetType | None = UNSET


def oa_usage(u: Usage) -> OAUsage:
    return OAUsage(
        u.prompt_tokens,
        u.completion_tokens,
        u.prompt_tokens + u.completion_tokens,
        PromptDetails(u.cached_tokens),
        CompletionDetails(u.reasoning_tokens),
    )


def usage_of(u: OAUsage | UnsetType | None) -> Usage:
    if u is None or u is UNSET:
        return Usage()
    assert isinstance(u, OAUsage)
    p, c = u.prompt_tokens_details, u.completion_tokens_details
    return Usage(
        prompt_tokens=u.prompt_tokens or 0,
        completion_tokens=u.completion_tokens or 0,
        cached_tokens=(p.cached_tokens or 0) if isinstance(p, PromptDetails) else 0,
        reasoning_tokens=(c.reasoning_tokens or 0) if isinstance(c, CompletionDetails) else 0,
    )


def merge_usage(acc: Usage, new: Usage) -> None:
    """Keep, per field, the latest non-zero value (never a sum: reports may repeat or come in parts)."""
    if new.prompt_tokens:
        acc.prompt_tokens = new.prompt_tokens
    if new.completion_tokens:
        acc.completion_tokens = new.completion_tokens
    if new.cached_tokens:
        acc.cached_tokens = new.cached_tokens
    if new.reasoning_tokens:
        acc.reasoning_tokens = new.reasoning_tokens


def text_size(text: str) -> int:
    """The size ``shared.tokens`` counts: characters of ASCII, else UTF-8 bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def with_fallback(usage: Usage, prompt_tokens: int, output_size: int) -> Usage:
    """``usage`` with counted numbers where the provider reported none."""
    out = Usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens)
    if not out.prompt_tokens:
        out.prompt_tokens = prompt_tokens
    if not out.completion_tokens and output_size:
        out.completion_tokens = -(-output_size // tokens.CHARS_PER_TOKEN)
    return out


# ------------------------------------------------------------------------------------ stream chunks
class FunctionDelta(msgspec.Struct, omit_defaults=True):
    name: str | UnsetType = UNSET
    arguments: str | UnsetType = UNSET


class ToolCallChunk(msgspec.Struct, omit_defaults=True):
    index: int
    id: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    function: FunctionDelta | UnsetType = UNSET


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    reasoning_content: str | UnsetType = UNSET  # DeepSeek's name, which most SDK users read
    tool_calls: list[ToolCallChunk] | UnsetType = UNSET


class StreamChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class StreamChunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[StreamChoice]
    usage: OAUsage | UnsetType = UNSET


_json = msgspec.json.Encoder()
CHUNK = "chat.completion.chunk"


class StreamEncoder:
    """One streamed answer: canonical events in, ``chat.completion.chunk`` JSON bytes out."""

    __slots__ = (
        "_created",
        "_id",
        "_include_usage",
        "_model",
        "_role_sent",
        "finish_reason",
        "output_size",
        "produced",
        "usage",
    )

    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._id = f"chatcmpl-{request_id}"
        self._created = created
        self._model = model
        self._include_usage = include_usage
        self._role_sent = False
        self.usage = Usage()
        self.finish_reason: str | None = None
        self.output_size = 0  # what was generated, for counting when the provider reports no usage
        self.produced = False  # content has gone out

    def _chunk(self, delta: Delta, finish_reason: str | None = None) -> bytes:
        if not self._role_sent:
            delta.role = "assistant"
            self._role_sent = True
        return _json.encode(
            StreamChunk(self._id, CHUNK, self._created, self._model, [StreamChoice(0, delta, finish_reason)])
        )

    def encode(self, ev: Event) -> bytes | None:
        """The chunk for one event, or None when the event shows nothing to the client."""
        if isinstance(ev, TextDelta):
            if not ev.text:
                return None if self._role_sent else self._chunk(Delta(content=""))
            self.output_size += text_size(ev.text)
            self.produced = True
            return self._chunk(Delta(content=ev.text))
        if isinstance(ev, ToolCallDelta):
            self.produced = True
            self.output_size += text_size(ev.arguments) + (text_size(ev.name) if ev.name else 0)
            fn = FunctionDelta(arguments=ev.arguments)
            call = ToolCallChunk(ev.index, function=fn)
            if ev.id is not None or ev.name is not None:
                # the first fragment of a call names it; OpenAI sends arguments "" there
                call.id = ev.id or f"call_{ev.index}"
                call.type = "function"
                fn.name = ev.name or ""
            return self._chunk(Delta(tool_calls=[call]))
        if isinstance(ev, ReasoningDelta):
            if not ev.text:
                return None
            self.output_size += text_size(ev.text)
            self.produced = True
            return self._chunk(Delta(reasoning_content=ev.text))
        if isinstance(ev, Finish):
            self.finish_reason = ev.reason
            return self._chunk(Delta(), ev.reason)
        if isinstance(ev, UsageEvent):
            merge_usage(self.usage, ev.usage)
        return None

    def final_usage(self, prompt_estimate: int) -> Usage:
        return with_fallback(self.usage, prompt_estimate, self.output_size)

    def usage_chunk(self, usage: Usage) -> bytes | None:
        """The last chunk (``choices: []``) when the client asked ``stream_options.include_usage``."""
        if not self._include_usage:
            return None
        return _json.encode(StreamChunk(self._id, CHUNK, self._created, self._model, [], oa_usage(usage)))


# ---------------------------------------------------------------------------------- buffered chat
class ToolFunction(msgspec.Struct):
    name: str = ""
    arguments: str = ""


class ToolCall(msgspec.Struct):
    id: str = ""
    type: str = "function"
    function: ToolFunction = msgspec.field(default_factory=ToolFunction)


class Message(msgspec.Struct):
    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | UnsetType | None = UNSET
    reasoning_content: str | UnsetType | None = UNSET
    # read from vLLM, Groq, OpenRouter and Ollama's /v1, never written: answers carry
    # ``reasoning_content`` in buffered and streamed form alike
    reasoning: str | UnsetType | None = UNSET
    annotations: list[Any] | UnsetType | None = UNSET
    audio: Any | UnsetType = UNSET


class Choice(msgspec.Struct):
    index: int = 0
    message: Message = msgspec.field(default_factory=Message)
    finish_reason: str | None = "stop"
    logprobs: Any = None


class ChatCompletion(msgspec.Struct):
    """OpenAI's ``chat.completion``; also the decode target for OpenAI-compatible upstreams (fields
    we do not model are dropped, everything a client reads is kept)."""

    id: str = ""
    object: str = "chat.completion"
    created: int = 0
    model: str = ""
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: OAUsage | UnsetType | None = UNSET
    system_fingerprint: str | UnsetType | None = UNSET
    service_tier: str | UnsetType | None = UNSET


chat_completion_decoder = msgspec.json.Decoder(ChatCompletion)


def rewrite_completion(obj: ChatCompletion, request_id: str, created: int, model: str, usage: Usage) -> bytes:
    """An upstream's own ``chat.completion`` with our id, model, time and normalised usage."""
    obj.id = f"chatcmpl-{request_id}"
    obj.object = "chat.completion"
    obj.created = created
    obj.model = model
    obj.usage = oa_usage(usage)
    # OpenAI itself answers "system_fingerprint": null for newer models, which its own schema
    # (a string when present) does not allow; absent is valid for both
    if obj.system_fingerprint is None:
        obj.system_fingerprint = UNSET
    if obj.service_tier is None:
        obj.service_tier = UNSET
    for ch in obj.choices:
        m = ch.message
        # some compatible servers send nulls where OpenAI omits the field; clients validate both
        if m.tool_calls is None or m.tool_calls == []:
            m.tool_calls = UNSET
        if not isinstance(m.reasoning_content, str) and isinstance(m.reasoning, str) and m.reasoning:
            m.reasoning_content = m.reasoning
        m.reasoning = UNSET
        if m.reasoning_content is None:
            m.reasoning_content = UNSET
        if m.annotations is None:
            m.annotations = UNSET
        if ch.finish_reason is None:
            ch.finish_reason = "stop"
    return _json.encode(obj)


def completion_body(c: Completion, request_id: str, created: int, model: str, usage: Usage) -> bytes:
    msg = Message(content=c.content)
    if c.tool_calls:
        msg.tool_calls = [
            ToolCall(t.id or f"call_{t.index}", "function", ToolFunction(t.name or "", t.arguments))
            for t in c.tool_calls
        ]
    if c.reasoning:
        msg.reasoning_content = c.reasoning
    obj = ChatCompletion(
        f"chatcmpl-{request_id}",
        "chat.completion",
        created,
        model,
        [Choice(0, msg, c.finish_reason)],
        oa_usage(usage),
    )
    return _json.encode(obj)


def completion_size(c: Completion) -> int:
    n = text_size(c.content or "") + text_size(c.reasoning or "")
    for t in c.tool_calls:
        n += text_size(t.arguments) + text_size(t.name or "")
    return n


class CompletionAssembler:
    """Canonical events -> one ``Completion`` (for in-process adapters answering a buffered call)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, ToolCallDelta] = {}
        self.finish_reason = "stop"
        self.usage = Usage()

    def add(self, ev: Event) -> None:
        if isinstance(ev, TextDelta):
            self._text.append(ev.text)
        elif isinstance(ev, ToolCallDelta):
            call = self._calls.get(ev.index)
            if call is None:
                self._calls[ev.index] = ToolCallDelta(ev.index, ev.id, ev.name, ev.arguments)
            else:
                call.arguments += ev.arguments
                call.id = call.id or ev.id
                call.name = call.name or ev.name
        elif isinstance(ev, ReasoningDelta):
            self._reasoning.append(ev.text)
        elif isinstance(ev, Finish):
            self.finish_reason = ev.reason
        elif isinstance(ev, UsageEvent):
            merge_usage(self.usage, ev.usage)

    def completion(self) -> Completion:
        text = "".join(self._text)
        return Completion(
            content=text if text or not self._calls else None,
            tool_calls=[self._calls[i] for i in sorted(self._calls)],
            finish_reason=self.finish_reason,
            usage=self.usage,
            reasoning="".join(self._reasoning) or None,
        )


# ------------------------------------------------------------------------------------- embeddings
class EmbeddingItem(msgspec.Struct):
    object: str
    index: int
    embedding: list[float] | str


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    object: str
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: the little-endian float32 array, base64-encoded."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embeddings_body(
    vectors: list[list[float]], model: str, prompt_tokens: int, encoding_format: str
) -> bytes:
    if encoding_format == "base64":
        items = [EmbeddingItem("embedding", i, embedding_base64(v)) for i, v in enumerate(vectors)]
    else:
        items = [EmbeddingItem("embedding", i, v) for i, v in enumerate(vectors)]
    return _json.encode(EmbeddingList("list", items, model, EmbeddingUsage(prompt_tokens, prompt_tokens)))
