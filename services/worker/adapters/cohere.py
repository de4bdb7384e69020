"""Cohere Chat API v2 (``POST /v2/chat``), buffered and SSE-streamed.

Wire format: https://docs.cohere.com/reference/chat, https://docs.cohere.com/v2/docs/streaming and
https://docs.cohere.com/docs/tool-use-streaming. v2 messages are close to OpenAI's (roles, tool
calls with string ``arguments``, ``tool_call_id``); what differs:
- ``top_p`` is ``p``, ``stop`` is ``stop_sequences``; ``tool_choice`` is ``REQUIRED`` or ``NONE``;
- the answer's ``content`` is a list of typed blocks; usage is reported as ``billed_units`` (what
  Cohere charges for) and ``tokens`` (including its prompt template);
- the stream is typed SSE events (``message-start``, ``content-delta``, ``tool-call-start`` /
  ``-delta`` / ``-end``, ``message-end`` with the finish reason and usage); ``message-end`` is the
  terminal event;
- embeddings: ``POST /v2/embed`` (https://docs.cohere.com/reference/embed) with ``texts`` (at most
  96 a call), ``input_type`` (required by v3+ models) and ``embedding_types: ["float"]``; the answer
  is ``{"embeddings": {"float": [[...]]}, "meta": {"billed_units": {"input_tokens"}}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from services.worker.adapters.base import (
    SAMPLING,
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
    buffered_answer,
    error_text,
    json_decode,
    json_encode,
    openai_tool,
    output_cap,
    sampling,
    schema_of,
    single_choice,
    text_of,
    upstream_json,
)
from services.worker.adapters.cohere_embed import embed_body, embed_vectors
from shared.contract import Usage
from shared.errors import InvalidRequest, StreamInterrupted, UpstreamError, UpstreamTimeout
from shared.openai_request import Message, NamedToolChoice

DEFAULT_BASE_URL = "https://api.cohere.com"


FINISH: dict[str, FinishReason] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


SAMPLING_NAMES = {k: k for k in SAMPLING} | {"top_p": "p"}


def usage_from(u: dict[str, Any]) -> Usage:
    """Counts of one family only. ``billed_units`` is what Cohere charges for, so it is what we
    charge for, at the input price: Cohere's ``cached_tokens`` counts the other family (``tokens``,
    which includes its prompt template), and a cached count taken beside billed input would price
    billed tokens at the cached rate. Only without ``billed_units`` is ``tokens`` read, and then
    ``cached_tokens`` with it."""
    billed = u.get("billed_units")
    if billed:
        return Usage(
            prompt_tokens=int(billed.get("input_tokens") or 0),
            completion_tokens=int(billed.get("output_tokens") or 0),
        )
    counts = u.get("tokens") or {}
    prompt = int(counts.get("input_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=int(counts.get("output_tokens") or 0),
        cached_tokens=min(prompt, int(u.get("cached_tokens") or 0)),
    )


def _finish(reason: str | None) -> FinishReason:
    """A finish reason, or the error Cohere reports through one (``ERROR``, ``TIMEOUT``)."""
    if reason == "ERROR":
        raise UpstreamError("cohere: the generation failed (finish_reason ERROR)")
    if reason == "TIMEOUT":
        raise UpstreamTimeout("cohere: the generation timed out (finish_reason TIMEOUT)")
    return FINISH.get(reason or "COMPLETE", "stop")


def _convert_message(msg: Message) -> dict[str, Any]:
    role = msg.role
    if role in ("system", "developer"):
        return {"role": "system", "content": text_of(msg.content)}
    if role == "user":
        content = msg.content
        if isinstance(content, list) and any(p.type == "image_url" for p in content):
            return {"role": "user", "content": content}  # v2 takes OpenAI's image_url parts as they are
        return {"role": "user", "content": text_of(content)}
    if role == "assistant":
        turn: dict[str, Any] = {"role": "assistant"}
        text = text_of(msg.content)
        if text:
            turn["content"] = text
        calls = msg.tool_calls
        if calls:
            turn["tool_calls"] = [{"id": c.id, "type": "function", "function": c.function} for c in calls]
        return turn
    if role == "tool":
        return {
            "role": "tool",
            "tool_call_id": msg.tool_call_id,
            "content": text_of(msg.content),
        }
    raise InvalidRequest(f"message role {role!r} is not supported", param="messages")


def build_body(ctx: ChatContext) -> dict[str, Any]:
    req = ctx.chat
    single_choice(req)
    out: dict[str, Any] = {
        "model": ctx.upstream_model,
        "messages": [_convert_message(m) for m in req.messages],
        "stream": ctx.stream,
    }
    limit = output_cap(ctx)
    if limit:
        out["max_tokens"] = limit
    out.update(sampling(req, SAMPLING_NAMES))
    stops = req.stop_sequences
    if stops:
        out["stop_sequences"] = stops
    fmt = req.response_format
    if fmt is not None and fmt.type in ("json_object", "json_schema"):
        out["response_format"] = {"type": "json_object"}
        schema = schema_of(fmt.json_schema.schema) if fmt.json_schema is not None else None
        if schema:
            out["response_format"]["json_schema"] = schema
    tools = [t for t in req.tools or () if t.type == "function"]
    if tools:
        out["tools"] = [openai_tool(t) for t in tools]
        choice = req.tool_choice
        if choice == "required":
            out["tool_choice"] = "REQUIRED"
        elif choice == "none":
            out["tool_choice"] = "NONE"
        elif isinstance(choice, NamedToolChoice):
            # Cohere cannot force one named tool: offer only that tool and require a call
            name = choice.function.name if choice.function is not None else None
            out["tools"] = [
                openai_tool(t) for t in tools if t.function is not None and t.function.name == name
            ]
            out["tool_choice"] = "REQUIRED"
    return out


class CohereStream:
    def __init__(self) -> None:
        self._tools: dict[int, int] = {}  # event index -> tool call ordinal
        self._done = False

    def feed(self, msg: StreamMessage) -> list[Event]:
        if self._done or not msg.data:
            return []
        ev = json_decode(msg.data)
        kind = ev.get("type") or msg.event
        message = (ev.get("delta") or {}).get("message") or {}
        if kind == "content-delta":
            content = message.get("content") or {}
            if content.get("text"):
                return [TextDelta(content["text"])]
            return [ReasoningDelta(content["thinking"])] if content.get("thinking") else []
        if kind == "tool-call-start":
            call = message.get("tool_calls") or {}
            fn = call.get("function") or {}
            ordinal = len(self._tools)
            self._tools[ev.get("index", ordinal)] = ordinal
            return [
                ToolCallDelta(
                    ordinal, id=call.get("id"), name=fn.get("name"), arguments=fn.get("arguments") or ""
                )
            ]
        if kind == "tool-call-delta":
            frag = ((message.get("tool_calls") or {}).get("function") or {}).get("arguments") or ""
            known = self._tools.get(ev.get("index", -1))
            return [ToolCallDelta(known, arguments=frag)] if frag and known is not None else []
        if kind == "message-end":
            self._done = True
            delta = ev.get("delta") or {}
            out: list[Event] = [Finish(_finish(delta.get("finish_reason")))]
            if delta.get("usage"):
                out.append(UsageEvent(usage_from(delta["usage"])))
            return out
        return []  # message-start, content-start/-end, tool-plan-delta, tool-call-end, citations

    def finish(self) -> None:
        if not self._done:
            raise StreamInterrupted("the Cohere stream ended before message-end")


class CohereAdapter:
    kind: ClassVar[str] = "cohere"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, tools=True, json_mode=True, embeddings=True
    )
    max_batch: ClassVar[int] = 96  # texts per /v2/embed call

    @staticmethod
    def _request(ctx: ChatContext, path: str, payload: dict[str, Any], stream: bool) -> UpstreamRequest:
        base = (ctx.deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if ctx.api_key:
            headers["authorization"] = f"Bearer {ctx.api_key}"
        return UpstreamRequest(
            method="POST",
            url=f"{base}{path}",
            headers=headers,
            body=json_encode(payload),
            framing="sse" if stream else "json",
        )

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest:
        return self._request(ctx, "/v2/chat", build_body(ctx), ctx.stream)

    def embeddings_request(self, ctx: ChatContext, inputs: list[str]) -> UpstreamRequest:
        return self._request(ctx, "/v2/embed", embed_body(ctx, inputs), False)

    def parse_embeddings(self, body: bytes) -> Embeddings:
        doc = upstream_json(body)
        billed = (doc.get("meta") or {}).get("billed_units") or {}
        return Embeddings(embed_vectors(doc), Usage(prompt_tokens=int(billed.get("input_tokens") or 0)))

    def parse_chat(self, body: bytes) -> Completion:
        doc = json_decode(body)
        message = doc.get("message") or {}
        texts: list[str] = []
        thoughts: list[str] = []
        for block in message.get("content") or []:
            if block.get("type") == "text":
                texts.append(block.get("text") or "")
            elif block.get("type") == "thinking":
                thoughts.append(block.get("thinking") or "")
        calls = [
            ToolCallDelta(
                i,
                id=c.get("id"),
                name=(c.get("function") or {}).get("name"),
                arguments=(c.get("function") or {}).get("arguments") or "{}",
            )
            for i, c in enumerate(message.get("tool_calls") or [])
        ]
        usage = usage_from(doc.get("usage") or {})
        return buffered_answer(texts, calls, _finish(doc.get("finish_reason")), usage, thoughts)

    def stream_parser(self, ctx: ChatContext) -> CohereStream:
        return CohereStream()

    def error_message(self, status: int, body: bytes) -> str:
        return error_text(body, "message")
