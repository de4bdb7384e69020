#!/usr/bin/env bash
# Release step: pin every image of the production overlay (NATS, its exporter, Janus itself) to the
# digest its registry reports, written into deploy/k8s/overlays/prod/kustomization.yaml's images:.
# Needs `crane` (go-containerregistry) or `docker buildx`, and the registries reachable.
#
#   deploy/pin-images.sh --janus registry.example.com/janus:0.2.0   resolve and write
#   deploy/pin-images.sh --compose                                   docker-compose.yml's images too
#   deploy/pin-images.sh --check                                     exit 1 if one is not pinned
#
# Then commit the overlay: tests/deploy/test_images.py holds every reference to a digest or to its
# documented list of tags still to pin.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
cd "$ROOT"
exec "$PY" -m tools.pin_images "$@"
