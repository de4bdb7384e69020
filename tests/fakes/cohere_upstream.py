"""Fake Cohere v2: ``POST /v2/chat`` (JSON, or SSE when ``"stream": true``), replaying
``tests/fixtures/cohere``, and ``POST /v2/embed`` (``embeddings_by_type`` with billed input tokens)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["CohereUpstream", "Drop", "Fail", "Stall", "embed_answer"]

BATCH_LIMIT = 96


def embed_answer(fake: ReplayUpstream, body: dict[str, Any], billed: bool) -> dict[str, Any]:
    """Cohere's embed response; Cohere's own API bills input tokens, Bedrock's Cohere Embed does not say."""
    texts = body["texts"]
    assert len(texts) <= BATCH_LIMIT, "Cohere embeds at most 96 texts a call"
    vectors = fake.vectors(texts, body.get("output_dimension"))
    out: dict[str, Any] = {"id": "5807ee2e-0cda-445a-9ec8-864c60a06606", "texts": texts,
                           "embeddings": {"float": vectors} if body.get("embedding_types") else vectors,
                           "response_type": "embeddings_by_type" if body.get("embedding_types")
                           else "embeddings_floats"}
    if billed:
        out["meta"] = {"api_version": {"version": "2"},
                       "billed_units": {"input_tokens": fake.count_tokens(texts)}}
    return out


class CohereUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("cohere", ["/v2/chat"], embed_routes=["/v2/embed"])

    def embed_answer(self, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
        return embed_answer(self, body, billed=True)
