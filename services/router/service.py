"""The router service: answers route plans on ``subjects.ROUTE`` and listens to health reports.

Thin by design: decode, ask the pure ``Policy``, encode, count. Every replica serves the route
subject in one queue group, and every replica hears every ``HealthReport`` (no queue group), so
each keeps its own complete health view.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import ClassVar

import msgspec

from services.router.health import STATE_NAMES
from services.router.policy import Policy
from services.router.settings import RouterSettings
from shared import metrics, subjects
from shared.bus import Bus, Msg
from shared.contract import (
    DeploymentHealth,
    UsageReply,
    encode,
    error_reply,
    health_decoder,
    route_request_decoder,
)
from shared.errors import InvalidRequest, JanusError
from shared.logging import get_logger
from shared.service import Service

log = get_logger("router")

_decisions = metrics.children(metrics.ROUTE_DECISIONS)


class RouterService(Service[RouterSettings]):
    name: ClassVar[str] = "router"
    default_ops_port: ClassVar[int] = 9101
    settings_cls = RouterSettings

    def __init__(self, settings: RouterSettings, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(settings)
        self.clock = clock
        self.policy: Policy | None = None
        self._subscribed = False
        self._ticker: asyncio.Task[None] | None = None
        self._stable: frozenset[str] = frozenset()

    async def start(self, bus: Bus) -> None:
        await super().start(bus)
        s = self.settings
        self.policy = Policy.load(s.routing, s.catalog, s.plans, on_state=_publish_state)
        for dep in self.policy.catalog.deployment_by_id:
            metrics.CIRCUIT_STATE.labels(dep).set(0)
        # a direct plan for a model with one deployment is that deployment whatever its health
        # (targets.order has nothing to draw or rank), so it is the same for every such request
        self._stable = frozenset(m.id for m in self.policy.catalog.models if len(m.serve) == 1)
        await bus.serve(subjects.HEALTH, self._on_health, concurrency=64)
        await bus.serve(
            subjects.ROUTE_HEALTH, self._on_health_view, queue=subjects.ROUTER_QUEUE, concurrency=4
        )
        await bus.serve(
            subjects.ROUTE, self._on_route, queue=subjects.ROUTER_QUEUE, concurrency=self.settings.concurrency
        )
        await bus.flush()
        self._subscribed = True
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        log.info(
            "router_ready",
            models=len(self.policy.catalog.models),
            rules=[r.name for r in self.policy.routing.rules],
        )

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    def ready(self) -> bool:
        return self._subscribed

    def ready_detail(self) -> dict[str, bool]:
        return {"subscribed": self._subscribed}

    async def _tick(self) -> None:
        # half-open transitions are time-driven; refresh so the gauge tells the truth
        while True:
            await asyncio.sleep(self.settings.health_refresh_seconds)
            if self.policy is not None:
                self.policy.health.refresh_all(self.clock())

    # ------------------------------------------------------------------------------ handlers
    async def _on_route(self, msg: Msg) -> None:
        assert self.policy is not None
        t0 = time.perf_counter()
        try:
            req = route_request_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await msg.respond(encode(error_reply(InvalidRequest(f"bad route request: {exc}"))))
            return
        try:
            plan = self.policy.route(req, self.clock())
        except JanusError as exc:
            metrics.ROUTE_DECISIONS.labels(f"error:{exc.code or exc.kind}", "").inc()
            await msg.respond(encode(error_reply(exc)))
            return
        if not plan.auto and plan.reason == "direct" and plan.model in self._stable:
            plan.cache_seconds = self.settings.plan_cache_seconds
        elapsed = time.perf_counter() - t0
        metrics.ROUTE_DECISION_SECONDS.observe(elapsed)
        _decisions(plan.reason, plan.model).inc()
        if plan.auto:
            log.info(
                "auto_route",
                request_id=req.request_id,
                plan=req.plan,
                model=plan.model,
                reason=plan.reason,
                score=plan.score,
                primary=plan.targets[0].deployment,
                decision_ms=round(elapsed * 1000, 3),
            )
        await msg.respond(encode(plan))

    async def _on_health_view(self, msg: Msg) -> None:
        assert self.policy is not None
        if msg.reply:
            await msg.respond(encode(health_reply(self.policy, self.clock())))

    async def _on_health(self, msg: Msg) -> None:
        assert self.policy is not None
        try:
            report = health_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("bad_health_report")
            return
        if report.deployment not in self.policy.catalog.deployment_by_id:
            return
        self.policy.health.report(report, self.clock())


_json = msgspec.json.Encoder()


def health_reply(policy: Policy, now: float) -> UsageReply:
    """Every deployment of the catalog with this router's view of its health (and, for gateways
    of the previous release, the same as the JSON document they parse)."""
    snap = policy.health.snapshot()
    rows = []
    for dep_id, (provider, _) in sorted(policy.catalog.deployment_by_id.items()):
        h = snap.get(dep_id)
        state = policy.health.refresh(dep_id, now) if h is not None else 0
        rows.append(
            DeploymentHealth(
                dep_id,
                provider.id,
                STATE_NAMES[state],
                error_rate=round(h.error_rate, 4) if h else 0.0,
                latency_seconds=None if h is None or h.latency is None else round(h.latency, 4),
                consecutive_failures=h.failures if h else 0,
            )
        )
    return UsageReply(_json.encode({"object": "deployments", "data": rows}), deployments=rows)


def _publish_state(deployment: str, state: int) -> None:
    metrics.CIRCUIT_STATE.labels(deployment).set(state)
    log.info("circuit_state", deployment=deployment, state=STATE_NAMES[state])
