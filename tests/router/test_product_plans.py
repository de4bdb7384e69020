"""The product's own catalog, plans and routing (config/, services/router/routing.yaml): which models
``auto`` picks per plan, as the documents promise (basic models on free, the Ollama models from
developer up, vision models from pro up), while naming a model bypasses the plan."""

from __future__ import annotations

import pytest

from services.router.config import load_routing
from services.router.policy import Policy
from shared.catalog import load_catalog, load_plans
from shared.contract import RouteRequest
from tests.router.conftest import fixed_policy
from tools.localstack import ROOT

CATALOG = load_catalog(ROOT / "config" / "catalog.yaml")
PLANS = load_plans(ROOT / "config" / "plans.yaml", catalog=CATALOG)
ROUTING = load_routing(ROOT / "services" / "router" / "routing.yaml", catalog=CATALOG)


def policy(score: float) -> Policy:
    return fixed_policy(CATALOG, PLANS, ROUTING, score)


def auto(plan: str, text: str = "hello there", **needs: bool) -> str:
    req = RouteRequest("req-1", "auto", plan, text=text, **needs)  # type: ignore[arg-type]
    return policy(0.1).route(req, 0.0).model


def owner(model: str) -> str:
    m = CATALOG.model(model)
    assert m is not None
    return m.owned_by


def test_free_auto_never_picks_an_ollama_model() -> None:
    assert owner(auto("free")) != "ollama"


@pytest.mark.parametrize("plan", ["developer", "pro", "enterprise"])
def test_auto_may_pick_an_ollama_model_from_developer_up(plan: str) -> None:
    assert owner(auto(plan)) == "ollama"  # the cheapest of the simple class on these plans


@pytest.mark.parametrize(("plan", "allowed"), [("developer", False), ("pro", True), ("enterprise", True)])
def test_the_vision_model_is_for_auto_from_pro_up(plan: str, allowed: bool) -> None:
    req = RouteRequest("req-1", "auto", plan, text="what is in this picture", needs_vision=True)
    candidates = {m.id for m in policy(0.1).capable(req, policy(0.1).tier(PLANS.plans[plan]))}
    assert ("qwen3-vl:235b-cloud" in candidates) is allowed


def test_naming_a_model_bypasses_the_plan() -> None:
    req = RouteRequest("req-1", "qwen3-vl:235b-cloud", "free")
    plan = policy(0.1).route(req, 0.0)
    assert (plan.model, plan.reason) == ("qwen3-vl:235b-cloud", "direct")
