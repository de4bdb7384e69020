"""Fake OpenAI-compatible API that replays ``tests/fixtures/openai_compat``: ``POST
/v1/chat/completions`` (JSON, or SSE when ``"stream": true``) and ``POST /v1/embeddings`` (float
vectors and ``usage``), with the same scripted faults as the other providers' fakes. The hand-built
``openai_upstream`` fake stays the one for benchmarks and OpenAI-specific edge cases."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["Drop", "Fail", "OpenAICompatUpstream", "Stall"]


class OpenAICompatUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("openai_compat", ["/v1/chat/completions"], embed_routes=["/v1/embeddings"])

    def embed_answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = self.vectors(texts, body.get("dimensions"))
        n = self.count_tokens(texts)
        return {
            "object": "list",
            "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }
