"""``/v1/usage`` answers only for the authenticated caller: no query parameter or header can name
another user."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.hostile.conftest import Hostile


def call(url: str, token: str, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_usage_is_only_ever_the_callers(hostile: Hostile) -> None:
    alice, bob = hostile.token("iso-alice"), hostile.token("iso-bob")
    status, _ = call(hostile.url + "/v1/chat/completions", alice,
                     {"model": "gpt-5-nano", "messages": [{"role": "user", "content": "spend something"}]})
    assert status == 200
    spent = 0
    for _ in range(50):  # settlement is asynchronous
        status, doc = call(hostile.url + "/v1/usage", alice)
        assert status == 200
        spent = doc["weekly"]["used"]
        if spent:
            break
        time.sleep(0.1)
    assert spent > 0, doc
    attempts = [
        ("/v1/usage?user=iso-alice", {}),
        ("/v1/usage?user_id=iso-alice&sub=iso-alice", {}),
        ("/v1/usage", {"X-User-Id": "iso-alice", "X-Janus-User": "iso-alice",
                       "X-Forwarded-User": "iso-alice"}),
        ("/v1/usage?user=iso-alice", {"X-Bot-ID": "iso-alice"}),
    ]
    for path, headers in attempts:
        status, doc = call(hostile.url + path, bob, headers=headers)
        assert status == 200, doc
        assert doc["weekly"]["used"] == 0 and doc["week"]["by_model"] == {}, (path, headers, doc)
    status, doc = call(hostile.url + "/v1/usage", alice)
    assert doc["weekly"]["used"] == spent
