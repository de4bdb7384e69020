"""Cohere's embed request and response, which two providers speak: Cohere's own ``/v2/embed`` and
Cohere Embed models on Bedrock (``InvokeModel``, the same fields without ``model``).

https://docs.cohere.com/reference/embed and
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-embed.html
"""

from __future__ import annotations

from typing import Any

from services.worker.adapters.base import ChatContext, embedding_dimensions, option


def embed_body(ctx: ChatContext, inputs: list[str]) -> dict[str, Any]:
    # v3 and later models require input_type; what the vectors are for is a deployment setting
    out: dict[str, Any] = {
        "model": ctx.upstream_model,
        "texts": inputs,
        "input_type": option(ctx, "input_type", "search_document"),
        "embedding_types": ["float"],
    }
    dims = embedding_dimensions(ctx)
    if dims:
        out["output_dimension"] = dims  # embed-v4.0 and later
    return out


def embed_vectors(doc: dict[str, Any]) -> list[list[float]]:
    """``embeddings`` is ``{"float": [...]}`` when ``embedding_types`` was sent, else the list itself."""
    vectors = doc.get("embeddings") or []
    return (vectors.get("float") or []) if isinstance(vectors, dict) else vectors
