"""A hold must outlive the longest request: a service refuses to start when JANUS_HOLD_TTL_SECONDS does
not cover JANUS_REQUEST_DEADLINE_SECONDS plus one renewal interval, naming the settings to change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.catalog import ConfigError
from shared.settings import CommonSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_defaults_fit() -> None:
    CommonSettings().check_hold_lifetime()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # a longer bound for reasoning models, without the hold's lifetime raised with it
        ({"JANUS_REQUEST_DEADLINE_SECONDS": "1800"}, "JANUS_REQUEST_DEADLINE_SECONDS (1800)"),
        ({"JANUS_HOLD_TTL_SECONDS": "700"}, "JANUS_HOLD_TTL_SECONDS (700)"),
        ({"JANUS_HOLD_RENEW_SECONDS": "400"}, "JANUS_HOLD_RENEW_SECONDS (400)"),
    ],
)
def test_a_hold_shorter_than_the_bound_is_refused(env: dict[str, str], named: str) -> None:
    settings = load_settings(CommonSettings, env)
    with pytest.raises(ConfigError, match="JANUS_HOLD_TTL_SECONDS") as caught:
        settings.check_hold_lifetime()
    assert named in str(caught.value)
    assert "JANUS_REQUEST_DEADLINE_SECONDS" in str(caught.value)


def test_the_bound_is_exclusive() -> None:
    edge = {"JANUS_REQUEST_DEADLINE_SECONDS": "780", "JANUS_HOLD_RENEW_SECONDS": "120"}
    with pytest.raises(ConfigError):
        load_settings(CommonSettings, edge).check_hold_lifetime()
    load_settings(CommonSettings, {**edge, "JANUS_REQUEST_DEADLINE_SECONDS": "779"}).check_hold_lifetime()


def test_a_renewal_interval_of_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match="JANUS_HOLD_RENEW_SECONDS"):
        load_settings(CommonSettings, {"JANUS_HOLD_RENEW_SECONDS": "0"}).check_hold_lifetime()


@pytest.mark.parametrize("service", ["metering", "gateway"])
def test_the_service_refuses_to_start(service: str) -> None:
    """The process itself stops at once with the reason, before it connects to anything (the NATS
    URL points nowhere: reaching it would be a different failure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    env |= {"JANUS_REQUEST_DEADLINE_SECONDS": "3600", "JANUS_NATS_URL": "nats://127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "JANUS_HOLD_TTL_SECONDS (900)" in done.stderr
    assert "JANUS_REQUEST_DEADLINE_SECONDS (3600)" in done.stderr
    assert "Traceback" not in done.stderr
