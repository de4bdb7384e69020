"""Router fixtures: a small catalog, plans and routing config of our own, so decisions do not move
when the product catalog changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.config import Routing, load_routing
from services.router.health import HealthView
from services.router.policy import Policy
from services.router.scorer import Scorer
from shared.catalog import Catalog, Plans, load_catalog, load_plans

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "routing"


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(FIX / "catalog.yaml")


@pytest.fixture(scope="session")
def plans(catalog: Catalog) -> Plans:
    return load_plans(FIX / "plans.yaml", catalog=catalog)


@pytest.fixture(scope="session")
def routing(catalog: Catalog) -> Routing:
    return load_routing(FIX / "routing.yaml", catalog=catalog)


@pytest.fixture(scope="session")
def scorer() -> Scorer:
    return Scorer.load()


class FixedScorer:
    """Stands in for the learned scorer where a test is about the pipeline, not the model."""

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, text: str) -> float:
        return self.value


@pytest.fixture
def policy(catalog: Catalog, plans: Plans, routing: Routing, scorer: Scorer) -> Policy:
    return Policy(catalog, plans, routing, scorer, HealthView(routing.health))


def fixed_policy(catalog: Catalog, plans: Plans, routing: Routing, value: float) -> Policy:
    return Policy(catalog, plans, routing, FixedScorer(value), HealthView(routing.health))
