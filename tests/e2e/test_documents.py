"""The product documents' promises about models and plans, read out of the documents themselves
(``../shared/seeds/`` beside the checkout): every model id they name is served by ``GET
/v1/models/{id}`` on the offline stack and is in the production catalog, with the prices, context
windows and plan quotas they state; per-model defaults reach the upstream; direct selection bypasses
the plan's ``auto`` list."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from shared.catalog import Catalog, load_catalog, load_plans
from tests.fakes.openai_upstream import OpenAIUpstream
from tools.localstack import ROOT, Stack, start_stack
from tools.token import make_token

SEEDS = ROOT.parent / "shared" / "seeds"
pytestmark = pytest.mark.skipif(not SEEDS.is_dir(), reason="the product documents sit beside the checkout")


def _seed(prefix: str) -> str:
    return next(SEEDS.glob(f"{prefix}_*.txt")).read_text()


def _after(text: str, heading: str) -> list[str]:
    """The non-empty lines after ``heading`` up to the next empty line."""
    lines = text[text.index(heading) + len(heading) :].lstrip("\n").splitlines()
    out = []
    for line in lines:
        if not line.strip():
            break
        out.append(line.strip())
    return out


def nebo_chat() -> dict[str, int]:
    """Nebo's model table: id -> context window (``164K`` -> 164000)."""
    out = {}
    for line in _after(_seed("000"), "Model Provider Strengths Cost Tier"):
        mid = line.split()[0]
        m = re.search(r"(\d+)K", line)
        assert m, line
        out[mid] = int(m.group(1)) * 1000
    return out


def nebo_embeddings() -> dict[str, tuple[str, int]]:
    """Nebo's embeddings table: gateway name -> (underlying name, dimensions)."""
    out = {}
    for line in _after(_seed("000"), "Model Maps To Dimensions"):
        name, underlying, dims = line.split()
        out[name] = (underlying, int(dims))
    return out


def nebula() -> dict[str, tuple[int, float, float]]:
    """Nebula's model table: id -> (context window, input and output USD per 1M; Free is 0)."""
    out = {}
    for line in _after(_seed("004"), "Model Context Use Case Input/1M Output/1M"):
        mid, ctx = line.split()[:2]
        prices = [0.0 if p == "Free" else float(p.lstrip("$")) for p in line.split()[-2:]]
        out[mid] = (int(ctx.rstrip("K")) * 1000, prices[0], prices[1])
    return out


def nemorouter() -> list[str]:
    """NemoRouter's example responses and its providers table (``OpenAIgpt-4o, o1Chat, ...``)."""
    text = _seed("003")
    ids = re.findall(r'"id": "([^"]+)"', text)
    for line in _after(text, "ProviderExample ModelsCapabilities"):
        m = re.match(r"^(?:OpenAI|Anthropic|Google|Meta|Mistral|Cohere|Deepseek)(.+?)(?:Chat|$)", line)
        assert m, line
        ids += [x.strip() for x in m.group(1).split(",")]
    return ids


def document_ids() -> list[str]:
    ids = [
        *nebo_chat(),
        *nebo_embeddings(),
        *(u for u, _ in nebo_embeddings().values()),
        *nebula(),
        *nemorouter(),
    ]
    ids += re.findall(r'"id": "([^"]+)"', _seed("000"))  # the example model list
    for seed in ("001", "004"):  # the examples' request bodies, and "(e.g. "a", "b")" in prose
        text = _seed(seed)
        ids += re.findall(r'(?:model: |"model": )"([^"]+)"', text)
        for example in re.findall(r"\(e\.g\. ([^)]*)\)", text):
            ids += re.findall(r'"([^"]+)"', example)
    return sorted({i for i in ids if i not in ("auto", "")})


IDS = document_ids()
CATALOGS = {
    "default": load_catalog(ROOT / "config" / "catalog.yaml"),
    "production": load_catalog(ROOT / "config" / "catalog.production.yaml"),
}


def test_the_documents_name_the_models_we_expect_to_read() -> None:
    # the parsers found every table: a document that changed shape must not shrink the check
    assert len(nebo_chat()) == 5 and len(nebo_embeddings()) == 2 and len(nebula()) == 5
    assert {
        "gpt-4o",
        "claude-4-sonnet",
        "gemini-2.5-pro",
        "mistral-large",
        "llama-3.3-70b",
        "deepseek-reasoner",
        "command-r-plus",
    } <= set(nemorouter())


@pytest.mark.parametrize("model_id", IDS)
def test_every_document_model_is_served(stack: Stack, model_id: str) -> None:
    tok = make_token("docs-user", "free", secret=stack.env["JANUS_JWT_SECRET"])
    client = openai.OpenAI(base_url=stack.base_url, api_key=tok, max_retries=0)
    assert client.models.retrieve(model_id).id == model_id
    for name, cat in CATALOGS.items():
        assert cat.model(model_id) is not None, f"{model_id} is missing from the {name} catalog"


@pytest.mark.parametrize("catalog", CATALOGS.values(), ids=CATALOGS.keys())
def test_prices_contexts_and_dimensions_are_the_documents(catalog: Catalog) -> None:
    for mid, ctx in nebo_chat().items():
        assert catalog.model(mid).context_window == ctx  # type: ignore[union-attr]
    for name, (underlying, dims) in nebo_embeddings().items():
        m = catalog.model(name)
        assert m is not None and m.name_in_responses == underlying and m.dimensions == dims
        assert catalog.model(underlying) is m
    for mid, (ctx, price_in, price_out) in nebula().items():
        m = catalog.model(mid)
        assert m is not None
        assert (m.context_window, m.price.input, m.price.output) == (ctx, price_in, price_out)
        # Nebula documents a default temperature of 0.7
        assert m.defaults is not None and m.defaults.temperature == 0.7


def test_plans_give_the_documents_quotas_and_entitlements() -> None:
    catalog = CATALOGS["default"]
    plans = load_plans(ROOT / "config" / "plans.yaml", catalog=catalog)
    quotas = {
        "free": (100_000, 20_000),
        "developer": (2_000_000, 500_000),
        "pro": (15_000_000, 3_000_000),
        "enterprise": (100_000_000, 20_000_000),
    }
    for name, (inp, out) in quotas.items():
        plan = plans.get(name)
        assert plan is not None and (plan.monthly_tokens.input, plan.monthly_tokens.output) == (inp, out)
    nebula_models = [catalog.model(m) for m in nebula()]
    ollama = {m.id for m in nebula_models if m is not None and m.owned_by == "ollama"}
    vision = {m for m in ollama if "vision" in catalog.model(m).capabilities}  # type: ignore[union-attr]
    auto = {name: set(p.auto_models) for name, p in plans.plans.items()}
    assert not auto["free"] & ollama  # free: basic models
    assert ollama - vision <= auto["developer"] and not auto["developer"] & vision  # all Ollama models
    assert ollama <= auto["pro"] and ollama <= auto["enterprise"]  # and vision models


def test_direct_selection_bypasses_the_plans_auto_list(stack: Stack) -> None:
    tok = make_token("docs-free-user", "free", secret=stack.env["JANUS_JWT_SECRET"])
    client = openai.OpenAI(base_url=stack.base_url, api_key=tok, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="qwen3-vl:235b-cloud", messages=[{"role": "user", "content": "Describe the picture"}]
    )
    assert raw.parse().model == "qwen3-vl:235b-cloud"
    assert raw.headers["x-janus-route"].startswith("model=qwen3-vl:235b-cloud; reason=direct")


DEFAULTS_CATALOG = """
providers:
  - id: ollama
    kind: openai_compat
    deployments: [{{id: ollama-main, base_url: "{base_url}"}}]
models:
  - id: "qwen3:latest"
    owned_by: ollama
    price: {{input: 0.20, output: 0.60}}
    defaults: {{temperature: 0.7}}
    serve: [{{deployment: ollama-main, model: "qwen3:latest"}}]
"""

DEFAULTS_PLANS = """
default_plan: free
plans:
  free:
    session: {credits: 10000000, hours: 5}
    weekly: {credits: 50000000}
    default_model: "qwen3:latest"
"""


async def test_model_defaults_fill_what_the_client_left_out(tmp_path: Path) -> None:
    async with OpenAIUpstream() as upstream:
        (tmp_path / "catalog.yaml").write_text(DEFAULTS_CATALOG.format(base_url=upstream.base_url))
        (tmp_path / "plans.yaml").write_text(DEFAULTS_PLANS)
        (tmp_path / "routing.yaml").write_text("routing: {rules: []}\n")
        env = {
            "JANUS_CATALOG": str(tmp_path / "catalog.yaml"),
            "JANUS_PLANS": str(tmp_path / "plans.yaml"),
            "JANUS_ROUTING": str(tmp_path / "routing.yaml"),
        }
        stack = await asyncio.to_thread(start_stack, tmp_path / "stack", env=env)
        try:
            tok = make_token("defaults-user", "free", secret=stack.env["JANUS_JWT_SECRET"])
            messages = [{"role": "user", "content": "hello"}]
            async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {tok}"}) as c:
                for extra in ({}, {"temperature": 0.2}, {"temperature": None}):
                    r = await c.post(
                        f"{stack.base_url}/chat/completions",
                        content=json.dumps({"model": "qwen3:latest", "messages": messages, **extra}),
                    )
                    assert r.status_code == 200, r.text
            sent = [rec.body.get("temperature") for rec in upstream.requests]
            assert sent == [0.7, 0.2, 0.7]
        finally:
            await asyncio.to_thread(stack.stop)
