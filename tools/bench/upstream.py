"""A fast fake OpenAI-compatible upstream for the benchmark: ``python -m tools.bench.upstream``.

It stands in for a paid provider, so its CPU time is not Janus's; but it shares the machine's cores
with Janus, so every cycle it spends is a cycle stolen from what we measure. Hence a bare
``asyncio.Protocol`` on uvloop with a minimal HTTP/1.1 keep-alive parser instead of a framework, and
responses assembled from pre-encoded pieces.

It speaks OpenAI's documented wire format:

- ``POST /v1/chat/completions`` buffered: one ``chat.completion`` object with real ``usage``;
- ``POST /v1/chat/completions`` with ``"stream": true``: ``chat.completion.chunk`` SSE events (role,
  N content deltas, a ``finish_reason`` chunk, a ``choices: []`` usage chunk when
  ``stream_options.include_usage`` is set) then ``data: [DONE]``, sent with chunked encoding;
- ``POST /v1/embeddings``: a ``list`` of ``embedding`` objects (``float`` or ``base64``).

When started with an API key it answers 401 in OpenAI's error shape to any other bearer token, so a
run proves the key travelled from the catalog's ``api_key_env`` to the upstream call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

import msgspec

WORDS = (b"Janus", b" routes", b" this", b" request", b" to", b" a", b" fast", b" fake",
         b" upstream", b" model", b" and", b" back", b" again", b" quickly", b" enough", b".")


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _ChatBody(msgspec.Struct):
    model: str = "bench-model"
    stream: bool = False
    stream_options: _StreamOptions | None = None


class _EmbedBody(msgspec.Struct):
    model: str = "bench-embed"
    input: str | list[str | int | list[int]] = ""  # text, texts, token ids or lists of them
    encoding_format: str = "float"


_chat_decoder = msgspec.json.Decoder(_ChatBody)
_embed_decoder = msgspec.json.Decoder(_EmbedBody)
_json = msgspec.json.encode


@dataclass(frozen=True)
class Shape:
    """What every answer looks like; fixed for a run so responses can be cached per model."""

    chunks: int = 8  # content deltas per stream (also the completion's token count)
    chunk_delay: float = 0.0  # seconds between stream events; 0 writes them back to back
    dimensions: int = 16  # embedding length
    api_key: str = ""  # when set, any other bearer token gets 401


def _status(code: int, reason: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
            % (code, reason, ctype, len(body))) + body


def _error(code: int, reason: bytes, message: str, typ: str, err_code: str | None) -> bytes:
    body = _json({"error": {"message": message, "type": typ, "param": None, "code": err_code}})
    return _status(code, reason, body)


NOT_FOUND = _error(404, b"Not Found", "Unknown path", "invalid_request_error", "unknown_url")
BAD_JSON = _error(400, b"Bad Request", "We could not parse the JSON body of your request.",
                  "invalid_request_error", None)
UNAUTHORIZED = _error(401, b"Unauthorized", "Incorrect API key provided.", "invalid_request_error",
                      "invalid_api_key")
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")


def _prompt_tokens(body: bytes) -> int:
    # A stand-in tokenizer: about four bytes a token is what OpenAI documents for English text.
    return max(1, len(body) // 4)


class Responses:
    """Pre-encoded answers, cached per (model, options): building JSON per request is the cost."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.created = int(time.time())
        self._buffered: dict[str, tuple[bytes, bytes]] = {}
        self._stream: dict[tuple[str, bool], tuple[list[bytes], bytes]] = {}

    def completion_text(self) -> str:
        return b"".join(WORDS[i % len(WORDS)] for i in range(self.shape.chunks)).decode()

    def buffered(self, model: str, prompt_tokens: int) -> bytes:
        parts = self._buffered.get(model)
        if parts is None:
            # split around the prompt token count, the one field that changes per request
            head = _json({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": self.created,
                "model": model, "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.completion_text(),
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
            })[:-1] + b',"usage":{"prompt_tokens":'
            tail = b',"completion_tokens":%d,"total_tokens":' % self.shape.chunks
            parts = self._buffered[model] = (head, tail)
        head, tail = parts
        body = b"%s%d%s%d}}" % (head, prompt_tokens, tail, prompt_tokens + self.shape.chunks)
        return _status(200, b"OK", body)

    def stream_events(self, model: str, include_usage: bool, prompt_tokens: int) -> list[bytes]:
        """Each element is one SSE event already framed as an HTTP chunk."""
        cached = self._stream.get((model, include_usage))
        if cached is None:
            base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": self.created,
                    "model": model, "system_fingerprint": "fp_bench"}
            if include_usage:
                base["usage"] = None  # OpenAI sends "usage": null on every chunk but the last

            def event(delta: dict[str, object], finish: str | None) -> bytes:
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                return b"data: " + _json({**base, "choices": [choice]}) + b"\n\n"

            events = [event({"role": "assistant", "content": "", "refusal": None}, None)]
            events += [event({"content": WORDS[i % len(WORDS)].decode()}, None)
                       for i in range(self.shape.chunks)]
            events.append(event({}, "stop"))
            usage_head = b""
            if include_usage:
                no_usage = {k: v for k, v in base.items() if k != "usage"}
                usage_head = b"data: " + _json({**no_usage, "choices": []})[:-1] + b","
            cached = self._stream[(model, include_usage)] = ([_chunked(e) for e in events], usage_head)
        events, usage_head = cached
        out = list(events)
        if usage_head:
            usage = (b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
                     % (prompt_tokens, self.shape.chunks, prompt_tokens + self.shape.chunks))
            out.append(_chunked(usage_head + usage))
        out.append(_chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return out

    def embeddings(self, req: _EmbedBody, prompt_tokens: int) -> bytes:
        # one vector per string or per token-id list; a flat token-id list is a single input
        many = isinstance(req.input, list) and req.input and not isinstance(req.input[0], int)
        inputs = req.input if many else [req.input]
        dims = self.shape.dimensions
        vector = [round(0.001 * (i + 1), 6) for i in range(dims)]
        value: object = vector
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        body = _json({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": value} for i in range(len(inputs))],
            "model": req.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        })
        return _status(200, b"OK", body)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Conn(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order (pipelining is tolerated)."""

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed stream is being written; later requests wait in ``buf``

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    def _drain(self) -> None:
        while self.transport is not None and not self.busy:
            req = _parse(self.buf)
            if req is None:
                return
            if not isinstance(req, tuple):
                self.transport.write(_error(400, b"Bad Request", "malformed HTTP request",
                                            "invalid_request_error", None))
                self.transport.close()
                return
            self.server.requests += 1
            self._answer(*req)

    def _answer(self, path: bytes, auth: bytes, body: bytes) -> None:
        assert self.transport is not None
        shape = self.server.shape
        if shape.api_key and auth != self.server.expected_auth:
            self.transport.write(UNAUTHORIZED)
            return
        resp = self.server.responses
        if path == b"/v1/chat/completions":
            try:
                chat = _chat_decoder.decode(body)
            except msgspec.DecodeError:
                self.transport.write(BAD_JSON)
                return
            tokens = _prompt_tokens(body)
            if not chat.stream:
                self.transport.write(resp.buffered(chat.model, tokens))
                return
            include = bool(chat.stream_options and chat.stream_options.include_usage)
            events = resp.stream_events(chat.model, include, tokens)
            if shape.chunk_delay > 0:
                self.busy = True
                asyncio.get_running_loop().create_task(self._paced(events, shape.chunk_delay))
                return
            # Back to back: the head and first event go out alone so a client's time to first
            # token is measured on a real, separate write; the rest follows in one write.
            self.transport.write(STREAM_HEAD + events[0] + events[1])
            self.transport.write(b"".join(events[2:]))
        elif path == b"/v1/embeddings":
            try:
                emb = _embed_decoder.decode(body)
            except msgspec.DecodeError:
                self.transport.write(BAD_JSON)
                return
            self.transport.write(resp.embeddings(emb, _prompt_tokens(body)))
        else:
            self.transport.write(NOT_FOUND)

    async def _paced(self, events: list[bytes], delay: float) -> None:
        assert self.transport is not None
        self.transport.write(STREAM_HEAD)
        for ev in events:
            if self.transport.is_closing():
                return
            self.transport.write(ev)
            await asyncio.sleep(delay)
        self.busy = False
        self._drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _parse(buf: bytearray) -> tuple[bytes, bytes, bytes] | bool | None:
    """Take one request off ``buf``: (path, authorization, body); None if incomplete; False if bad."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None if len(buf) < 65536 else False
    head = bytes(buf[:end])
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        return False
    length = 0
    chunked = False
    auth = b""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return False
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"authorization":
            auth = value.strip()
    start = end + 4
    if chunked:
        parsed = _dechunk(buf, start)
        if parsed is None:
            return None
        body, stop = parsed
    else:
        if len(buf) < start + length:
            return None
        body, stop = bytes(buf[start:start + length]), start + length
    del buf[:stop]
    return parts[1].split(b"?", 1)[0], auth, body


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", eol)
            if trailer_end == eol:  # no trailers: the size line's CRLF is followed by CRLF
                return bytes(out), eol + 4
            return (bytes(out), trailer_end + 4) if trailer_end >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        out += buf[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


class UpstreamServer:
    """The server object: usable in-process (tests) or as its own process (the benchmark)."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.responses = Responses(shape)
        self.expected_auth = b"Bearer " + shape.api_key.encode()
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), host, port, backlog=1024)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _serve(shape: Shape, host: str, port: int) -> None:
    srv = UpstreamServer(shape)
    bound = await srv.start(host, port)
    # the parent reads this one line to learn the port
    print(f"listening {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await srv.close()


def run_loop(coro: object) -> object:
    """Run on uvloop when it is installed: it is markedly cheaper per request than asyncio's loop."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fast fake OpenAI-compatible upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=8, help="content deltas per stream")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0)
    ap.add_argument("--dimensions", type=int, default=16)
    ap.add_argument("--api-key-env", default="", help="name of the variable holding the expected key")
    a = ap.parse_args(argv)
    key = os.environ.get(a.api_key_env, "") if a.api_key_env else ""
    shape = Shape(chunks=a.chunks, chunk_delay=a.chunk_delay_ms / 1000, dimensions=a.dimensions, api_key=key)
    try:
        run_loop(_serve(shape, a.host, a.port))
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(0)


if __name__ == "__main__":
    main()
