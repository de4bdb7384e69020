"""Metering refuses settings that would charge a redelivered settlement twice, at start-up, with the
variables to change: an exit status and a message, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_horizon_shorter_than_the_redeliveries_stops_metering() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    # nothing listens there: reaching the bus would be another failure than the one under test
    env |= {"JANUS_SETTLED_HORIZON_SECONDS": "100", "JANUS_NATS_URL": "nats://127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.metering"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "JANUS_SETTLED_HORIZON_SECONDS (100)" in out and "JANUS_SETTLE_MAX_DELIVER (10)" in out
    assert "Traceback" not in out
