"""The adapter contract: pure translators between OpenAI's API and one provider's wire format.

An adapter never touches a socket. It turns the client's OpenAI request into an ``UpstreamRequest``
(method, URL, headers, body, how the response is framed), and turns the provider's bytes back into
canonical ``Event``s. The transport (``services/worker/transport.py``) owns sockets, timeouts, SSE /
NDJSON / AWS event-stream splitting and exception mapping; the encoder (``services/worker/openai.py``)
turns canonical events into OpenAI chunks and responses. So a provider is: one request builder, one
buffered-response parser, one stream-event parser, and a capability declaration. No stubs: what an
adapter cannot do it does not declare, and the worker refuses it before calling out.

    OpenAI request --adapter.chat_request--> UpstreamRequest --transport--> bytes
    bytes --transport framing--> StreamMessage --parser.feed--> [Event...] --encoder--> OpenAI chunks
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal, Protocol, TypeVar, runtime_checkable

import msgspec

from shared.catalog import Deployment, Provider
from shared.contract import Usage
from shared.errors import InvalidRequest, UpstreamError
from shared.openai_request import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedInput,
    FunctionDef,
    Part,
    Tool,
)

Framing = Literal["json", "sse", "ndjson", "aws-eventstream"]
K = TypeVar("K", ChatRequest, EmbeddingsRequest)


class Capabilities(msgspec.Struct, frozen=True):
    streaming: bool = True
    tools: bool = False
    json_mode: bool = False
    vision: bool = False
    embeddings: bool = False
    # embeddings of token ids (OpenAI's array-of-integers inputs, which LangChain sends by default)
    token_input: bool = False
    # answers in process with no upstream HTTP: a ``LocalAdapter``, which the transport never sees
    local: bool = False


class UpstreamRequest(msgspec.Struct):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    framing: Framing  # how the *response* is framed
    # Bedrock signs the finished request; the transport calls ``sign(request)`` (when set) just before
    # sending, with this UpstreamRequest: it updates ``headers`` in place (or returns a new headers dict)
    sign: Any = None


class StreamMessage(msgspec.Struct):
    """One framed unit of a streamed response, as the transport splits it.

    SSE: ``event`` (may be empty) and ``data``; NDJSON: ``data`` is one line; AWS event-stream:
    ``event`` is the ``:event-type`` header (or ``:exception-type`` with ``is_exception``) and
    ``data`` the payload.
    """

    data: bytes
    event: str = ""
    is_exception: bool = False


# ----------------------------------------------------------------------------- canonical events
class TextDelta(msgspec.Struct):
    text: str


class ReasoningDelta(msgspec.Struct):
    text: str


class ToolCallDelta(msgspec.Struct):
    """A tool call starts with ``id`` and ``name`` set; later fragments carry only ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# OpenAI's finish reasons; every adapter maps its provider's onto these
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class Finish(msgspec.Struct):
    reason: FinishReason


class UsageEvent(msgspec.Struct):
    """Usage as the provider reported it so far. Providers that report in pieces (Anthropic's input
    in ``message_start``, output in ``message_delta``) emit several; the encoder keeps, per field, the
    latest non-zero value, so nothing is added twice."""

    usage: Usage


class Completion(msgspec.Struct):
    """A whole buffered answer."""

    content: str | None
    tool_calls: list[ToolCallDelta]
    finish_reason: str
    usage: Usage
    reasoning: str | None = None


class Embeddings(msgspec.Struct):
    vectors: list[list[float]]
    usage: Usage


Event = TextDelta | ReasoningDelta | ToolCallDelta | Finish | UsageEvent


class ChatContext(msgspec.Struct):
    """What an adapter needs to build one upstream call."""

    provider: Provider
    deployment: Deployment
    upstream_model: str
    # the client's OpenAI request, typed, after the worker's parameter policy (``policy.apply``)
    request: ChatRequest | EmbeddingsRequest
    stream: bool
    api_key: str | None  # resolved by the worker (env var or the user's own key); never logged
    # the client's JSON as sent (the request's source), for a provider that is passed the
    # parameters Janus does not model
    raw: bytes
    request_id: str = ""
    dimensions: int | None = None  # embeddings: the catalog model's vector size
    # the output cap per choice the gateway held for (None: the body's own cap stands)
    max_output_tokens: int | None = None
    prompt_tokens: int = 0  # the prompt estimate (``shared.prompt``), for usage nobody reported

    @property
    def chat(self) -> ChatRequest:
        return _narrow(self.request, ChatRequest)

    @property
    def embeddings(self) -> EmbeddingsRequest:
        return _narrow(self.request, EmbeddingsRequest)


def _narrow(req: ChatRequest | EmbeddingsRequest, kind: type[K]) -> K:
    if not isinstance(req, kind):
        raise TypeError(f"an adapter expecting a {kind.__name__} was handed a {type(req).__name__}")
    return req


class StreamParser(Protocol):
    def feed(self, msg: StreamMessage) -> list[Event]:
        """Translate one framed message; raise a ``JanusError`` for an in-band provider error."""
        ...

    def finish(self) -> None:
        """Called when the upstream closes. Raise ``StreamInterrupted`` unless the provider's own
        terminal event was seen: a stream cut short must never look complete."""
        ...


class Adapter(Protocol):
    kind: ClassVar[str]  # the catalog's provider ``kind``
    capabilities: ClassVar[Capabilities]

    def chat_request(self, ctx: ChatContext) -> UpstreamRequest: ...

    def parse_chat(self, body: bytes) -> Completion: ...

    def stream_parser(self, ctx: ChatContext) -> StreamParser: ...

    def error_message(self, status: int, body: bytes) -> str:
        """The human part of a provider's error body, for the classified error."""
        ...


@runtime_checkable
class ReadsErrorCause(Protocol):
    """An adapter whose provider answers some failures with a status that blames the wrong party
    (Gemini: 400 for a key it does not accept): it names the status the failure really means, so
    the error is classified once, by that status."""

    def error_status(self, status: int, body: bytes) -> int: ...


class EmbeddingsAdapter(Adapter, Protocol):
    """Declared with ``Capabilities(embeddings=True)``. The worker splits the inputs into batches of
    at most ``max_batch`` (or ``batch_size(ctx)`` when the limit depends on the model), calls the
    provider once per batch and joins the vectors in order; the adapter always asks for floats (the
    encoder makes base64) and reports the provider's token count, or 0 to have the inputs counted."""

    max_batch: ClassVar[int]

    def embeddings_request(self, ctx: ChatContext, inputs: list[EmbedInput]) -> UpstreamRequest: ...

    def parse_embeddings(self, body: bytes) -> Embeddings: ...


@runtime_checkable
class BatchesPerModel(Protocol):
    """An embeddings adapter whose batch limit depends on the model (Bedrock: Titan takes one text)."""

    def batch_size(self, ctx: ChatContext) -> int: ...


@runtime_checkable
class PassesOpenAIThrough(Protocol):
    """An adapter whose provider answers in OpenAI's own format: the buffered answer is decoded as
    OpenAI's and passed on with only the id, model and usage rewritten, so fields Janus does not
    model (logprobs, annotations) survive."""

    def parse_chat_openai(self, body: bytes) -> Any: ...


_PASSES_THROUGH: dict[type, bool] = {}


def passes_openai_through(adapter: object) -> bool:
    """``isinstance(adapter, PassesOpenAIThrough)``, decided once per adapter class: a runtime-checkable
    Protocol's check walks its members every time (about 2% of the worker's CPU per request)."""
    cls = type(adapter)
    known = _PASSES_THROUGH.get(cls)
    if known is None:
        known = _PASSES_THROUGH[cls] = isinstance(adapter, PassesOpenAIThrough)
    return known


def batch_limit(adapter: EmbeddingsAdapter, ctx: ChatContext) -> int:
    """How many inputs one upstream embeddings call may carry for this model."""
    limit = adapter.batch_size(ctx) if isinstance(adapter, BatchesPerModel) else adapter.max_batch
    return max(1, int(limit))


def embedding_dimensions(ctx: ChatContext) -> int | None:
    """The client's ``dimensions``, for providers that can shorten their vectors."""
    return ctx.embeddings.dimensions


# ------------------------------------------------------------------------- helpers for translators
# Reading the client's OpenAI request is the same chore in every translator; it lives here once.
_json_decoder = msgspec.json.Decoder()


_json_encoder = msgspec.json.Encoder()
# every translator's JSON codec, built once
json_decode = _json_decoder.decode
json_encode = _json_encoder.encode


def json_text(value: Any) -> str:
    """Structured tool input (Anthropic, Gemini, Bedrock, Ollama) as the JSON string OpenAI's
    ``arguments`` carries."""
    return _json_encoder.encode(value if value is not None else {}).decode()


def buffered_answer(
    texts: list[str], calls: list[ToolCallDelta], finish_reason: str, usage: Usage, thoughts: list[str]
) -> Completion:
    """A buffered answer from its collected parts; ``content`` is null only for an answer made of
    tool calls alone, as OpenAI sends it."""
    return Completion(
        content="".join(texts) if texts or not calls else None,
        tool_calls=calls,
        finish_reason=finish_reason,
        usage=usage,
        reasoning="".join(thoughts) or None,
    )


def upstream_json(body: bytes) -> Any:
    """A provider's JSON response body; a malformed one is the provider's fault (502), not ours."""
    try:
        return _json_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"the provider sent a malformed response: {exc}") from None


def output_cap(ctx: ChatContext) -> int | None:
    """The output cap to send: the one the gateway held for, which bounds what the call can cost.
    Every adapter writes it as its provider's own cap parameter."""
    return ctx.max_output_tokens or ctx.chat.output_cap


def text_of(content: str | list[Part] | None) -> str:
    """The text of a message's ``content``: a string, or the text parts of a parts list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text or "" for p in content if p.type == "text")


def schema_of(raw: msgspec.Raw) -> msgspec.Raw | None:
    """A JSON Schema the client gave, as written; None for none, null or ``{}``, which providers
    that require a schema are sent their own empty one instead."""
    if not raw or (len(raw) < 16 and not _json_decoder.decode(raw)):
        return None
    return raw


SAMPLING = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")


def sampling(req: ChatRequest, names: dict[str, str]) -> dict[str, Any]:
    """The sampling parameters the client set, under the provider's names (``names``: OpenAI's
    name -> the provider's; one it does not name is not sent), each number as the client wrote it."""
    return {names[k]: v for k in SAMPLING if k in names and (v := getattr(req, k)) is not None}


def function_tools(req: ChatRequest) -> list[FunctionDef]:
    """The function tools offered (the only kind the translating providers take)."""
    return [t.function for t in req.tools or () if t.type == "function" and t.function is not None]


def openai_tool(tool: Tool) -> dict[str, Any]:
    """A tool in OpenAI's own shape, for providers that take it so (Ollama, Cohere): what the client
    declared, nothing added."""
    fn = tool.function
    out: dict[str, Any] = {"type": tool.type}
    if fn is not None:
        spec: dict[str, Any] = {"name": fn.name}
        if fn.description is not None:
            spec["description"] = fn.description
        if fn.parameters:
            spec["parameters"] = fn.parameters
        if fn.strict is not None:
            spec["strict"] = fn.strict
        out["function"] = spec
    return out


def parse_data_url(url: str) -> tuple[str, str] | None:
    """``data:image/png;base64,AAAA`` -> ("image/png", "AAAA"); anything else -> None."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head[: -len(";base64")] or "application/octet-stream", data


def json_arguments(arguments: str) -> Any:
    """A tool call's ``arguments`` (a JSON string in OpenAI's format) as an object for providers
    that take structured input."""
    if not arguments.strip():
        return {}
    try:
        return _json_decoder.decode(arguments)
    except msgspec.DecodeError:
        raise InvalidRequest("tool call arguments are not valid JSON", param="messages") from None


def option(ctx: ChatContext, name: str, default: str = "") -> str:
    """A setting from the deployment's ``options``, else the provider's."""
    return ctx.deployment.options.get(name) or ctx.provider.options.get(name) or default


def error_text(body: bytes, *path: str) -> str:
    """The message at ``path`` in a JSON error body, else the body's first 500 characters: a
    provider's gateway can answer with HTML or plain text instead of its documented JSON."""
    try:
        node: Any = _json_decoder.decode(body)
        for key in path:
            node = node[key]
        if isinstance(node, str) and node:
            return node
    except (msgspec.DecodeError, KeyError, TypeError, IndexError):
        pass
    return body[:500].decode("utf-8", "replace").strip() or "upstream error"


def single_choice(req: ChatRequest) -> None:
    """Providers without ``n`` generate one answer; say so rather than silently returning one."""
    if req.n not in (None, 1):
        raise InvalidRequest("n > 1 is not supported by this model's provider", param="n")


def unsupported_part(kind: Any) -> InvalidRequest:
    return InvalidRequest(f"content part type {kind!r} is not supported by this model", param="messages")


class LocalAdapter(Protocol):
    """An adapter that answers in process, with no upstream HTTP (the built-in ``fake`` provider).

    It declares ``Capabilities(local=True)``; the worker then takes events straight from it instead
    of going through the transport; everything after the events (encoding, usage, frames) is shared.
    """

    kind: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    max_batch: ClassVar[int]

    def stream_events(self, ctx: ChatContext) -> AsyncIterator[Event]:
        """The answer as canonical events, ending with ``Finish`` and a ``UsageEvent``."""
        ...

    async def embed(self, ctx: ChatContext, inputs: list[EmbedInput]) -> Embeddings: ...


def append_turn(turns: list[dict[str, Any]], role: str, blocks: list[Any], key: str = "content") -> None:
    """Add a turn for providers that require alternating roles (Anthropic, Gemini, Bedrock): a turn
    with the previous turn's role is merged into it, e.g. parallel tool results into one user turn."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(blocks)
    else:
        turns.append({"role": role, key: blocks})
