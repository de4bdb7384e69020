"""With no worker listening, a chat request fails cleanly (503, OpenAI shape) and leaks no hold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.openai_schema import validate
from tools.localstack import Stack, start_stack
from tools.token import make_token


@pytest.fixture(scope="module")
def workerless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(Path(tmp_path_factory.mktemp("noworker")), services=("metering", "router", "gateway"))
    try:
        yield s
    finally:
        s.stop()


def test_no_worker_is_503_and_releases_the_hold(workerless: Stack) -> None:
    tok = make_token("lonely", "pro", secret=workerless.env["JANUS_JWT_SECRET"])
    h = {"Authorization": f"Bearer {tok}"}
    for stream in (False, True):
        r = httpx.post(
            f"{workerless.base_url}/chat/completions",
            headers=h,
            timeout=30,
            json={
                "model": "gpt-5-mini",
                "stream": stream,
                "messages": [{"role": "user", "content": "anyone there?"}],
            },
        )
        assert r.status_code == 503, r.text
        validate("ErrorResponse", r.json())
        assert r.headers.get("x-ratelimit-session-limit-credits")
    deadline = time.monotonic() + 10
    while True:
        u = httpx.get(f"{workerless.base_url}/usage", headers=h, timeout=10).json()
        if u["session"]["reserved"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert u["session"]["reserved"] == 0
    assert u["session"]["used"] == 0
