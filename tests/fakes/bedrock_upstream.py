"""Fake Bedrock runtime: ``POST /model/{modelId}/converse`` (JSON) and ``/converse-stream`` (AWS
event-stream frames), replaying ``tests/fixtures/bedrock``, and ``/model/{modelId}/invoke`` for
embedding models (Titan: one ``inputText`` a call; Cohere Embed: ``texts``). Point a deployment's
``base_url`` at it; requests are recorded with their SigV4 ``Authorization`` header for inspection
(not verified)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.cohere_upstream import embed_answer as cohere_embed_answer
from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["BedrockUpstream", "Drop", "Fail", "Stall"]


class BedrockUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("bedrock", ["/model/{model}/converse", "/model/{model}/converse-stream"],
                         embed_routes=["/model/{model}/invoke"])

    def is_stream(self, request: web.Request, body: dict[str, Any]) -> bool:
        return request.path.endswith("/converse-stream")

    def embed_answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        if "cohere." in request.match_info["model"]:
            return cohere_embed_answer(self, body, billed=False)
        text = body["inputText"]
        assert isinstance(text, str), "Titan takes one text a call"
        vector = self.vectors([text], body.get("dimensions"))[0]
        return {"embedding": vector, "embeddingsByType": {"float": vector},
                "inputTextTokenCount": self.count_tokens([text])}
