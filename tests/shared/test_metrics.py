"""``shared.metrics.children``: label children resolved once, and bounded where another service
chooses the values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shared import metrics


def _series(counter: Counter) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels.values()): s.value
        for family in counter.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_children_are_resolved_once_per_label_set() -> None:
    c = Counter("t_calls", "test", ["provider", "code"], registry=CollectorRegistry())
    child = metrics.children(c)
    assert child("a", "x") is child("a", "x")
    child("a", "x").inc()
    child("b", "y").inc(2)
    assert _series(c) == {("a", "x"): 1.0, ("b", "y"): 2.0}


def test_a_bounded_set_counts_what_has_no_room_under_other() -> None:
    """A neighbour sending a new error code with every message: the first label sets keep their
    series, every later one is counted, under "other", in one series."""
    c = Counter("t_errors", "test", ["provider", "code"], registry=CollectorRegistry())
    child = metrics.children(c, most=3)
    for i in range(100):
        child("p", f"code-{i}").inc()
    child("p", "code-0").inc()  # one that has its series goes on counting there
    assert _series(c) == {
        ("p", "code-0"): 2.0,
        ("p", "code-1"): 1.0,
        ("p", "code-2"): 1.0,
        (metrics.OTHER, metrics.OTHER): 97.0,
    }
