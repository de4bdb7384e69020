"""Every deployed NATS server requires an identity and TLS, every service brings its own identity,
and no secret value is committed.

The configuration files are read as text and YAML (deploy/validate.sh also runs ``nats-server -t``
on them and builds the overlays); ``deploy/gen.py --check`` keeps the generated parts in sync with
config/nats-permissions.yaml.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tools.natsauth import env_name, load_identities

ROOT = Path(__file__).resolve().parents[2]
K8S_CONFS = [ROOT / "deploy/k8s/base/nats/nats.conf", ROOT / "deploy/k8s/overlays/dev/nats.conf"]
COMPOSE_CONF = ROOT / "deploy/compose/nats.conf"
SERVICES = ("gateway", "router", "worker", "metering")


def _block(text: str, name: str) -> str:
    """The body of the top-level or nested ``name { ... }`` block (braces balanced)."""
    m = re.search(rf"(?m)^\s*{name}\s*\{{", text)
    assert m, f"no {name} block"
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end() : i - 1]


@pytest.mark.parametrize("conf", [*K8S_CONFS, COMPOSE_CONF], ids=lambda p: str(p.relative_to(ROOT)))
def test_servers_require_tls_and_an_identity(conf: Path) -> None:
    text = conf.read_text()
    tls = _block(text.split("cluster {")[0], "tls")
    assert "cert_file" in tls and "key_file" in tls
    includes = re.findall(r"(?m)^include\s+(\S+)", text)
    assert len(includes) == 1
    auth = (conf.parent / includes[0]).read_text()
    assert "authorization {" in auth and "no_auth_user" not in text + auth
    for name in load_identities():
        assert f'"nkey": ${env_name(name)},' in auth, name
    # a password user or a token would be a way in that is not an identity of the permissions file
    assert '"user":' not in auth and "token" not in auth


def test_cluster_routes_are_mutual_tls() -> None:
    cluster = _block(K8S_CONFS[0].read_text(), "cluster")
    tls = _block(cluster, "tls")
    assert re.search(r"verify:\s*true", tls) and "ca_file" in tls


def test_kubernetes_services_sign_in_and_verify_the_server() -> None:
    kust = yaml.safe_load((ROOT / "deploy/k8s/base/kustomization.yaml").read_text())
    env = next(g for g in kust["configMapGenerator"] if g["name"] == "janus-env")["literals"]
    assert "JANUS_NATS_URL=tls://nats:4222" in env
    assert any(v.startswith("JANUS_NATS_CA_FILE=") for v in env)
    patch = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/base/nats/identities.yaml").read_text()) if d]
    seeds = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
        for d in patch
        if d["kind"] == "Deployment"
    }
    assert seeds == {s: f"janus-nats-{s}" for s in SERVICES}
    nats = next(d for d in patch if d["kind"] == "StatefulSet")
    names = {e["name"] for e in nats["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert names == {env_name(n) for n in load_identities()}


def test_compose_services_sign_in_and_bind_to_loopback() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("gateway", "router", "worker-fake", "metering"):
        svc = services[name]
        assert svc["environment"]["JANUS_NATS_URL"].startswith("tls://"), name
        assert {"source": f"nats-{name.split('-')[0]}", "target": "nats-identity"} in svc["secrets"], name
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith(("127.0.0.1:", "${JANUS_BIND:-127.0.0.1}:")), (name, port)


# an NKey seed (S + the key type), a PEM private key
_SECRET = re.compile(r"\bS[UOANC][A-Z2-7]{56}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_secret_value_is_committed() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    hits = []
    for name in files.stdout.split():
        path = ROOT / name
        if path.suffix in {".json", ".npz", ".pkl"} or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if _SECRET.search(text):
            hits.append(name)
    assert not hits, f"secret values committed in {hits}"
    # Kubernetes Secrets are made by the operator (or cert-manager), except the dev overlay's published
    # development JWT secret, which the gateway accepts only on a development stack
    for kust in (ROOT / "deploy/k8s").rglob("kustomization.yaml"):
        doc = yaml.safe_load(kust.read_text())
        for gen in doc.get("secretGenerator") or []:
            assert gen["name"] == "janus-secrets" and "dev" in str(kust), kust
            assert gen["literals"] == ["jwt-secret=janus-dev-secret-not-for-production"], kust
    for manifest in (ROOT / "deploy/k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(manifest.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), manifest
