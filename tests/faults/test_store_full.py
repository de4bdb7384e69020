"""JetStream's store fills up (a small ``max_file_store`` standing in for a full volume): Janus
refuses new requests with an OpenAI-shaped 503 that tells the SDK to retry, counts the refused
writes for the alert, loses nothing it had acknowledged, and serves again once space is freed."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types import CompletionUsage

from shared.bus import Bus
from shared.contract import Usage
from shared.errors import ServiceUnavailable
from shared.money import cost_credits
from tests.faults.kit import launch, ledger, settled_usage
from tests.kit.metrics import parse_metric
from tools.localnats import start_nats
from tools.soak import price_of, token_for

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-5-nano"
# the ledger's own cap (JANUS_LEDGER_MAX_BYTES) is reserved inside the store, as in production
STORE = "jetstream { max_file_store: 8MB }\n"
ENV = {"JANUS_LEDGER_MAX_BYTES": str(1 << 20)}


async def fill(bus: Bus) -> None:
    """Write filler until JetStream refuses: the store is full."""
    await bus.ensure_stream("FILLER", ["filler"])
    for i in range(1000):  # 8 MB in 32 KiB messages is 256
        try:
            await bus.js_publish("filler", b"x" * 32768, msg_id=f"f{i}")
        except ServiceUnavailable as exc:
            assert exc.code == "storage_full", exc
            return
    raise AssertionError("the store never filled")


async def test_a_full_store_is_a_clean_503_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    srv = start_nats(tmp_path, config=STORE)
    stack = launch(tmp_path, env=ENV, cluster=[srv])
    try:
        token = token_for(stack, "store-full")
        price = price_of(stack.env, MODEL)
        client = openai.AsyncOpenAI(base_url=stack.base_url, api_key=token, max_retries=0)
        nats_url = stack.harness_url
        charged = 0
        async with client, aiohttp.ClientSession() as session:
            for i in range(3):
                done = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"before {i}"}]
                )
                assert done.usage is not None
                charged += cost_credits(_usage(done.usage), price)
            assert (await settled_usage(session, stack.base_url, token))["session"]["used"] == charged

            bus = await Bus.connect(nats_url, "test-fill")
            try:
                await fill(bus)
                for _ in range(3):
                    with pytest.raises(openai.APIStatusError) as refused:
                        await client.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": "while full"}]
                        )
                    err = refused.value
                    assert err.status_code == 503, err
                    assert err.response.headers["x-should-retry"] == "true"
                    body = err.response.json()
                    assert set(body["error"]) >= {"message", "type", "code"}
                    assert body["error"]["type"] == "service_unavailable"
                # reads still work, and show the same budget: nothing acknowledged was lost
                usage = await settled_usage(session, stack.base_url, token)
                assert usage["session"]["used"] == charged
                metering = stack.services["metering"].metrics()
                assert parse_metric(metering, "janus_jetstream_write_errors_total", reason="full") >= 1
                # every service is still up
                assert all(svc.proc.poll() is None for svc in stack.services.values())

                await bus.js.delete_stream("FILLER")
            finally:
                await bus.close()

            done = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "after"}]
            )
            assert done.usage is not None
            charged += cost_credits(_usage(done.usage), price)
            assert (await settled_usage(session, stack.base_url, token))["session"]["used"] == charged
        entries = [e for e in await ledger(nats_url) if e.user == "store-full"]
        # a refused request that had already reserved (a small KV write can still fit) is settled
        # for nothing once the store has room again: a release, recorded, never a charge
        assert sum(e.ok for e in entries) == 4 and sum(e.credits for e in entries) == charged
        assert all(e.credits == 0 for e in entries if not e.ok)
    finally:
        stack.stop()


def _usage(u: CompletionUsage) -> Usage:
    return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)
