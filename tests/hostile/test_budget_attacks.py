"""Budget attacks: a `free` user tries to spend more than their pools, through the HTTP gateway with
the official SDK, against a provider that generates as much as each request allows.

After every attack, for the attacking user: the session and weekly spend are within their limits,
no answer was a 5xx, no hold is left open, the ledger's credits equal the spend, and no request was
charged more than it held (the upstream counts prompts below our estimate, as real providers do).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from shared.byok import generate_key
from tests.fakes.greedy_upstream import GreedyUpstream
from tests.faults.kit import ledger, ledger_by_user, settled_usage
from tests.hostile.conftest import LoopThread
from tools.localstack import Stack, start_stack
from tools.token import make_token

pytestmark = pytest.mark.timeout(600)

KEY_ENV = "JANUS_GREEDY_KEY"
SESSION, WEEKLY = 500_000, 2_000_000  # the free plan's pools (config/plans.yaml)
MODEL_MAX = 128_000


def _catalog(url: str) -> str:
    return f"""
providers:
  - id: paid
    kind: openai_compat
    byok: true
    deployments:
      - {{id: paid-api, base_url: "{url}", api_key_env: {KEY_ENV}}}
  - id: selfhosted
    kind: openai_compat
    deployments:
      - {{id: selfhosted-local, base_url: "{url}"}}
models:
  - id: gpt-5.2
    owned_by: openai
    context_window: 400000
    max_output_tokens: {MODEL_MAX}
    capabilities: [streaming, tools, json, vision]
    price: {{input: 1.75, output: 14.00}}
    serve: [{{deployment: paid-api, model: gpt-5.2}}]
  - id: local-model
    owned_by: self
    context_window: 32000
    max_output_tokens: 8192
    capabilities: [streaming]
    price: {{input: 0.20, output: 0.60}}
    serve: [{{deployment: selfhosted-local, model: local-model}}]
"""


PLANS = f"""
default_plan: free
plans:
  free:
    session: {{credits: {SESSION}, hours: 5}}
    weekly: {{credits: {WEEKLY}}}
    default_model: gpt-5.2
    auto_models: [gpt-5.2]
"""


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, GreedyUpstream]]:
    work = tmp_path_factory.mktemp("budget")
    loop = LoopThread()
    greedy = GreedyUpstream()
    url = loop.run(greedy.start())
    for name, text in {
        "catalog.yaml": _catalog(url),
        "plans.yaml": PLANS,
        "routing.yaml": "routing: {rules: []}\n",
    }.items():
        (work / name).write_text(text)
    env = {
        f"JANUS_{name.split('.')[0].upper()}": str(work / name)
        for name in ("catalog.yaml", "plans.yaml", "routing.yaml")
    }
    stack = start_stack(
        work, env={**env, KEY_ENV: "sk-operator-greedy-key", "JANUS_BYOK_KEY": generate_key()}
    )
    try:
        yield stack, greedy
    finally:
        stack.stop()
        loop.run(greedy.close())
        loop.stop()


class Attacker:
    """One fresh `free` user and what they were answered."""

    def __init__(self, stack: Stack) -> None:
        self.user = f"attacker-{uuid.uuid4().hex[:10]}"
        self.token = make_token(self.user, "free", f"{self.user}@example.com")
        self.base = f"http://127.0.0.1:{stack.gateway_port}/v1"
        self.nats = stack.nats.url
        self.client = openai.AsyncOpenAI(base_url=self.base, api_key=self.token, max_retries=0, timeout=120)
        self.statuses: list[int] = []

    async def chat(self, **kw: Any) -> Any:
        """The answer, or the refusal's status; a 5xx fails the test at once."""
        kw.setdefault("model", "gpt-5.2")
        kw.setdefault("messages", [{"role": "user", "content": "Write the longest story you can."}])
        try:
            answer = await self.client.chat.completions.create(**kw)
        except openai.APIStatusError as exc:
            self.statuses.append(exc.status_code)
            assert exc.status_code < 500, (exc.status_code, exc.body)
            return exc
        self.statuses.append(200)
        return answer

    async def stream(self, **kw: Any) -> tuple[str | None, int]:
        """(finish_reason, completion tokens) of a streamed answer, or (None, status) when refused."""
        kw.setdefault("model", "gpt-5.2")
        kw.setdefault("messages", [{"role": "user", "content": "Write the longest story you can."}])
        try:
            stream = await self.client.chat.completions.create(
                stream=True, stream_options={"include_usage": True}, **kw
            )
            finish, tokens = None, 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        except openai.APIStatusError as exc:
            self.statuses.append(exc.status_code)
            assert exc.status_code < 500, (exc.status_code, exc.body)
            return None, exc.status_code
        self.statuses.append(200)
        return finish, tokens

    async def held_within_limits(self) -> dict[str, Any]:
        """Every promise of the budget, checked once the user's holds are all settled."""
        async with aiohttp.ClientSession() as s:
            usage = await settled_usage(s, self.base, self.token, 60, nats_url=self.nats, user=self.user)
        assert all(code < 500 for code in self.statuses), self.statuses
        assert usage["session"]["used"] <= SESSION and usage["weekly"]["used"] <= WEEKLY, usage
        assert usage["session"]["reserved"] == usage["weekly"]["reserved"] == 0
        deadline = asyncio.get_running_loop().time() + 45
        while True:
            entries = [e for e in await ledger(self.nats) if e.user == self.user]
            if ledger_by_user(entries)[self.user] == usage["weekly"]["used"]:
                break
            assert asyncio.get_running_loop().time() < deadline, "the ledger and the spend disagree"
            await asyncio.sleep(0.5)
        for e in entries:
            # the hold was a ceiling: nothing was generated past it
            assert e.byok or e.credits <= e.reserved, e
        return usage


@pytest.fixture
async def me(attack: tuple[Stack, GreedyUpstream]) -> AsyncIterator[Attacker]:
    attacker = Attacker(attack[0])
    try:
        yield attacker
    finally:
        await attacker.client.close()


def _sent_caps(greedy: GreedyUpstream, since: int) -> list[tuple[int, int]]:
    """(cap, n) of every request the upstream got since ``since``; every one carried a cap."""
    out = []
    for body in (r.body for r in greedy.requests[since:]):
        assert "max_tokens" not in body, body.keys()  # only the one cap the adapter writes
        out.append((body["max_completion_tokens"], int(body.get("n") or 1)))
    return out


async def test_no_max_tokens_until_the_budget_is_gone(
    attack: tuple[Stack, GreedyUpstream], me: Attacker
) -> None:
    greedy = attack[1]
    since = len(greedy.requests)
    lengths = []
    for _ in range(40):
        answer = await me.chat()
        if isinstance(answer, openai.RateLimitError):
            assert answer.response.headers.get("x-should-retry") == "false"
            break
        assert answer.choices[0].finish_reason == "length"
        lengths.append(answer.usage.completion_tokens)
    else:
        pytest.fail("a free user was never refused")
    caps = _sent_caps(greedy, since)
    assert all(cap <= 4096 for cap, _ in caps) and lengths[0] == 4096
    assert min(lengths) < 4096, "the last answers fit the budget with a shorter cap, not a refusal"
    usage = await me.held_within_limits()
    assert usage["session"]["used"] > SESSION - 4096 * 14  # the budget was used, not refused early


async def test_streamed_answers_without_a_cap(me: Attacker) -> None:
    for _ in range(40):
        finish, tokens = await me.stream()
        if finish is None:
            assert tokens == 429
            break
        assert finish == "length" and 0 < tokens <= 4096
    else:
        pytest.fail("a free user was never refused")
    await me.held_within_limits()


async def test_n_128_is_held_for_every_choice(attack: tuple[Stack, GreedyUpstream], me: Attacker) -> None:
    greedy = attack[1]
    since = len(greedy.requests)
    answer = await me.chat(n=128)
    assert not isinstance(answer, openai.APIStatusError), answer
    assert len(answer.choices) == 128
    ((cap, n),) = _sent_caps(greedy, since)
    assert n == 128 and cap * n * 14 <= SESSION
    again = await me.chat(n=128)
    assert isinstance(again, openai.RateLimitError)
    await me.held_within_limits()


async def test_huge_images(me: Attacker) -> None:
    """Each image is held at its allowance whatever its bytes (the body stays under one bus message)."""
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + "iVBORw0KGgo" * 20_000, "detail": "high"},
    }
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Describe in detail."}, image, image, image]}
    ]
    for _ in range(40):
        answer = await me.chat(messages=messages)
        if isinstance(answer, openai.APIStatusError):
            assert answer.status_code == 429
            break
    else:
        pytest.fail("a free user was never refused")
    await me.held_within_limits()


async def test_byok_on_a_keyless_provider_is_refused_and_its_models_are_charged(me: Attacker) -> None:
    async with httpx.AsyncClient(timeout=10) as c:
        put = await c.put(
            f"{me.base}/byok/selfhosted",
            json={"api_key": "sk-anything-at-all-12345"},
            headers={"Authorization": f"Bearer {me.token}"},
        )
    assert put.status_code == 400 and put.json()["error"]["code"] == "byok_not_supported"
    assert "paid" in put.json()["error"]["message"]
    answer = await me.chat(model="local-model")
    assert not isinstance(answer, openai.APIStatusError), answer
    usage = await me.held_within_limits()
    assert usage["weekly"]["used"] > 0  # served on the operator's machine, so charged


@pytest.mark.parametrize(
    "option",
    [
        {"service_tier": "priority"},
        {"store": True},
        {"modalities": ["text", "audio"]},
        {"audio": {"voice": "alloy", "format": "wav"}},
        {"web_search_options": {}},
        {"prediction": {"type": "content", "content": "x"}},
    ],
    ids=lambda o: next(iter(o)),
)
async def test_cost_options_are_refused(me: Attacker, option: dict[str, Any]) -> None:
    answer = await me.chat(max_tokens=10, extra_body=option)
    assert isinstance(answer, openai.BadRequestError), answer
    assert answer.body["param"] == next(iter(option))  # type: ignore[index]
    await me.held_within_limits()


async def test_account_options_are_stripped_and_the_user_is_ours(
    attack: tuple[Stack, GreedyUpstream], me: Attacker
) -> None:
    greedy = attack[1]
    since = len(greedy.requests)
    answer = await me.chat(
        max_tokens=10,
        user="ceo@victim.example",
        service_tier="auto",
        store=False,
        extra_body={"safety_identifier": "someone-else", "metadata": {"k": "v"}},
    )
    assert not isinstance(answer, openai.APIStatusError), answer
    (sent,) = [r.body for r in greedy.requests[since:]]
    assert not {"service_tier", "store", "metadata"} & set(sent)
    assert sent["user"] == sent["safety_identifier"] and "victim" not in sent["user"]
    await me.held_within_limits()


async def test_200_concurrent_requests(me: Attacker) -> None:
    answers = await asyncio.gather(*(me.chat() for _ in range(200)))
    served = [a for a in answers if not isinstance(a, openai.APIStatusError)]
    assert served and len(served) < 200
    assert all(isinstance(a, openai.RateLimitError) for a in answers if isinstance(a, openai.APIStatusError))
    await me.held_within_limits()
