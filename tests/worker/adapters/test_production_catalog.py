"""The production catalog loads with the one catalog schema, every provider kind has an adapter,
and the plans' models all exist in it."""

from __future__ import annotations

from services.worker.adapters import ADAPTERS
from shared.catalog import ROOT, load_catalog, load_plans

PATH = ROOT / "config" / "catalog.production.yaml"


def test_production_catalog_loads_and_every_kind_has_an_adapter() -> None:
    cat = load_catalog(PATH)
    assert {p.kind for p in cat.providers} <= set(ADAPTERS)
    for model in ("gpt-5.2", "gpt-5-mini", "gpt-5-nano", "deepseek.v3.2", "qwen.qwen3-32b",
                  "qwen3:latest", "gemma3:1b", "text-embedding-3-small", "text-embedding-3-large"):
        assert cat.model(model) is not None, model
    deepseek, qwen = cat.model("deepseek.v3.2"), cat.model("qwen.qwen3-32b")
    assert deepseek is not None and qwen is not None
    assert cat.deployment_by_id[deepseek.serve[0].deployment][0].kind == "bedrock"
    assert qwen.serve[0].model == "qwen.qwen3-32b-v1:0"  # Bedrock's own model id


def test_plans_resolve_against_the_production_catalog() -> None:
    load_plans(catalog=load_catalog(PATH))


def test_every_embeddings_model_is_served_by_a_provider_that_embeds() -> None:
    cat = load_catalog(PATH)
    embedders = [m for m in cat.models if m.kind == "embeddings"]
    assert {"gemini-embedding-001", "amazon.titan-embed-text-v2", "cohere.embed-english-v3", "embed-v4.0",
            "nomic-embed-text"} <= {m.id for m in embedders}
    for m in embedders:
        assert m.dimensions and m.price.input > 0, m.id
        for s in m.serve:
            kind = cat.deployment_by_id[s.deployment][0].kind
            assert ADAPTERS[kind].capabilities.embeddings, f"{m.id} on {kind}"
