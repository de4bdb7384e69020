#!/usr/bin/env bash
# ensure-tool.sh COMMAND PACKAGE [EXTRA_PACKAGE...]
# The tests drive a few programs from Debian's packages (headless Chromium for the console's browser
# tests, Prometheus for the live dashboard test). Installs PACKAGE with apt-get when COMMAND is not
# on PATH, then prints COMMAND's path.
set -euo pipefail
cmd="$1"; shift
if command -v "$cmd" >/dev/null 2>&1; then command -v "$cmd"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$cmd is missing and apt-get is not available: install the $1 package and put $cmd on PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
command -v "$cmd"
