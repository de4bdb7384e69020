"""Which deployments serve a model, in what order: primary first, then fallbacks.

The primary is drawn by weight among the deployments whose circuit lets them take traffic, with a
random generator seeded by the request id, so the same request is routed the same way on every
router replica and in every test run. The others follow, healthiest first; deployments whose
circuit is open come last (a last resort beats a certain failure).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.router.health import HealthView
from shared.catalog import Catalog, Model
from shared.contract import Target


@dataclass(frozen=True, slots=True)
class Serving:
    target: Target
    weight: float


def servings(catalog: Catalog, model: Model) -> list[Serving]:
    out: list[Serving] = []
    for s in model.serve:
        provider, dep = catalog.deployment_by_id[s.deployment]
        weight = s.weight if s.weight is not None else dep.weight
        out.append(Serving(Target(dep.id, provider.id, s.model), max(0.0, weight)))
    return out


def _weighted_pick(items: list[Serving], rng: random.Random) -> int:
    total = sum(s.weight for s in items)
    if total <= 0:
        return 0
    x = rng.random() * total
    for i, s in enumerate(items):
        x -= s.weight
        if x < 0:
            return i
    return len(items) - 1


def order(options: list[Serving], health: HealthView, request_id: str, now: float) -> list[Target]:
    if len(options) == 1:
        return [options[0].target]
    usable = [s for s in options if health.usable(s.target.deployment, now)]
    blocked = [s for s in options if not health.usable(s.target.deployment, now)]
    out: list[Target] = []
    if usable:
        # closed circuits take the traffic; a half-open one is chosen as primary only when it is
        # the only usable one or when the draw lands on it
        i = _weighted_pick(usable, random.Random(request_id))
        primary = usable.pop(i)
        out.append(primary.target)
        health.took_probe(primary.target.deployment, now)
    usable.sort(key=lambda s: (health.rank_key(s.target.deployment)[0], -s.weight,
                               *health.rank_key(s.target.deployment)[1:]))
    blocked.sort(key=lambda s: health.rank_key(s.target.deployment))
    out.extend(s.target for s in usable)
    out.extend(s.target for s in blocked)
    return out


def best_health(options: list[Serving], health: HealthView) -> tuple[int, float, float]:
    """The best standing among a model's deployments, to break ties between models."""
    return min(health.rank_key(s.target.deployment) for s in options)
