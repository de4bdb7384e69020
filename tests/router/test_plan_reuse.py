"""Which plans the router lets gateways reuse (``RoutePlan.cache_seconds``): only a direct plan for a
model with one deployment, whose answer is the same whatever the health or the request id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.router.service import RouterService
from services.router.settings import RouterSettings
from shared import contract, subjects
from shared.bus import Bus
from shared.contract import HealthReport, RoutePlan, RouteRequest
from tests.router.conftest import FIX


@pytest.fixture
async def router(bus: Bus) -> AsyncIterator[RouterService]:
    svc = RouterService(
        RouterSettings(
            routing=str(FIX / "routing.yaml"),
            catalog=str(FIX / "catalog.yaml"),
            plans=str(FIX / "plans.yaml"),
            plan_cache_seconds=3.0,
        )
    )
    await svc.start(bus)
    try:
        yield svc
    finally:
        await svc.stop()


async def ask(bus: Bus, req: RouteRequest) -> RoutePlan:
    reply = contract.route_reply_decoder.decode(await bus.request(subjects.ROUTE, contract.encode(req), 2))
    assert isinstance(reply, RoutePlan), reply
    return reply


async def test_only_a_direct_plan_with_one_deployment_may_be_reused(bus: Bus, router: RouterService) -> None:
    one = await ask(bus, RouteRequest("r1", "big", "plus"))
    assert [t.deployment for t in one.targets] == ["alpha-east"] and one.cache_seconds == 3.0
    # several deployments: drawn per request id and ranked by health, so asked every time
    several = await ask(bus, RouteRequest("r2", "small-latest", "basic"))
    assert len(several.targets) == 3 and several.cache_seconds == 0.0
    auto = await ask(bus, RouteRequest("r3", "auto", "plus", text="Write a python script to rename files"))
    assert auto.model == "coder" and auto.cache_seconds == 0.0


async def test_a_single_deployment_plan_does_not_depend_on_its_health(
    bus: Bus, router: RouterService
) -> None:
    """What makes the reuse sound: a failing sole deployment is still the plan, so a cached copy
    is never staler than a fresh answer."""
    before = await ask(bus, RouteRequest("r1", "big", "plus"))
    for _ in range(5):
        await bus.publish(
            subjects.HEALTH,
            contract.encode(
                HealthReport(
                    deployment="alpha-east", provider="alpha", ok=False, latency_s=0.1, error="upstream_error"
                )
            ),
        )
    await bus.flush()
    assert router.policy is not None
    for _ in range(200):  # bounded wait until the router has applied the reports
        if not router.policy.health.usable("alpha-east", router.clock()):
            break
        await asyncio.sleep(0.01)
    assert not router.policy.health.usable("alpha-east", router.clock())
    after = await ask(bus, RouteRequest("r2", "big", "plus"))
    assert after.targets == before.targets and after.cache_seconds == before.cache_seconds > 0
