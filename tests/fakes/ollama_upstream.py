"""Fake Ollama: ``POST /api/chat`` (NDJSON unless ``"stream": false``) and ``POST /api/embed``,
replaying ``tests/fixtures/ollama``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["Drop", "Fail", "OllamaUpstream", "Stall"]


class OllamaUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("ollama", ["/api/chat"], static={"/api/embed": "embed"})

    def is_stream(self, request: web.Request, body: dict[str, Any]) -> bool:
        return body.get("stream", True) is not False  # Ollama's default is to stream
