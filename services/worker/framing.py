"""Response framing: a streamed body's bytes -> ``StreamMessage``s for an adapter's parser.

Three incremental decoders with one shape (``feed(bytes) -> list``, ``end() -> list``):

- SSE (the WHATWG event-stream format): ``event:`` / ``data:`` fields, blank-line separated, several
  ``data:`` lines joined with "\\n", ``:`` comments and ``id:`` / ``retry:`` ignored;
- NDJSON: one JSON document per line;
- AWS event-stream (Bedrock): binary frames decoded by botocore, typed by their headers.

Only complete lines are ever handed on: a line cut short by a dropped connection is discarded, and
the parser's ``finish`` then reports the stream as interrupted.
"""

from __future__ import annotations

from botocore.eventstream import EventStreamBuffer, ParserError

from services.worker.adapters.base import Framing, StreamMessage
from shared.errors import UpstreamError


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_event")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[StreamMessage]:
        buf = self._buf + chunk if self._buf else chunk
        out: list[StreamMessage] = []
        start = 0
        find = buf.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            start = nl + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                self._dispatch(out)
            elif line[0] == 58:  # ":" starts a comment (keep-alives)
                continue
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
        self._buf = buf[start:]
        return out

    def _dispatch(self, out: list[StreamMessage]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            out.append(StreamMessage(data, self._event))
        self._data = []
        self._event = ""

    def end(self) -> list[StreamMessage]:
        # an event whose lines all arrived but whose closing blank line did not is still whole
        out: list[StreamMessage] = []
        self._dispatch(out)
        self._buf = b""
        return out


class NDJSONDecoder:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[StreamMessage]:
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return [StreamMessage(line) for line in lines if line.strip()]

    def end(self) -> list[StreamMessage]:
        # NDJSON has no closing marker of its own; a last line without "\n" may be complete JSON,
        # and the parser decides whether the provider's terminal document arrived
        rest, self._buf = self._buf, b""
        return [StreamMessage(rest)] if rest.strip() else []


class EventStreamDecoder:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = EventStreamBuffer()

    def feed(self, chunk: bytes) -> list[StreamMessage]:
        self._buf.add_data(chunk)
        out: list[StreamMessage] = []
        try:
            for msg in self._buf:
                h = msg.headers
                mtype = h.get(":message-type", "event")
                if mtype == "event":
                    out.append(StreamMessage(msg.payload, str(h.get(":event-type", ""))))
                elif mtype == "exception":
                    out.append(StreamMessage(msg.payload, str(h.get(":exception-type", "")), True))
                else:  # "error": the service's own failure, named by :error-code
                    out.append(StreamMessage(msg.payload or str(h.get(":error-message", "")).encode(),
                                             str(h.get(":error-code", "error")), True))
        except ParserError as exc:
            raise UpstreamError(f"malformed event-stream frame from the provider: {exc}") from None
        return out

    def end(self) -> list[StreamMessage]:
        return []


Decoder = SSEDecoder | NDJSONDecoder | EventStreamDecoder


def decoder_for(framing: Framing) -> Decoder:
    if framing == "sse":
        return SSEDecoder()
    if framing == "ndjson":
        return NDJSONDecoder()
    if framing == "aws-eventstream":
        return EventStreamDecoder()
    raise ValueError(f"framing {framing!r} is not a stream")
