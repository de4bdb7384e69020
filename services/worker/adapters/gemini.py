"""Google Gemini API (``models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` and
``:batchEmbedContents``).

Wire format: https://ai.google.dev/api/generate-content and https://ai.google.dev/api/caching
(Content, Part). What differs from OpenAI:
- roles are ``user`` and ``model``; system prompts go to ``systemInstruction``;
- a tool call is a ``functionCall`` part (whole, never fragmented) and its result a
  ``functionResponse`` part that names the *function*, not a call id, so names are looked up from
  the assistant turn that made the call;
- ``usageMetadata.promptTokenCount`` already includes ``cachedContentTokenCount``, and
  ``thoughtsTokenCount`` is *not* part of ``candidatesTokenCount`` (OpenAI counts reasoning inside
  ``completion_tokens``, so the two are added);
- a stream has no terminal event: it is complete once a chunk carried a ``finishReason``;
- embeddings (https://ai.google.dev/api/embeddings): ``batchEmbedContents`` takes up to 100
  ``EmbedContentRequest``s and answers ``{"embeddings": [{"values": [...]}]}`` in order, with no
  token count (the worker counts the inputs).
"""

from __future__ import annotations

import mimetypes
import uuid
from typing import Any, ClassVar

import msgspec

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
    append_turn,
    buffered_answer,
    embedding_dimensions,
    error_text,
    function_tools,
    json_arguments,
    json_decode,
    json_encode,
    json_text,
    output_cap,
    parse_data_url,
    sampling,
    schema_of,
    single_choice,
    text_of,
    unsupported_part,
    upstream_json,
)
from shared.contract import Usage
from shared.errors import InvalidRequest, JanusError, StreamInterrupted, upstream_error_for_status
from shared.openai_request import FunctionCall, Message, NamedToolChoice, Part, ToolChoice

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
# Gemini 3 rejects a replayed functionCall without the signature it was issued with; an OpenAI
# client cannot carry it, and Google documents this sentinel for exactly that case
# (https://ai.google.dev/gemini-api/docs/thought-signatures).
SKIP_SIGNATURE = "skip_thought_signature_validator"


FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
}


SAMPLING_NAMES = {
    "temperature": "temperature",
    "top_p": "topP",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


def usage_from(u: dict[str, Any]) -> Usage:
    thoughts = u.get("thoughtsTokenCount") or 0
    return Usage(
        prompt_tokens=u.get("promptTokenCount") or 0,
        completion_tokens=(u.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=u.get("cachedContentTokenCount") or 0,
        reasoning_tokens=thoughts,
    )


# Google answers a key it does not accept with 400 INVALID_ARGUMENT; the reason in the error's
# details is what says the key (ours, or the caller's own) is at fault, not the request
_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def _status_of(status: int, err: dict[str, Any]) -> int:
    details = err.get("details")
    if status == 400 and isinstance(details, list):
        reasons = {d.get("reason") for d in details if isinstance(d, dict)}
        if reasons & _KEY_REASONS:
            return 401
    return status


def error_from(err: dict[str, Any]) -> JanusError:
    code = err.get("code")
    status = _status_of(code if isinstance(code, int) and code >= 400 else 500, err)
    return upstream_error_for_status(status, err.get("message") or str(err.get("status") or "error"))


def _finish(reason: str | None, saw_tool_call: bool) -> FinishReason:
    if saw_tool_call and reason in (None, "STOP"):
        return "tool_calls"  # Gemini says STOP after a functionCall; OpenAI clients look for tool_calls
    return FINISH.get(reason or "STOP", "stop")


def _call_id(call: dict[str, Any]) -> str:
    return call.get("id") or f"call_{uuid.uuid4().hex[:24]}"


# ------------------------------------------------------------------------------------ request side
def _user_parts(content: str | list[Part] | None) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.type
        if kind == "text":
            if part.text:
                parts.append({"text": part.text})
        elif kind == "image_url":
            url = part.image_url.url if part.image_url is not None else ""
            data = parse_data_url(url)
            if data is not None:
                parts.append({"inlineData": {"mimeType": data[0], "data": data[1]}})
            elif url:
                mime = mimetypes.guess_type(url)[0] or "image/jpeg"
                parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
        else:
            raise unsupported_part(kind)
    return parts


def _function_response(msg: Message, names: dict[str, str]) -> dict[str, Any]:
    call_id = msg.tool_call_id or ""
    name = names.get(call_id)
    if name is None:
        raise InvalidRequest(f"tool message answers unknown tool_call_id {call_id!r}", param="messages")
    text = text_of(msg.content)
    try:
        result = json_decode(text) if text.strip().startswith("{") else None
    except msgspec.DecodeError:
        result = None
    # ``response`` must be a JSON object; a plain-text result is wrapped
    response = result if isinstance(result, dict) else {"result": text}
    return {"functionResponse": {"name": name, "response": response}}


def convert_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages -> (systemInstruction parts, contents)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for msg in messages:
        role = msg.role
        if role in ("system", "developer"):
            text = text_of(msg.content)
            if text:
                system.append({"text": text})
            continue
        if role == "assistant":
            parts: list[dict[str, Any]] = []
            text = text_of(msg.content)
            if text:
                parts.append({"text": text})
            for i, call in enumerate(msg.tool_calls or ()):
                fn = call.function or FunctionCall()
                names[call.id or ""] = fn.name
                part: dict[str, Any] = {
                    "functionCall": {"name": fn.name, "args": json_arguments(fn.arguments)}
                }
                if i == 0:  # only the first of parallel calls carries a signature
                    part["thoughtSignature"] = SKIP_SIGNATURE
                parts.append(part)
            role_out = "model"
        elif role == "tool":
            parts, role_out = [_function_response(msg, names)], "user"
        elif role == "user":
            parts, role_out = _user_parts(msg.content), "user"
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param="messages")
        append_turn(contents, role_out, parts, key="parts")
    return system, contents


def _tool_config(choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return None
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if isinstance(choice, NamedToolChoice) and choice.type == "function":
        name = choice.function.name if choice.function is not None else None
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise InvalidRequest("unsupported tool_choice", param="tool_choice")


def build_body(ctx: ChatContext) -> dict[str, Any]:
    req = ctx.chat
    single_choice(req)
    system, contents = convert_messages(req.messages)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    limit = output_cap(ctx)
    if limit:
        config["maxOutputTokens"] = limit
    config.update(sampling(req, SAMPLING_NAMES))
    stops = req.stop_sequences
    if stops:
        config["stopSequences"] = stops
    fmt = req.response_format
    if fmt is not None and fmt.type in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = schema_of(fmt.json_schema.schema) if fmt.json_schema is not None else None
        if schema:
            config["responseJsonSchema"] = schema
    if config:
        out["generationConfig"] = config
    tools = function_tools(req)
    if tools:
        out["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": f.name,
                        "description": f.description or "",
                        # the JSON Schema field, so OpenAI schemas pass as written (``parameters`` takes only
                        # an OpenAPI subset and rejects e.g. ``additionalProperties``)
                        **({"parametersJsonSchema": schema} if (schema := schema_of(f.parameters)) else {}),
                    }
                    for f in tools
                ]
            }
        ]
        cfg = _tool_config(req.tool_choice)
        if cfg:
            out["toolConfig"] = cfg
    return out


# ----------------------------------------------------------------------------------- response side
class GeminiStream:
    def __init__(self) -> None:
        self._calls = 0
        self._done = False

    def feed(self, msg: StreamMessage) -> list[Event]:
        if self._done or not msg.data:
            return []
        doc = json_decode(msg.data)
        if "error" in doc:
            raise error_from(doc["error"] or {})
        out: list[Event] = []
        candidates = doc.get("candidates") or []
        reason: str | None = None
        if candidates:
            cand = candidates[0]
            for part in (cand.get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    call = part["functionCall"]
                    out.append(
                        ToolCallDelta(
                            self._calls,
                            id=_call_id(call),
                            name=call.get("name"),
                            arguments=json_text(call.get("args")),
                        )
                    )
                    self._calls += 1
                elif part.get("text"):
                    text = part["text"]
                    out.append(ReasoningDelta(text) if part.get("thought") else TextDelta(text))
            reason = cand.get("finishReason")
        blocked = (doc.get("promptFeedback") or {}).get("blockReason")
        if doc.get("usageMetadata"):
            out.append(UsageEvent(usage_from(doc["usageMetadata"])))
        if reason or blocked:
            out.append(Finish(_finish(reason, self._calls > 0) if reason else "content_filter"))
            self._done = True
        return out

    def finish(self) -> None:
        if not self._done:
            raise StreamInterrupted("the Gemini stream ended before a chunk with a finishReason")


class GeminiAdapter:
    kind: ClassVar[str] = "gemini"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, tools=True, json_mode=True, vision=True, embeddings=True
    )
    max_batch: ClassVar[int] = 100  # batchEmbedContents' documented limit

    @staticmethod
    def _request(ctx: ChatContext, action: str, payload: dict[str, Any], stream: bool) -> UpstreamRequest:
        base = (ctx.deployment.base_url or DEFAULT_BASE_URL).rstrip("/")
        headers = {"content-type": "application/json"}
        if ctx.api_key:
            headers["x-goog-api-key"] = ctx.api_key
        return UpstreamRequest(
            method="POST",
            url=f"{base}/v1beta/models/{ctx.upstream_model}:{action}",
            headers=headers,
            body=json_encode(payload),
            framing="sse" if stream else "json",
        )

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest:
        action = "streamGenerateContent?alt=sse" if ctx.stream else "generateContent"
        return self._request(ctx, action, build_body(ctx), ctx.stream)

    def embeddings_request(self, ctx: ChatContext, inputs: list[str]) -> UpstreamRequest:
        one: dict[str, Any] = {"model": f"models/{ctx.upstream_model}"}
        dims = embedding_dimensions(ctx)
        if dims:
            one["outputDimensionality"] = dims
        requests = [{**one, "content": {"parts": [{"text": text}]}} for text in inputs]
        return self._request(ctx, "batchEmbedContents", {"requests": requests}, False)

    def parse_embeddings(self, body: bytes) -> Embeddings:
        doc = upstream_json(body)
        if "error" in doc:
            raise error_from(doc["error"] or {})
        vectors = [e.get("values") or [] for e in doc.get("embeddings") or []]
        meta = doc.get("usageMetadata") or {}
        return Embeddings(vectors, Usage(prompt_tokens=meta.get("promptTokenCount") or 0))

    def parse_chat(self, body: bytes) -> Completion:
        doc = json_decode(body)
        if "error" in doc:
            raise error_from(doc["error"] or {})
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallDelta] = []
        candidates = doc.get("candidates") or []
        reason = None
        if candidates:
            for part in (candidates[0].get("content") or {}).get("parts") or []:
                if "functionCall" in part:
                    call = part["functionCall"]
                    calls.append(
                        ToolCallDelta(
                            len(calls),
                            id=_call_id(call),
                            name=call.get("name"),
                            arguments=json_text(call.get("args")),
                        )
                    )
                elif part.get("text"):
                    (thoughts if part.get("thought") else texts).append(part["text"])
            reason = candidates[0].get("finishReason")
        blocked = (doc.get("promptFeedback") or {}).get("blockReason")
        finish = "content_filter" if blocked and not candidates else _finish(reason, bool(calls))
        return buffered_answer(texts, calls, finish, usage_from(doc.get("usageMetadata") or {}), thoughts)

    def stream_parser(self, ctx: ChatContext) -> GeminiStream:
        return GeminiStream()

    def error_message(self, status: int, body: bytes) -> str:
        return error_text(body, "error", "message")

    def error_status(self, status: int, body: bytes) -> int:
        try:
            err = json_decode(body).get("error")
        except (msgspec.DecodeError, AttributeError):
            return status
        return _status_of(status, err) if isinstance(err, dict) else status
