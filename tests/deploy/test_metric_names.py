"""Every metric a dashboard panel or an alert queries is one the services export.

Names are parsed out of the PromQL and compared with what ``shared.metrics`` registers (histograms
expose ``_bucket``/``_sum``/``_count``, counters ``_total``), so a renamed metric breaks this test
instead of silently emptying a panel or disarming an alert.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from shared import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan", "atan2"}
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_DURATION_OR_NUMBER = re.compile(r"^\d")


# series other exporters provide, which an alert or panel may query beside Janus's own
EXTERNAL = {
    # prometheus-nats-exporter (the NATS pods' sidecar: -healthz -jsz=all), collector/jsz.go, healthz.go
    "gnatsd_healthz_status": "prometheus-nats-exporter -healthz",
    "jetstream_server_total_message_bytes": "prometheus-nats-exporter -jsz",
    "jetstream_server_max_storage": "prometheus-nats-exporter -jsz",
    "jetstream_server_total_streams": "prometheus-nats-exporter -jsz",
    "jetstream_consumer_num_pending": "prometheus-nats-exporter -jsz=all",
    "jetstream_stream_total_bytes": "prometheus-nats-exporter -jsz=all",
    # kube-state-metrics
    "kube_horizontalpodautoscaler_status_current_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_spec_max_replicas": "kube-state-metrics",
    "kube_horizontalpodautoscaler_status_desired_replicas": "kube-state-metrics",
    # cAdvisor (kubelet)
    "container_cpu_cfs_throttled_periods_total": "cAdvisor",
    "container_cpu_cfs_periods_total": "cAdvisor",
    # Prometheus itself, one per scrape target
    "up": "Prometheus",
}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords and labels left out)."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub("", s)
    s = _RANGE.sub("", s)
    s = _GROUPING.sub("", s)
    s = re.sub(r"\boffset\s+\S+", "", s)
    return {m for m in _IDENT.findall(s) if m.lower() not in _KEYWORDS and not _DURATION_OR_NUMBER.match(m)}


def exported_names() -> set[str]:
    names: set[str] = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, (MetricWrapperBase, metrics.LoopCounter, metrics.LoopHistogram)):
            continue
        # the request path's own metrics (Loop*) export no _created series
        created = ("_created",) if isinstance(obj, MetricWrapperBase) else ()
        for family in obj.describe():
            if family.type == "counter":
                names |= {family.name + s for s in ("_total", *created)}
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_sum", "_count", *created)}
            else:
                names.add(family.name)
    return names


def dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board.get("panels", []):
            for sub in [panel, *panel.get("panels", [])]:
                for target in sub.get("targets", []):
                    out.append((f"{path.name}: {sub.get('title')}", target["expr"]))
        for var in board.get("templating", {}).get("list", []):
            query = var.get("query")
            if var.get("type") == "query" and isinstance(query, str):
                # label_values(metric{...}, label): only the first argument names a series
                m = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", query)
                out.append((f"{path.name}: ${var['name']}", m.group(1) if m else query))
    return out


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def rule_queries() -> list[tuple[str, str]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return out


def test_parser_finds_series_and_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, gen_ai_request_model) (rate(foo_bucket{status=~"5..",x="a b"}'
        "[$__rate_interval]))) / on (job) group_left sum without (pool) (bar_total offset 1h) > 3 "
        "and baz or vector(0)"
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total", "baz"}


def test_exported_names_follow_the_type_suffixes() -> None:
    names = exported_names()
    assert "janus_http_requests_total" in names
    assert "janus_gateway_overhead_seconds_bucket" in names
    assert "janus_in_flight_requests" in names
    assert "janus_gateway_overhead_seconds" not in names  # a histogram has no bare series


def test_there_is_something_to_check() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"overview", "providers", "metering", "routing"}
    alerts = {name.split(": ")[1] for name, _ in rule_queries()}
    assert alerts >= {
        "JanusErrorBudgetBurnFast", "JanusErrorBudgetBurnSlow", "JanusGatewayOverheadP99High",
        "JanusTimeToFirstTokenHigh", "JanusBudgetDenialSpike", "JanusWorkerSaturated", "JanusCircuitOpen",
        "JanusNatsDisconnected", "JanusJetStreamStoreFilling", "JanusJetStreamWriteFailures",
        "JanusJetStreamNoMetaLeader", "JanusAutoscalerAtMax",
    }


@pytest.mark.parametrize(("where", "expr"), dashboard_queries() + rule_queries())
def test_every_queried_metric_is_exported(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - exported_names() - set(EXTERNAL) - recorded_names()
    assert not unknown, f"{where}: {sorted(unknown)} not exported by shared/metrics.py"


def test_every_exported_metric_is_on_a_dashboard() -> None:
    used = {n for _, e in dashboard_queries() for n in metric_names(e)}
    bases = {f.name for o in vars(metrics).values() if isinstance(o, MetricWrapperBase) for f in o.describe()}
    missing = {b for b in bases if not any(u == b or u.startswith(b + "_") for u in used)}
    assert not missing, f"metrics no dashboard shows: {sorted(missing)}"


def test_the_slo_counts_in_band_stream_errors_per_namespace() -> None:
    """A stream cut after its 200 is an error of the availability objective, and dev never mixes
    with prod: every recording rule keeps the namespace."""
    groups = yaml.safe_load(RULE_FILES[0].read_text())["groups"]
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    for window in ("5m", "30m", "1h", "6h"):
        assert "janus_stream_errors_total" in recorded[f"janus:request_errors:rate{window}"]
    for rule in (r for g in groups for r in g["rules"]):
        for grouping in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            name = rule.get("record") or rule["alert"]
            assert "namespace" in grouping, f"{name} sums dev and prod together"
