"""Response framing: SSE, NDJSON and AWS event-stream, fed in arbitrary pieces."""

from __future__ import annotations

import binascii
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.worker.adapters.base import StreamMessage
from services.worker.framing import EventStreamDecoder, NDJSONDecoder, SSEDecoder
from services.worker.transport import retry_after_of
from shared.errors import UpstreamError

SSE = (
    b": a comment, ignored\r\n"
    b"event: message_start\r\n"
    b"data: {\"a\": 1}\r\n"
    b"\r\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"data: line one\n"
    b"data:line two\n"
    b"\n"
    b"\n"  # a blank line with no data dispatches nothing
    b"data: [DONE]\n\n"
)
EXPECTED = [
    StreamMessage(b'{"a": 1}', "message_start"),
    StreamMessage(b"line one\nline two", ""),
    StreamMessage(b"[DONE]", ""),
]


def _feed(decoder: SSEDecoder | NDJSONDecoder | EventStreamDecoder, data: bytes,
          cuts: list[int]) -> list[StreamMessage]:
    out: list[StreamMessage] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += decoder.feed(data[last:cut])
        last = cut
    return out + decoder.end()


@given(st.lists(st.integers(min_value=0, max_value=len(SSE)), max_size=8))
def test_sse_split_anywhere(cuts: list[int]) -> None:
    assert _feed(SSEDecoder(), SSE, cuts) == EXPECTED


def test_sse_incomplete_last_line_is_dropped() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: {\"whole\": 1}\n\ndata: {\"cut") == [StreamMessage(b'{"whole": 1}')]
    assert d.end() == []


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=6))
def test_ndjson_split_anywhere(cuts: list[int]) -> None:
    data = b'{"a": 1}\n\n{"b": 2}\r\n{"done": true}'
    got = [m.data.strip() for m in _feed(NDJSONDecoder(), data, cuts)]
    assert got == [b'{"a": 1}', b'{"b": 2}', b'{"done": true}']


def _frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message (prelude, CRCs, string headers), as Bedrock sends it."""
    hdr = b""
    for k, v in headers.items():
        kb, vb = k.encode(), v.encode()
        hdr += struct.pack("!B", len(kb)) + kb + b"\x07" + struct.pack("!H", len(vb)) + vb
    total = 12 + len(hdr) + len(payload) + 4
    prelude = struct.pack("!II", total, len(hdr))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + hdr + payload
    return body + struct.pack("!I", binascii.crc32(body) & 0xFFFFFFFF)


def test_aws_eventstream_split_anywhere() -> None:
    data = (_frame({":message-type": "event", ":event-type": "contentBlockDelta"}, b'{"x": 1}')
            + _frame({":message-type": "exception", ":exception-type": "throttlingException"},
                     b'{"message": "slow down"}'))
    for cut in range(0, len(data), 7):
        got = _feed(EventStreamDecoder(), data, [cut])
        assert got == [StreamMessage(b'{"x": 1}', "contentBlockDelta"),
                       StreamMessage(b'{"message": "slow down"}', "throttlingException", True)]


def test_aws_eventstream_corrupt_frame() -> None:
    bad = bytearray(_frame({":message-type": "event", ":event-type": "x"}, b"{}"))
    bad[-1] ^= 0xFF
    with pytest.raises(UpstreamError):
        EventStreamDecoder().feed(bytes(bad))


def test_retry_after_forms() -> None:
    assert retry_after_of({"Retry-After": "3"}) == 3.0
    assert retry_after_of({"retry-after-ms": "1500", "Retry-After": "3"}) == 1.5
    assert retry_after_of({}) is None
    when = retry_after_of({"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
    assert when is not None and when > 1e9
    assert retry_after_of({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
