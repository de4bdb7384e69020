"""A rollout during a long stream: SIGTERM reaches the gateway serving it and the worker calling the
provider, and the stream still completes, because both drain for the request bound.

The stream lasts about 120 s, four times the fixed 30 s grace the services had before. The bound is
150 s (``JANUS_REQUEST_DEADLINE_SECONDS``) rather than production's 600 s so that a broken drain
fails within minutes; the drain grace is derived from the bound by the same code as in production
(no ``JANUS_SHUTDOWN_GRACE_SECONDS`` is set).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from services.worker.adapters.fake import answer_words
from shared.money import cost_credits
from tests.faults.kit import add_replica, gateway_url, launch, settled_usage, wait_until
from tests.kit.metrics import parse_metric
from tools.localstack import ServiceProc
from tools.soak import ChatResult, chat, price_of, token_for

pytestmark = pytest.mark.timeout(300)

MODEL = "gpt-5-nano"
WORDS = 60
TOKENS_PER_SECOND = 0.5  # 60 words: about 120 s
ENV = {
    "JANUS_REQUEST_DEADLINE_SECONDS": "150",
    "JANUS_SHUTDOWN_GRACE_SECONDS": "",  # derived from the bound, as in production
    "JANUS_FAKE_TOKENS_PER_SECOND": str(TOKENS_PER_SECOND),
}


def prompt_of(words: range) -> str:
    """A prompt whose fake answer has a number of words in ``words`` (its length in time, paced)."""
    return next(
        p for p in (f"tell me a story {i}" for i in range(5000)) if len(answer_words(p, MODEL)) in words
    )


async def stopping(svc: ServiceProc) -> bool:
    """The service took SIGTERM: its /readyz says so (the ops server answers until it exits)."""
    url = f"http://127.0.0.1:{svc.ops_port}/readyz"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status == 503 and (await r.json())["stopping"] is True


async def exited(svc: ServiceProc) -> bool:
    return svc.proc.poll() is not None


async def test_a_long_stream_survives_sigterm_to_its_gateway_and_worker(tmp_path: Path) -> None:
    stack = launch(tmp_path, env=ENV)
    try:
        gateway = stack.services["gateway"]
        workers = [stack.services["worker"], add_replica(stack, "worker")]
        token = token_for(stack, "rollout")
        prompt = prompt_of(range(WORDS, 64))
        started = asyncio.Event()

        def on_chunk(res: ChatResult) -> None:
            if res.chunks >= 2:
                started.set()

        async with aiohttp.ClientSession() as session:
            call = asyncio.create_task(
                chat(session, stack.base_url, token, prompt, model=MODEL, stall=20, on_chunk=on_chunk)
            )
            await asyncio.wait_for(started.wait(), 30)
            worker = next(w for w in workers if parse_metric(w.metrics(), "janus_worker_in_flight") > 0)
            # the rollout's new gateway is up (maxSurge), then the old pods get SIGTERM
            new_gateway = await asyncio.to_thread(add_replica, stack, "gateway", "-new")
            gateway.proc.send_signal(signal.SIGTERM)
            worker.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await wait_until(lambda: stopping(gateway), 10, "the gateway draining")
            await wait_until(lambda: stopping(worker), 10, "the worker draining")
            assert not call.done(), "the stream must still be running when both are draining"
            # meanwhile new work goes to the new pods
            other = await chat(
                session, gateway_url(new_gateway), token, prompt_of(range(16, 20)), model=MODEL
            )
            assert other.status == 200 and other.done, other.error
            assert not call.done()

            res = await asyncio.wait_for(call, 160)
            ran_after = time.monotonic() - signalled

            assert res.status == 200 and res.error is None, res.error
            assert res.done, "the stream must end with [DONE], not be cut by the shutdown"
            assert res.text.split() == answer_words(prompt, MODEL)
            assert ran_after > 100, f"the stream ran only {ran_after:.0f}s after SIGTERM"
            assert res.usage is not None

            # both exit on their own once it is done, cleanly, well before the grace runs out
            for svc in (gateway, worker):
                await wait_until(lambda s=svc: exited(s), 20, f"{svc.name} exiting")  # type: ignore[misc]
                assert svc.proc.returncode == 0, svc.log_tail()

            # the old gateway settled before it exited: the new one reads both charges back
            usage = await settled_usage(session, gateway_url(new_gateway), token)
            assert other.usage is not None
            price = price_of(stack.env, MODEL)
            assert usage["session"]["used"] == cost_credits(res.usage, price) + cost_credits(
                other.usage, price
            )
    finally:
        stack.stop()
