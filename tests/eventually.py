"""Waiting in tests: poll a condition until it holds or a deadline passes.

A bare ``sleep`` before an assertion either wastes time or, under load, passes for the wrong reason
(an absence asserted before the thing that would break it had its chance). Tests wait here instead,
on a condition, and fail with what they waited for when the deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    condition: Callable[[], T | Awaitable[T]], deadline: float = 10.0, what: str = "", every: float = 0.05
) -> T:
    """Call ``condition`` (plain or async) until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` and the last value once ``deadline`` seconds have passed.
    The condition is always tried at least once, and once more at the deadline.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        last_call = loop.time() >= end
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if last_call:
            raise AssertionError(f"{what or condition} did not hold within {deadline}s (last: {value!r})")
        await asyncio.sleep(min(every, max(0.0, end - loop.time())))
