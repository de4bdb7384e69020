"""Amazon Bedrock Converse API (``/model/{modelId}/converse`` and ``/converse-stream``).

Wire format: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html and
API_runtime_ConverseStream.html (the stream is AWS event-stream framed; the transport splits it and
hands us each event's ``:event-type`` and JSON payload). What differs from OpenAI:
- content is a list of blocks keyed by kind (``{"text": ...}``, ``{"toolUse": ...}``,
  ``{"toolResult": ...}``, ``{"image": ...}``); system prompts go to ``system``;
- sampling settings live in ``inferenceConfig``, tools in ``toolConfig``;
- usage reports ``inputTokens`` *without* ``cacheReadInputTokens`` / ``cacheWriteInputTokens``;
- the stream ends with ``messageStop`` (stop reason) and then ``metadata`` (usage): ``metadata``
  is the terminal event, so a stream cut after ``messageStop`` still lost its usage;
- requests are signed with SigV4 (service ``bedrock``), or carry a Bedrock API key as a bearer token;
- embeddings go through ``/model/{modelId}/invoke`` in the model family's own format: Titan Text
  Embeddings (``{"inputText", "dimensions", "normalize"}`` -> ``{"embedding", "inputTextTokenCount"}``,
  one text a call; https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html)
  or Cohere Embed (Cohere's ``texts`` / ``input_type`` body, up to 96 texts, no token count;
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed.html).
"""

from __future__ import annotations

import urllib.parse
from typing import Any, ClassVar

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

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
    option,
    output_cap,
    parse_data_url,
    schema_of,
    single_choice,
    text_of,
    unsupported_part,
    upstream_json,
)
from services.worker.adapters.cohere_embed import embed_body, embed_vectors
from shared.contract import Usage
from shared.errors import InvalidRequest, JanusError, StreamInterrupted, upstream_error_for_status
from shared.openai_request import FunctionCall, Message, NamedToolChoice, Part, ToolChoice
from shared.settings import variable

SERVICE = "bedrock"
DEFAULT_REGION = "us-east-1"


FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# Exceptions a ConverseStream can deliver in-band, as the HTTP status the API reference gives them.
EXCEPTION_STATUS = {
    "validationException": 400,
    "accessDeniedException": 403,
    "resourceNotFoundException": 404,
    "throttlingException": 429,
    "modelStreamErrorException": 503,  # documented as 424; a retry on another deployment may work
    "modelTimeoutException": 408,
    "internalServerException": 500,
    "serviceUnavailableException": 503,
}

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


def usage_from(u: dict[str, Any]) -> Usage:
    read = u.get("cacheReadInputTokens") or 0
    written = u.get("cacheWriteInputTokens") or 0
    return Usage(
        prompt_tokens=(u.get("inputTokens") or 0) + read + written,
        completion_tokens=u.get("outputTokens") or 0,
        cached_tokens=read,
    )


def exception_from(kind: str, payload: bytes) -> JanusError:
    message = error_text(payload, "message")
    return upstream_error_for_status(EXCEPTION_STATUS.get(kind, 500), f"{kind}: {message}")


# ------------------------------------------------------------------------------------ request side
def _user_blocks(content: str | list[Part] | None) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.type
        if kind == "text":
            if part.text:
                blocks.append({"text": part.text})
        elif kind == "image_url":
            data = parse_data_url(part.image_url.url if part.image_url is not None else "")
            fmt = _IMAGE_FORMATS.get(data[0]) if data else None
            if data is None or fmt is None:
                raise InvalidRequest(
                    "Bedrock models take images as base64 data URLs (png, jpeg, gif, webp)", param="messages"
                )
            blocks.append({"image": {"format": fmt, "source": {"bytes": data[1]}}})
        else:
            raise unsupported_part(kind)
    return blocks


def convert_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.role
        if role in ("system", "developer"):
            text = text_of(msg.content)
            if text:
                system.append({"text": text})
            continue
        if role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(msg.content)
            if text:
                blocks.append({"text": text})
            for call in msg.tool_calls or ():
                fn = call.function or FunctionCall()
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call.id,
                            "name": fn.name,
                            "input": json_arguments(fn.arguments),
                        }
                    }
                )
            role_out = "assistant"
        elif role == "tool":
            blocks = [
                {
                    "toolResult": {
                        "toolUseId": msg.tool_call_id,
                        "content": [{"text": text_of(msg.content)}],
                    }
                }
            ]
            role_out = "user"
        elif role == "user":
            blocks, role_out = _user_blocks(msg.content), "user"
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param="messages")
        append_turn(turns, role_out, blocks)
    return system, turns


def _tool_choice(choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, NamedToolChoice) and choice.type == "function":
        return {"tool": {"name": choice.function.name if choice.function is not None else None}}
    raise InvalidRequest("unsupported tool_choice", param="tool_choice")


def build_body(ctx: ChatContext) -> dict[str, Any]:
    req = ctx.chat
    single_choice(req)
    system, turns = convert_messages(req.messages)
    out: dict[str, Any] = {"messages": turns}
    if system:
        out["system"] = system
    config: dict[str, Any] = {}
    limit = output_cap(ctx)
    if limit:
        config["maxTokens"] = limit
    if req.temperature is not None:
        config["temperature"] = min(float(req.temperature), 1.0)  # Converse takes 0..1
    if req.top_p is not None:
        config["topP"] = req.top_p
    stops = req.stop_sequences
    if stops:
        config["stopSequences"] = stops
    if config:
        out["inferenceConfig"] = config
    tools = function_tools(req)
    # Converse has no "none" tool choice: leaving the tools out is the documented equivalent
    if tools and req.tool_choice != "none":
        out["toolConfig"] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": f.name,
                        "description": f.description or f.name,
                        "inputSchema": {
                            "json": schema_of(f.parameters) or {"type": "object", "properties": {}}
                        },
                    }
                }
                for f in tools
            ],
            "toolChoice": _tool_choice(req.tool_choice),
        }
    return out


class SigV4Signer:
    """Signs a finished request (the transport calls it just before sending). Credentials come from
    the environment variables the deployment names, read at signing time so rotated session
    credentials are picked up."""

    def __init__(self, region: str, access_key_env: str, secret_key_env: str, token_env: str) -> None:
        self.region = region
        self._envs = (access_key_env, secret_key_env, token_env)

    def credentials(self) -> Credentials:
        access, secret, token = (variable(name) for name in self._envs)
        if not access or not secret:
            raise JanusError(f"Bedrock credentials missing: set {self._envs[0]} and {self._envs[1]}")
        return Credentials(access, secret, token or None)

    def __call__(self, req: UpstreamRequest) -> None:
        aws = AWSRequest(method=req.method, url=req.url, data=req.body, headers=dict(req.headers))
        SigV4Auth(self.credentials(), SERVICE, self.region).add_auth(aws)
        req.headers = dict(aws.headers.items())


# ----------------------------------------------------------------------------------- response side
class BedrockStream:
    def __init__(self) -> None:
        self._tools: dict[int, int] = {}  # contentBlockIndex -> tool call ordinal
        self._stopped = False
        self._done = False

    def feed(self, msg: StreamMessage) -> list[Event]:
        if self._done:
            return []
        if msg.is_exception:
            raise exception_from(msg.event, msg.data)
        kind = msg.event
        ev = json_decode(msg.data) if msg.data else {}
        if kind == "contentBlockDelta":
            delta = ev.get("delta") or {}
            if "text" in delta:
                return [TextDelta(delta["text"])] if delta["text"] else []
            if "toolUse" in delta:
                ordinal = self._tools.get(ev.get("contentBlockIndex", -1))
                frag = (delta["toolUse"] or {}).get("input") or ""
                return [ToolCallDelta(ordinal, arguments=frag)] if frag and ordinal is not None else []
            reasoning = delta.get("reasoningContent") or {}
            return [ReasoningDelta(reasoning["text"])] if reasoning.get("text") else []
        if kind == "contentBlockStart":
            tool = (ev.get("start") or {}).get("toolUse")
            if tool:
                ordinal = len(self._tools)
                self._tools[ev.get("contentBlockIndex", ordinal)] = ordinal
                return [ToolCallDelta(ordinal, id=tool.get("toolUseId"), name=tool.get("name"))]
            return []
        if kind == "messageStop":
            self._stopped = True
            reason = ev.get("stopReason") or "end_turn"
            return [Finish(FINISH.get(reason, "stop"))]
        if kind == "metadata":
            self._done = True
            return [UsageEvent(usage_from(ev.get("usage") or {}))]
        return []  # messageStart, contentBlockStop

    def finish(self) -> None:
        if not self._done:
            where = "after messageStop, before metadata" if self._stopped else "before messageStop"
            raise StreamInterrupted(f"the Bedrock stream ended {where}")


def _is_cohere(model: str) -> bool:
    # "cohere.embed-english-v3", or a cross-region profile such as "us.cohere.embed-v4:0"
    return model.startswith("cohere.") or ".cohere." in model


class BedrockAdapter:
    kind: ClassVar[str] = "bedrock"
    capabilities: ClassVar[Capabilities] = Capabilities(
        streaming=True, tools=True, vision=True, embeddings=True
    )
    max_batch: ClassVar[int] = 96  # Cohere Embed on Bedrock; Titan takes one text a call

    def batch_size(self, ctx: ChatContext) -> int:
        return self.max_batch if _is_cohere(ctx.upstream_model) else 1

    @staticmethod
    def _request(ctx: ChatContext, action: str, payload: dict[str, Any], stream: bool) -> UpstreamRequest:
        region = ctx.deployment.region or option(ctx, "region", DEFAULT_REGION)
        base = (ctx.deployment.base_url or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        # model ids hold ':' (``qwen.qwen3-32b-v1:0``) and ARNs hold '/': one path segment, encoded
        model = urllib.parse.quote(ctx.upstream_model, safe="")
        headers = {"content-type": "application/json"}
        req = UpstreamRequest(
            method="POST",
            url=f"{base}/model/{model}/{action}",
            headers=headers,
            body=json_encode(payload),
            framing="aws-eventstream" if stream else "json",
        )
        if ctx.api_key:  # a Bedrock API key is a bearer token and replaces signing
            headers["authorization"] = f"Bearer {ctx.api_key}"
        else:
            req.sign = SigV4Signer(
                region,
                option(ctx, "access_key_env", "AWS_ACCESS_KEY_ID"),
                option(ctx, "secret_key_env", "AWS_SECRET_ACCESS_KEY"),
                option(ctx, "session_token_env", "AWS_SESSION_TOKEN"),
            )
        return req

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest:
        action = "converse-stream" if ctx.stream else "converse"
        return self._request(ctx, action, build_body(ctx), ctx.stream)

    def embeddings_request(self, ctx: ChatContext, inputs: list[str]) -> UpstreamRequest:
        if _is_cohere(ctx.upstream_model):
            payload = embed_body(ctx, inputs)
            del payload["model"]  # the model is in the path
        else:
            if len(inputs) != 1:
                raise InvalidRequest("Titan embedding models take one input per call", param="input")
            payload = {"inputText": inputs[0], "normalize": True}
            dims = embedding_dimensions(ctx)
            if dims:
                payload["dimensions"] = dims
        return self._request(ctx, "invoke", payload, False)

    def parse_embeddings(self, body: bytes) -> Embeddings:
        doc = upstream_json(body)
        if "embedding" in doc:  # Titan
            return Embeddings(
                [doc["embedding"] or []], Usage(prompt_tokens=doc.get("inputTextTokenCount") or 0)
            )
        return Embeddings(embed_vectors(doc), Usage())  # Cohere on Bedrock reports no token count

    def parse_chat(self, body: bytes) -> Completion:
        doc = json_decode(body)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCallDelta] = []
        for block in ((doc.get("output") or {}).get("message") or {}).get("content") or []:
            if "text" in block:
                texts.append(block["text"] or "")
            elif "toolUse" in block:
                tool = block["toolUse"]
                calls.append(
                    ToolCallDelta(
                        len(calls),
                        id=tool.get("toolUseId"),
                        name=tool.get("name"),
                        arguments=json_text(tool.get("input")),
                    )
                )
            elif "reasoningContent" in block:
                reasoning = (block["reasoningContent"] or {}).get("reasoningText") or {}
                thoughts.append(reasoning.get("text") or "")
        reason = doc.get("stopReason") or "end_turn"
        usage = usage_from(doc.get("usage") or {})
        return buffered_answer(texts, calls, FINISH.get(reason, "stop"), usage, thoughts)

    def stream_parser(self, ctx: ChatContext) -> BedrockStream:
        return BedrockStream()

    def error_message(self, status: int, body: bytes) -> str:
        # AWS JSON errors say ``message`` or ``Message`` depending on the service front end
        return error_text(body, "Message" if b'"Message"' in body else "message")
