"""Fake Gemini API: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse``
(replaying ``tests/fixtures/gemini``) and ``:batchEmbedContents`` (a vector per request, in order,
no token count, as the API answers)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["Drop", "Fail", "GeminiUpstream", "Stall"]

BATCH_LIMIT = 100


class GeminiUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("gemini", ["/v1beta/models/{call:[^:]+:(?:generateContent|streamGenerateContent)}"],
                         embed_routes=["/v1beta/models/{model}:batchEmbedContents"])

    def is_stream(self, request: web.Request, body: dict[str, Any]) -> bool:
        # the method is part of the path; Gemini has no "stream" body field
        return request.match_info["call"].endswith(":streamGenerateContent")

    def embed_answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        requests = body["requests"]
        assert len(requests) <= BATCH_LIMIT, "batchEmbedContents takes at most 100 requests"
        return {"embeddings": [
            {"values": self.vectors([p["text"] for p in r["content"]["parts"]][:1],
                                    r.get("outputDimensionality"))[0]}
            for r in requests
        ]}
