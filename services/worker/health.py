"""Deployment health as this worker sees it, aggregated and reported to the routers.

Each finished upstream call is recorded (latency, and the error if the provider failed); a
``HealthReport`` per deployment goes out on ``subjects.HEALTH`` at most once per ``interval``: the
first event after a quiet period is reported at once (so a failing deployment is noticed within one
call), later ones are folded into the next periodic report. Only failures that say something about
the deployment count as errors: a client's bad request or a cancel does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from shared.contract import HealthReport

EWMA_ALPHA = 0.2


class _Window:
    __slots__ = ("count", "errors", "ewma", "last_error", "last_retryable", "last_sent", "provider")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.count = 0
        self.errors = 0
        self.ewma = 0.0
        self.last_error: str | None = None
        self.last_retryable = True
        self.last_sent = 0.0


Publish = Callable[[HealthReport], Awaitable[None]]


class HealthTracker:
    def __init__(self, publish: Publish, interval: float = 1.0) -> None:
        self._publish = publish
        self._interval = interval
        self._windows: dict[str, _Window] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, deployment: str, provider: str, latency: float, error: str | None = None,
               retryable: bool = True) -> None:
        w = self._windows.get(deployment)
        if w is None:
            w = self._windows[deployment] = _Window(provider)
        w.count += 1
        if error is None:
            w.ewma = latency if w.ewma == 0.0 else w.ewma + EWMA_ALPHA * (latency - w.ewma)
        else:
            w.errors += 1
            w.last_error = error
            w.last_retryable = retryable
        if time.monotonic() - w.last_sent >= self._interval:
            self._send(deployment, w)

    def _send(self, deployment: str, w: _Window) -> None:
        # a window is healthy while most of its calls succeed
        report = HealthReport(deployment=deployment, provider=w.provider, ok=w.errors * 2 < w.count,
                              latency_s=round(w.ewma, 6),
                              error=w.last_error if w.errors else None, retryable=w.last_retryable)
        w.count = w.errors = 0
        w.last_error = None
        w.last_retryable = True
        w.last_sent = time.monotonic()
        t = asyncio.get_running_loop().create_task(self._safe_publish(report))
        self._pending.add(t)
        t.add_done_callback(self._pending.discard)

    async def _safe_publish(self, report: HealthReport) -> None:
        # health is advisory: a bus hiccup must never fail a request
        with contextlib.suppress(Exception):
            await self._publish(report)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            now = time.monotonic()
            for dep, w in self._windows.items():
                if w.count and now - w.last_sent >= self._interval:
                    self._send(dep, w)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for dep, w in self._windows.items():
            if w.count:
                self._send(dep, w)
        if self._pending:
            await asyncio.wait(self._pending, timeout=2)
