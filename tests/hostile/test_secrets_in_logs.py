"""Provider keys, JWTs, API keys and NATS credentials never appear in any service's log or in an error
body."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import jwt

from tests.eventually import eventually
from tests.hostile.conftest import UPSTREAM_MODEL, Hostile
from tools.localnats import local_keys


def _post(url: str, auth: str | None, body: dict[str, object]) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _request_id(url: str, auth: str, body: dict[str, object]) -> str:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": auth},
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        r.read()
        return str(r.headers["X-Request-Id"])


def test_no_secret_reaches_a_log_or_an_error(hostile: Hostile) -> None:
    good_jwt = hostile.token("log-scan")
    now = int(time.time())
    bad_jwts = [
        jwt.encode(
            {"sub": "x", "exp": now + 60}, "a-different-secret-of-32-bytes-or-more!", algorithm="HS256"
        ),
        hostile.token("log-scan", exp=now - 600),
        hostile.token("log-scan", plan="no-such-plan"),
        jwt.encode({"sub": "x", "exp": now + 60}, None, algorithm="none"),
        "eyJhbGciOiJIUzI1NiJ9." + "A" * 9000,
    ]
    bad_key = "sk-janus-" + "Z" * 43
    chat = {"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "hello upstream"}]}
    bodies: list[bytes] = []
    for auth in [good_jwt, hostile.api_key]:
        for body in (chat, {**chat, "stream": True}, {**chat, "max_tokens": -1}, {**chat, "model": "nope"}):
            status, out = _post(hostile.url + "/v1/chat/completions", f"Bearer {auth}", body)
            bodies.append(out)
        assert _post(hostile.url + "/v1/chat/completions", f"Bearer {auth}", chat)[0] == 200
    for auth in [*bad_jwts, bad_key]:
        for scheme in ("Bearer ", "bearer  ", "Token "):
            status, out = _post(hostile.url + "/v1/chat/completions", scheme + auth, chat)
            assert status in (401, 403), out
            bodies.append(out)
    # the upstream really was called with the provider key, so the key was in play
    assert any(
        r.headers.get("Authorization") == f"Bearer {hostile.provider_key}" for r in hostile.upstream.requests
    )
    # Absence means something only in a log that has caught up. The gateway logs every request and
    # the router every automatic choice, both with the request id: a last request routed that way,
    # once seen in both logs, marks everything before it as written there. The worker and metering
    # log nothing per request at info.
    marker = _request_id(
        hostile.url + "/v1/chat/completions", f"Bearer {good_jwt}", {**chat, "model": "auto"}
    )
    logs = {name: svc.log_path for name, svc in hostile.stack.services.items()}

    def marked() -> bool:
        return all(marker in logs[name].read_text(errors="replace") for name in ("gateway", "router"))

    asyncio.run(eventually(marked, 20, f"request {marker} in the gateway's and the router's logs"))
    secrets = {
        "provider key": hostile.provider_key,
        "api key": hostile.api_key,
        "bad api key": bad_key,
        "jwt secret": hostile.secret,
        "jwt": good_jwt,
    }
    secrets.update({f"bad jwt {i}": t for i, t in enumerate(bad_jwts)})
    # each service's NATS identity, and the harness's password inside the server URL
    seeds = local_keys()
    secrets.update({f"{name} nkey seed": path.read_text().strip() for name, (path, _) in seeds.items()})
    secrets["nats password"] = hostile.stack.nats.url.partition("://")[2].rpartition("@")[0].partition(":")[2]
    # a token's signature part alone is enough to replay it: look for that too
    secrets.update(
        {
            f"{k} signature": v.rsplit(".", 1)[-1]
            for k, v in list(secrets.items())
            if v.count(".") == 2 and len(v.rsplit(".", 1)[-1]) > 20
        }
    )
    texts = {f"{name}.log": path.read_text(errors="replace") for name, path in logs.items()}
    texts["error bodies"] = b"\n".join(bodies).decode(errors="replace")
    assert all(texts.values())
    for where, text in texts.items():
        for what, secret in secrets.items():
            assert secret not in text, f"{what} found in {where}"
