"""A fake OpenAI-compatible upstream that generates as much as a request allows: the budget attacks'
provider.

``POST /v1/chat/completions`` answers every one of ``n`` choices with exactly the request's output
cap (``max_completion_tokens``, else ``max_tokens``) in tokens, or ``maximum`` tokens when the
request sets none, as a real model asked for a long answer does; ``finish_reason`` is ``length``.
Buffered or SSE (``stream_options.include_usage`` adds the usage chunk), in OpenAI's wire format.
Usage is reported as OpenAI counts it: completion tokens are what was generated; prompt tokens are
the text at four characters a token, plus each image at the largest count OpenAI's tiling gives
(1,445 tokens at ``high``/``auto``, 85 at ``low``), so a test sees what a real provider would bill.

Every request is recorded (``requests``) so a test can check the cap the worker sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.openai_upstream import OpenAIUpstream

TOKEN = "go "  # one token of output
PER_CHUNK = 512  # tokens in one SSE chunk: the count matters here, not the chunking
IMAGE_TOKENS = {"low": 85, "high": 1445, "auto": 1445}


def prompt_tokens(body: dict[str, Any]) -> int:
    chars, images = 0, 0
    for m in body.get("messages") or ():
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        for part in content if isinstance(content, list) else ():
            if part.get("type") == "text":
                chars += len(part.get("text") or "")
            elif part.get("type") == "image_url":
                images += IMAGE_TOKENS.get((part.get("image_url") or {}).get("detail") or "auto", 1445)
    for tool in body.get("tools") or ():
        chars += len(json.dumps(tool))
    return -(-chars // 4) + images + 3 * len(body.get("messages") or ())


@dataclass
class GreedyUpstream(OpenAIUpstream):
    """``OpenAIUpstream`` (its server, its ``requests`` record) with a greedy chat handler."""

    maximum: int = 100_000  # what it generates for a request that sets no cap (OpenAI's is larger)

    def cap(self, body: dict[str, Any]) -> int:
        return int(body.get("max_completion_tokens") or body.get("max_tokens") or self.maximum)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        cap, n = self.cap(body), int(body.get("n") or 1)
        usage = {"prompt_tokens": prompt_tokens(body), "completion_tokens": cap * n}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        head = {"id": "chatcmpl-greedy", "created": 1700000000, "model": body.get("model", "")}
        if not body.get("stream"):
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": TOKEN * cap, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "length",
                }
                for i in range(n)
            ]
            return web.json_response(
                {**head, "object": "chat.completion", "choices": choices, "usage": usage}
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(choices: list[Any], **extra: Any) -> None:
            doc = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
            await resp.write(b"data: " + json.dumps(doc).encode() + b"\n\n")

        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for at in range(0, cap, PER_CHUNK):
            text = TOKEN * min(PER_CHUNK, cap - at)
            await send([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "finish_reason": "length"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        return resp
