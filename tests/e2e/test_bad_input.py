"""Bad input gets a clear OpenAI-style error and loses nothing: never a 5xx, and the stack keeps
serving afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.openai_schema import validate
from tools.localstack import Stack
from tools.token import make_token

GOOD = {"model": "gpt-5-nano", "messages": [{"role": "user", "content": "hello"}]}

BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("malformed json", b'{"model": "auto", "messages": [', 400),
    ("not an object", b'["model", "auto"]', 400),
    ("empty body", b"", 400),
    ("not utf-8", b'{"model": "\xff\xfe", "messages": []}', 400),
    ("messages missing", b'{"model": "auto"}', 400),
    ("messages empty", b'{"model": "auto", "messages": []}', 400),
    ("messages not a list", b'{"model": "auto", "messages": "hello"}', 400),
    ("message without role", b'{"model": "auto", "messages": [{"content": "x"}]}', 400),
    ("message not an object", b'{"model": "auto", "messages": [42]}', 400),
    ("model not a string", b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400),
    (
        "stream not a bool",
        b'{"model": "auto", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (
        "max_tokens negative",
        b'{"model": "auto", "max_tokens": -5, "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (
        "max_tokens a string",
        b'{"model": "auto", "max_tokens": "many", "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (
        "temperature a string",
        b'{"model": "auto", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    ("unknown model", b'{"model": "nope-1", "messages": [{"role": "user", "content": "x"}]}', 404),
    (
        "embeddings model for chat",
        b'{"model": "neboloop/nebo-embed-small", "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (
        "nested past the depth limit",
        b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "x": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
        400,
    ),
    (
        "n on a single-answer provider",
        b'{"model": "gpt-5-nano", "n": 2, "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (
        "max_tokens above the model's limit",
        b'{"model": "gpt-5-nano", "max_tokens": 200000, "messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
    (
        "a cost option",
        b'{"model": "gpt-5-nano", "service_tier": "priority", '
        b'"messages": [{"role": "user", "content": "x"}]}',
        400,
    ),
]


@pytest.fixture(scope="module")
def headers(stack: Stack) -> dict[str, str]:
    tok = make_token("bad-input-user", "pro", secret=stack.env["JANUS_JWT_SECRET"])
    return {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}


def assert_alive(stack: Stack, headers: dict[str, str]) -> None:
    r = httpx.post(f"{stack.base_url}/chat/completions", json=GOOD, headers=headers, timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("name", "body", "status"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_chat_bodies(stack: Stack, headers: dict[str, str], name: str, body: bytes, status: int) -> None:
    r = httpx.post(f"{stack.base_url}/chat/completions", content=body, headers=headers, timeout=10)
    assert r.status_code == status, (name, r.status_code, r.text)
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["message"]
    assert_alive(stack, headers)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "neboloop/nebo-embed-small"}',
        b'{"model": "neboloop/nebo-embed-small", "input": 12.5}',
        b'{"model": "neboloop/nebo-embed-small", "input": "x", "encoding_format": "hex"}',
        b'{"model": "gpt-5-mini", "input": "x"}',
        b"{",
        # one item over OpenAI's limit of 2048 inputs
        b'{"model": "neboloop/nebo-embed-small", "input": [' + b",".join([b'"x"'] * 2049) + b"]}",
        b'{"model": "neboloop/nebo-embed-small", "input": "x", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["no-input", "number", "format", "chat-model", "truncated", "2049-inputs", "nested"],
)
def test_bad_embeddings_bodies(stack: Stack, headers: dict[str, str], body: bytes) -> None:
    r = httpx.post(f"{stack.base_url}/embeddings", content=body, headers=headers, timeout=10)
    assert 400 <= r.status_code < 500, r.text
    validate("ErrorResponse", r.json())


def test_embeddings_take_at_most_2048_inputs(stack: Stack, headers: dict[str, str]) -> None:
    url = f"{stack.base_url}/embeddings"
    # 2,048 vectors fit the memory budget (JANUS_MAX_EMBEDDING_VALUES) at up to 768 dimensions
    body = {"model": "neboloop/nebo-embed-small", "input": ["x"] * 2048, "dimensions": 512}
    ok = httpx.post(url, json=body, headers=headers, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2048
    over = httpx.post(
        url, json={"model": "neboloop/nebo-embed-small", "input": ["x"] * 2049}, headers=headers, timeout=30
    )
    assert over.status_code == 400 and over.json()["error"]["param"] == "input", over.text
    validate("ErrorResponse", over.json())
    wide = httpx.post(
        url, json={"model": "neboloop/nebo-embed-small", "input": ["x"] * 2048}, headers=headers, timeout=30
    )  # 2,048 x 1,536 numbers: more than one request holds
    assert wide.status_code == 413 and wide.json()["error"]["code"] == "embeddings_too_large", wide.text
    assert "at most 1024 inputs" in wide.json()["error"]["message"]


def test_huge_body_is_413(stack: Stack, headers: dict[str, str]) -> None:
    big = b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"a" * (5 * 1024 * 1024) + b'"}]}'
    r = httpx.post(f"{stack.base_url}/chat/completions", content=big, headers=headers, timeout=30)
    assert r.status_code == 413
    validate("ErrorResponse", r.json())
    assert_alive(stack, headers)


def test_unknown_route_and_wrong_method(stack: Stack, headers: dict[str, str]) -> None:
    r = httpx.get(f"{stack.base_url}/nothing-here", headers=headers, timeout=10)
    assert r.status_code == 404
    validate("ErrorResponse", r.json())
    r = httpx.get(f"{stack.base_url}/chat/completions", headers=headers, timeout=10)
    assert r.status_code == 405
    validate("ErrorResponse", r.json())


def test_every_service_stays_up(stack: Stack) -> None:
    for svc in stack.services.values():
        assert svc.proc.poll() is None, f"{svc.name} exited"
        assert svc.ready(), f"{svc.name} not ready"
        r = httpx.get(f"http://127.0.0.1:{svc.ops_port}/metrics", timeout=5)
        assert r.status_code == 200 and b"janus_nats_connected 1.0" in r.content
