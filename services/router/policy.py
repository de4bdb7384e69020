"""The routing decision, pure: a RouteRequest and the time in, a RoutePlan (or a Janus error) out.

Direct selection (an id or alias) names the model and bypasses tier gating. ``"auto"`` or ``""``
runs a pipeline of small steps, each one narrowing or ranking the candidates and each one able to
explain the outcome:

    plan tier (plan.auto_models) -> capabilities (tools, vision, JSON mode, context window)
    -> keyword / pattern rules -> complexity score -> budget -> cheapest model of the required
    quality class, ties broken by deployment health and latency

The reason recorded is the step that decided: ``only_choice``, ``rule:<name>``, ``budget``,
``complexity`` (or ``tier_default`` when no prompt text came with the request).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from services.router.config import Routing, Rule, load_routing
from services.router.health import HealthView
from services.router.scorer import Scorer
from services.router.targets import Serving, best_health, order, servings
from shared.catalog import Catalog, Model, Plan, Plans, load_catalog, load_plans
from shared.contract import RoutePlan, RouteRequest, Target
from shared.errors import InvalidRequest, ModelNotFound

AUTO = ("auto", "")
MAX_TEXT = 16_384  # characters of prompt text one decision reads (the gateway's own limit)


class ComplexityScorer(Protocol):
    def score(self, text: str) -> float: ...


@dataclass(frozen=True, slots=True)
class Choice:
    model: Model
    reason: str
    score: float | None = None


def _cost(m: Model, prompt_tokens: int, output_tokens: int) -> float:
    # compared, never charged: shared.money is the one place that prices a call
    return m.price.input * max(prompt_tokens, 1) + m.price.output * output_tokens


class Policy:
    def __init__(
        self,
        catalog: Catalog,
        plans: Plans,
        routing: Routing,
        scorer: ComplexityScorer | None,
        health: HealthView | None = None,
    ) -> None:
        self.catalog = catalog
        self.plans = plans
        self.routing = routing
        self.scorer = scorer
        self.health = health or HealthView(routing.health)
        self._servings = {m.id: servings(catalog, m) for m in catalog.models}

    @classmethod
    def load(
        cls,
        routing_path: str = "",
        catalog_path: str = "",
        plans_path: str = "",
        on_state: Callable[[str, int], None] | None = None,
    ) -> Policy:
        """Catalog, plans, routing config and weights, each from its file (empty: the built-in one)."""
        catalog = load_catalog(catalog_path or None)
        plans = load_plans(plans_path or None, catalog)
        routing = load_routing(routing_path or None, catalog=catalog)
        return cls(catalog, plans, routing, Scorer.load(), HealthView(routing.health, on_state))

    # ----------------------------------------------------------------------------- the decision
    def route(self, req: RouteRequest, now: float) -> RoutePlan:
        if req.model in AUTO:
            choice = self.choose_auto(req)
        else:
            choice = Choice(self.direct(req), "direct")
        targets = self.targets(choice.model, req, now)
        return RoutePlan(
            model=choice.model.id,
            response_model=choice.model.name_in_responses,
            targets=targets,
            reason=choice.reason,
            auto=req.model in AUTO,
            score=choice.score,
        )

    def direct(self, req: RouteRequest) -> Model:
        m = self.catalog.model(req.model)
        if m is None:
            raise ModelNotFound(f"The model `{req.model}` does not exist", param="model")
        if m.kind != req.kind:
            use = "embeddings" if req.kind == "embeddings" else "chat completions"
            raise InvalidRequest(
                f"The model `{req.model}` is a{'n' if m.kind == 'embeddings' else ''} {m.kind} model "
                f"and cannot be used for {use}",
                param="model",
                code="model_not_supported",
            )
        return m

    def plan_for(self, name: str) -> Plan:
        plan = self.plans.get(name)
        # an unknown tier gets the default (most restricted) tier's choices, never more
        return plan if plan is not None else self.plans.plans[self.plans.default_plan]

    # --------------------------------------------------------------------------- auto pipeline
    def choose_auto(self, req: RouteRequest) -> Choice:
        if req.kind != "chat":
            raise InvalidRequest("`auto` routing is for chat; name an embeddings model", param="model")
        if len(req.text) > MAX_TEXT:
            # the gateway sends at most this much; a decision's work is bounded whoever asks
            req = msgspec.structs.replace(req, text=req.text[-MAX_TEXT:])
        plan = self.plan_for(req.plan)
        candidates = self.capable(req, self.tier(plan))
        if len(candidates) == 1:
            return Choice(candidates[0], "only_choice", self._score(req.text) if req.text else None)
        if not req.text:
            default = self.catalog.model(plan.default_model)
            if default is not None and default in candidates:
                return Choice(default, "tier_default")
            return Choice(self.cheapest(candidates, 1, req), "tier_default")
        score = self._score(req.text)
        required = self.routing.required_quality(score)
        reason = "complexity"
        rule = self.match_rule(req.text)
        if rule is not None:
            reason = f"rule:{rule.name}"
            if rule.model is not None:
                named = self.catalog.model(rule.model)
                assert named is not None  # checked at load
                if named in candidates:
                    return Choice(named, reason, score)
                # the rule's model is not on offer here: ask for its class instead
                required = max(required, named.quality)
            else:
                required = max(required, rule.min_quality or 1)
        chosen = self.cheapest(candidates, required, req)
        if req.budget_fraction is not None and req.budget_fraction < self.routing.budget.low_fraction:
            cheaper = self.cheapest(candidates, max(1, required - self.routing.budget.step_down), req)
            if cheaper is not chosen:
                return Choice(cheaper, "budget", score)
        return Choice(chosen, reason, score)

    def tier(self, plan: Plan) -> list[Model]:
        out = []
        for name in plan.auto_models:
            m = self.catalog.model(name)
            if m is not None and m.kind == "chat":
                out.append(m)
        return out

    def capable(self, req: RouteRequest, models: list[Model]) -> list[Model]:
        needs = [
            c
            for c, on in (("tools", req.needs_tools), ("vision", req.needs_vision), ("json", req.needs_json))
            if on
        ]
        out = [
            m
            for m in models
            if all(c in m.capabilities for c in needs) and req.prompt_tokens < m.context_window
        ]
        if not out:
            what = ", ".join(needs) or "this request"
            if not needs:
                what = f"a prompt of about {req.prompt_tokens} tokens"
            raise InvalidRequest(
                f"No model that `auto` may choose on your plan supports {what}; name a model instead",
                param="model",
                code="no_capable_model",
            )
        return out

    def match_rule(self, text: str) -> Rule | None:
        for rule in self.routing.rules:
            if rule.regex.search(text):
                return rule
        return None

    def _score(self, text: str) -> float:
        return self.scorer.score(text) if self.scorer is not None else 0.0

    def cheapest(self, candidates: list[Model], required: int, req: RouteRequest) -> Model:
        eligible = [m for m in candidates if m.quality >= required]
        if not eligible:
            # nothing on offer is strong enough: the strongest on offer is the best answer
            top = max(m.quality for m in candidates)
            eligible = [m for m in candidates if m.quality == top]
        out_tokens = self.routing.expected_output_tokens
        return min(
            eligible,
            key=lambda m: (
                _cost(m, req.prompt_tokens, out_tokens),
                best_health(self._servings[m.id], self.health),
                m.id,
            ),
        )

    # ------------------------------------------------------------------------------- targets
    def targets(self, model: Model, req: RouteRequest, now: float) -> list[Target]:
        out = order(self._servings[model.id], self.health, req.request_id, now)
        if self.routing.fallback_models and req.model in AUTO:
            out.extend(self._fallback_model_targets(model, req, now))
        return out[: self.routing.max_targets]

    def _fallback_model_targets(self, model: Model, req: RouteRequest, now: float) -> list[Target]:
        plan = self.plan_for(req.plan)
        try:
            capable = self.capable(req, self.tier(plan))
            others = [m for m in capable if m.quality == model.quality and m != model]
        except InvalidRequest:
            return []
        if not others:
            return []
        out_tokens = self.routing.expected_output_tokens
        nxt = min(others, key=lambda m: (_cost(m, req.prompt_tokens, out_tokens), m.id))
        opts: list[Serving] = self._servings[nxt.id]
        return [
            Target(t.deployment, t.provider, t.upstream_model, model=nxt.id)
            for t in order(opts, self.health, req.request_id, now)
        ]
