"""The Kubernetes base and the compose file agree with the code: ports, env names, probes, grace.

Reads the base's YAML files directly (kustomize builds and kubernetes-validate run in
deploy/validate.sh), so these checks need nothing but the repository.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import CommonSettings, load_settings, termination_grace_seconds, variable_names

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "k8s" / "base"
OPS_PORTS = {"gateway": 9100, "router": 9101, "worker": 9102, "metering": 9103}


def base_objects() -> list[dict[str, Any]]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out = []
    for res in kust["resources"]:
        out += [d for d in yaml.safe_load_all((BASE / res).read_text()) if d]
    return out


OBJECTS = base_objects()


def find(kind: str, name: str) -> dict[str, Any]:
    for o in OBJECTS:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise AssertionError(f"no {kind} {name} in deploy/k8s/base")


def container(name: str) -> dict[str, Any]:
    return find("Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def settings_fields(service: str) -> frozenset[str]:
    """JANUS_* names the service reads: the fields of its settings class."""
    mod = importlib.import_module(f"services.{service}.settings")
    classes = [o for o in vars(mod).values() if isinstance(o, type) and issubclass(o, CommonSettings)]
    return variable_names(*classes)


def configmap_literals(name: str) -> dict[str, str]:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for gen in kust["configMapGenerator"]:
        if gen["name"] == name:
            return dict(lit.split("=", 1) for lit in gen.get("literals", []))
    raise AssertionError(f"no configMapGenerator {name}")


@pytest.mark.parametrize("service", sorted(OPS_PORTS))
def test_probes_on_the_ops_port(service: str) -> None:
    c = container(service)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["ops"] == OPS_PORTS[service]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env["JANUS_OPS_PORT"] == str(OPS_PORTS[service])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert c["args"] == [f"services.{service}"]


@pytest.mark.parametrize("service", sorted(OPS_PORTS))
def test_hardened(service: str) -> None:
    dep = find("Deployment", service)
    pod = dep["spec"]["template"]["spec"]
    c = container(service)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    for key in ("requests", "limits"):
        assert set(c["resources"][key]) == {"cpu", "memory"}
    assert pod["terminationGracePeriodSeconds"] >= termination_grace_seconds(
        pod_settings(service), pre_stop_seconds(c)
    )


def pod_settings(service: str) -> CommonSettings:
    """The settings the service's container starts with: the shared ConfigMap, then its own env."""
    env = configmap_literals("janus-env")
    env |= {e["name"]: e["value"] for e in container(service).get("env", []) if "value" in e}
    return load_settings(CommonSettings, env)


def pre_stop_seconds(c: dict[str, Any]) -> float:
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0


@pytest.mark.parametrize("service", ["gateway", "worker"])
def test_stream_holders_drain_for_the_whole_request_bound(service: str) -> None:
    """A rollout or scale-down must let a stream run to the request bound: the drain grace the
    code derives covers it, and nothing in the manifests shortens it."""
    common = pod_settings(service)
    assert common.request_deadline_seconds == CommonSettings().request_deadline_seconds
    assert common.drain_grace() > common.request_deadline_seconds


def overlay_literals(overlay: str, name: str) -> dict[str, str]:
    kust = yaml.safe_load((BASE.parent / "overlays" / overlay / "kustomization.yaml").read_text())
    gens = [g for g in kust.get("configMapGenerator", []) if g["name"] == name]
    return {k: v for g in gens for k, v in (lit.split("=", 1) for lit in g.get("literals", []))}


@pytest.mark.parametrize("overlay", ["base", "dev", "prod"])
@pytest.mark.parametrize("service", sorted(OPS_PORTS))
def test_every_pod_starts_with_a_hold_that_outlives_the_request_bound(service: str, overlay: str) -> None:
    """Every service refuses to start when the reaper could free a hold within the request bound:
    each overlay's settings must pass the same check the services run at start-up."""
    common = pod_settings(service)
    if overlay != "base":
        env = configmap_literals("janus-env") | overlay_literals(overlay, "janus-env")
        env |= {e["name"]: e["value"] for e in container(service).get("env", []) if "value" in e}
        common = load_settings(CommonSettings, env)
    common.check_hold_lifetime()
    # stated beside the bound, so an operator raising one sees the other
    stated = set(configmap_literals("janus-env"))
    assert {"JANUS_HOLD_TTL_SECONDS", "JANUS_REQUEST_DEADLINE_SECONDS"} <= stated


@pytest.mark.parametrize("service", ["gateway", "worker"])
def test_scale_down_is_rate_limited(service: str) -> None:
    down = find("HorizontalPodAutoscaler", service)["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] and down.get("selectPolicy", "Max") != "Disabled"
    for policy in down["policies"]:
        # a handful of pods per period, each draining for up to the request bound
        assert policy["type"] in {"Pods", "Percent"} and policy["value"] <= 20
        assert policy["periodSeconds"] >= 60


def test_no_replicas_where_an_autoscaler_owns_them() -> None:
    owned = {o["spec"]["scaleTargetRef"]["name"] for o in OBJECTS if o["kind"] == "HorizontalPodAutoscaler"}
    assert owned
    for name in owned:
        assert "replicas" not in find("Deployment", name)["spec"], f"{name}: the HPA owns replicas"


def test_gateway_drains_and_takes_http() -> None:
    c = container("gateway")
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    env = {e["name"]: e for e in c["env"]}
    assert env["JANUS_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "janus-secrets"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == int(env["JANUS_PORT"]["value"])
    svc = find("Service", "gateway")
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {"http": "http", "ops": "ops"}


@pytest.mark.parametrize("service", sorted(OPS_PORTS))
def test_env_names_come_from_the_code(service: str) -> None:
    known = settings_fields(service)
    names = {e["name"] for e in container(service).get("env", [])} | set(configmap_literals("janus-env"))
    assert names <= known, f"{service}: {sorted(names - known)} are not settings of the service"


@pytest.mark.parametrize("service", sorted(OPS_PORTS))
def test_disruption_budget_and_autoscaler(service: str) -> None:
    labels = find("Deployment", service)["spec"]["selector"]["matchLabels"]
    assert find("PodDisruptionBudget", service)["spec"]["selector"]["matchLabels"] == labels
    hpa = find("HorizontalPodAutoscaler", service)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": service}
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])


def test_gateway_scales_on_in_flight_requests() -> None:
    from shared import metrics

    pods = [
        m["pods"]["metric"]["name"]
        for m in find("HorizontalPodAutoscaler", "gateway")["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert pods == [metrics.IN_FLIGHT._name]


def test_worker_scales_on_its_queue_depth() -> None:
    from shared import metrics

    pods = [
        m["pods"]["metric"]["name"]
        for m in find("HorizontalPodAutoscaler", "worker")["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert pods == [metrics.WORKER_IN_FLIGHT._name]


def test_the_metrics_adapter_serves_every_pods_metric_of_an_autoscaler() -> None:
    from shared import metrics

    exported = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    values = yaml.safe_load((ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    assert values["rules"]["default"] is False
    served = {}
    for rule in values["rules"]["custom"]:
        series = rule["seriesQuery"].split("{", 1)[0]
        assert series in exported, f"the adapter queries {series}, which no service exports"
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"]  # one value per pod, all label sets summed
        served[rule["name"]["as"]] = series
    wanted = {
        m["pods"]["metric"]["name"]
        for o in OBJECTS
        if o["kind"] == "HorizontalPodAutoscaler"
        for m in o["spec"]["metrics"]
        if m["type"] == "Pods"
    }
    assert wanted and wanted <= set(served), f"no adapter rule for {sorted(wanted - set(served))}"


def test_service_monitor_scrapes_every_ops_port() -> None:
    sm = find("ServiceMonitor", "janus")
    (expr,) = sm["spec"]["selector"]["matchExpressions"]
    assert set(expr["values"]) == set(OPS_PORTS)
    port = sm["spec"]["endpoints"][0]["port"]
    for service in OPS_PORTS:
        assert port in {p["name"] for p in find("Service", service)["spec"]["ports"]}


def test_nats_cluster_of_three_with_persistent_jetstream() -> None:
    sts = find("StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    assert find("Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = (BASE / "nats" / "nats.conf").read_text()
    assert "store_dir: /data" in conf
    routes = [f"nats://nats-{i}.{sts['spec']['serviceName']}:6222" for i in range(3)]
    assert all(r in conf for r in routes)
    assert configmap_literals("janus-env")["JANUS_NATS_REPLICAS"] == "3"


def test_nats_metrics_reach_prometheus_through_the_exporter_sidecar() -> None:
    pod = find("StatefulSet", "nats")["spec"]["template"]["spec"]
    nats, exporter = (next(c for c in pod["containers"] if c["name"] == n) for n in ("nats", "exporter"))
    monitor = next(p["containerPort"] for p in nats["ports"] if p["name"] == "monitor")
    assert exporter["args"][-1] == f"http://localhost:{monitor}"
    metrics = next(p["containerPort"] for p in exporter["ports"] if p["name"] == "metrics")
    assert exporter["args"][exporter["args"].index("-port") + 1] == str(metrics)
    # the same exporter as the compose stack's
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["nats-exporter"]["image"] == exporter["image"]
    # scraped once per pod: only the client Service carries the port the ServiceMonitor names
    sm = find("ServiceMonitor", "nats")
    port = sm["spec"]["endpoints"][0]["port"]
    selected = [
        o
        for o in OBJECTS
        if o["kind"] == "Service"
        and sm["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()
    ]
    with_port = [s["metadata"]["name"] for s in selected if port in {p["name"] for p in s["spec"]["ports"]}]
    assert len(selected) == 2 and with_port == ["nats"]
    scrape = find("NetworkPolicy", "prometheus-scrape")
    assert {"protocol": "TCP", "port": metrics} in scrape["spec"]["ingress"][0]["ports"]


def test_only_the_gateway_is_open_to_everyone() -> None:
    policies = [o for o in OBJECTS if o["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"] == "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if "from" not in rule:  # any source
                assert p["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "gateway"}}
                assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_generated_files_are_up_to_date() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "gen.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_prometheus_rule_carries_the_same_rules() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "janus.rules.yml").read_text())
    assert find("PrometheusRule", "janus")["spec"]["groups"] == rules["groups"]


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "janus.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    fired = set()
    for path in (ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts, "no alert rules found"
    assert alerts <= fired, f"alerts no promtool test sees firing: {sorted(alerts - fired)}"


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    runbook = ROOT / "docs" / "runbook.md"
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in runbook.read_text().splitlines()
        if line.startswith("#")
    }
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "janus.rules.yml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"] if "alert" in r):
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "docs/runbook.md" and anchor in anchors, f"{rule['alert']}: runbook_url {url!r}"
