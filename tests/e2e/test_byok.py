"""Bring your own key, end to end: a user who registered their own provider key (with the CLI's store
or over HTTP, ``/v1/byok``) is served with it (the upstream sees their key, not ours), and the request
is recorded as usage but charges no credits.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from shared.bus import Bus
from shared.byok import ByokStore, Sealer, entry_key, generate_key
from tests.fakes.openai_upstream import OpenAIUpstream
from tests.fakes.recorded_upstream import RecordedUpstream
from tests.fixtures import recordings
from tools.localstack import Stack, start_stack
from tools.token import make_token

OUR_KEY = "sk-operator-key-0123456789"
USER_KEY = "sk-user-own-key-9876543210"

CATALOG = """
providers:
  - id: openai
    kind: openai_compat
    byok: true
    deployments:
      - {{id: openai-main, base_url: "{base_url}", api_key_env: JANUS_TEST_OPENAI_KEY}}
  - id: gemini
    kind: gemini
    byok: true
    deployments:
      - {{id: gemini-main, base_url: "{gemini_url}", api_key_env: JANUS_TEST_OPENAI_KEY}}
models:
  - id: gpt-5-mini
    owned_by: openai
    capabilities: [streaming, tools, json]
    price: {{input: 0.25, output: 2.00}}
    serve: [{{deployment: openai-main, model: gpt-5-mini}}]
  - id: gemini-flash
    owned_by: google
    price: {{input: 0.30, output: 2.50}}
    serve: [{{deployment: gemini-main, model: gemini-2.5-flash}}]
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


async def _start(
    tmp_path: Path, upstream: OpenAIUpstream, byok_key: str, gemini_url: str = "http://127.0.0.1:9"
) -> Stack:
    """The stack on a catalog whose providers are the fake OpenAI upstream and (when given) a
    Gemini upstream, both on our key OUR_KEY."""
    (tmp_path / "catalog.yaml").write_text(CATALOG.format(base_url=upstream.base_url, gemini_url=gemini_url))
    (tmp_path / "plans.yaml").write_text(PLANS)
    # the default routing rules name models this catalog does not have
    (tmp_path / "routing.yaml").write_text("routing: {rules: []}\n")
    env = {
        "JANUS_CATALOG": str(tmp_path / "catalog.yaml"),
        "JANUS_PLANS": str(tmp_path / "plans.yaml"),
        "JANUS_ROUTING": str(tmp_path / "routing.yaml"),
        "JANUS_BYOK_KEY": byok_key,
        "JANUS_TEST_OPENAI_KEY": OUR_KEY,
    }
    return await asyncio.to_thread(start_stack, tmp_path / "stack", env=env)


async def test_own_key_is_used_and_charges_nothing(tmp_path: Path) -> None:
    async with OpenAIUpstream() as upstream, RecordedUpstream() as google:
        byok_key = generate_key()
        stack = await _start(tmp_path, upstream, byok_key, google.base_url)
        try:
            bus = await Bus.connect(stack.nats.url, "test")
            store = await ByokStore.open(bus, Sealer.from_key(byok_key))
            await store.set("own-key-user", "openai", USER_KEY)
            await store.set("own-key-user", "gemini", USER_KEY)
            await bus.close()

            secret = stack.env["JANUS_JWT_SECRET"]
            own = make_token("own-key-user", "pro", secret=secret)
            ours = make_token("plain-user", "pro", secret=secret)
            body = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hello"}]}
            async with httpx.AsyncClient(timeout=30) as c:
                for tok in (own, ours):
                    r = await c.post(
                        f"{stack.base_url}/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {tok}"},
                    )
                    assert r.status_code == 200, r.text
            keys = [rec.headers.get("Authorization") for rec in upstream.requests]
            assert keys == [f"Bearer {USER_KEY}", f"Bearer {OUR_KEY}"]

            # Google refuses a key it does not accept with 400 API_KEY_INVALID (as recorded from
            # the real API): the caller's own key is theirs to fix (401), ours is not their fault (502)
            google.serve(recordings.load("gem_err_400"), "whole")
            gemini = {**body, "model": "gemini-flash"}
            async with httpx.AsyncClient(timeout=30) as c:
                refused = [
                    await c.post(
                        f"{stack.base_url}/chat/completions",
                        json=gemini,
                        headers={"Authorization": f"Bearer {tok}"},
                    )
                    for tok in (own, ours)
                ]
            assert [(r.status_code, r.json()["error"]["code"]) for r in refused] == [
                (401, "byok_key_rejected"),
                (502, "upstream_auth"),
            ]
            assert all(r.headers["x-should-retry"] == "false" for r in refused)
            assert [rec.headers.get("x-goog-api-key") for rec in google.requests] == [USER_KEY, OUR_KEY]
            assert USER_KEY not in refused[0].text

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


async def _settled(c: httpx.AsyncClient, base: str, headers: dict[str, str], requests: int) -> dict:  # type: ignore[type-arg]
    """/v1/usage once ``requests`` settlements have landed and no hold is open (or 10 s passed)."""
    deadline = time.monotonic() + 10
    while True:
        u = (await c.get(f"{base}/usage", headers=headers)).json()
        tally = u["week"]["by_model"].get("gpt-5-mini", {"requests": 0})
        if (tally["requests"] >= requests and u["session"]["reserved"] == 0) or time.monotonic() > deadline:
            return u  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)


async def test_own_key_over_http_is_sealed_listed_masked_used_and_deleted(tmp_path: Path) -> None:
    """PUT/GET/DELETE /v1/byok: the caller's own keys, and only theirs."""
    async with OpenAIUpstream() as upstream:
        byok_key = generate_key()
        stack = await _start(tmp_path, upstream, byok_key)
        try:
            secret = stack.env["JANUS_JWT_SECRET"]
            alice = {"Authorization": "Bearer " + make_token("http-alice", "pro", secret=secret)}
            bob = {"Authorization": "Bearer " + make_token("http-bob", "pro", secret=secret)}
            base = stack.base_url
            chat = {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hello"}]}
            async with httpx.AsyncClient(timeout=30) as c:
                # no credentials, no access
                assert (await c.get(f"{base}/byok")).status_code == 401
                assert (await c.put(f"{base}/byok/openai", json={"api_key": USER_KEY})).status_code == 401

                put = await c.put(f"{base}/byok/openai", json={"api_key": f"  {USER_KEY}\n"}, headers=alice)
                assert put.status_code == 200, put.text
                entry = put.json()
                assert entry["object"] == "byok.key" and entry["provider"] == "openai"
                assert entry["hint"] == f"{USER_KEY[:3]}...{USER_KEY[-4:]}"
                assert USER_KEY not in put.text
                assert abs(entry["created"] - time.time()) < 120

                listed = (await c.get(f"{base}/byok", headers=alice)).json()
                assert listed == {"object": "list", "data": [entry], "providers": ["gemini", "openai"]}

                # sealed at rest with the deployment's key, bound to the user: the worker opens it
                bus = await Bus.connect(stack.nats.url, "test")
                try:
                    store = await ByokStore.open(bus, Sealer.from_key(byok_key))
                    assert await store.get("http-alice", "openai") == USER_KEY
                    raw, _ = await Bus.kv_get(store.kv, entry_key("http-alice", "openai"))
                    assert USER_KEY.encode() not in raw and USER_KEY[3:-4].encode() not in raw
                finally:
                    await bus.close()

                # served on her key, charged nothing
                r = await c.post(f"{base}/chat/completions", json=chat, headers=alice)
                assert r.status_code == 200, r.text
                assert upstream.requests[-1].headers.get("Authorization") == f"Bearer {USER_KEY}"

                # the provider refusing her key is hers to fix: a 401 that says so, no fallback to
                # our key, nothing charged
                upstream.faults.fail_times, upstream.faults.status = 1, 401
                upstream.faults.message = "Incorrect API key provided"
                upstream.faults.error_type = "invalid_request_error"
                calls = len(upstream.requests)
                refused = await c.post(f"{base}/chat/completions", json=chat, headers=alice)
                assert refused.status_code == 401, refused.text
                assert refused.json()["error"]["code"] == "byok_key_rejected"
                assert "/v1/byok/openai" in refused.json()["error"]["message"]
                assert USER_KEY not in refused.text
                assert len(upstream.requests) == calls + 1
                upstream.faults.status = 500

                # another user sees none of it and cannot delete it
                bobs = (await c.get(f"{base}/byok", headers=bob)).json()
                assert bobs == {"object": "list", "data": [], "providers": ["gemini", "openai"]}
                gone = await c.delete(f"{base}/byok/openai", headers=bob)
                assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
                r = await c.post(f"{base}/chat/completions", json=chat, headers=bob)
                assert r.status_code == 200, r.text
                assert upstream.requests[-1].headers.get("Authorization") == f"Bearer {OUR_KEY}"
                assert (await c.get(f"{base}/byok", headers=alice)).json()["data"] == [entry]

                # unknown providers and bad bodies: OpenAI-shaped errors that never repeat the key
                unknown = await c.put(
                    f"{base}/byok/no-such-provider", json={"api_key": USER_KEY}, headers=alice
                )
                assert unknown.status_code == 400
                assert unknown.json()["error"]["code"] == "byok_not_supported"
                assert "openai" in unknown.json()["error"]["message"]
                assert (await c.delete(f"{base}/byok/no-such-provider", headers=alice)).status_code == 404
                bad_bodies: list[bytes] = [
                    b"not json",
                    b"[]",
                    b"{}",
                    b'{"api_key": 12345678}',
                    b'{"api_key": "short"}',
                    b'{"api_key": "sk-has a space-123456"}',
                    b'{"api_key": "sk-line\\r\\nX-Evil: 1"}',
                ]
                for body in bad_bodies:
                    bad = await c.put(
                        f"{base}/byok/openai",
                        content=body,
                        headers={**alice, "Content-Type": "application/json"},
                    )
                    assert bad.status_code == 400, (body, bad.text)
                    err = bad.json()["error"]
                    assert err["type"] == "invalid_request_error" and err["param"] == "api_key"
                    assert "space-123456" not in bad.text and "Evil" not in bad.text
                # a refused replacement left the stored key alone
                assert (await c.get(f"{base}/byok", headers=alice)).json()["data"] == [entry]

                deleted = await c.delete(f"{base}/byok/openai", headers=alice)
                assert deleted.status_code == 200
                assert deleted.json() == {"object": "byok.key.deleted", "provider": "openai", "deleted": True}
                assert (await c.get(f"{base}/byok", headers=alice)).json()["data"] == []
                # this gateway forgot its cached answer at once: the next request is on our key
                r = await c.post(f"{base}/chat/completions", json=chat, headers=alice)
                assert r.status_code == 200, r.text
                assert upstream.requests[-1].headers.get("Authorization") == f"Bearer {OUR_KEY}"

                # the requests on her own key charged nothing; the one on ours did, as much as bob's
                u = await _settled(c, base, alice, 3)
                bob_u = await _settled(c, base, bob, 1)
                assert u["week"]["by_model"]["gpt-5-mini"]["requests"] == 3
                assert 0 < u["weekly"]["used"] == bob_u["weekly"]["used"]

            logs = "".join(svc.log_tail(10**7) for svc in stack.services.values())
            assert USER_KEY not in logs and USER_KEY[3:-4] not in logs
        finally:
            await asyncio.to_thread(stack.stop)
