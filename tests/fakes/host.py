"""Fake upstreams on an event loop of their own, in a thread, so one set serves a whole test module
while each test drives the stack synchronously with the openai SDK."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.fixtures.replay import ReplayUpstream


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
