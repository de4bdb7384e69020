"""The Grafana dashboards and the alert rules against what the services really export.

A real Prometheus (Debian's ``prometheus``) scrapes a running stack every second and loads the
shipped rules; the test drives traffic through the stack with the openai SDK: buffered and streamed
answers, a stream cut after its first token, a fallback, a primary failing until its circuit opens,
budget refusals (429) and a bad token. Then every panel's PromQL must return at least one series,
and every alert expression either returns one or is listed in ``NEEDS_A_FAULT`` with the fault it
needs; even then each metric it names must exist in Prometheus, so a misspelt name cannot pass as a
quiet alert. Prometheus must also have loaded and evaluated every rule without error.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from tests.deploy.test_metric_names import EXTERNAL, metric_names
from tests.fakes.host import FALLBACK_CATALOG, stack_on_fakes
from tests.fakes.openai_compat_upstream import OpenAICompatUpstream
from tests.fixtures.replay import Drop, Fail, ReplayUpstream
from tests.kit.metrics import parse_metric
from tests.kit.programs import debian_tool
from tools.localnats import free_port
from tools.localstack import ROOT, Stack
from tools.token import make_token

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "rules" / "janus.rules.yml"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
THRESHOLD = 3

# alert -> the fault it needs (the traffic here cannot or should not produce it)
NEEDS_A_FAULT = {
    "JanusErrorBudgetBurnFast": "over 7.2% of at least 6 requests a minute failing for an hour",
    "JanusErrorBudgetBurnSlow": "over 3% of at least 6 requests a minute failing for six hours",
    "JanusGatewayOverheadP99High": "p99 overhead above 50 ms: a saturated gateway",
    "JanusTimeToFirstTokenHigh": "p95 time to first token above 10 s (60 s reasoning): a stalled upstream",
    "JanusBudgetDenialSpike": "over one budget refusal a second, three times the hour before",
    "JanusSettlementLost": "a settlement JetStream never acknowledged (JetStream down for 60 s)",
    "JanusSettlementDeadLettered": "a settlement metering cannot apply after its last delivery",
    "JanusUsageOverHold": "workers reporting more usage than their holds, over and over (a lying worker)",
    "JanusSettlementLag": "the NATS exporter, and a thousand settlements metering has not taken",
    "JanusHoldsReaped": "a hold whose settlement never came (a gateway killed mid-request)",
    "JanusHoldsPiling": "settlements not applied while holds pile up",
    "JanusJetStreamWriteFailures": "JetStream refusing writes (a full store, no quorum)",
    "JanusJetStreamStoreFilling": "the NATS exporter, and a store above 70 %",
    "JanusNatsUnhealthy": "the NATS exporter, and an unhealthy server",
    "JanusJetStreamNoMetaLeader": "the NATS exporter, and a cluster without quorum",
    "JanusWorkerSaturated": "workers at 90% of their concurrency for minutes",
    "JanusWorkerDeploymentSaturated": "a catalog-capped deployment at 90% of its cap for minutes",
    "JanusAutoscalerAtMax": "kube-state-metrics, and an HPA at its maximum",
    "JanusTargetDown": "a scrape target down for five minutes",
    "JanusNatsDisconnected": "a service losing its NATS connection",
}

PLANS = """
default_plan: pro
plans:
  pro:
    session: {credits: 1000000000, hours: 5}
    weekly: {credits: 5000000000}
    default_model: chat
    auto_models: [chat]
  tiny:
    session: {credits: 100, hours: 5}
    weekly: {credits: 100}
    default_model: chat
    auto_models: [chat]
"""
# a long cool-down keeps the opened circuit open while Prometheus is asked about it
ROUTING = f"""
routing:
  rules: []
  health: {{failure_threshold: {THRESHOLD}, cooldown_seconds: 600, probe_interval_seconds: 1}}
"""


class Prometheus:
    def __init__(self, binary: str, workdir: Path, stack: Stack) -> None:
        self.port = free_port()
        targets = [
            {"targets": [f"127.0.0.1:{svc.ops_port}"], "labels": {"service": name}}
            for name, svc in stack.services.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "janus", "static_configs": targets}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait(self, expr: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a series (Prometheus up, scraped, evaluated)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.query(expr)
                if last:
                    return last  # type: ignore[no-any-return]
            except OSError as exc:
                last = exc
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} returned nothing within {timeout}s (last: {last!r})")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


class World:
    def __init__(self, stack: Stack, fakes: dict[str, ReplayUpstream], prom: Prometheus) -> None:
        self.stack, self.prom = stack, prom
        self.primary, self.backup = fakes["primary"], fakes["backup"]
        secret = stack.env["JANUS_JWT_SECRET"]
        self.client = openai.OpenAI(
            base_url=stack.base_url,
            api_key=make_token("live", "pro", secret=secret),
            max_retries=0,
            timeout=30,
        )
        self.tiny = openai.OpenAI(
            base_url=stack.base_url,
            api_key=make_token("live-tiny", "tiny", secret=secret),
            max_retries=0,
            timeout=30,
        )

    def drive(self) -> None:
        for _ in range(3):
            assert self.client.chat.completions.create(model="chat", messages=HI).choices
            stream = self.client.chat.completions.create(
                model="chat", messages=HI, stream=True, stream_options={"include_usage": True}
            )
            assert any(c.usage for c in stream)
        # a stream cut after its first token ends with an in-band error
        self.primary.script(Drop())
        with pytest.raises(openai.APIError):
            for _ in self.client.chat.completions.create(model="chat", messages=HI, stream=True):
                pass
        # one failure before the first token: the backup answers (a fallback)
        self.primary.script(Fail(503))
        assert self.client.chat.completions.create(model="chat", messages=HI).choices
        # the primary down until its circuit opens
        self.primary.outage = Fail(503)
        deadline = time.monotonic() + 30
        while (
            parse_metric(self.stack.services["router"].metrics(), "janus_circuit_state", deployment="primary")
            != 2
        ):
            assert time.monotonic() < deadline, "the primary's circuit did not open"
            assert self.client.chat.completions.create(model="chat", messages=HI).choices
        # both deployments down: the caller gets a 5xx
        self.backup.outage = Fail(503)
        with pytest.raises(openai.InternalServerError):
            self.client.chat.completions.create(model="chat", messages=HI)
        self.primary.outage = self.backup.outage = None
        # budget refusals: the tiny plan cannot hold one request's worst case
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                self.tiny.chat.completions.create(model="chat", messages=HI, max_tokens=1000)
        bad = openai.OpenAI(base_url=self.stack.base_url, api_key="not-a-token", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    binary = debian_tool("prometheus")
    work = tmp_path_factory.mktemp("live")

    def config(fakes: dict[str, ReplayUpstream]) -> dict[str, str]:
        urls = {name: fake.base_url for name, fake in fakes.items()}
        return {"catalog.yaml": FALLBACK_CATALOG.format(**urls), "plans.yaml": PLANS, "routing.yaml": ROUTING}

    fakes: dict[str, ReplayUpstream] = {"primary": OpenAICompatUpstream(), "backup": OpenAICompatUpstream()}
    with stack_on_fakes(work, fakes, config, {"JANUS_E2E_KEY": "sk-live"}) as (stack, host):
        prom = Prometheus(binary, work, stack)
        try:
            prom.wait(f"count(up == 1) == {len(stack.services)}")
            w = World(stack, host.fakes, prom)
            w.drive()
            # everything the traffic produced has been scraped at least twice (what rate() needs)
            for marker in (
                "janus_fallbacks_total",
                "janus_stream_errors_total",
                'janus_budget_decisions_total{decision="denied"}',
                'janus_http_requests_total{status=~"5.."}',
                "janus_auth_failures_total",
            ):
                prom.wait(f"count_over_time({marker}[1m]) >= 2")
            prom.wait("janus_circuit_state == 2")
            yield w
        finally:
            prom.stop()


def _panel_queries() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"{path.stem}: {panel['title']}", target["expr"]))
    return out


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_every_dashboard_panel_returns_a_series(world: World) -> None:
    queries = _panel_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        if metric_names(expr) <= set(EXTERNAL):
            continue  # only another exporter's series (NATS, kube-state-metrics, cAdvisor): none here
        if not world.prom.query(expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")):
            empty.append(title)
    assert empty == [], empty


def test_every_alert_expression_returns_a_series_or_names_its_fault(world: World) -> None:
    alerts = _alerts()
    assert {a["alert"] for a in alerts} >= set(NEEDS_A_FAULT)
    quiet = []
    for a in alerts:
        if world.prom.query(a["expr"]):
            continue
        quiet.append(a["alert"])
        assert a["alert"] in NEEDS_A_FAULT, f"{a['alert']} returns nothing and no fault is named for it"
        for name in set(re.findall(r"\bjanus_[a-z0-9_]+", a["expr"])):
            assert world.prom.query(f'count({{__name__="{name}"}})'), f"{a['alert']}: {name} is not exported"
    # the faults this test does drive make their alerts fire
    assert "JanusCircuitOpen" not in quiet


def test_prometheus_loaded_and_evaluated_every_rule(world: World) -> None:
    groups = world.prom.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert set(loaded) == {a["alert"] for a in _alerts()}
    assert all(r["health"] == "ok" for r in loaded.values()), {
        n: r.get("lastError") for n, r in loaded.items()
    }
