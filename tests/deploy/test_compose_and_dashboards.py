"""docker-compose.yml, the compose Prometheus config and the Grafana dashboards hang together."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.settings import CommonSettings, load_settings, termination_grace_seconds

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
OPS_PORTS = {
    "services.gateway": 9100,
    "services.router": 9101,
    "services.worker": 9102,
    "services.metering": 9103,
}


def janus_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in COMPOSE["services"].items() if s.get("command", [""])[0] in OPS_PORTS}


def test_every_service_runs_with_its_ops_port() -> None:
    services = janus_services()
    assert {s["command"][0] for s in services.values()} == set(OPS_PORTS)
    for name, svc in services.items():
        assert svc["environment"]["JANUS_OPS_PORT"] == str(OPS_PORTS[svc["command"][0]]), name
        assert svc["environment"]["JANUS_NATS_URL"] == "tls://nats:4222", name
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
    workers = [s for s in services.values() if s["command"] == ["services.worker"]]
    assert all(w["environment"].get("JANUS_WORKER_PROVIDERS") for w in workers)


def compose_seconds(duration: str) -> float:
    """A compose duration (``620s``, ``10m20s``, ``1h``) in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, f"not a compose duration: {duration!r}"
    h, m, sec = parts.groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(sec or 0)


@pytest.mark.parametrize("name", sorted(janus_services()))
def test_stop_grace_covers_the_request_bound(name: str) -> None:
    """As on Kubernetes: docker's SIGKILL after stop_grace_period must never cut a stream that is
    still within the request bound, so the period is at least what the code derives from the
    service's own settings (drain grace plus the NATS drain); the services holding streams drain
    for the whole bound."""
    svc = janus_services()[name]
    common = load_settings(CommonSettings, {k: str(v) for k, v in svc["environment"].items()})
    common.check_hold_lifetime()
    if svc["command"][0] in {"services.gateway", "services.worker"}:  # they hold the streams
        assert common.drain_grace() > common.request_deadline_seconds
    assert compose_seconds(svc["stop_grace_period"]) >= termination_grace_seconds(common)


def test_compose_durations_are_read() -> None:
    assert [compose_seconds(d) for d in ("620s", "10m20s", "1h", "1.5s")] == [620, 620, 3600, 1.5]


def test_prometheus_scrapes_every_janus_service_on_its_ops_port() -> None:
    targets = set()
    for job in PROMETHEUS["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {(n, sd["port"]) for n in sd["names"]}
    expected = {(n, OPS_PORTS[s["command"][0]]) for n, s in janus_services().items()}
    assert targets == expected


def test_bind_mounts_exist_and_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes", {}))
    for name, svc in COMPOSE["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith("./.janus/"):
                continue  # made on the host by `make compose-keys`, never committed
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    assert "store_dir: /data" in (ROOT / "deploy" / "compose" / "nats.conf").read_text()


def _drop_nulls(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_nulls(x) for x in v]
    return v


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_matches_grafana_schema(path: Path) -> None:
    schema = json.loads((ROOT / "tests" / "spec" / "grafana" / "dashboard.jsonschema.json").read_text())
    board = _drop_nulls(json.loads(path.read_text()))
    jsonschema.Draft7Validator(schema).validate(board)
    assert board["uid"] == f"janus-{path.stem}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    datasource_uid = yaml.safe_load(
        (ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["uid"]
    # panels read the $datasource variable, which starts on the provisioned data source, and every
    # query is narrowed to the $namespace variable
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == datasource_uid
    assert variables["namespace"]["query"].startswith("label_values(")
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert '$namespace"' in target["expr"], (panel["title"], target["expr"])


def test_schema_check_can_fail() -> None:
    schema = json.loads((ROOT / "tests" / "spec" / "grafana" / "dashboard.jsonschema.json").read_text())
    board = json.loads(DASHBOARDS[0].read_text())
    board["refresh"] = 30  # the schema wants a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(board)
