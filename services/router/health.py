"""What this router knows about each deployment's health, from the workers' ``HealthReport``s.

Per deployment: an EWMA of latency and of the error rate, and a circuit breaker.

    closed --(failure_threshold consecutive retryable failures)--> open
    open --(cooldown_seconds)--> half-open: one trial request per probe interval
    half-open --(a success)--> closed          half-open --(a failure)--> open (cool-down anew)

Non-retryable failures (the provider refused the request itself) say nothing about the deployment
and do not count. Pure: the caller passes the time, so tests drive it without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.router.config import Health
from shared.contract import HealthReport

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}


@dataclass(slots=True)
class DeploymentHealth:
    latency: float | None = None  # EWMA seconds, None until the first report with a latency
    error_rate: float = 0.0  # EWMA of retryable failures
    failures: int = 0  # consecutive retryable failures
    state: int = CLOSED
    opened_at: float = 0.0
    last_probe: float | None = None  # when a half-open deployment was last offered a trial


class HealthView:
    def __init__(self, cfg: Health, on_state: Callable[[str, int], None] | None = None) -> None:
        self.cfg = cfg
        self._by_id: dict[str, DeploymentHealth] = {}
        self._on_state = on_state or (lambda _d, _s: None)

    def get(self, deployment: str) -> DeploymentHealth:
        h = self._by_id.get(deployment)
        if h is None:
            h = self._by_id[deployment] = DeploymentHealth()
        return h

    def _set(self, deployment: str, h: DeploymentHealth, state: int) -> None:
        if h.state != state:
            h.state = state
            self._on_state(deployment, state)

    def report(self, r: HealthReport, now: float) -> None:
        h = self.get(r.deployment)
        a = self.cfg.ewma_alpha
        if r.ok:
            h.error_rate *= 1 - a
            if r.latency_s > 0:
                h.latency = r.latency_s if h.latency is None else a * r.latency_s + (1 - a) * h.latency
            h.failures = 0
            h.last_probe = None
            self._set(r.deployment, h, CLOSED)
            return
        if not r.retryable:
            return
        h.error_rate = a + (1 - a) * h.error_rate
        h.failures += 1
        self.refresh(r.deployment, now)
        if h.state == HALF_OPEN or h.failures >= self.cfg.failure_threshold:
            h.opened_at = now
            h.last_probe = None
            self._set(r.deployment, h, OPEN)

    def refresh(self, deployment: str, now: float) -> int:
        """The state at ``now``: an open circuit whose cool-down is over becomes half-open."""
        h = self.get(deployment)
        if h.state == OPEN and now - h.opened_at >= self.cfg.cooldown_seconds:
            self._set(deployment, h, HALF_OPEN)
        return h.state

    def refresh_all(self, now: float) -> None:
        for d in list(self._by_id):
            self.refresh(d, now)

    def usable(self, deployment: str, now: float) -> bool:
        """May this deployment be offered as a primary now? Closed: yes. Half-open: once per probe
        interval (the trial whose outcome closes or reopens the circuit). Open: no."""
        state = self.refresh(deployment, now)
        if state == CLOSED:
            return True
        if state == OPEN:
            return False
        h = self.get(deployment)
        return h.last_probe is None or now - h.last_probe >= self.cfg.probe_interval_seconds

    def took_probe(self, deployment: str, now: float) -> None:
        h = self.get(deployment)
        if h.state == HALF_OPEN:
            h.last_probe = now

    def rank_key(self, deployment: str) -> tuple[int, float, float]:
        """Sort key among deployments of equal standing: state, error rate, latency."""
        h = self._by_id.get(deployment)
        if h is None:
            return (CLOSED, 0.0, 0.0)
        return (h.state, round(h.error_rate, 3), h.latency if h.latency is not None else 0.0)

    def snapshot(self) -> dict[str, DeploymentHealth]:
        return dict(self._by_id)
