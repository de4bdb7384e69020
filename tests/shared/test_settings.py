"""Settings: the one reader of the environment, and the report of a ``JANUS_*`` variable nothing reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.gateway.settings import GatewaySettings
from services.settings import KNOWN, SETTINGS
from shared.catalog import ConfigError
from shared.settings import PREFIX, load_settings, unknown_variables, variable_names
from tools.localnats import NatsServer
from tools.localstack import base_env, start_service

ROOT = Path(__file__).resolve().parents[2]
_READS_ENV = re.compile(r"\bos\.environ\b|\bgetenv\(")


def test_a_misspelled_variable_is_named_with_the_closest_known_one() -> None:
    env = {"JANUS_MAX_BODY_BYTE": "10", "JANUS_PORT": "1", "HOME": "/root", "JANUS_ZZZ_QQQ": "x"}
    assert unknown_variables(KNOWN, env) == [
        ("JANUS_MAX_BODY_BYTE", "JANUS_MAX_BODY_BYTES"),
        ("JANUS_ZZZ_QQQ", ""),
    ]


def test_a_variable_another_service_reads_is_no_typo() -> None:
    # the image and the shared ConfigMap give every service the same variables
    env = {"JANUS_HOST": "0.0.0.0", "JANUS_HOLD_TTL_SECONDS": "60", "JANUS_WORKER_PROVIDERS": "fake"}
    assert unknown_variables(KNOWN, env) == []
    assert unknown_variables(variable_names(GatewaySettings), env) != []


def test_every_settings_class_is_known() -> None:
    for cls in SETTINGS:
        assert {PREFIX + f.upper() for f in cls.__struct_fields__} <= KNOWN


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ConfigError, match="JANUS_PORT"):
        load_settings(GatewaySettings, {"JANUS_PORT": "eighty"})


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = [
        str(p.relative_to(ROOT))
        for d in ("shared", "services")
        for p in (ROOT / d).rglob("*.py")
        if _READS_ENV.search(p.read_text())
    ]
    assert readers == ["shared/settings.py"]


def test_a_service_starts_and_warns_of_a_misspelled_variable(nats_server: NatsServer, tmp_path: Path) -> None:
    env = base_env(nats_server.url, JANUS_PLAN_CACHE_SECOND="s3cret-looking-value")
    svc = start_service("router", env, tmp_path)
    try:
        log = svc.log_tail(100_000)
    finally:
        svc.stop()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "started" in events  # the service went on with its defaults
    (warning,) = [line for line in lines if line["event"] == "unknown_setting"]
    assert warning["variable"] == "JANUS_PLAN_CACHE_SECOND"
    assert warning["closest"] == "JANUS_PLAN_CACHE_SECONDS"
    assert "s3cret-looking-value" not in log  # a value may be a secret
