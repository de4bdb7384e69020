"""Closed-loop HTTP load for the benchmark: ``python -m tools.bench.load --url ... --concurrency 16``.

Runs as its own process so its CPU is never counted as Janus's. ``concurrency`` keep-alive
connections each send one request, wait for the whole answer, and send the next, for a fixed number
of requests or seconds, after an unrecorded warm-up. Per request it records the latency (request
written to last byte) and, for streams, the time to the first byte of the first SSE event that
carries content. A stream is complete only if it ends with ``data: [DONE]`` and carries no in-band
``data: {"error": ...}`` event.

The client is a bare ``asyncio.Protocol`` on uvloop: an HTTP library would cost more CPU than the
gateway under test on a small machine.

With ``--sync`` the process pauses after the warm-up and after the measurement, printing ``warm`` /
``measured`` and waiting for a line on stdin, so the parent can read every process's CPU counters at
exactly the edges of the measured window. The result is one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec

from tools.bench.upstream import run_loop

MODES = ("buffered", "stream", "embeddings")


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Event(msgspec.Struct):
    choices: list[_Choice] = []


_event_decoder = msgspec.json.Decoder(_Event)
_DONE = b"data: [DONE]"
_ERROR_EVENT = b'data: {"error"'


class Result(msgspec.Struct):
    """One phase's figures; times in milliseconds."""

    mode: str
    concurrency: int
    requests: int
    errors: int
    incomplete_streams: int
    seconds: float
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    statuses: dict[str, int] = {}
    first_error: str = ""
    client_cpu_ms: float = 0.0


def build_request(url: str, mode: str, model: str, token: str) -> tuple[str, int, bytes]:
    """(host, port, raw HTTP request bytes) for one mode; built once, sent as is every time."""
    parts = urlsplit(url.rstrip("/"))
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    base = parts.path
    if mode == "embeddings":
        path = base + "/embeddings"
        text = "The quick brown fox jumps over the lazy dog."
        body = msgspec.json.encode({"model": model, "input": [text]})
    else:
        path = base + "/chat/completions"
        payload: dict[str, object] = {
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "In one sentence: what does an API gateway do?"},
            ],
            "max_tokens": 64,
        }
        if mode == "stream":
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        body = msgspec.json.encode(payload)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n")
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    return host, port, head.encode() + b"\r\n" + body


@dataclass
class _Response:
    started: float
    stream: bool
    status: int = 0
    first_content: float = 0.0
    body: bytearray = field(default_factory=bytearray)
    scanned: int = 0  # how far the body has been searched for the first content event


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.resp: _Response | None = None
        self.done: asyncio.Future[_Response] | None = None
        self.state = 0  # 0 head, 1 fixed length body, 2 chunked body
        self.remaining = 0
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, raw: bytes, stream: bool) -> asyncio.Future[_Response]:
        assert self.transport is not None
        self.resp = _Response(time.perf_counter(), stream)
        self.done = asyncio.get_running_loop().create_future()
        self.state = 0
        self.transport.write(raw)
        return self.done

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection closed mid-response"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        resp = self.resp
        if resp is None:
            return
        if self.state == 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[:end + 4]
            resp.status = int(lines[0].split(b" ", 2)[1])
            length, chunked, self.close_after = 0, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    self.close_after = b"close" in value.lower()
            self.state, self.remaining = (2, 0) if chunked else (1, length)
        if self.state == 1:
            if len(self.buf) < self.remaining:
                return
            resp.body += self.buf[:self.remaining]
            del self.buf[:self.remaining]
            self._finish()
        else:
            self._chunks(resp)

    def _chunks(self, resp: _Response) -> None:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(buf[:eol]).split(b";")[0] or b"0", 16)
            if size == 0:
                if len(buf) < eol + 4:
                    return
                del buf[:eol + 4]
                self._finish()
                return
            if len(buf) < eol + 2 + size + 2:
                return
            resp.body += buf[eol + 2:eol + 2 + size]
            del buf[:eol + 2 + size + 2]
            if resp.stream and not resp.first_content:
                self._look_for_content(resp)

    def _look_for_content(self, resp: _Response) -> None:
        body = resp.body
        while True:
            end = body.find(b"\n\n", resp.scanned)
            if end < 0:
                return
            event = bytes(body[resp.scanned:end]).strip()
            resp.scanned = end + 2
            if not event.startswith(b"data: ") or event == _DONE:
                continue
            try:
                ev = _event_decoder.decode(event[6:])
            except msgspec.DecodeError:
                continue
            if any(c.delta.content for c in ev.choices):
                resp.first_content = time.perf_counter()
                return

    def _finish(self) -> None:
        assert self.resp is not None and self.done is not None
        resp, self.resp = self.resp, None
        if not self.done.done():
            self.done.set_result(resp)
        if self.close_after and self.transport is not None:
            self.transport.close()


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    incomplete: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str = ""


async def _connect(host: str, port: int) -> _Client:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_Client, host, port)
    return proto


async def _worker(host: str, port: int, raw: bytes, stream: bool, tally: _Tally | None,
                  more: object, request_timeout: float) -> None:
    client: _Client | None = None
    while more():  # type: ignore[operator]
        if client is None or client.transport is None:
            client = await _connect(host, port)
        try:
            resp = await asyncio.wait_for(client.send(raw, stream), request_timeout)
        except (ConnectionError, TimeoutError, OSError) as exc:
            if tally is not None:
                tally.errors += 1
                tally.statuses["conn"] = tally.statuses.get("conn", 0) + 1
                tally.first_error = tally.first_error or repr(exc)
            if client.transport is not None:
                client.transport.close()
            client = None
            continue
        if tally is None:
            continue
        end = time.perf_counter()
        key = str(resp.status)
        tally.statuses[key] = tally.statuses.get(key, 0) + 1
        if resp.status != 200:
            tally.errors += 1
            tally.first_error = tally.first_error or bytes(resp.body[:300]).decode(errors="replace")
            continue
        tally.latencies.append(end - resp.started)
        if stream:
            tail = bytes(resp.body[-64:]).rstrip()
            if not tail.endswith(_DONE) or _ERROR_EVENT in resp.body:
                tally.incomplete += 1
                tally.first_error = tally.first_error or bytes(resp.body[-300:]).decode(errors="replace")
            if resp.first_content:
                tally.ttfts.append(resp.first_content - resp.started)
    if client is not None and client.transport is not None:
        client.transport.close()


def _budget(requests: int, seconds: float) -> object:
    """A shared 'may I send another?' predicate: by count when ``requests`` > 0, else by time."""
    if requests > 0:
        left = [requests]

        def by_count() -> bool:
            left[0] -= 1
            return left[0] >= 0

        return by_count
    deadline = time.perf_counter() + seconds
    return lambda: time.perf_counter() < deadline


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return round(s[k] * 1000, 3)


async def _sync(tag: str, enabled: bool) -> None:
    if enabled:
        print(tag, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _cpu_ms() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime + ru.ru_stime) * 1000


async def run_load(url: str, mode: str, concurrency: int, *, model: str, token: str = "",
                   requests: int = 0, seconds: float = 5.0, warmup_requests: int = 0,
                   warmup_seconds: float = 0.0, request_timeout: float = 30.0, sync: bool = False) -> Result:
    host, port, raw = build_request(url, mode, model, token)
    stream = mode == "stream"

    async def workers(tally: _Tally | None, more: object) -> None:
        await asyncio.gather(*(_worker(host, port, raw, stream, tally, more, request_timeout)
                               for _ in range(concurrency)))

    if warmup_requests > 0 or warmup_seconds > 0:
        await workers(None, _budget(warmup_requests, warmup_seconds))
    await _sync("warm", sync)
    tally = _Tally()
    cpu0 = _cpu_ms()
    t0 = time.perf_counter()
    await workers(tally, _budget(requests, seconds))
    elapsed = time.perf_counter() - t0
    cpu = _cpu_ms() - cpu0
    await _sync("measured", sync)
    lat = tally.latencies
    n = len(lat) + tally.errors
    return Result(
        mode=mode, concurrency=concurrency, requests=n, errors=tally.errors,
        incomplete_streams=tally.incomplete, seconds=round(elapsed, 3),
        rps=round(len(lat) / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=percentile(lat, 50), p90_ms=percentile(lat, 90), p99_ms=percentile(lat, 99),
        max_ms=percentile(lat, 100), mean_ms=round(sum(lat) / len(lat) * 1000, 3) if lat else None,
        ttft_p50_ms=percentile(tally.ttfts, 50) if stream else None,
        ttft_p99_ms=percentile(tally.ttfts, 99) if stream else None,
        statuses=tally.statuses, first_error=tally.first_error,
        client_cpu_ms=round(cpu, 1),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="closed-loop HTTP load at fixed concurrency")
    ap.add_argument("--url", required=True, help="base URL ending in /v1")
    ap.add_argument("--mode", choices=MODES, default="buffered")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--model", default="bench-model")
    ap.add_argument("--token", default="", help="bearer token (or set BENCH_TOKEN)")
    ap.add_argument("--requests", type=int, default=0, help="measured requests (0: use --seconds)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup-requests", type=int, default=0)
    ap.add_argument("--warmup-seconds", type=float, default=0.0)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request bound, seconds")
    ap.add_argument("--sync", action="store_true", help="pause at the window edges (see module doc)")
    a = ap.parse_args(argv)
    token = a.token or os.environ.get("BENCH_TOKEN", "")
    result = run_loop(run_load(
        a.url, a.mode, a.concurrency, model=a.model, token=token, requests=a.requests,
        seconds=a.seconds, warmup_requests=a.warmup_requests, warmup_seconds=a.warmup_seconds,
        request_timeout=a.timeout, sync=a.sync,
    ))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
