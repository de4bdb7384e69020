"""The circuit breaker end to end, driven by a fake upstream that fails, recovers and fails again.

One model on two deployments, each on its own fake OpenAI-compatible upstream: ``primary`` takes all
traffic, ``backup`` (weight 0) is only the fallback. Nothing is injected on the bus: the worker's
health reports of real upstream calls are what open the primary's circuit in the router, the router's
own clock is what half-opens it, and a real trial call is what closes it. The caller, using the
openai SDK, sees a good answer throughout.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.host import FALLBACK_CATALOG, stack_on_fakes
from tests.fakes.openai_compat_upstream import OpenAICompatUpstream
from tests.fixtures import wire
from tests.fixtures.replay import Fail, ReplayUpstream
from tests.kit.metrics import parse_metric
from tools.localstack import Stack
from tools.token import make_token

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
THRESHOLD = 3  # consecutive retryable failures that open the circuit
COOLDOWN = 4.0  # seconds open before a trial call is allowed
CLOSED, OPEN = 0, 2  # janus_circuit_state values

PLANS = """
default_plan: pro
plans:
  pro:
    session: {credits: 1000000000, hours: 5}
    weekly: {credits: 5000000000}
    default_model: chat
    auto_models: [chat]
"""
ROUTING = f"""
routing:
  rules: []
  health: {{failure_threshold: {THRESHOLD}, cooldown_seconds: {COOLDOWN}, probe_interval_seconds: 1}}
"""


class World:
    def __init__(self, stack: Stack, fakes: dict[str, ReplayUpstream]) -> None:
        self.stack = stack
        self.primary, self.backup = fakes["primary"], fakes["backup"]
        tok = make_token("breaker", "pro", "breaker@example.com", secret=stack.env["JANUS_JWT_SECRET"])
        self.client = openai.OpenAI(base_url=stack.base_url, api_key=tok, max_retries=0, timeout=30)

    def call(self) -> str:
        """One chat call; which deployment answered it (the fakes log every call they get)."""
        before = len(self.primary.requests), len(self.backup.requests)
        answer = self.client.chat.completions.create(model="chat", messages=HI)
        assert answer.choices[0].message.content == wire.expected("openai_compat")["chat_text"]["content"]
        to_primary = len(self.primary.requests) - before[0]
        to_backup = len(self.backup.requests) - before[1]
        assert to_backup <= 1 and to_primary <= 1 and to_primary + to_backup >= 1
        return "backup" if to_backup else "primary"

    def state(self) -> float:
        text = self.stack.services["router"].metrics()
        return parse_metric(text, "janus_circuit_state", deployment="primary")

    def calls_until(self, done: Callable[[], bool], timeout: float = 20.0) -> list[str]:
        """Calls, one after another, until ``done()``; who answered each."""
        answered: list[str] = []
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"gave up after {len(answered)} calls: {Counter(answered)}"
            answered.append(self.call())
            time.sleep(0.05)
        return answered


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    def config(fakes: dict[str, ReplayUpstream]) -> dict[str, str]:
        urls = {name: fake.base_url for name, fake in fakes.items()}
        return {"catalog.yaml": FALLBACK_CATALOG.format(**urls), "plans.yaml": PLANS, "routing.yaml": ROUTING}

    fakes: dict[str, ReplayUpstream] = {"primary": OpenAICompatUpstream(), "backup": OpenAICompatUpstream()}
    with stack_on_fakes(
        tmp_path_factory.mktemp("breaker"), fakes, config, {"JANUS_E2E_KEY": "sk-breaker"}
    ) as (stack, host):
        yield World(stack, host.fakes)


def test_upstream_fails_recovers_and_fails_again(world: World) -> None:
    # healthy: the primary answers everything
    assert [world.call() for _ in range(3)] == ["primary"] * 3
    assert world.state() == CLOSED

    # the primary goes down: each call fails over to the backup until the circuit opens
    world.primary.outage = Fail(503)
    seen = len(world.primary.requests)
    answered = world.calls_until(lambda: world.state() == OPEN)
    opened = time.monotonic()
    assert set(answered) == {"backup"}
    assert len(world.primary.requests) - seen >= THRESHOLD
    # open: the primary is not even tried, the backup answers first time
    seen = len(world.primary.requests)
    assert [world.call() for _ in range(3)] == ["backup"] * 3
    assert len(world.primary.requests) == seen

    # it recovers: after the cool-down a trial call reaches it and closes the circuit
    world.primary.outage = None
    answered = world.calls_until(lambda: len(world.primary.requests) > seen)
    assert time.monotonic() - opened > COOLDOWN / 2  # the trial waited for the cool-down
    assert answered[-1] == "primary" and set(answered[:-1]) <= {"backup"}
    world.calls_until(lambda: world.state() == CLOSED, timeout=5)
    assert [world.call() for _ in range(3)] == ["primary"] * 3

    # and fails again: the circuit opens again
    world.primary.outage = Fail(503)
    answered = world.calls_until(lambda: world.state() == OPEN)
    assert set(answered) == {"backup"}
    seen = len(world.primary.requests)
    assert [world.call() for _ in range(3)] == ["backup"] * 3
    assert len(world.primary.requests) == seen
    world.primary.outage = None
