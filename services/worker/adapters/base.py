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

from typing import Any, ClassVar, Literal, Protocol

import msgspec

from shared.catalog import Deployment, Provider
from shared.contract import Usage

Framing = Literal["json", "sse", "ndjson", "aws-eventstream"]


class Capabilities(msgspec.Struct, frozen=True):
    streaming: bool = True
    tools: bool = False
    json_mode: bool = False
    vision: bool = False
    embeddings: bool = False


class UpstreamRequest(msgspec.Struct):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    framing: Framing  # how the *response* is framed
    # Bedrock signs the finished request; the transport calls ``sign`` (when set) just before sending
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


class Finish(msgspec.Struct):
    reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


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
    body: dict[str, Any]  # the client's OpenAI request, decoded
    stream: bool
    api_key: str | None  # resolved by the worker (env var or the user's own key); never logged


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


class EmbeddingsAdapter(Adapter, Protocol):
    max_batch: ClassVar[int]

    def embeddings_request(self, ctx: ChatContext, inputs: list[str]) -> UpstreamRequest: ...

    def parse_embeddings(self, body: bytes) -> Embeddings: ...
