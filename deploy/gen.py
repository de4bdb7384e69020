"""Generate the deployment files that are derived from others, so they cannot drift:

- ``deploy/grafana/dashboards/*.json``: the four dashboards, built from the panel lists below;
- ``deploy/k8s/base/monitoring/prometheusrule.yaml``: the PrometheusRule carrying exactly the groups of
  ``deploy/prometheus/rules/janus.rules.yml`` (the file promtool checks and tests);
- ``deploy/k8s/base/config/{catalog,plans}.yaml`` and ``deploy/k8s/overlays/prod/catalog.production.yaml``:
  copies of ``config/`` for the kustomize ConfigMap generators (kustomize refuses files outside its root);
- the NATS identities of ``config/nats-permissions.yaml``: the servers' ``authorization`` block
  (``deploy/k8s/base/nats/auth.conf``, its dev overlay copy, ``deploy/compose/nats-auth.conf``) and
  ``deploy/k8s/base/nats/identities.yaml``, the patch that gives each service its NKey seed and the
  CA of the servers' TLS certificate, and the servers their identities' public keys.

    python deploy/gen.py           write them
    python deploy/gen.py --check   exit 1 and name the stale files (validate.sh and tests run this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: tools/ and shared/ are the project's packages

from tools.natsauth import authorization, env_name, load_identities, variable_keys  # noqa: E402

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "janus.rules.yml"
PROMETHEUS_RULE = DEPLOY / "k8s" / "base" / "monitoring" / "prometheusrule.yaml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
K8S_CONFIG = DEPLOY / "k8s" / "base" / "config"
PROD_CATALOG = DEPLOY / "k8s" / "overlays" / "prod" / "catalog.production.yaml"
# every panel reads the data source the $datasource variable names (provisioned: uid "prometheus")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# every selector is narrowed to the $namespace variable; "All" (.*) also matches series without
# the label (the compose stack's Prometheus adds none)
_SERIES = re.compile(r"\b((?:janus|jetstream|gnatsd|kube|container)_[a-z0-9_]+|janus:[a-z0-9_:]+)(\{)?")


def _ns(expr: str) -> str:
    def add(m: re.Match[str]) -> str:
        return f'{m.group(1)}{{namespace=~"$namespace"' + ("," if m.group(2) else "}")

    return _SERIES.sub(add, expr)


# ----------------------------------------------------------------------------- dashboards
# (title, [(legend, PromQL)], unit, panel type)
Panel = tuple[str, list[tuple[str, str]], str, str]

RATE = "$__rate_interval"


def P(title: str, unit: str, *queries: tuple[str, str], kind: str = "timeseries") -> Panel:
    return (title, list(queries), unit, kind)


def _rate(metric: str, by: str = "", fn: str = "rate", match: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} ({fn}({metric}{match}[{RATE}]))"


def _p(q: float, metric: str, by: str = "") -> str:
    keys = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket[{RATE}])))"


_PROVIDER = "gen_ai_provider_name"
_MODEL = "gen_ai_request_model"

OVERVIEW: list[Panel] = [
    P("Requests per second by status", "reqps", ("{{status}}", _rate("janus_http_requests_total", "status"))),
    P(
        "5xx ratio",
        "percentunit",
        (
            "5xx",
            _rate("janus_http_requests_total", match='{status=~"5.."}')
            + " / "
            + _rate("janus_http_requests_total"),
        ),
    ),
    P("In-flight requests", "short", ("{{instance}}", "sum by (instance) (janus_in_flight_requests)")),
    P(
        "Request duration",
        "s",
        ("p50 {{route}}", _p(0.5, "janus_http_request_duration_seconds", "route")),
        ("p99 {{route}}", _p(0.99, "janus_http_request_duration_seconds", "route")),
    ),
    P(
        "Gateway overhead (Janus's own time)",
        "s",
        ("p50", _p(0.5, "janus_gateway_overhead_seconds")),
        ("p99", _p(0.99, "janus_gateway_overhead_seconds")),
    ),
    P(
        "Time to first token p99",
        "s",
        ("{{gen_ai_request_model}}", _p(0.99, "janus_time_to_first_token_seconds", _MODEL)),
    ),
    P(
        "Streams ended with an error",
        "short",
        ("{{code}}", _rate("janus_stream_errors_total", "code", fn="increase")),
    ),
    P("Authentication failures", "reqps", ("{{reason}}", _rate("janus_auth_failures_total", "reason"))),
    P(
        "Error ratio (5xx and streams cut in-band; the objective allows 0.5 %)",
        "percentunit",
        ("{{namespace}} 5m", "janus:request_error_ratio:rate5m"),
        ("{{namespace}} 1h", "janus:request_error_ratio:rate1h"),
    ),
    P("Services connected to NATS", "short", ("{{job}} {{instance}}", "janus_nats_connected")),
    P(
        "Event-loop lag p99 per service (CPU starvation, blocking calls)",
        "s",
        ("{{job}}", _p(0.99, "janus_event_loop_lag_seconds", "job")),
    ),
    P(
        "Autoscalers: current, desired and maximum replicas",
        "short",
        (
            "{{horizontalpodautoscaler}} current",
            "max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas)",
        ),
        (
            "{{horizontalpodautoscaler}} desired",
            "max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_desired_replicas)",
        ),
        (
            "{{horizontalpodautoscaler}} max",
            "max by (horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_max_replicas)",
        ),
    ),
    P(
        "CPU throttling by pod (share of CFS periods throttled)",
        "percentunit",
        (
            "{{pod}}",
            _rate("container_cpu_cfs_throttled_periods_total", "pod")
            + " / "
            + _rate("container_cpu_cfs_periods_total", "pod"),
        ),
    ),
    P("Service replicas", "short", ("{{service}}", "sum by (service) (janus_service_info)"), kind="stat"),
]

PROVIDERS: list[Panel] = [
    P(
        "Upstream latency p99",
        "s",
        ("{{gen_ai_provider_name}}", _p(0.99, "janus_upstream_request_duration_seconds", _PROVIDER)),
    ),
    P(
        "Upstream errors by class",
        "reqps",
        (
            "{{gen_ai_provider_name}} {{error_type}}",
            _rate("janus_upstream_errors_total", f"{_PROVIDER}, error_type"),
        ),
    ),
    P(
        "Upstream calls per second",
        "reqps",
        ("{{gen_ai_provider_name}}", _rate("janus_upstream_request_duration_seconds_count", _PROVIDER)),
    ),
    P(
        "Tokens per second",
        "short",
        (
            "{{gen_ai_provider_name}} {{gen_ai_token_type}}",
            _rate("janus_tokens_total", f"{_PROVIDER}, gen_ai_token_type"),
        ),
    ),
    P(
        "Worker saturation, fullest pod per provider (in flight / the pod's cap)",
        "percentunit",
        (
            "{{gen_ai_provider_name}}",
            f"max by ({_PROVIDER}) (janus_worker_in_flight / janus_worker_capacity)",
        ),
    ),
    P(
        "Upstream error ratio by provider",
        "percentunit",
        (
            "{{gen_ai_provider_name}}",
            _rate("janus_upstream_errors_total", _PROVIDER)
            + " / "
            + _rate("janus_upstream_request_duration_seconds_count", _PROVIDER),
        ),
    ),
    P(
        "Upstream error ratio by deployment (0 where a deployment only succeeds)",
        "percentunit",
        (
            "{{gen_ai_provider_name}} {{deployment}}",
            "("
            + _rate("janus_upstream_calls_total", f"{_PROVIDER}, deployment", match='{outcome="error"}')
            + " or 0 * "
            + _rate("janus_upstream_calls_total", f"{_PROVIDER}, deployment")
            + ") / "
            + _rate("janus_upstream_calls_total", f"{_PROVIDER}, deployment"),
        ),
    ),
    P(
        "Worker saturation per deployment, fullest pod (in flight / the pod's cap for it)",
        "percentunit",
        (
            "{{gen_ai_provider_name}} {{deployment}}",
            f"max by ({_PROVIDER}, deployment) "
            "(janus_worker_deployment_in_flight / janus_worker_deployment_capacity)",
        ),
    ),
    P(
        "Fallbacks by provider and reason",
        "reqps",
        ("{{gen_ai_provider_name}} {{reason}}", _rate("janus_fallbacks_total", f"{_PROVIDER}, reason")),
    ),
]

METERING: list[Panel] = [
    P(
        "Admission decisions",
        "reqps",
        ("{{decision}} {{pool}}", _rate("janus_budget_decisions_total", "decision, pool")),
    ),
    P(
        "Credits charged per second by model",
        "short",
        ("{{gen_ai_request_model}}", _rate("janus_credits_charged_total", _MODEL)),
    ),
    P(
        "Credits charged per second by plan",
        "short",
        ("{{plan}}", _rate("janus_credits_charged_total", "plan")),
    ),
    P("Settlements by result", "reqps", ("{{result}}", _rate("janus_settlements_total", "result"))),
    P(
        "Settlements dead-lettered",
        "short",
        ("{{reason}}", _rate("janus_settlements_dead_lettered_total", "reason", fn="increase")),
    ),
    P("Open holds", "short", ("{{instance}}", "sum by (instance) (janus_holds_open)")),
    P("Holds released by the reaper", "short", ("reaped", _rate("janus_holds_reaped_total", fn="increase"))),
    P(
        "Credit leases and the requests admitted on them",
        "reqps",
        ("leases {{event}}", _rate("janus_credit_leases_total", "event")),
        ("admitted on a lease", _rate("janus_lease_admissions_total")),
    ),
    P(
        "Reserve / settle latency p99",
        "s",
        ("{{operation}}", _p(0.99, "janus_metering_operation_seconds", "operation")),
    ),
    P("Compare-and-set retries", "short", ("retries", _rate("janus_metering_cas_retries_total"))),
    P(
        "Changes per KV write (group commit), p50",
        "short",
        ("p50", _p(0.5, "janus_metering_commit_operations")),
    ),
    P(
        "Budget record size per KV write (grows with a user's settled ids)",
        "bytes",
        ("p50", _p(0.5, "janus_metering_record_bytes")),
        ("p99", _p(0.99, "janus_metering_record_bytes")),
    ),
    P("Budget record bytes written", "Bps", ("written", _rate("janus_metering_record_bytes_sum"))),
    P(
        "Usage reported above its hold (charged the hold)",
        "short",
        ("{{gen_ai_request_model}}", _rate("janus_usage_over_hold_total", _MODEL, fn="increase")),
    ),
    P(
        "JetStream writes refused (full: the store or a stream limit is reached)",
        "ops",
        ("{{store}} {{reason}}", _rate("janus_jetstream_write_errors_total", "store, reason")),
    ),
    P(
        "Daily history: ledger entries not yet counted",
        "short",
        ("behind", "max (janus_daily_history_lag_entries)"),
    ),
]

ROUTING: list[Panel] = [
    P("Route decisions by reason", "reqps", ("{{reason}}", _rate("janus_route_decisions_total", "reason"))),
    P("Models chosen", "reqps", ("{{gen_ai_request_model}}", _rate("janus_route_decisions_total", _MODEL))),
    P(
        "Routing decision time",
        "s",
        ("p50", _p(0.5, "janus_route_decision_seconds")),
        ("p99", _p(0.99, "janus_route_decision_seconds")),
    ),
    P(
        "Circuit state (0 closed, 1 half-open, 2 open)",
        "short",
        ("{{deployment}}", "max by (deployment) (janus_circuit_state)"),
    ),
    P("Fallbacks by reason", "reqps", ("{{reason}}", _rate("janus_fallbacks_total", "reason"))),
]

NATS: list[Panel] = [
    P(
        "JetStream store used per server",
        "percentunit",
        (
            "{{server_name}}",
            "max by (server_name) (jetstream_server_total_message_bytes / jetstream_server_max_storage)",
        ),
    ),
    P(
        "Settlements waiting for metering",
        "short",
        ("pending", 'max(jetstream_consumer_num_pending{stream_name="JANUS_SETTLE"})'),
    ),
    P(
        "Servers that are the JetStream meta leader (0: no quorum)",
        "short",
        ("leaders", 'count(jetstream_server_total_streams{is_meta_leader="true"}) or vector(0)'),
    ),
    P("Server health (0 ok)", "short", ("{{instance}}", "max by (instance) (gnatsd_healthz_status)")),
    P(
        "Bytes per stream",
        "bytes",
        ("{{stream_name}}", 'max by (stream_name) (jetstream_stream_total_bytes{is_stream_leader="true"})'),
    ),
    P(
        "JetStream writes refused by Janus",
        "ops",
        ("{{store}} {{reason}}", _rate("janus_jetstream_write_errors_total", "store, reason")),
    ),
]

DASHBOARD_SPECS: dict[str, tuple[str, str, list[Panel]]] = {
    "overview": ("Janus / Overview", "Traffic, errors and latency at the gateway", OVERVIEW),
    "providers": ("Janus / Providers", "Upstream calls, tokens and worker pools", PROVIDERS),
    "metering": ("Janus / Metering", "Budget admission, settlement and credits", METERING),
    "routing": ("Janus / Routing", "Routing decisions, model choice and circuit breakers", ROUTING),
    "nats": ("Janus / NATS", "JetStream store, quorum and the settlement backlog", NATS),
}

_VARIABLES = [
    {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
        "refresh": 1,
        "current": {"text": "Prometheus", "value": "prometheus"},
        "options": [],
    },
    {
        "name": "namespace",
        "label": "Namespace",
        "type": "query",
        "datasource": DATASOURCE,
        "query": "label_values(janus_service_info, namespace)",
        "refresh": 2,
        "includeAll": True,
        "allValue": ".*",
        "multi": False,
        "hide": 0,
        "sort": 1,
        "current": {"text": "All", "value": "$__all"},
        "options": [],
    },
]


_LEGEND = {"legend": {"displayMode": "list", "placement": "bottom"}}


def dashboard(slug: str) -> dict[str, Any]:
    title, description, panels = DASHBOARD_SPECS[slug]
    out: list[dict[str, Any]] = []
    for i, (ptitle, queries, unit, kind) in enumerate(panels):
        w = 12
        out.append(
            {
                "id": i + 1,
                "type": kind,
                "title": ptitle,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": w, "x": (i % 2) * w, "y": (i // 2) * 8},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "datasource": DATASOURCE,
                        "expr": _ns(expr),
                        "legendFormat": legend,
                    }
                    for j, (legend, expr) in enumerate(queries)
                ],
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": _LEGEND if kind == "timeseries" else {},
            }
        )
    return {
        "uid": f"janus-{slug}",
        "title": title,
        "description": description,
        "tags": ["janus"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "panels": out,
        "templating": {"list": _VARIABLES},
        "annotations": {"list": []},
        "links": [],
    }


# ----------------------------------------------------------------------------- PrometheusRule
class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # multi-line PromQL stays a readable block, as in the rules file
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def prometheus_rule() -> str:
    rules = yaml.safe_load(RULES.read_text())
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        # the label a Prometheus Operator's ruleSelector commonly matches on; adjust to yours
        "metadata": {
            "name": "janus",
            "labels": {"app.kubernetes.io/part-of": "janus", "release": "prometheus"},
        },
        "spec": {"groups": rules["groups"]},
    }
    head = "# Generated by deploy/gen.py from deploy/prometheus/rules/janus.rules.yml; edit that file.\n---\n"
    return head + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=110, default_flow_style=False)


# ----------------------------------------------------------------------------- NATS identities
NATS_AUTH = [
    DEPLOY / "k8s" / "base" / "nats" / "auth.conf",
    DEPLOY / "k8s" / "overlays" / "dev" / "auth.conf",
    DEPLOY / "compose" / "nats-auth.conf",
]
IDENTITY_PATCH = DEPLOY / "k8s" / "base" / "nats" / "identities.yaml"
# where a service finds its seed and the servers' CA; the Secrets are made by the operator
SEED_DIR = "/etc/janus/nats-identity"
CA_DIR = "/etc/janus/nats-tls"
SERVICE_IDENTITIES = ("gateway", "router", "worker", "metering")  # operator: the CLI, outside the cluster


def nats_auth() -> str:
    head = (
        "# Generated by deploy/gen.py from config/nats-permissions.yaml; edit that file.\n"
        "# Each identity's public NKey comes from the server's environment (JANUS_NKEY_<IDENTITY>).\n"
    )
    return head + authorization(variable_keys())


def identity_patch() -> str:
    docs: list[dict[str, Any]] = []
    for name in SERVICE_IDENTITIES:
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "template": {
                        "spec": {
                            # secret volumes are group-readable by this group only
                            "securityContext": {"fsGroup": 10001},
                            "containers": [
                                {
                                    "name": name,
                                    "env": [{"name": "JANUS_NATS_NKEY_FILE", "value": f"{SEED_DIR}/seed"}],
                                    "volumeMounts": [
                                        {"name": "nats-identity", "mountPath": SEED_DIR, "readOnly": True},
                                        {"name": "nats-ca", "mountPath": CA_DIR, "readOnly": True},
                                    ],
                                }
                            ],
                            "volumes": [
                                {
                                    "name": "nats-identity",
                                    "secret": {"secretName": f"janus-nats-{name}", "defaultMode": 0o440},
                                },
                                # the CA only: the servers' private key never reaches a client pod
                                {
                                    "name": "nats-ca",
                                    "secret": {
                                        "secretName": "nats-tls",
                                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                    },
                                },
                            ],
                        }
                    }
                },
            }
        )
    docs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "nats"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "nats",
                                "env": [
                                    {
                                        "name": env_name(name),
                                        "valueFrom": {
                                            "secretKeyRef": {"name": "janus-nats-nkeys", "key": name}
                                        },
                                    }
                                    for name in load_identities()
                                ],
                                "volumeMounts": [
                                    {"name": "tls", "mountPath": "/etc/nats-tls", "readOnly": True}
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "tls", "secret": {"secretName": "nats-tls", "defaultMode": 0o440}}
                        ],
                    }
                }
            },
        }
    )
    head = (
        "# Generated by deploy/gen.py from config/nats-permissions.yaml; edit that file.\n"
        "# Each service signs in to NATS with its own NKey seed (Secret janus-nats-<service>, key seed)\n"
        "# and verifies the servers' certificate against the CA of the Secret nats-tls; the servers\n"
        "# read the identities' public keys from the Secret janus-nats-nkeys (deploy/README.md).\n"
    )
    return head + "".join("---\n" + yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=110) for d in docs)


# ----------------------------------------------------------------------------- all outputs
def outputs() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for slug in DASHBOARD_SPECS:
        files[DASHBOARDS / f"{slug}.json"] = json.dumps(dashboard(slug), indent=2) + "\n"
    files[PROMETHEUS_RULE] = prometheus_rule()
    for name in ("catalog.yaml", "plans.yaml"):
        files[K8S_CONFIG / name] = (ROOT / "config" / name).read_text()
    files[PROD_CATALOG] = (ROOT / "config" / "catalog.production.yaml").read_text()
    for path in NATS_AUTH:
        files[path] = nats_auth()
    files[IDENTITY_PATCH] = identity_patch()
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = ap.parse_args()
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print("out of date (run: python deploy/gen.py):", *stale, sep="\n  ", file=sys.stderr)
        return 1
    for p in stale:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
