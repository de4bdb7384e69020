"""Anthropic Messages API (``POST /v1/messages``), buffered and SSE-streamed.

Wire format: https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming. What differs from OpenAI:
- system prompts live in a top-level ``system`` field, not in ``messages``;
- ``max_tokens`` is required;
- a tool call is a ``tool_use`` content block in the assistant turn, and its result a ``tool_result``
  block in the *next user* turn; roles must alternate, so consecutive same-role turns are merged;
- usage splits the prompt into uncached ``input_tokens`` plus ``cache_read_input_tokens`` and
  ``cache_creation_input_tokens``; OpenAI's ``prompt_tokens`` is their sum;
- a stream ends with ``message_stop``; errors may arrive in-band as an ``error`` event.
"""

from __future__ import annotations

from typing import Any, ClassVar

from services.worker.adapters.base import (
    Capabilities,
    ChatContext,
    Completion,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamMessage,
    TextDelta,
    ToolCallDelta,
    UpstreamRequest,
    UsageEvent,
    append_turn,
    buffered_answer,
    error_text,
    function_tools,
    json_arguments,
    json_decode,
    json_encode,
    json_text,
    option,
    output_cap,
    parse_data_url,
    schema_of,
    single_choice,
    text_of,
    unsupported_part,
)
from shared.contract import Usage
from shared.errors import InvalidRequest, JanusError, StreamInterrupted, upstream_error_for_status
from shared.openai_request import ChatRequest, FunctionCall, Message, NamedToolChoice, Part

API_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096


FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The error ``type`` in Anthropic's error bodies, as the HTTP status it stands for (documented in
# https://docs.anthropic.com/en/api/errors); in-band stream errors carry only the type.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def usage_from(u: dict[str, Any]) -> Usage:
    read = u.get("cache_read_input_tokens") or 0
    written = u.get("cache_creation_input_tokens") or 0
    return Usage(
        prompt_tokens=(u.get("input_tokens") or 0) + read + written,
        completion_tokens=u.get("output_tokens") or 0,
        cached_tokens=read,
    )


def error_from(err: dict[str, Any]) -> JanusError:
    kind = err.get("type") or "api_error"
    return upstream_error_for_status(ERROR_STATUS.get(kind, 500), f"{kind}: {err.get('message') or ''}")


# ------------------------------------------------------------------------------------ request side
def _image_block(part: Part) -> dict[str, Any]:
    url = part.image_url.url if part.image_url is not None else ""
    data = parse_data_url(url)
    if data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": data[0], "data": data[1]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("image_url must be an http(s) or base64 data URL", param="messages")


def _user_blocks(content: str | list[Part] | None) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.type
        if kind == "text":
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif kind == "image_url":
            blocks.append(_image_block(part))
        else:
            raise unsupported_part(kind)
    return blocks


def _assistant_blocks(msg: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = text_of(msg.content)
    if text:
        blocks.append({"type": "text", "text": text})
    for call in msg.tool_calls or ():
        fn = call.function or FunctionCall()
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": fn.name,
                "input": json_arguments(fn.arguments),
            }
        )
    return blocks


def convert_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic ``system`` blocks, alternating user/assistant turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.role
        if role in ("system", "developer"):
            text = text_of(msg.content)
            if text:
                system.append({"type": "text", "text": text})
            continue
        if role == "assistant":
            blocks, role_out = _assistant_blocks(msg), "assistant"
        elif role == "tool":
            result = text_of(msg.content)
            blocks, role_out = (
                [{"type": "tool_result", "tool_use_id": msg.tool_call_id, "content": result}],
                "user",
            )
        elif role == "user":
            blocks, role_out = _user_blocks(msg.content), "user"
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param="messages")
        append_turn(turns, role_out, blocks)
    return system, turns


def _tool_choice(req: ChatRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    out: dict[str, Any] | None
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, NamedToolChoice) and choice.type == "function":
        out = {"type": "tool", "name": choice.function.name if choice.function is not None else None}
    else:
        raise InvalidRequest("unsupported tool_choice", param="tool_choice")
    if req.parallel_tool_calls is False:
        out["disable_parallel_tool_use"] = True
    return out


def build_body(ctx: ChatContext) -> dict[str, Any]:
    req = ctx.chat
    single_choice(req)
    system, turns = convert_messages(req.messages)
    out: dict[str, Any] = {
        "model": ctx.upstream_model,
        "messages": turns,
        "max_tokens": output_cap(ctx) or int(option(ctx, "default_max_tokens", str(DEFAULT_MAX_TOKENS))),
    }
    if system:
        out["system"] = system
    if req.temperature is not None:
        # OpenAI accepts 0..2, Anthropic 0..1: clamp rather than refuse a request OpenAI would take
        out["temperature"] = min(float(req.temperature), 1.0)
    if req.top_p is not None:
        out["top_p"] = req.top_p
    stops = req.stop_sequences
    if stops:
        out["stop_sequences"] = stops
    if req.tools:
        out["tools"] = [
            {
                "name": f.name,
                "description": f.description or "",
                "input_schema": schema_of(f.parameters) or {"type": "object", "properties": {}},
            }
            for f in function_tools(req)
        ]
        choice = _tool_choice(req)
        if choice is not None:
            out["tool_choice"] = choice
    if req.user:
        out["metadata"] = {"user_id": str(req.user)}
    if ctx.stream:
        out["stream"] = True
    return out


# ----------------------------------------------------------------------------------- response side
class AnthropicStream:
    """Anthropic SSE events -> canonical events. Block indexes count text blocks too; OpenAI's tool
    call ``index`` counts tool calls only, so block indexes are mapped to tool ordinals."""

    def __init__(self) -> None:
        self._tools: dict[int, int] = {}  # content block index -> tool call ordinal
        self._usage: dict[str, int] = {}
        self._done = False

    def _usage_event(self, u: dict[str, Any] | None) -> list[Event]:
        if not u:
            return []
        self._usage.update({k: v for k, v in u.items() if isinstance(v, int)})
        return [UsageEvent(usage_from(self._usage))]

    def feed(self, msg: StreamMessage) -> list[Event]:
        if self._done or not msg.data:
            return []
        ev = json_decode(msg.data)
        kind = ev.get("type")
        if kind == "content_block_delta":
            delta = ev.get("delta") or {}
            dkind = delta.get("type")
            if dkind == "text_delta":
                return [TextDelta(delta.get("text") or "")] if delta.get("text") else []
            if dkind == "input_json_delta":
                frag = delta.get("partial_json") or ""
                ordinal = self._tools.get(ev.get("index", -1))
                return [ToolCallDelta(ordinal, arguments=frag)] if frag and ordinal is not None else []
            if dkind == "thinking_delta":
                return [ReasoningDelta(delta.get("thinking") or "")] if delta.get("thinking") else []
            return []  # signature_delta, citations_delta: nothing OpenAI can carry
        if kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "tool_use":
                ordinal = len(self._tools)
                self._tools[ev.get("index", ordinal)] = ordinal
                args = json_text(block["input"]) if block.get("input") else ""
                return [ToolCallDelta(ordinal, id=block.get("id"), name=block.get("name"), arguments=args)]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            return []
        if kind == "message_start":
            return self._usage_event((ev.get("message") or {}).get("usage"))
        if kind == "message_delta":
            out: list[Event] = []
            reason = (ev.get("delta") or {}).get("stop_reason")
            if reason:
                out.append(Finish(FINISH.get(reason, "stop")))
            out.extend(self._usage_event(ev.get("usage")))
            return out
        if kind == "message_stop":
            self._done = True
            return []
        if kind == "error":
            raise error_from(ev.get("error") or {})
        return []  # ping, content_block_stop, and event types added later

    def finish(self) -> None:
        if not self._done:
            raise StreamInterrupted("the Anthropic stream ended before message_stop")


class AnthropicAdapter:
    kind: ClassVar[str] = "anthropic"
    capabilities: ClassVar[Capabilities] = Capabilities(streaming=True, tools=True, vision=True)

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest:
        base = (ctx.deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        headers = {
            "content-type": "application/json",
            "anthropic-version": option(ctx, "anthropic_version", API_VERSION),
        }
        if ctx.api_key:
            headers["x-api-key"] = ctx.api_key
        return UpstreamRequest(
            method="POST",
            url=f"{base}/v1/messages",
            headers=headers,
            body=json_encode(build_body(ctx)),
            framing="sse" if ctx.stream else "json",
        )

    def parse_chat(self, body: bytes) -> Completion:
        doc = json_decode(body)
        if doc.get("type") == "error":
            raise error_from(doc.get("error") or {})
        texts: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCallDelta] = []
        for block in doc.get("content") or []:
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text") or "")
            elif kind == "thinking":
                thinking.append(block.get("thinking") or "")
            elif kind == "tool_use":
                calls.append(
                    ToolCallDelta(
                        len(calls),
                        id=block.get("id"),
                        name=block.get("name"),
                        arguments=json_text(block.get("input")),
                    )
                )
        reason = doc.get("stop_reason") or "end_turn"
        usage = usage_from(doc.get("usage") or {})
        return buffered_answer(texts, calls, FINISH.get(reason, "stop"), usage, thinking)

    def stream_parser(self, ctx: ChatContext) -> AnthropicStream:
        return AnthropicStream()

    def error_message(self, status: int, body: bytes) -> str:
        return error_text(body, "error", "message")
