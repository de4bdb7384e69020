"""Programs some tests drive (headless chromium, prometheus), from Debian's packages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def debian_tool(command: str, *packages: str) -> str:
    """The path of ``command``, installed from Debian's ``packages`` (default: a package of the
    same name) by ``scripts/ensure-tool.sh`` when it is missing (the tests drive chromium and
    prometheus; ``make test`` installs them first)."""
    found = shutil.which(command)
    if found:
        return found
    script = str(ROOT / "scripts" / "ensure-tool.sh")
    done = subprocess.run(
        ["bash", script, command, *(packages or (command,))], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command} is missing and could not be installed: {done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1]
