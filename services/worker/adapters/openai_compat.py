"""Any OpenAI-compatible API (kind ``openai_compat``): OpenAI, DeepSeek, Mistral, Groq, Together,
vLLM, Ollama's ``/v1``. A new such provider is a catalog entry with a ``base_url``, not a module.

- chat: ``POST {base_url}/chat/completions`` with ``Authorization: Bearer``; the client's body with
  ``model`` replaced by the provider's name and the held output cap as the one cap parameter (the
  provider option ``max_tokens_param``: ``max_completion_tokens``, OpenAI's, by default;
  ``max_tokens`` for providers that know only the older name); streams add
  ``stream_options.include_usage`` so the provider sends the usage chunk (``choices: []``) before
  ``data: [DONE]``;
- embeddings: ``POST {base_url}/embeddings``, always asking for floats (base64 is encoded by us when
  the client asks), at most ``max_batch`` inputs per call;
- errors: ``{"error": {"message", "type", "param", "code"}}``; a stream may carry the same object
  in-band as a ``data:`` event.
"""

from __future__ import annotations

from typing import Any, ClassVar, get_args

import msgspec

from services.worker import policy
from services.worker.adapters.base import (
    Capabilities,
    ChatContext,
    Completion,
    Embeddings,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamMessage,
    TextDelta,
    ToolCallDelta,
    UpstreamRequest,
    UsageEvent,
    error_text,
    json_encode,
    option,
    output_cap,
    single_choice,
)
from services.worker.openai import OAUsage, chat_completion_decoder, usage_of
from shared.contract import Usage
from shared.errors import JanusError, StreamInterrupted, UpstreamError, upstream_error_for_status
from shared.openai_request import EmbedInput

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DONE = b"[DONE]"


# ------------------------------------------------------------------------- what a stream chunk holds
class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None  # DeepSeek
    reasoning: str | None = None  # vLLM / Groq / OpenRouter
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _ErrorObj(msgspec.Struct):
    message: str = "upstream error"
    code: Any = None
    type: str | None = None


class _InChunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: OAUsage | None = None
    error: _ErrorObj | str | None = None


_chunk_decoder = msgspec.json.Decoder(_InChunk)
_json_decoder = msgspec.json.Decoder()


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int = 0


class _EmbeddingList(msgspec.Struct):
    data: list[_EmbeddingItem]
    usage: _EmbeddingUsage | None = None


_embeddings_decoder = msgspec.json.Decoder(_EmbeddingList)

_FINISH: dict[str, FinishReason] = {r: r for r in get_args(FinishReason)}


def in_band_error(err: _ErrorObj | str) -> JanusError:
    if isinstance(err, str):
        return UpstreamError(err)
    code = err.code
    status = code if isinstance(code, int) and 400 <= code <= 599 else 502
    return upstream_error_for_status(status, err.message)


def _with_usage(options: msgspec.Raw | None) -> dict[str, Any]:
    """The client's ``stream_options`` with ``include_usage`` set: the usage is what is charged."""
    given = _json_decoder.decode(options) if options is not None else None
    return {**(given if isinstance(given, dict) else {}), "include_usage": True}


class OpenAIStream:
    """SSE ``data:`` chunks -> canonical events; ``[DONE]`` is the terminal event."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done = False

    def feed(self, msg: StreamMessage) -> list[Event]:
        data = msg.data
        if data == DONE:
            self._done = True
            return []
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError:
            raise UpstreamError("the provider sent a malformed stream chunk") from None
        if chunk.error is not None:
            raise in_band_error(chunk.error)
        out: list[Event] = []
        for ch in chunk.choices or ():
            if ch.index:  # one answer per stream (n > 1 streams are refused before the call)
                continue
            d = ch.delta
            if d is not None:
                reasoning = d.reasoning_content or d.reasoning
                if reasoning:
                    out.append(ReasoningDelta(reasoning))
                if d.content:
                    out.append(TextDelta(d.content))
                for tc in d.tool_calls or ():
                    fn = tc.function
                    out.append(
                        ToolCallDelta(
                            tc.index, tc.id, fn.name if fn else None, (fn.arguments or "") if fn else ""
                        )
                    )
            if ch.finish_reason:
                out.append(Finish(_FINISH.get(ch.finish_reason, "stop")))
        if chunk.usage is not None:
            out.append(UsageEvent(usage_of(chunk.usage)))
        return out

    def finish(self) -> None:
        if not self._done:
            raise StreamInterrupted("the provider's stream ended without [DONE]")


class OpenAICompatAdapter:
    kind: ClassVar[str] = "openai_compat"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, tools=True, json_mode=True, vision=True, embeddings=True, token_input=True
    )
    max_batch: ClassVar[int] = 2048

    @staticmethod
    def _url(ctx: ChatContext, path: str) -> str:
        base = ctx.deployment.base_url or ctx.provider.options.get("base_url") or DEFAULT_BASE_URL
        return base.rstrip("/") + path

    @staticmethod
    def _headers(ctx: ChatContext, stream: bool) -> dict[str, str]:
        h = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if ctx.api_key:
            h["Authorization"] = f"Bearer {ctx.api_key}"
        return h

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest:
        # the client's own members, so parameters Janus does not model reach the provider as sent
        req = ctx.chat
        body = policy.passthrough(ctx.raw, req)
        body["model"] = ctx.upstream_model
        cap = output_cap(ctx)
        if cap is not None:
            # one cap, under the name this provider reads: a second, larger one must not survive
            body.pop("max_tokens", None)
            body.pop("max_completion_tokens", None)
            body[option(ctx, "max_tokens_param", "max_completion_tokens")] = cap
        if ctx.stream:
            single_choice(req)  # buffered calls pass every choice through; streams carry one
            body["stream"] = True
            body["stream_options"] = _with_usage(body.get("stream_options"))
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return UpstreamRequest(
            "POST",
            self._url(ctx, "/chat/completions"),
            self._headers(ctx, ctx.stream),
            json_encode(body),
            "sse" if ctx.stream else "json",
        )

    def parse_chat_openai(self, body: bytes) -> Any:
        """The upstream's own ``chat.completion``, for a pass-through that keeps every field a client
        reads (logprobs, refusal, annotations) with one decode and one encode."""
        try:
            return chat_completion_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the provider sent a malformed response: {exc}") from None

    def parse_chat(self, body: bytes) -> Completion:
        obj = self.parse_chat_openai(body)
        if not obj.choices:
            raise UpstreamError("the provider's response has no choices")
        ch = obj.choices[0]
        m = ch.message
        calls = (
            [
                ToolCallDelta(i, t.id, t.function.name, t.function.arguments)
                for i, t in enumerate(m.tool_calls or [])
            ]
            if isinstance(m.tool_calls, list)
            else []
        )
        reasoning = next((r for r in (m.reasoning_content, m.reasoning) if isinstance(r, str) and r), None)
        return Completion(m.content, calls, ch.finish_reason or "stop", usage_of(obj.usage), reasoning)

    def stream_parser(self, ctx: ChatContext) -> OpenAIStream:
        return OpenAIStream()

    def embeddings_request(self, ctx: ChatContext, inputs: list[EmbedInput]) -> UpstreamRequest:
        body: dict[str, Any] = {"model": ctx.upstream_model, "input": inputs, "encoding_format": "float"}
        req = ctx.embeddings
        if req.dimensions is not None:
            body["dimensions"] = req.dimensions
        if isinstance(req.user, str):
            body["user"] = req.user
        return UpstreamRequest(
            "POST", self._url(ctx, "/embeddings"), self._headers(ctx, False), json_encode(body), "json"
        )

    def parse_embeddings(self, body: bytes) -> Embeddings:
        try:
            doc = _embeddings_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the provider sent a malformed embeddings response: {exc}") from None
        items = sorted(doc.data, key=lambda e: e.index)
        return Embeddings(
            [e.embedding for e in items], Usage(prompt_tokens=doc.usage.prompt_tokens if doc.usage else 0)
        )

    def error_message(self, status: int, body: bytes) -> str:
        return error_text(body, "error", "message")
