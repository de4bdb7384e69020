"""The production overlay's public edge: an Ingress with TLS that redirects plain HTTP (308) to https
and sends /v1 to the gateway Service's named port, with SSE left unbuffered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROD = ROOT / "deploy" / "k8s" / "overlays" / "prod"


def _ingress() -> dict[str, Any]:
    kust = yaml.safe_load((PROD / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        path = PROD / res
        if path.is_file():
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc["kind"] == "Ingress":
                    return dict(doc)
    raise AssertionError("the prod overlay has no Ingress")


def test_ingress_ends_tls_and_redirects_plain_http() -> None:
    ing = _ingress()
    notes = ing["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    assert notes["nginx.ingress.kubernetes.io/http-redirect-code"] == "308"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    hosts = {h for t in ing["spec"]["tls"] for h in t["hosts"]}
    assert {r["host"] for r in ing["spec"]["rules"]} <= hosts  # every routed host is served with TLS


def test_ingress_routes_to_the_gateway_services_port() -> None:
    service = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / "gateway.yaml").read_text())
        if d and d["kind"] == "Service" and d["metadata"]["name"] == "gateway"
    )
    ports = {p["name"] for p in service["spec"]["ports"]}
    for rule in _ingress()["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "gateway" and backend["port"]["name"] in ports
