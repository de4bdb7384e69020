"""The event-loop lag every service reports: a blocking call on the loop shows as lag."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from shared.service import _watch_loop_lag
from tests.kit.metrics import parse_metric


def _observed() -> tuple[float, float]:
    text = generate_latest().decode()
    return (
        parse_metric(text, "janus_event_loop_lag_seconds_count"),
        parse_metric(text, "janus_event_loop_lag_seconds_sum"),
    )


async def test_a_blocked_loop_is_reported_as_lag() -> None:
    count, total = _observed()
    watcher = asyncio.create_task(_watch_loop_lag(interval=0.05))
    try:
        await asyncio.sleep(0)  # the watcher's timer is armed
        time.sleep(0.3)  # noqa: ASYNC251 - the blocking call on the loop this test is about
        deadline = time.monotonic() + 5
        while _observed()[0] < count + 2:
            assert time.monotonic() < deadline, "the watcher observed nothing"
            await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    # the timer fired at least the blocked time late: a lower bound, whatever the machine's load
    assert _observed()[1] - total >= 0.3 - 0.05
