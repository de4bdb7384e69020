from __future__ import annotations

from collections import Counter

from services.router.config import Health
from services.router.health import CLOSED, HALF_OPEN, OPEN, HealthView
from services.router.targets import Serving, order
from shared.contract import HealthReport, Target

CFG = Health(ewma_alpha=0.5, failure_threshold=3, cooldown_seconds=10, probe_interval_seconds=5)


def ok(dep: str, latency: float = 0.1) -> HealthReport:
    return HealthReport(deployment=dep, provider="p", ok=True, latency_s=latency)


def fail(dep: str, retryable: bool = True) -> HealthReport:
    return HealthReport(deployment=dep, provider="p", ok=False, error="boom", retryable=retryable)


def test_ewma_latency_and_error_rate() -> None:
    h = HealthView(CFG)
    h.report(ok("d", 1.0), 0)
    h.report(ok("d", 3.0), 0)
    h.report(fail("d"), 0)
    d = h.get("d")
    assert d.latency == 2.0 and d.error_rate == 0.5 and d.failures == 1 and d.state == CLOSED


def test_breaker_opens_half_opens_recovers_and_opens_again() -> None:
    seen: list[tuple[str, int]] = []
    h = HealthView(CFG, on_state=lambda d, s: seen.append((d, s)))
    for _ in range(2):
        h.report(fail("d"), 1)
    assert h.refresh("d", 1) == CLOSED and h.usable("d", 1)
    h.report(fail("d"), 2)
    assert h.refresh("d", 2) == OPEN and not h.usable("d", 5)
    # cool-down over: one trial per probe interval
    assert h.refresh("d", 12) == HALF_OPEN
    assert h.usable("d", 12)
    h.took_probe("d", 12)
    assert not h.usable("d", 13) and h.usable("d", 17)
    h.report(ok("d"), 13)
    assert h.refresh("d", 13) == CLOSED and h.get("d").failures == 0
    # fails again: a fresh run of failures is needed, then it opens with a new cool-down
    for t in (20, 21, 22):
        h.report(fail("d"), t)
    assert h.refresh("d", 25) == OPEN and h.refresh("d", 32) == HALF_OPEN
    # a failure while half-open reopens at once
    h.report(fail("d"), 33)
    assert h.refresh("d", 34) == OPEN and h.refresh("d", 43) == HALF_OPEN
    assert seen == [("d", OPEN), ("d", HALF_OPEN), ("d", CLOSED), ("d", OPEN), ("d", HALF_OPEN),
                    ("d", OPEN), ("d", HALF_OPEN)]


def test_non_retryable_failures_do_not_open_the_circuit() -> None:
    h = HealthView(CFG)
    for _ in range(10):
        h.report(fail("d", retryable=False), 0)
    assert h.refresh("d", 0) == CLOSED and h.get("d").error_rate == 0.0


def serving(dep: str, weight: float) -> Serving:
    return Serving(Target(dep, "p", "m"), weight)


OPTIONS = [serving("a", 3), serving("b", 1), serving("c", 0)]


def test_primary_is_weighted_and_reproducible_per_request_id() -> None:
    h = HealthView(CFG)
    firsts = Counter(order(OPTIONS, h, f"req-{i}", 0)[0].deployment for i in range(2000))
    assert set(firsts) == {"a", "b"}  # weight 0 is never primary
    assert 0.65 < firsts["a"] / 2000 < 0.85
    assert order(OPTIONS, h, "req-7", 0) == order(OPTIONS, h, "req-7", 0)
    # every deployment is in every plan, each once
    assert sorted(t.deployment for t in order(OPTIONS, h, "x", 0)) == ["a", "b", "c"]


def test_open_circuit_moves_to_the_end_and_recovers() -> None:
    h = HealthView(CFG)
    for t in (0, 1, 2):
        h.report(fail("a"), t)
    for i in range(50):
        assert [t.deployment for t in order(OPTIONS, h, f"r{i}", 3)] == ["b", "c", "a"]
    # half-open: "a" gets a trial as soon as the draw offers it, then waits for the outcome
    plans = [order(OPTIONS, h, f"r{i}", 13) for i in range(50)]
    assert sum(p[0].deployment == "a" for p in plans) == 1
    h.report(ok("a"), 14)
    assert Counter(order(OPTIONS, h, f"s{i}", 14)[0].deployment for i in range(200))["a"] > 100


def test_all_circuits_open_still_gives_a_plan() -> None:
    h = HealthView(CFG)
    for d in ("a", "b", "c"):
        for t in (0, 1, 2):
            h.report(fail(d), t)
    assert len(order(OPTIONS, h, "r", 3)) == 3


def test_healthier_fallbacks_first() -> None:
    h = HealthView(CFG)
    opts = [serving("a", 1), serving("b", 1), serving("c", 1)]
    h.report(fail("b"), 0)
    h.report(ok("c", 0.5), 0)
    out = order(opts, h, "r", 0)
    rest = [t.deployment for t in out[1:]]
    if out[0].deployment != "b":
        assert rest[-1] == "b"
