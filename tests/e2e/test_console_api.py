"""The HTTP API the console is built on, end to end on the running stack: self-service API keys
(used with the official SDK, revoked and refused), daily usage history, the operator view, and the
console's static files with their policy headers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.faults.kit import wait_until
from tools.localstack import Stack
from tools.token import make_token


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(stack: Stack, user: str, plan: str = "pro", **claims: Any) -> str:
    return make_token(user, plan, secret=stack.env["JANUS_JWT_SECRET"], **claims)


def _root(stack: Stack) -> str:
    return stack.base_url.removesuffix("/v1")


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == code, err
    return err


async def test_keys_are_self_service_and_scoped_to_their_owner(stack: Stack) -> None:
    alice = _token(stack, "console-alice", "developer")
    mallory = _token(stack, "console-mallory", "pro")
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as c:
        # the body cannot choose the plan or the user: both are the caller's
        r = await c.post(
            "/keys",
            json={"name": "laptop", "plan": "enterprise", "user": "someone-else"},
            headers=_auth(alice),
        )
        assert r.status_code == 201, r.text
        made = r.json()
        assert (made["object"], made["plan"], made["name"]) == ("api_key", "developer", "laptop")
        assert r.headers["cache-control"] == "no-store"
        key, key_id = made["key"], made["id"]
        assert key.startswith("sk-janus-") and made["hint"].endswith(key[-4:])

        listed = (await c.get("/keys", headers=_auth(alice))).json()["data"]
        assert [k["id"] for k in listed] == [key_id]
        assert "key" not in listed[0] and key not in str(listed)
        assert (await c.get("/keys", headers=_auth(mallory))).json()["data"] == []

        # the key is accepted by the SDK and spends its owner's budget
        sdk = openai.AsyncOpenAI(base_url=stack.base_url, api_key=key, max_retries=0)
        done = await sdk.chat.completions.create(
            model="gpt-5-nano", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content

        # a key cannot manage keys: a leaked one must not mint keys that outlive it
        _error(await c.post("/keys", json={}, headers=_auth(key)), 403, "sign_in_required")
        _error(await c.delete(f"/keys/{key_id}", headers=_auth(key)), 403, "sign_in_required")
        # another user's key id answers as an unknown one
        _error(await c.delete(f"/keys/{key_id}", headers=_auth(mallory)), 404, "key_not_found")
        _error(await c.delete("/keys/0000000000000000", headers=_auth(alice)), 404, "key_not_found")
        # the key itself never goes in a URL, not even its owner's
        err = _error(await c.delete(f"/keys/{key}", headers=_auth(alice)), 400, "invalid_value")
        assert key[9:] not in err["message"]
        _error(await c.post("/keys", content=b"[1,2", headers=_auth(alice)), 400, "invalid_value")
        _error(await c.post("/keys", json={"name": "x" * 65}, headers=_auth(alice)), 400, "invalid_value")
        assert (await sdk.models.list()).data  # still usable after mallory's attempt

        r = await c.delete(f"/keys/{key_id}", headers=_auth(alice))
        assert r.status_code == 200 and r.json() == {
            "id": key_id,
            "deleted": True,
            "object": "api_key.deleted",
        }
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(
                model="gpt-5-nano", messages=[{"role": "user", "content": "hi"}]
            )
        listed = (await c.get("/keys", headers=_auth(alice))).json()["data"]
        assert listed[0]["revoked"] is not None


async def test_active_keys_per_user_are_capped(stack: Stack) -> None:
    tok = _token(stack, "console-hoarder")
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as c:
        made = [await c.post("/keys", json={"name": f"k{i}"}, headers=_auth(tok)) for i in range(20)]
        assert all(r.status_code == 201 for r in made)
        _error(await c.post("/keys", json={}, headers=_auth(tok)), 403, "too_many_keys")
        await c.delete(f"/keys/{made[0].json()['id']}", headers=_auth(tok))
        assert (await c.post("/keys", json={}, headers=_auth(tok))).status_code == 201


async def test_daily_usage_follows_settlements_by_model_and_bot(stack: Stack) -> None:
    tok = _token(stack, "console-daily")
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as c:
        for bot in ("app-a", "app-b"):
            r = await c.post(
                "/chat/completions",
                headers={**_auth(tok), "X-Bot-ID": bot},
                json={"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hello"}]},
            )
            assert r.status_code == 200, r.text

        async def settled() -> dict[str, Any] | None:
            usage = (await c.get("/usage", headers=_auth(tok))).json()
            daily = (await c.get("/usage/daily?days=7", headers=_auth(tok))).json()
            today = daily["data"][-1]
            if usage["weekly"]["reserved"] or today["requests"] < 2:
                return None
            return {"usage": usage, "daily": daily}

        got = await wait_until(settled, 20, "both requests in the daily history")
        daily, usage = got["daily"], got["usage"]
        assert len(daily["data"]) == 7 and daily["days"] == 7
        today = daily["data"][-1]
        assert today["credits"] == usage["weekly"]["used"] > 0
        assert set(today["by_bot"]) == {"app-a", "app-b"}
        assert today["by_model"]["gpt-5-mini"]["requests"] == 2
        assert all(d["credits"] == 0 for d in daily["data"][:-1])
        for bad in ("0", "91", "-1", "x", "1e3"):
            _error(await c.get(f"/usage/daily?days={bad}", headers=_auth(tok)), 400, "invalid_value")
        assert (await c.get("/usage/daily")).status_code == 401


async def test_operator_view_needs_the_role_and_names_no_one_to_others(stack: Stack) -> None:
    user = _token(stack, "console-spender")
    admin = _token(stack, "console-operator", roles=["janus-admin"])
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as c:
        r = await c.post(
            "/chat/completions",
            headers=_auth(user),
            json={"model": "gpt-5-nano", "messages": [{"role": "user", "content": "spend"}]},
        )
        assert r.status_code == 200
        _error(await c.get("/admin/overview", headers=_auth(user)), 403, "admin_required")
        _error(
            await c.get("/admin/overview", headers=_auth(_token(stack, "x", role="admin"))),
            403,
            "admin_required",
        )

        async def overview() -> dict[str, Any] | None:
            body: dict[str, Any] = (await c.get("/admin/overview", headers=_auth(admin))).json()
            users = [u["user"] for u in body["top_users_this_week"]]
            return body if "console-spender" in users else None

        body = await wait_until(overview, 20, "the spender in the operator view")
        deployments = {d["deployment"]: d for d in body["deployments"]}
        assert deployments and all(
            d["state"] in ("closed", "half_open", "open") for d in deployments.values()
        )
        assert body["this_replica"]["chat_requests"] >= 1
    metrics = await asyncio.to_thread(stack.services["gateway"].metrics)
    assert "console-spender" not in metrics


async def test_console_is_static_with_a_strict_policy(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=_root(stack), timeout=30) as c:
        r = await c.get("/console", follow_redirects=True)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert "<script>" not in r.text and "<style" not in r.text and " style=" not in r.text
        js = await c.get("/console/console.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert (
            await c.get("/console/console.js", headers={"If-None-Match": js.headers["etag"]})
        ).status_code == 304
        for path in ("/console/../pyproject.toml", "/console/%2e%2e/app.py", "/console/nope.js"):
            r = await c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", path
