"""64 concurrent SSE streams for a minute through the whole stack: no stall, no lost or reordered
frame (each stream reassembles to exactly the buffered answer for its prompt, its usage chunk counts
every content chunk, and it ends with [DONE]), and every service's memory stays bounded.

``make soak`` (``tools/soak.py``) runs the same driver for longer and reports RSS growth.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest

from tests.faults.kit import launch
from tools.soak import answers, price_of, rss, run_load, token_for

pytestmark = pytest.mark.timeout(180)

MODEL = "gpt-5-nano"
CONCURRENCY = 64
SECONDS = float(os.environ.get("JANUS_LOAD_SECONDS", "60"))
# generous: a leak over a minute of streams shows as hundreds of MiB; allocator noise does not
RSS_GROWTH_KIB = 96 * 1024


async def test_64_streams_for_a_minute_lose_nothing_and_memory_stays_bounded(tmp_path: Path) -> None:
    # the client's stall bound is well below the gateway's own, so a stall shows as a client failure
    stack = launch(tmp_path, tokens_per_second=20, env={"JANUS_STALL_TIMEOUT_SECONDS": "30"})
    try:
        users = {f"load-{i}": token_for(stack, f"load-{i}") for i in range(CONCURRENCY)}
        prompts = [f"load prompt {i}: how do gateways stream?" for i in range(16)]
        price = price_of(stack.env, MODEL)
        async with aiohttp.ClientSession() as session:
            expected = await answers(session, stack.base_url, token_for(stack, "load-warm"), prompts, MODEL)
        # a short warm-up, so the baseline is taken with pools, caches and buffers grown
        warm = await run_load([stack.base_url], users, expected, concurrency=CONCURRENCY, seconds=3,
                              model=MODEL, price=price, stall=10)
        assert warm.ok, warm.failures[:5]
        before = rss(stack)

        report = await run_load([stack.base_url], users, expected, concurrency=CONCURRENCY,
                                seconds=SECONDS, model=MODEL, price=price, stall=10)
        after = rss(stack)

        assert report.ok, f"{len(report.failures)} of {report.streams} streams broken: {report.failures[:5]}"
        assert report.streams >= CONCURRENCY * 2
        grown = {name: after[name] - before[name] for name in before}
        assert all(g < RSS_GROWTH_KIB for g in grown.values()), f"RSS growth KiB: {grown} (from {before})"
        for name, svc in stack.services.items():
            assert svc.proc.poll() is None, f"{name} died under load"
    finally:
        stack.stop()
