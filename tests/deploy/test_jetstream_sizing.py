"""JetStream never fills its volume: in every overlay the server's store cap sits near the volume's
size, and the ledger's cap (metering's JANUS_LEDGER_MAX_BYTES) leaves room in it for the KV buckets
and the settlement stream. NATS placement keeps a quorum through a node's loss."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.metering.settings import MeteringSettings
from tests.deploy.test_manifests import find

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def quantity(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", q)
    assert m, f"unexpected quantity {q!r}"
    return int(m.group(1)) * _UNITS.get(m.group(2) or "", 1)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def overlay_patches(overlay: str) -> list[Any]:
    kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    return [yaml.safe_load(p["patch"]) for p in kust.get("patches", [])]


def patched_env(overlay: str, kind: str, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for patch in overlay_patches(overlay):
        if isinstance(patch, dict) and patch.get("kind") == kind and patch["metadata"]["name"] == name:
            for c in patch["spec"]["template"]["spec"]["containers"]:
                out |= env_of(c)
    return out


def patched_volume(overlay: str) -> str | None:
    for patch in overlay_patches(overlay):
        for op in patch if isinstance(patch, list) else []:
            if op["path"] == "/spec/volumeClaimTemplates/0/spec/resources/requests/storage":
                return str(op["value"])
    return None


def sizing(overlay: str) -> tuple[int, int, int]:
    """(volume, store cap, ledger cap) in bytes for the base or an overlay."""
    sts = find("StatefulSet", "nats")
    nats = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")
    volume = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    store_env = env_of(nats)["JS_MAX_FILE_STORE"]
    metering = find("Deployment", "metering")["spec"]["template"]["spec"]["containers"][0]
    ledger = env_of(metering).get("JANUS_LEDGER_MAX_BYTES", str(MeteringSettings().ledger_max_bytes))
    conf = (K8S / "base" / "nats" / "nats.conf").read_text()
    if overlay != "base":
        volume = patched_volume(overlay) or volume
        store_env = patched_env(overlay, "StatefulSet", "nats").get("JS_MAX_FILE_STORE", store_env)
        ledger = patched_env(overlay, "Deployment", "metering").get("JANUS_LEDGER_MAX_BYTES", ledger)
        own = K8S / "overlays" / overlay / "nats.conf"
        conf = own.read_text() if own.exists() else conf
    cap = re.search(r"^\s*max_file_store:\s*(\S+)", conf, re.M)
    assert cap, "nats.conf sets no max_file_store"
    store = int(store_env) if cap.group(1) == "$JS_MAX_FILE_STORE" else int(cap.group(1))
    return quantity(volume), store, int(ledger)


@pytest.mark.parametrize("overlay", ["base", "dev", "prod"])
def test_the_store_cap_follows_the_volume_and_the_ledger_fits_in_it(overlay: str) -> None:
    volume, store, ledger = sizing(overlay)
    # near the volume (a cap far below it is a full store with a half-empty disk), never above it
    assert 0.8 * volume <= store <= 0.95 * volume, (overlay, volume, store)
    # every server keeps a whole copy of the ledger; the budget, key and BYOK buckets and the
    # settlement stream need the rest
    assert ledger <= 0.75 * store, (overlay, store, ledger)


def test_prod_names_a_storage_class() -> None:
    ops = [op for p in overlay_patches("prod") if isinstance(p, list) for op in p]
    assert any(op["path"].endswith("/storageClassName") and op["value"] for op in ops)


def test_one_nats_server_per_node_spread_over_zones() -> None:
    pod = find("StatefulSet", "nats")["spec"]["template"]["spec"]
    required = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert [t["topologyKey"] for t in required] == ["kubernetes.io/hostname"]
    assert "topology.kubernetes.io/zone" in {c["topologyKey"] for c in pod["topologySpreadConstraints"]}


def test_the_go_runtime_fits_the_container() -> None:
    nats = next(
        c
        for c in find("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "nats"
    )
    env = {e["name"]: e for e in nats["env"]}
    assert env["GOMAXPROCS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    limit = quantity(nats["resources"]["limits"]["memory"])
    soft = quantity(env["GOMEMLIMIT"]["value"].removesuffix("B"))
    assert 0.8 * limit <= soft < limit
