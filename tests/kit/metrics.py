"""Reading a service's ``/metrics`` page in the tests."""

from __future__ import annotations


def parse_metric(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` (Prometheus text format) whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if any(f'{k}="{v}"' not in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total
