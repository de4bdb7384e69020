"""The nats-server stopped and started again (same port, same JetStream store) under open streams.

Every stream that was open ends cleanly: either complete and exact (frames buffered across the
reconnect, none lost) or with an OpenAI-style error, never a silent truncation. Every service
reconnects and reports ready again within seconds, new requests are served, and every hold taken
before the restart is settled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.faults.kit import launch, settled_usage, wait_until
from tests.faults.test_worker_kill import long_prompt
from tools.localstack import Stack
from tools.soak import ChatResult, answers, chat, token_for

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-5-nano"
STREAMS = 4
RECOVERY = 20.0  # seconds: "within seconds", with room for a loaded 2-core machine


def all_ready(stack: Stack) -> bool:
    return all(svc.ready() for svc in stack.services.values())


def check_clean(res: ChatResult | BaseException, expected: str) -> None:
    assert not isinstance(res, BaseException), f"the client saw a broken connection: {res!r}"
    if res.status != 200:
        assert res.error and {"message", "type"} <= set(res.error), res.error
    elif res.in_band:
        assert res.error and {"message", "type", "code"} <= set(res.error), res.error
        assert not res.done
    else:
        assert res.done and res.text == expected, "a stream that ends with [DONE] must be whole"


async def test_nats_restart_fails_in_flight_cleanly_and_service_resumes(tmp_path: Path) -> None:
    stack = launch(tmp_path, tokens_per_second=10)
    try:
        prompt = long_prompt()
        tokens = {f"nats-{i}": token_for(stack, f"nats-{i}") for i in range(STREAMS)}
        async with aiohttp.ClientSession() as session:
            expected = (
                await answers(session, stack.base_url, token_for(stack, "nats-warm"), [prompt], MODEL)
            )[prompt]
            started = [asyncio.Event() for _ in range(STREAMS)]

            def marker(i: int) -> Callable[[ChatResult], None]:
                def on_chunk(res: ChatResult) -> None:
                    if res.chunks >= 2:
                        started[i].set()

                return on_chunk

            calls = [
                asyncio.create_task(
                    chat(session, stack.base_url, t, prompt, model=MODEL, stall=30, on_chunk=marker(i))
                )
                for i, t in enumerate(tokens.values())
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 20)

            await asyncio.to_thread(stack.nats.stop)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stack.nats.restart)
            back_at = time.monotonic()

            for res in await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 40):
                check_clean(res, expected)

            async def ready() -> bool:
                return await asyncio.to_thread(all_ready, stack)

            await wait_until(ready, RECOVERY, "every service ready again")

            probe_token = token_for(stack, "nats-after")

            async def served() -> bool:
                res = await chat(session, stack.base_url, probe_token, "are you back?", model=MODEL, stall=10)
                return res.status == 200 and res.done and not res.error

            await wait_until(served, RECOVERY, "a request served after the restart", every=0.5)
            assert time.monotonic() - back_at < RECOVERY + 10
            for token in tokens.values():
                usage = await settled_usage(session, stack.base_url, token, timeout=30)
                assert usage["session"]["reserved"] == 0
    finally:
        stack.stop()
