"""Fake upstreams on an event loop of their own, in a thread, so one set serves a whole test module
while each test drives the stack synchronously with the openai SDK; and the stack started on them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.fixtures.replay import ReplayUpstream
from tools.localstack import Stack, start_stack


class FakeHost:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-upstreams", daemon=True)
        self.thread.start()
        self.fakes: dict[str, ReplayUpstream] = {}

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self, fakes: dict[str, ReplayUpstream]) -> None:
        for name, fake in fakes.items():
            self.fakes[name] = self.run(fake.start())

    def stop(self) -> None:
        for fake in self.fakes.values():
            self.run(fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# One model served by two deployments of an OpenAI-compatible provider, each on its own fake
# upstream: ``primary`` takes all traffic, ``backup`` (weight 0) is only the fallback. Format it with
# the fakes' base URLs (``primary=..., backup=...``); the key is read from ``JANUS_E2E_KEY``.
FALLBACK_CATALOG = """
providers:
  - id: compat
    kind: openai_compat
    deployments:
      - {{id: primary, base_url: "{primary}/v1", api_key_env: JANUS_E2E_KEY}}
      - {{id: backup, base_url: "{backup}/v1", api_key_env: JANUS_E2E_KEY}}
models:
  - id: chat
    owned_by: compat
    capabilities: [streaming]
    price: {{input: 1.0, output: 2.0}}
    serve: [{{deployment: primary, model: up}}, {{deployment: backup, model: up, weight: 0}}]
"""

Config = Callable[[dict[str, ReplayUpstream]], dict[str, str]]


@contextlib.contextmanager
def stack_on_fakes(
    work: Path, fakes: dict[str, ReplayUpstream], config: Config, env: dict[str, str] | None = None
) -> Iterator[tuple[Stack, FakeHost]]:
    """The fakes started, then the whole stack with the catalog, plans and routing files that
    ``config`` writes for them (it gets the started fakes, so the catalog can name their URLs);
    everything stopped on the way out."""
    host = FakeHost()
    stack = None
    try:
        host.start(fakes)
        files = config(host.fakes)
        for name, text in files.items():
            (work / name).write_text(text)
        stack = start_stack(
            work,
            env={
                "JANUS_CATALOG": str(work / "catalog.yaml"),
                "JANUS_PLANS": str(work / "plans.yaml"),
                "JANUS_ROUTING": str(work / "routing.yaml"),
                **(env or {}),
            },
        )
        yield stack, host
    finally:
        if stack is not None:
            stack.stop()
        host.stop()
