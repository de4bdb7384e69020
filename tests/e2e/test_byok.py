"""Bring your own key, end to end: a user who registered their own provider key is served with it
(the upstream sees their key, not ours), and the request is recorded as usage but charges no credits.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from shared.bus import Bus
from shared.byok import ByokStore, Sealer, generate_key
from tests.fakes.openai_upstream import OpenAIUpstream
from tools.stack import start_stack
from tools.token import make_token

OUR_KEY = "sk-operator-key-0123456789"
USER_KEY = "sk-user-own-key-9876543210"

CATALOG = """
providers:
  - id: openai
    kind: openai_compat
    deployments:
      - {{id: openai-main, base_url: "{base_url}", api_key_env: JANUS_TEST_OPENAI_KEY}}
models:
  - id: gpt-5-mini
    owned_by: openai
    capabilities: [streaming, tools, json]
    price: {{input: 0.25, output: 2.00}}
    serve: [{{deployment: openai-main, model: gpt-5-mini}}]
"""


PLANS = """
default_plan: pro
plans:
  pro:
    session: {credits: 10000000, hours: 5}
    weekly: {credits: 50000000}
    default_model: gpt-5-mini
    auto_models: [gpt-5-mini]
"""


def _usage(base: str, tok: str) -> dict:  # type: ignore[type-arg]
    return httpx.get(f"{base}/usage", headers={"Authorization": f"Bearer {tok}"}, timeout=10).json()


async def test_own_key_is_used_and_charges_nothing(tmp_path: Path) -> None:
    async with OpenAIUpstream() as upstream:
        (tmp_path / "catalog.yaml").write_text(CATALOG.format(base_url=upstream.base_url))
        (tmp_path / "plans.yaml").write_text(PLANS)
        # the default routing rules name models this catalog does not have
        (tmp_path / "routing.yaml").write_text("routing: {rules: []}\n")
        byok_key = generate_key()
        env = {"JANUS_CATALOG": str(tmp_path / "catalog.yaml"), "JANUS_PLANS": str(tmp_path / "plans.yaml"),
               "JANUS_ROUTING": str(tmp_path / "routing.yaml"),
               "JANUS_BYOK_KEY": byok_key, "JANUS_TEST_OPENAI_KEY": OUR_KEY}
        stack = await asyncio.to_thread(start_stack, tmp_path / "stack", env=env)
        try:
            bus = await Bus.connect(stack.nats.url, "test")
            store = await ByokStore.open(bus, Sealer.from_env({"JANUS_BYOK_KEY": byok_key}))
            await store.set("own-key-user", "openai", USER_KEY)
            await bus.close()

            secret = stack.env["JANUS_JWT_SECRET"]
            own = make_token("own-key-user", "pro", secret=secret)
            ours = make_token("plain-user", "pro", secret=secret)
            body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hello"}]}
            async with httpx.AsyncClient(timeout=30) as c:
                for tok in (own, ours):
                    r = await c.post(f"{stack.base_url}/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {tok}"})
                    assert r.status_code == 200, r.text
            keys = [rec.headers.get("Authorization") for rec in upstream.requests]
            assert keys == [f"Bearer {USER_KEY}", f"Bearer {OUR_KEY}"]

            deadline = time.monotonic() + 10
            while True:
                u_own = await asyncio.to_thread(_usage, stack.base_url, own)
                u_ours = await asyncio.to_thread(_usage, stack.base_url, ours)
                settled = u_ours["weekly"]["used"] > 0 and u_own["session"]["reserved"] == 0
                if settled or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert u_ours["weekly"]["used"] > 0  # served on our key: charged
            assert u_own["weekly"]["used"] == 0 and u_own["session"]["used"] == 0  # own key: free
            assert u_own["session"]["reserved"] == 0
        finally:
            await asyncio.to_thread(stack.stop)
