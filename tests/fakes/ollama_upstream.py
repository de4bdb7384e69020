"""Fake Ollama: ``POST /api/chat`` (NDJSON unless ``"stream": false``), replaying
``tests/fixtures/ollama``, and ``POST /api/embed`` (``embeddings`` with ``prompt_eval_count``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["Drop", "Fail", "OllamaUpstream", "Stall"]


class OllamaUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("ollama", ["/api/chat"], embed_routes=["/api/embed"])

    def is_stream(self, request: web.Request, body: dict[str, Any]) -> bool:
        return body.get("stream", True) is not False  # Ollama's default is to stream

    def embed_answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"model": body["model"], "embeddings": self.vectors(texts, body.get("dimensions")),
                "total_duration": 14143917, "load_duration": 1019500,
                "prompt_eval_count": self.count_tokens(texts)}
