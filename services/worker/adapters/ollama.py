"""Ollama's native API (``POST /api/chat``, ``POST /api/embed``), streamed as NDJSON.

Wire format: https://github.com/ollama/ollama/blob/main/docs/api.md. What differs from OpenAI:
- ``stream`` defaults to *true*, so buffered calls must say ``false``;
- sampling settings live in ``options`` (``num_predict`` is the output limit);
- images are bare base64 strings in a message's ``images`` list (no URLs);
- tool calls carry ``arguments`` as a JSON object, arrive whole (never fragmented) and have no id;
  a tool result names the tool (``tool_name``);
- the last line has ``done: true`` with ``done_reason`` and the token counts
  (``prompt_eval_count``, ``eval_count``); an error mid-stream is a line ``{"error": "..."}``.
Ollama's OpenAI-compatible ``/v1`` endpoint is served by the ``openai_compat`` adapter instead.
"""

from __future__ import annotations

import uuid
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
    error_text,
    json_arguments,
    json_decode,
    json_encode,
    json_text,
    openai_tool,
    output_cap,
    parse_data_url,
    sampling,
    schema_of,
    single_choice,
    text_of,
    unsupported_part,
)
from shared.contract import Usage
from shared.errors import InvalidRequest, StreamInterrupted, UpstreamError
from shared.openai_request import FunctionCall, Message, Part

DEFAULT_BASE_URL = "http://127.0.0.1:11434"


FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


SAMPLING_NAMES = {k: k for k in SAMPLING}  # Ollama's ``options`` use OpenAI's names


def usage_from(doc: dict[str, Any]) -> Usage:
    return Usage(
        prompt_tokens=doc.get("prompt_eval_count") or 0, completion_tokens=doc.get("eval_count") or 0
    )


def _finish(doc: dict[str, Any], saw_tool_call: bool) -> FinishReason:
    if saw_tool_call:
        return "tool_calls"  # Ollama reports "stop" after a tool call
    return FINISH.get(doc.get("done_reason") or "stop", "stop")


def _tool_call(call: dict[str, Any], ordinal: int) -> ToolCallDelta:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    return ToolCallDelta(
        ordinal,
        id=call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        name=fn.get("name"),
        arguments=args if isinstance(args, str) else json_text(args),
    )


# ------------------------------------------------------------------------------------ request side
def _user_message(content: str | list[Part] | None) -> dict[str, Any]:
    if isinstance(content, str) or content is None:
        return {"role": "user", "content": content or ""}
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        kind = part.type
        if kind == "text":
            texts.append(part.text or "")
        elif kind == "image_url":
            data = parse_data_url(part.image_url.url if part.image_url is not None else "")
            if data is None:
                raise InvalidRequest("Ollama takes images as base64 data URLs", param="messages")
            images.append(data[1])
        else:
            raise unsupported_part(kind)
    out: dict[str, Any] = {"role": "user", "content": "".join(texts)}
    if images:
        out["images"] = images
    return out


def convert_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for msg in messages:
        role = msg.role
        if role in ("system", "developer"):
            out.append({"role": "system", "content": text_of(msg.content)})
        elif role == "user":
            out.append(_user_message(msg.content))
        elif role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": text_of(msg.content)}
            calls = []
            for call in msg.tool_calls or ():
                fn = call.function or FunctionCall()
                names[call.id or ""] = fn.name
                args = json_arguments(fn.arguments)
                calls.append({"function": {"name": fn.name, "arguments": args}})
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        elif role == "tool":
            turn = {"role": "tool", "content": text_of(msg.content)}
            name = names.get(msg.tool_call_id or "")
            if name:
                turn["tool_name"] = name
            out.append(turn)
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param="messages")
    return out


def build_body(ctx: ChatContext) -> dict[str, Any]:
    req = ctx.chat
    single_choice(req)
    out: dict[str, Any] = {
        "model": ctx.upstream_model,
        "messages": convert_messages(req.messages),
        "stream": ctx.stream,
    }
    options: dict[str, Any] = {}
    limit = output_cap(ctx)
    if limit:
        options["num_predict"] = limit
    options.update(sampling(req, SAMPLING_NAMES))
    stops = req.stop_sequences
    if stops:
        options["stop"] = stops
    if options:
        out["options"] = options
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        out["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema":
        out["format"] = (schema_of(fmt.json_schema.schema) if fmt.json_schema is not None else None) or "json"
    tools = [openai_tool(t) for t in req.tools or () if t.type == "function"]
    # Ollama has no tool_choice: "none" is honoured by not offering the tools
    if tools and req.tool_choice != "none":
        out["tools"] = tools
    return out


# ----------------------------------------------------------------------------------- response side
class OllamaStream:
    def __init__(self) -> None:
        self._calls = 0
        self._done = False

    def feed(self, msg: StreamMessage) -> list[Event]:
        if self._done or not msg.data.strip():
            return []
        doc = json_decode(msg.data)
        if doc.get("error"):
            raise UpstreamError(f"ollama: {doc['error']}")
        out: list[Event] = []
        message = doc.get("message") or {}
        if message.get("thinking"):
            out.append(ReasoningDelta(message["thinking"]))
        if message.get("content"):
            out.append(TextDelta(message["content"]))
        for call in message.get("tool_calls") or []:
            out.append(_tool_call(call, self._calls))
            self._calls += 1
        if doc.get("done"):
            self._done = True
            out.append(Finish(_finish(doc, self._calls > 0)))
            out.append(UsageEvent(usage_from(doc)))
        return out

    def finish(self) -> None:
        if not self._done:
            raise StreamInterrupted("the Ollama stream ended before its done line")


class OllamaAdapter:
    kind: ClassVar[str] = "ollama"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, tools=True, json_mode=True, vision=True, embeddings=True
    )
    max_batch: ClassVar[int] = 256

    @staticmethod
    def _request(ctx: ChatContext, path: str, payload: dict[str, Any], framing: Any) -> UpstreamRequest:
        headers = {"content-type": "application/json"}
        if ctx.api_key:  # a local Ollama needs none; one behind an authenticating proxy may
            headers["authorization"] = f"Bearer {ctx.api_key}"
        base = (ctx.deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        return UpstreamRequest(
            method="POST", url=f"{base}{path}", headers=headers, body=json_encode(payload), framing=framing
        )

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest:
        return self._request(ctx, "/api/chat", build_body(ctx), "ndjson" if ctx.stream else "json")

    def parse_chat(self, body: bytes) -> Completion:
        doc = json_decode(body)
        if doc.get("error"):
            raise UpstreamError(f"ollama: {doc['error']}")
        message = doc.get("message") or {}
        calls = [_tool_call(c, i) for i, c in enumerate(message.get("tool_calls") or [])]
        return Completion(
            content=message.get("content") or ("" if not calls else None),
            tool_calls=calls,
            finish_reason=_finish(doc, bool(calls)),
            usage=usage_from(doc),
            reasoning=message.get("thinking") or None,
        )

    def stream_parser(self, ctx: ChatContext) -> OllamaStream:
        return OllamaStream()

    def embeddings_request(self, ctx: ChatContext, inputs: list[str]) -> UpstreamRequest:
        payload: dict[str, Any] = {"model": ctx.upstream_model, "input": inputs}
        dims = ctx.embeddings.dimensions
        if dims:
            payload["dimensions"] = dims
        return self._request(ctx, "/api/embed", payload, "json")

    def parse_embeddings(self, body: bytes) -> Embeddings:
        doc = json_decode(body)
        return Embeddings(
            vectors=doc.get("embeddings") or [], usage=Usage(prompt_tokens=doc.get("prompt_eval_count") or 0)
        )

    def error_message(self, status: int, body: bytes) -> str:
        return error_text(body, "error")
