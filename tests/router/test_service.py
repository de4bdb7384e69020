"""The router on a real nats-server: request/reply through the queue group, errors as ErrorReply,
and the circuit breaker driven by HealthReports published on the health subject."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from services.router.service import RouterService
from services.router.settings import RouterSettings
from shared import contract, subjects
from shared.bus import Bus
from shared.contract import HealthReport, RoutePlan, RouteRequest
from shared.errors import InvalidRequest, ModelNotFound
from tests.eventually import eventually
from tests.router.conftest import FIX


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def router(bus: Bus) -> AsyncIterator[tuple[RouterService, Clock]]:
    clock = Clock()
    settings = RouterSettings(
        routing=str(FIX / "routing.yaml"), catalog=str(FIX / "catalog.yaml"), plans=str(FIX / "plans.yaml")
    )
    svc = RouterService(settings, clock=clock)
    await svc.start(bus)
    try:
        yield svc, clock
    finally:
        await svc.stop()


async def ask(bus: Bus, req: RouteRequest) -> RoutePlan:
    reply = contract.route_reply_decoder.decode(await bus.request(subjects.ROUTE, contract.encode(req), 2))
    if isinstance(reply, contract.ErrorReply):
        raise reply.exception()
    return reply


async def health(bus: Bus, report: HealthReport) -> None:
    await bus.publish(subjects.HEALTH, contract.encode(report))


async def until(cond: Callable[[], bool]) -> None:
    """Wait (bounded) until the router has applied the reports published so far."""
    await eventually(cond, 2.0, "the router applying the health reports", every=0.01)


async def test_direct_and_auto_over_the_bus(bus: Bus, router: tuple[RouterService, Clock]) -> None:
    plan = await ask(bus, RouteRequest(request_id="r1", model="small-latest", plan="basic"))
    assert (plan.model, plan.reason, plan.auto) == ("small", "direct", False)
    assert {t.deployment for t in plan.targets} == {"alpha-east", "alpha-west", "beta-1"}
    auto = await ask(
        bus,
        RouteRequest(
            request_id="r2", model="auto", plan="plus", text="Write a python script to rename files"
        ),
    )
    assert (auto.model, auto.reason, auto.auto) == ("coder", "rule:code", True)
    assert auto.score is not None


async def test_errors_come_back_as_error_replies(bus: Bus, router: tuple[RouterService, Clock]) -> None:
    with pytest.raises(ModelNotFound) as ei:
        await ask(bus, RouteRequest(request_id="r1", model="nope", plan="basic"))
    assert ei.value.http_status == 404 and ei.value.code == "model_not_found"
    with pytest.raises(InvalidRequest):
        await ask(bus, RouteRequest(request_id="r2", model="embed", plan="basic"))
    # garbage on the subject is answered, not dropped
    reply = contract.route_reply_decoder.decode(await bus.request(subjects.ROUTE, b"\x01garbage", 2))
    assert isinstance(reply, contract.ErrorReply) and reply.error.status == 400


async def test_circuit_breaker_from_health_reports(bus: Bus, router: tuple[RouterService, Clock]) -> None:
    svc, clock = router
    assert svc.policy is not None
    state = svc.policy.health.get

    async def primaries(n: int = 40) -> set[str]:
        out = set()
        for i in range(n):
            plan = await ask(bus, RouteRequest(request_id=f"q{clock.now}-{i}", model="small", plan="basic"))
            out.add(plan.targets[0].deployment)
        return out

    assert "alpha-east" in await primaries()
    for _ in range(3):
        await health(bus, HealthReport(deployment="alpha-east", provider="alpha", ok=False, error="503"))
    await until(lambda: state("alpha-east").state == 2)
    assert "alpha-east" not in await primaries()
    plan = await ask(bus, RouteRequest(request_id="x", model="small", plan="basic"))
    assert plan.targets[-1].deployment == "alpha-east"  # kept as the last resort

    # cool-down over: half-open, one trial, then a success closes the circuit
    clock.now += 11
    assert "alpha-east" in await primaries()
    await health(bus, HealthReport(deployment="alpha-east", provider="alpha", ok=True, latency_s=0.2))
    await until(lambda: state("alpha-east").state == 0)
    assert "alpha-east" in await primaries()

    # and it fails again
    for _ in range(3):
        await health(bus, HealthReport(deployment="alpha-east", provider="alpha", ok=False, error="503"))
    await until(lambda: state("alpha-east").state == 2)
    assert "alpha-east" not in await primaries()
