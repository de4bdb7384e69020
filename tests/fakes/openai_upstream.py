"""A fake OpenAI-compatible upstream: aiohttp on 127.0.0.1, a port of its own, OpenAI's wire format.

It stands in for a paid provider in tests and benchmarks:

- ``POST /v1/chat/completions``: buffered ``chat.completion``, or SSE ``chat.completion.chunk``s
  (role chunk, content or tool-call fragments, finish chunk, the ``choices: []`` usage chunk when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``);
- ``POST /v1/embeddings``: float vectors (or base64 when asked), of texts or of token-id arrays
  (a token-id input counts its ids as its tokens, as OpenAI does);
- errors as OpenAI sends them: ``{"error": {"message", "type", "param", "code"}}`` with a chosen
  status and ``Retry-After``;
- scripted faults: fail the next N requests, cut a stream short without ``[DONE]`` (cleanly or by
  resetting the connection), stall before the first byte.

Every request is recorded (``requests``: path, headers, decoded body) so tests can check what the
worker sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 7,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0},
}
WORDS = ["Hello", " from", " the", " fake", " upstream", "."]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Faults:
    fail_times: int = 0  # the next N requests get the error below
    pass_first: int = 0  # requests answered normally before those failures begin
    status: int = 500
    message: str = "the server had an error"
    error_type: str = "server_error"
    retry_after: str | None = None
    drop_after: int | None = None  # stream: content chunks sent before the stream is cut
    drop_hard: bool = False  # cut by resetting the connection instead of a clean end
    stall_seconds: float = 0.0  # before the first byte
    chunk_delay: float = 0.0  # between stream chunks
    in_band_error: bool = False  # stream: an error object as a data event instead of content
    # stream: the role chunk and the first N content chunks in one write (as a provider's events
    # arrive together), the rest only once ``release`` is set
    burst: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class OpenAIUpstream:
    faults: Faults = field(default_factory=Faults)
    requests: list[Recorded] = field(default_factory=list)
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> OpenAIUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------------------------- helpers
    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        return body

    async def _fault(self) -> web.Response | None:
        f = self.faults
        if f.stall_seconds:
            await asyncio.sleep(f.stall_seconds)
        if f.fail_times <= 0:
            return None
        if f.pass_first > 0:
            f.pass_first -= 1
            return None
        f.fail_times -= 1
        headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
        body = {"error": {"message": f.message, "type": f.error_type, "param": None, "code": None}}
        return web.json_response(body, status=f.status, headers=headers)

    # ---------------------------------------------------------------------------------- handlers
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        failure = await self._fault()
        if failure is not None:
            return failure
        model = body.get("model", "")
        tools = body.get("tools") or []
        if body.get("stream"):
            return await self._stream(request, body, model, tools)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(WORDS),
            "refusal": None,
            "annotations": [],
        }
        finish = "stop"
        if tools:
            name = tools[0]["function"]["name"]
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": "call_up_1",
                    "type": "function",
                    "function": {"name": name, "arguments": '{"city": "Paris"}'},
                }
            ]
            finish = "tool_calls"
        return web.json_response(
            {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": 1700000000,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": USAGE,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, tools: list[Any]
    ) -> web.StreamResponse:
        f = self.faults
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        together: list[bytes] = []  # events held for one write (``burst``)

        async def send(obj: Any) -> None:
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            if f.burst and len(together) <= f.burst:
                together.append(data)
                if len(together) > f.burst:
                    await resp.write(b"".join(together))
                    await f.release.wait()
                return
            if f.chunk_delay:
                await asyncio.sleep(f.chunk_delay)
            await resp.write(data)

        await resp.write(b": keep-alive comment\n\n")
        await send(chunk({"role": "assistant", "content": "", "refusal": None}))
        if f.in_band_error:
            await send({"error": {"message": "overloaded", "type": "server_error", "code": 503}})
            return resp
        if tools:
            name = tools[0]["function"]["name"]
            parts = [
                {
                    "index": 0,
                    "id": "call_up_1",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                },
                {"index": 0, "function": {"arguments": '{"city": '}},
                {"index": 0, "function": {"arguments": '"Paris"}'}},
            ]
            for p in parts:
                await send(chunk({"tool_calls": [p]}))
            finish = "tool_calls"
        else:
            for i, w in enumerate(WORDS):
                if f.drop_after is not None and i >= f.drop_after:
                    if f.drop_hard and request.transport is not None:
                        request.transport.abort()
                    return resp
                await send(chunk({"content": w}))
            finish = "stop"
        await send(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(
                {
                    "id": "chatcmpl-upstream",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [],
                    "usage": USAGE,
                }
            )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        failure = await self._fault()
        if failure is not None:
            return failure
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or 8)
        data = []
        if inputs and all(isinstance(t, int) for t in inputs):
            inputs = [inputs]  # one token-id array
        for i, item in enumerate(inputs):
            vec = vector_for(token_text(item), dims)
            emb: Any = (
                base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()
                if body.get("encoding_format") == "base64"
                else vec
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(t) if isinstance(t, list) else len(t.split()) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }
        )


def token_text(item: str | list[int]) -> str:
    """The text the fake embeds for one input: itself, or its token ids spelt out."""
    return item if isinstance(item, str) else " ".join(map(str, item))


def vector_for(text: str, dims: int) -> list[float]:
    """The fake's deterministic embedding of ``text`` (float32-exact, so round-trips compare equal)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dims).astype("<f4")
    return [float(x) for x in v]
