"""Fake Gemini API: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``, replaying ``tests/fixtures/gemini``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["Drop", "Fail", "GeminiUpstream", "Stall"]


class GeminiUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("gemini", ["/v1beta/models/{call}"])

    def is_stream(self, request: web.Request, body: dict[str, Any]) -> bool:
        # the method is part of the path; Gemini has no "stream" body field
        return request.match_info["call"].endswith(":streamGenerateContent")
