"""The worker's deadline (``_Deadline``): it cancels the call's task once the gateway's deadline
passes, and leaves the task's cancel count as ``asyncio.timeout`` would, so a cancel from elsewhere
(the gateway's, a stopping worker) is still told apart from the deadline's own."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from services.worker.service import _Deadline


async def _in_task(body: Any) -> Any:
    """Run ``body(task)`` in a task of its own, as the worker runs each call."""
    task: asyncio.Task[Any] | None = None

    async def run() -> Any:
        assert task is not None
        return await body(task)

    task = asyncio.get_running_loop().create_task(run())
    return await task


async def test_a_deadline_that_passes_cancels_the_call_and_takes_its_cancel_back() -> None:
    async def body(task: asyncio.Task[Any]) -> tuple[bool, bool, int]:
        deadline = _Deadline(task, 0.01)
        cancelled = False
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled = True
        finally:
            deadline.close()
        return cancelled, deadline.expired, task.cancelling()

    assert await asyncio.wait_for(_in_task(body), 5) == (True, True, 0)


async def test_a_call_done_in_time_is_never_cancelled() -> None:
    async def body(task: asyncio.Task[Any]) -> tuple[bool, int]:
        deadline = _Deadline(task, 0.05)
        await asyncio.sleep(0)
        deadline.close()
        await asyncio.sleep(0.1)  # past where the deadline was: nothing fires now
        return deadline.expired, task.cancelling()

    assert await _in_task(body) == (False, 0)


async def test_no_deadline_sets_no_timer() -> None:
    async def body(task: asyncio.Task[Any]) -> tuple[bool, int]:
        deadline = _Deadline(task, None)
        await asyncio.sleep(0.02)
        deadline.close()
        return deadline.expired, task.cancelling()

    assert await _in_task(body) == (False, 0)


async def test_a_cancel_from_elsewhere_still_counts_after_the_deadline() -> None:
    """The gateway's cancel and the deadline both hit the call: once the deadline takes its own back,
    one cancel is still counted, which the worker reports as a cancel, not a deadline."""

    async def body(task: asyncio.Task[Any]) -> tuple[bool, int]:
        deadline = _Deadline(task, 0.01)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        deadline.close()
        counted = task.cancelling()
        task.uncancel()
        return deadline.expired, counted

    assert await asyncio.wait_for(_in_task(body), 5) == (True, 1)


async def test_a_cancel_swallowed_by_the_call_is_still_taken_back() -> None:
    async def body(task: asyncio.Task[Any]) -> tuple[bool, int, str]:
        deadline = _Deadline(task, 0.01)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # the call ended its own way
        deadline.close()
        await asyncio.sleep(0)  # the task goes on awaiting without a stray cancel
        return deadline.expired, task.cancelling(), "went on"

    assert await asyncio.wait_for(_in_task(body), 5) == (True, 0, "went on")
