"""Where a request's time goes inside Janus, from the services' own Prometheus histograms.

Each service's ``/metrics`` is scraped just before and just after a phase's measured window (outside
the CPU window, so scraping never counts as Janus's work); the difference of a histogram's ``_sum``
over the difference of its ``_count`` is the mean time of that stage during the window.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# (service, histogram) pairs worth a column: the per-hop stages of one request
STAGES: dict[str, str] = {
    "janus_http_request_duration_seconds": "gateway",
    "janus_gateway_overhead_seconds": "gateway",
    "janus_time_to_first_token_seconds": "gateway",
    "janus_route_decision_seconds": "router",
    "janus_upstream_request_duration_seconds": "worker",
    "janus_metering_operation_seconds": "metering",
}
COUNTERS = ("janus_metering_cas_retries_total", "janus_fallbacks_total", "janus_stream_errors_total")

Sample = dict[str, float]  # "name{labels}" -> value


def scrape(ops_ports: dict[str, int]) -> Sample:
    out: Sample = {}
    for service, port in ops_ports.items():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            wanted_hist = STAGES.get(family.name) == service
            wanted_counter = family.name + "_total" in COUNTERS or family.name in COUNTERS
            if not (wanted_hist or wanted_counter):
                continue
            for s in family.samples:
                if wanted_hist and not (s.name.endswith("_sum") or s.name.endswith("_count")):
                    continue
                if wanted_counter and not s.name.endswith("_total"):
                    continue
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                key = f"{s.name}{{{labels}}}"
                out[key] = out.get(key, 0.0) + s.value
    return out


def stage_means(before: Sample, after: Sample) -> dict[str, Any]:
    """Mean milliseconds per stage (and counter deltas) between two scrapes."""
    result: dict[str, Any] = {}
    for key, total in after.items():
        name, _, labels = key.partition("{")
        labels = labels.rstrip("}")
        if name.endswith("_sum"):
            base = name[:-4]
            count_key = f"{base}_count{{{labels}}}"
            n = after.get(count_key, 0.0) - before.get(count_key, 0.0)
            if n > 0:
                label = f"{base}[{labels}]" if labels else base
                result[label] = {"mean_ms": round((total - before.get(key, 0.0)) / n * 1000, 3),
                                 "count": int(n)}
        elif name.endswith("_total"):
            delta = total - before.get(key, 0.0)
            if delta:
                result[f"{name}[{labels}]" if labels else name] = {"delta": int(delta)}
    return dict(sorted(result.items()))
