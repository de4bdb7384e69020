"""``make run`` (``python -m tools.localstack``) serves the configuration the shell exports: a custom
catalog and plans, and a dev token signed with the secret in use, not the repository's defaults; its
own variables reach no service (where each would be reported as an unknown setting)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import openai

from tools.localnats import free_port
from tools.localstack import ROOT, SERVICES

CATALOG = """
providers:
  - id: fake
    kind: fake
    deployments: [{id: fake-local}]
models:
  - id: house-model
    owned_by: acme
    capabilities: [streaming]
    price: {input: 1.0, output: 2.0}
    serve: [{deployment: fake-local, model: house-model}]
"""

PLANS = """
default_plan: team
plans:
  team:
    session: {credits: 777000, hours: 1}
    weekly: {credits: 888000}
    default_model: house-model
    auto_models: [house-model]
"""

# the default rules name models of the default catalog; a custom catalog comes with its own routing
ROUTING = """
routing:
  thresholds: [{score: 0.0, quality: 1}]
  rules: []
"""


def _read_until(proc: subprocess.Popen[str], marker: str, deadline: float) -> str:
    assert proc.stdout is not None
    out = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
        if line.strip().startswith(marker):
            return out
    raise AssertionError(f"no line starting {marker!r} in the launcher's output:\n{out}")


def test_make_run_serves_the_shells_catalog_plans_and_secret(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "plans.yaml").write_text(PLANS)
    (tmp_path / "routing.yaml").write_text(ROUTING)
    secret = "a-secret-only-this-shell-knows-0123456789"
    port = free_port()
    env = {
        **os.environ,
        "JANUS_CATALOG": str(tmp_path / "catalog.yaml"),
        "JANUS_PLANS": str(tmp_path / "plans.yaml"),
        "JANUS_ROUTING": str(tmp_path / "routing.yaml"),
        "JANUS_JWT_SECRET": secret,
        "JANUS_PORT": str(port),
        "JANUS_NATS_PORT": "-1",
        "JANUS_DATA_DIR": str(tmp_path / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.localstack"],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out = _read_until(proc, "dev token", time.monotonic() + 90)
        match = re.search(r"^\s*dev token\s+(\S+)", out, re.M)
        assert match, out
        token = match.group(1)
        claims = jwt.decode(token, secret, algorithms=["HS256"])  # signed with the shell's secret
        assert claims["plan"] == "team"  # the custom plans have no "pro": their default plan

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["house-model"]
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "hello"}]
        )
        assert raw.parse().model == "house-model"
        assert raw.headers["X-RateLimit-Session-Limit-Credits"] == "777000"
        assert raw.headers["X-RateLimit-Weekly-Limit-Credits"] == "888000"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    for service in SERVICES:
        log = (tmp_path / "data" / f"{service}.log").read_text()
        events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
        assert "started" in events, service  # the log was written before its absences are read
        assert "unknown_setting" not in events, f"{service}:\n{log}"
