"""A provider worker SIGKILLed in the middle of a call.

Mid-stream: the client gets an explicit in-band error event within the stall timeout (never a
silent truncation), and the hold is settled for what was produced. Before the first token: the
gateway retries on the other worker replica and the client sees a normal, complete stream.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from services.worker.adapters.fake import answer_words
from shared.contract import LedgerEntry
from shared.money import cost_credits
from tests.faults.kit import FAST_ENV, add_replica, launch, ledger, settled_usage, wait_until
from tests.kit.metrics import parse_metric
from tools.localstack import ServiceProc
from tools.soak import ChatResult, chat, price_of, token_for

pytestmark = pytest.mark.timeout(90)

MODEL = "gpt-5-nano"
STALL = float(FAST_ENV["JANUS_STALL_TIMEOUT_SECONDS"])


def long_prompt(min_words: int = 40) -> str:
    """A prompt whose fake answer is long enough to kill the worker in the middle of it."""
    return next(
        p
        for p in (f"tell me a long story {i}" for i in range(1000))
        if len(answer_words(p, MODEL)) >= min_words
    )


def in_flight(worker: ServiceProc) -> float:
    return parse_metric(worker.metrics(), "janus_worker_in_flight")


async def test_worker_killed_mid_stream_ends_in_band_and_settles_what_was_produced(tmp_path: Path) -> None:
    stack = launch(tmp_path, tokens_per_second=10)
    try:
        token = token_for(stack, "kill-mid")
        some_sent = asyncio.Event()

        def on_chunk(res: ChatResult) -> None:
            if res.chunks >= 3:
                some_sent.set()

        async with aiohttp.ClientSession() as session:
            call = asyncio.create_task(
                chat(
                    session,
                    stack.base_url,
                    token,
                    long_prompt(),
                    model=MODEL,
                    stall=STALL + 15,
                    on_chunk=on_chunk,
                )
            )
            await asyncio.wait_for(some_sent.wait(), 20)
            stack.services["worker"].stop(signal.SIGKILL)
            killed_at = time.monotonic()
            res = await asyncio.wait_for(call, STALL + 20)
            ended_after = time.monotonic() - killed_at

            assert res.status == 200 and res.chunks >= 3
            assert not res.done, "a broken stream must not end with [DONE]"
            assert res.in_band and res.error is not None, "the stream must end with an error event"
            assert {"message", "type", "code"} <= set(res.error), res.error
            # a functional bound (the gateway's stall detector fired, well before the client's own
            # read timeout of STALL + 15 s), with room for a loaded machine
            assert ended_after < STALL + 8, f"error event came {ended_after:.1f}s after the kill"

            usage = await settled_usage(session, stack.base_url, token)
            assert usage["session"]["used"] > 0, "what the provider produced must be charged"
            assert usage["weekly"]["used"] == usage["session"]["used"]

        async def entries_for_user() -> list[LedgerEntry]:
            # the ledger entry is published just after the budget record is written
            return [e for e in await ledger(stack.harness_url) if e.user == "kill-mid"]

        entries = await wait_until(entries_for_user, 20, "the ledger entry", every=0.5)
        assert len(entries) == 1 and not entries[0].ok
        assert entries[0].credits == usage["session"]["used"]
        assert entries[0].usage.completion_tokens >= res.chunks
    finally:
        stack.stop()


async def test_worker_killed_before_first_token_is_retried_on_another_replica(tmp_path: Path) -> None:
    stack = launch(tmp_path, latency_ms=2500)
    try:
        workers = [stack.services["worker"], add_replica(stack, "worker")]
        token = token_for(stack, "kill-early")
        prompt = "what happens when a worker dies"
        price = price_of(stack.env, MODEL)
        async with aiohttp.ClientSession() as session:
            buffered = await chat(session, stack.base_url, token, prompt, model=MODEL, stream=False)
            assert buffered.status == 200 and buffered.usage is not None

            call = asyncio.create_task(
                chat(session, stack.base_url, token, prompt, model=MODEL, stall=STALL + 20)
            )

            async def owner() -> ServiceProc | None:
                return next((w for w in workers if in_flight(w) > 0), None)

            # the worker has accepted the call and waits for its (slow) first token
            victim = await wait_until(owner, 10, "a worker holding the call", every=0.05)
            assert not call.done()
            victim.stop(signal.SIGKILL)
            res = await asyncio.wait_for(call, 30)

            assert res.status == 200, res.error
            assert res.error is None and res.done, "the client must not notice the dead worker"
            assert res.text == buffered.text
            assert res.usage is not None and res.usage.completion_tokens == res.chunks
            fallbacks = parse_metric(stack.services["gateway"].metrics(), "janus_fallbacks_total")
            assert fallbacks >= 1, "the call must have moved to the other replica"

            usage = await settled_usage(session, stack.base_url, token)
            expected = cost_credits(buffered.usage, price) + cost_credits(res.usage, price)
            assert usage["session"]["used"] == expected
    finally:
        stack.stop()
