"""Valid requests to the metered endpoints with one to three of their parts replaced by a value of
another type, removed, joined by an unknown field, or the whole body cut short: every answer is a
success or an OpenAI-shaped error, none is a 5xx, every one carries the caller's credit headers, a
stream ends with ``[DONE]``, and once the answers are in the caller holds nothing.

The bodies come from a seeded generator, so a run sends the same ones every time; a failure names
the body that caused it."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import aiohttp

from tests.e2e.test_openai_sdk import RATE_HEADERS
from tests.eventually import eventually
from tests.hostile.conftest import Hostile
from tests.openai_schema import validate

SEED = 19
BODIES = 400

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
VALID: list[tuple[str, dict[str, Any]]] = [
    (
        CHAT,
        {
            "model": "gpt-5-nano",
            "max_tokens": 16,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        },
    ),
    (
        CHAT,
        {
            "model": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        },
    ),
    (
        CHAT,
        {
            "model": "gpt-5-nano",
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
            "temperature": 0.5,
            "stop": ["x"],
            "response_format": {"type": "json_object"},
        },
    ),
    (
        CHAT,
        {
            "model": "gpt-5-nano",
            "messages": [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{}"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
        },
    ),
    (EMBEDDINGS, {"model": "text-embedding-3-small", "input": ["hello", "world"]}),
    (
        EMBEDDINGS,
        {"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64", "dimensions": 8},
    ),
]
ODD: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    -(2**63),
    2**64 + 5,
    1e308,
    0.5,
    "",
    "x",
    "auto",
    "\u0000",
    "a" * 5000,
    [],
    [None],
    [1, 2],
    [[]],
    {},
    {"a": 1},
    {"role": "user"},
    [{"role": "user", "content": "x"}],
]
EXTRA_FIELDS = ["zz", "user", "metadata", "seed", "logit_bias", "n", "max_completion_tokens", "stream"]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _mutated(rng: random.Random, body: dict[str, Any]) -> Any:
    out: Any = copy.deepcopy(body)
    for _ in range(rng.choice([1, 1, 2, 3])):
        path = rng.choice(list(_paths(out)))
        odd = copy.deepcopy(rng.choice(ODD))
        roll = rng.random()
        if not path:
            out = odd
            continue
        parent = out
        for key in path[:-1]:
            parent = parent[key]
        if roll < 0.15:
            del parent[path[-1]]
        elif roll < 0.25 and isinstance(out, dict):
            out[rng.choice(EXTRA_FIELDS)] = odd
        else:
            parent[path[-1]] = odd
    return out


def _bodies() -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    bodies = []
    for _ in range(BODIES):
        path, body = rng.choice(VALID)
        data = json.dumps(_mutated(rng, body)).encode()
        if rng.random() < 0.05:
            data = data[: rng.randrange(1, 40)]  # cut short: not JSON any more
        bodies.append((path, data))
    return bodies


def _faults(path: str, data: bytes, status: int, headers: Any, raw: bytes) -> list[str]:
    found = [f"no {h}" for h in RATE_HEADERS if h not in headers]
    if status >= 500:
        found.append("a server error")
    if status == 200:
        if headers.get("Content-Type", "").startswith("text/event-stream"):
            if not raw.rstrip().endswith(b"data: [DONE]"):
                found.append("a stream without [DONE]")
        else:
            json.loads(raw)
    else:
        try:
            validate("ErrorResponse", json.loads(raw))
        except Exception as exc:  # the finding is whatever the check raised
            found.append(f"not an OpenAI error ({exc})")
    return [f"{path} {data[:200]!r} -> {status}: {f}" for f in found]


async def test_mutated_bodies_get_answers_with_credit_headers_and_hold_nothing(hostile: Hostile) -> None:
    token = hostile.token("mutated-bodies")
    faults: list[str] = []
    statuses: dict[int, int] = {}
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=auth, timeout=aiohttp.ClientTimeout(total=30)) as session:
        gate = asyncio.Semaphore(8)

        async def send(path: str, data: bytes) -> None:
            async with gate, session.post(hostile.url + path, data=data) as r:
                raw = await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
                faults.extend(_faults(path, data, r.status, r.headers, raw))

        await asyncio.gather(*(send(path, data) for path, data in _bodies()))
        assert not faults, "\n".join(faults[:20])
        # the mix reached past parsing: some were served, most were refused for their content
        assert statuses.get(200, 0) >= 20 and statuses.get(400, 0) >= 100, statuses

        async def nothing_held() -> bool:
            async with session.get(hostile.url + "/v1/usage") as r:
                usage = await r.json()
            return usage["session"]["reserved"] == 0 and usage["weekly"]["reserved"] == 0

        await eventually(nothing_held, deadline=20, what="the caller's holds all settled")
