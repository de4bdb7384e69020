"""``shared.metrics``: label children resolved once, and bounded where another service chooses the
values; the request path's own counters and histograms exported as prometheus_client's are."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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


def _exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_loop_metrics_export_what_prometheus_client_would() -> None:
    """The same moves on prometheus_client's Counter and Histogram and on the loop metrics give the
    same exposition, line for line (less the ``_created`` series): names, types, help, labels, and
    every value on a bucket's bound filed in that bucket, as Prometheus reads ``le``."""
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    bounds = (0.001, 0.1, 1, 5)
    pairs = [
        (
            Counter("t_requests_total", "requests", ["route", "status"], registry=theirs),
            metrics.LoopCounter("t_requests_total", "requests", ["route", "status"], registry=ours),
        ),
        (
            Histogram("t_seconds", "time", ["route"], buckets=bounds, registry=theirs),
            metrics.LoopHistogram("t_seconds", "time", ["route"], buckets=bounds, registry=ours),
        ),
        (
            Counter("t_plain", "no labels", registry=theirs),
            metrics.LoopCounter("t_plain", "no labels", registry=ours),
        ),
        (
            Histogram("t_sizes", "no labels", buckets=(10, 100), registry=theirs),
            metrics.LoopHistogram("t_sizes", "no labels", buckets=(10, 100), registry=ours),
        ),
    ]
    values = (0.0, 0.0005, 0.001, 0.0010001, 0.1, 0.5, 1, 4.99, 5, 5.01, 1e9)
    for counter, loop_counter in pairs[:1]:
        for c in (counter, loop_counter):
            c.labels("/v1/chat", "200").inc()
            c.labels("/v1/chat", "200").inc(2.5)
            c.labels("/v1/models", "401").inc()
    for c in (pairs[2][0], pairs[2][1]):
        c.inc()
        c.inc(3)
    for h in (pairs[1][0], pairs[1][1]):
        for v in values:
            h.labels("/v1/chat").observe(v)
        h.labels("/v1/embeddings").observe(0.2)
    for h in (pairs[3][0], pairs[3][1]):
        for v in (1, 10, 11, 100, 1000):
            h.observe(v)
    assert _exposition(ours) == _exposition(theirs)
    assert any('le="0.001",route="/v1/chat"} 3.0' in line for line in _exposition(ours))


def test_loop_metrics_refuse_what_prometheus_client_refuses() -> None:
    registry = CollectorRegistry()
    counter = metrics.LoopCounter("t_refused_total", "test", ["code"], registry=registry)
    with pytest.raises(ValueError):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError):
        counter.labels("a", "b")
    with pytest.raises(ValueError):
        counter.inc()  # labelled: only a child counts
    with pytest.raises(ValueError):  # the same name twice on one registry
        metrics.LoopCounter("t_refused_total", "again", registry=registry)
    hist = metrics.LoopHistogram("t_refused_seconds", "test", ["route"], buckets=(1,), registry=registry)
    with pytest.raises(ValueError):
        hist.observe(1.0)
