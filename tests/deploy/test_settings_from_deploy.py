"""Each service's settings load from what the shipped deploy files give it, and none of those
variables is reported as unknown at start-up.

A service's environment is put together the way its runtime does: the image's ``ENV``, then on
Kubernetes the shared ConfigMap and the container's own ``env`` (base, then each overlay's merges and
patches), in compose the shared block and the service's ``environment``. Values from Secrets and
``${VAR:-default}`` interpolations count by name (their values are not in the files).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.gateway.service import GatewayService
from services.metering.service import MeteringService
from services.router.service import RouterService
from services.settings import KNOWN
from services.worker.service import WorkerService
from shared.service import Service
from shared.settings import CommonSettings, load_settings, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SERVICES: dict[str, type[Service[Any]]] = {
    "gateway": GatewayService,
    "router": RouterService,
    "worker": WorkerService,
    "metering": MeteringService,
}
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# compose service -> the Janus service it runs (one worker service per provider pool)
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
COMPOSE_JANUS = {
    name: svc["command"][0].split(".")[1]
    for name, svc in COMPOSE.items()
    if str(svc.get("command", [""])[0]).startswith("services.")
}
_INTERPOLATED = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def image_env() -> dict[str, str]:
    """The ``ENV`` of the Dockerfile's last stage (the runtime image)."""
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env |= dict(re.findall(r"(\w+)=(\S+)", line))
    return env


def _kustomization(directory: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((directory / "kustomization.yaml").read_text()))


def _literals(kust: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for gen in kust.get("configMapGenerator") or []:
        if gen["name"] == "janus-env":
            out |= dict(lit.split("=", 1) for lit in gen.get("literals", []))
    return out


def _container_env(deployment: dict[str, Any], service: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in deployment["spec"]["template"]["spec"].get("containers") or []:
        if c["name"] == service:
            # a Secret's value is not in the files: the name is what start-up checks
            out |= {e["name"]: str(e.get("value", "")) for e in c.get("env") or []}
    return out


def _deployments(docs: list[Any]) -> list[dict[str, Any]]:
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "Deployment"]


def k8s_env(service: str, overlay: str = "") -> dict[str, str]:
    base = _kustomization(K8S / "base")
    env = image_env() | _literals(base)
    docs = [d for res in base["resources"] for d in yaml.safe_load_all((K8S / "base" / res).read_text())]
    for dep in _deployments(docs):
        if dep["metadata"]["name"] == service:
            env |= _container_env(dep, service)
    if overlay:
        kust = _kustomization(K8S / "overlays" / overlay)
        env |= _literals(kust)
        patches = [p["patch"] for p in kust.get("patches") or [] if "patch" in p]
        patches += [
            (K8S / "overlays" / overlay / p["path"]).read_text()
            for p in kust.get("patches") or []
            if "path" in p
        ]
        for text in patches:
            for dep in _deployments(list(yaml.safe_load_all(text))):
                if dep["metadata"]["name"] == service:
                    env |= _container_env(dep, service)
    return env


def compose_env(name: str) -> dict[str, str]:
    env = image_env()
    for key, value in (COMPOSE[name].get("environment") or {}).items():
        env[key] = _INTERPOLATED.sub(r"\1", str(value))
    return env


def started(service: str, env: dict[str, str]) -> tuple[CommonSettings, list[tuple[str, str]]]:
    """What start-up does with ``env``: the service's settings, and the variables it would report."""
    return load_settings(SERVICES[service].settings_cls, env), unknown_variables(KNOWN, env)


@pytest.mark.parametrize("overlay", ["", *OVERLAYS])
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_kubernetes_sets_no_unknown_variable(service: str, overlay: str) -> None:
    env = k8s_env(service, overlay)
    assert "JANUS_OPS_PORT" in env  # the container's own env was found
    settings, unknown = started(service, env)
    assert isinstance(settings, SERVICES[service].settings_cls)
    assert unknown == []


@pytest.mark.parametrize("name", sorted(COMPOSE_JANUS))
def test_compose_sets_no_unknown_variable(name: str) -> None:
    env = compose_env(name)
    assert "JANUS_NATS_URL" in env  # the shared block was merged in
    settings, unknown = started(COMPOSE_JANUS[name], env)
    assert isinstance(settings, SERVICES[COMPOSE_JANUS[name]].settings_cls)
    assert unknown == []


def test_every_janus_service_of_compose_is_checked() -> None:
    assert set(COMPOSE_JANUS.values()) == set(SERVICES)


def test_a_misspelled_variable_in_a_manifest_is_reported_with_the_closest_name() -> None:
    env = k8s_env("gateway") | {"JANUS_MAX_BODY_BYTE": "1024"}
    _, unknown = started("gateway", env)
    assert unknown == [("JANUS_MAX_BODY_BYTE", "JANUS_MAX_BODY_BYTES")]
