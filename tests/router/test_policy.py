from __future__ import annotations

import pytest

from services.router.config import Routing
from services.router.policy import Policy
from shared.catalog import Catalog, Plans
from shared.contract import RouteRequest
from shared.errors import InvalidRequest, ModelNotFound
from tests.router.conftest import fixed_policy


def req(model: str = "auto", plan: str = "plus", text: str = "", **kw: object) -> RouteRequest:
    return RouteRequest(request_id=kw.pop("request_id", "req-1"), model=model, plan=plan, text=text,  # type: ignore[arg-type]
                        **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- direct
@pytest.mark.parametrize("name", ["big", "embed-underlying", "small-latest"])
def test_direct_by_id_or_alias_bypasses_the_tier(policy: Policy, name: str) -> None:
    kind = "embeddings" if name.startswith("embed") else "chat"
    plan = policy.route(req(name, plan="basic", kind=kind), 0.0)
    assert plan.reason == "direct" and plan.auto is False and plan.score is None
    assert plan.model == policy.catalog.model(name).id  # type: ignore[union-attr]


def test_direct_response_model_is_the_name_in_responses(policy: Policy) -> None:
    plan = policy.route(req("embed", kind="embeddings"), 0.0)
    assert (plan.model, plan.response_model) == ("embed", "embed-underlying")
    assert [t.upstream_model for t in plan.targets] == ["embed-up"]


def test_unknown_model_is_model_not_found(policy: Policy) -> None:
    with pytest.raises(ModelNotFound) as ei:
        policy.route(req("gpt-9"), 0.0)
    e = ei.value
    assert (e.http_status, e.code, e.param) == (404, "model_not_found", "model")
    assert e.message == "The model `gpt-9` does not exist"


@pytest.mark.parametrize(("model", "kind"), [("embed", "chat"), ("small", "embeddings")])
def test_wrong_kind_is_invalid_request(policy: Policy, model: str, kind: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        policy.route(req(model, kind=kind), 0.0)
    assert ei.value.http_status == 400 and ei.value.param == "model"


def test_auto_embeddings_is_invalid_request(policy: Policy) -> None:
    with pytest.raises(InvalidRequest):
        policy.route(req("auto", kind="embeddings"), 0.0)


# ------------------------------------------------------------------------------- auto pipeline
@pytest.mark.parametrize("model", ["auto", ""])
def test_auto_without_text_is_the_tier_default(policy: Policy, model: str) -> None:
    plan = policy.route(req(model, plan="plus"), 0.0)
    assert (plan.model, plan.reason, plan.auto) == ("mid", "tier_default", True)


def test_unknown_plan_gets_the_default_plans_models(policy: Policy) -> None:
    plan = policy.route(req(plan="no-such-tier"), 0.0)
    assert plan.model == "small"


def test_tier_filter_keeps_auto_inside_the_plan(catalog: Catalog, plans: Plans, routing: Routing) -> None:
    p = fixed_policy(catalog, plans, routing, 0.99)  # wants class 3, basic only has class 1
    plan = p.route(req(plan="basic", text="hard"), 0.0)
    assert plan.model == "small" and plan.reason == "complexity"


def test_capability_filter(catalog: Catalog, plans: Plans, routing: Routing) -> None:
    p = fixed_policy(catalog, plans, routing, 0.0)
    assert p.route(req(plan="basic", text="x", needs_vision=True), 0.0).model == "small-vision"
    # only one basic model can see images: nothing left to decide
    assert p.route(req(plan="basic", text="x", needs_vision=True), 0.0).reason == "only_choice"
    # context window: small holds 8000 tokens
    assert p.route(req(plan="plus", text="x", prompt_tokens=9000), 0.0).model == "small-vision"
    with pytest.raises(InvalidRequest) as ei:
        p.route(req(plan="basic", text="x", prompt_tokens=500_000), 0.0)
    assert ei.value.code == "no_capable_model"


def test_json_and_tools_needs(catalog: Catalog, plans: Plans, routing: Routing) -> None:
    p = fixed_policy(catalog, plans, routing, 0.7)  # class 2: mid is the cheapest
    assert p.route(req(text="x", needs_json=True, needs_tools=True), 0.0).model == "mid"


@pytest.mark.parametrize(("score", "model"), [(0.0, "small"), (0.59, "small"), (0.6, "mid"),
                                              (0.89, "mid"), (0.9, "big"), (1.0, "big")])
def test_complexity_picks_the_cheapest_model_of_the_required_class(
    catalog: Catalog, plans: Plans, routing: Routing, score: float, model: str
) -> None:
    plan = fixed_policy(catalog, plans, routing, score).route(req(text="some prompt"), 0.0)
    assert (plan.model, plan.reason, plan.score) == (model, "complexity", score)


def test_rule_naming_a_model(catalog: Catalog, plans: Plans, routing: Routing) -> None:
    p = fixed_policy(catalog, plans, routing, 0.1)
    plan = p.route(req(text="Why does my Python loop never end?"), 0.0)
    assert (plan.model, plan.reason) == ("coder", "rule:code")
    # "c++" ends in symbols: still a whole-keyword match
    assert p.route(req(text="is c++ hard?"), 0.0).reason == "rule:code"


def test_rule_model_outside_the_tier_becomes_its_class(
    catalog: Catalog, plans: Plans, routing: Routing
) -> None:
    p = fixed_policy(catalog, plans, routing, 0.1)
    plan = p.route(req(plan="basic", text="def f(x): pass"), 0.0)
    assert plan.model in ("small", "small-vision") and plan.reason == "rule:code"


def test_rule_with_minimum_class(catalog: Catalog, plans: Plans, routing: Routing) -> None:
    p = fixed_policy(catalog, plans, routing, 0.1)
    plan = p.route(req(text="State the spectral theorem and an eigenvalue bound"), 0.0)
    assert (plan.model, plan.reason) == ("big", "rule:math")


def test_low_budget_prefers_a_cheaper_class(catalog: Catalog, plans: Plans, routing: Routing) -> None:
    p = fixed_policy(catalog, plans, routing, 0.95)
    assert p.route(req(text="x", budget_fraction=0.5), 0.0).model == "big"
    plan = p.route(req(text="x", budget_fraction=0.1), 0.0)
    assert (plan.model, plan.reason) == ("mid", "budget")
    # already the cheapest class: nothing to give up, the reason stays the real one
    low = fixed_policy(catalog, plans, routing, 0.1).route(req(text="x", budget_fraction=0.0), 0.0)
    assert (low.model, low.reason) == ("small", "complexity")


def test_fallback_model_of_the_same_class_follows_the_deployments(
    catalog: Catalog, plans: Plans, routing: Routing
) -> None:
    plan = fixed_policy(catalog, plans, routing, 0.7).route(req(text="x"), 0.0)
    assert plan.model == "mid"
    assert [(t.deployment, t.model) for t in plan.targets[:2]] in (
        [("alpha-east", ""), ("beta-1", "")], [("beta-1", ""), ("alpha-east", "")])
    assert [(t.deployment, t.upstream_model, t.model) for t in plan.targets[2:]] == [
        ("beta-1", "mid-alt-up", "mid-alt")]


# ----------------------------------------------------------------------- golden decisions
# The shipped scorer and a fixed set of prompts on the test catalog's "plus" plan. A change here
# means routing behaviour changed: check that it was meant, then update the table.
GOLDEN = [
    ("Hi!", "small", "complexity"),
    ("Thanks, that helps a lot.", "small", "complexity"),
    ("What is the capital of Canada?", "small", "complexity"),
    ("Write a Python function that merges two sorted lists.", "coder", "rule:code"),
    ("```\nTraceback (most recent call last):\n```\nwhat does this mean?", "coder", "rule:code"),
    ("Compute the integral of x^2 from 0 to 3.", "big", "rule:math"),
    ("Prove the theorem that every bounded monotone sequence converges.", "big", "rule:math"),
]


@pytest.mark.parametrize(("text", "model", "reason"), GOLDEN)
def test_golden_decisions(policy: Policy, text: str, model: str, reason: str) -> None:
    plan = policy.route(req(text=text, prompt_tokens=len(text) // 4), 0.0)
    assert (plan.model, plan.reason) == (model, reason)
    assert plan.auto and plan.score is not None and 0.0 <= plan.score <= 1.0


def test_a_long_demanding_prompt_needs_a_stronger_class_than_a_greeting(policy: Policy) -> None:
    long = ("You are reviewing a distributed storage design. Describe the failure modes of a "
            "quorum-replicated log when two of five replicas lose their disks during a network "
            "partition, estimate how long recovery takes for 4 TB per node, and recommend changes "
            "to the replication protocol, with their trade-offs, in a structured report.")
    hard = policy.route(req(text=long, prompt_tokens=90), 0.0)
    easy = policy.route(req(text="Hello there!", prompt_tokens=3), 0.0)
    assert hard.score is not None and easy.score is not None and hard.score > easy.score
    q = {m.id: m.quality for m in policy.catalog.models}
    assert q[hard.model] >= q[easy.model]
