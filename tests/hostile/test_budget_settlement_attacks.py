"""Attacks on the settlement and resource side of the budget, through the HTTP gateway with the
official SDK against the whole stack: the largest embeddings requests a caller may send, four at
once, keep every service inside its Kubernetes memory limit, and a larger one is refused before any
upstream call; a new X-Bot-ID on every request does not grow the caller's state."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest
import yaml

from tests.fakes.openai_upstream import OpenAIUpstream
from tests.faults.kit import wait_until
from tests.hostile.conftest import PROVIDER_KEY_ENV, LoopThread, write_catalog
from tools.localstack import ROOT, Stack, start_stack
from tools.token import make_token

EMBED_MODEL = "upstream-embed"
DIMENSIONS = 3072
MAX_VALUES = 512 * DIMENSIONS  # the gateway's default embeddings budget (vectors x dimensions)
BOTS = 20


@dataclass
class World:
    stack: Stack
    upstream: OpenAIUpstream
    secret: str

    def client(self, user: str, **headers: str) -> openai.OpenAI:
        token = make_token(user, "enterprise", f"{user}@example.com", secret=self.secret)
        return openai.OpenAI(
            base_url=self.stack.base_url,
            api_key=token,
            max_retries=0,
            timeout=120,
            default_headers=headers or None,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("settlement-attacks")
    loop = LoopThread()
    upstream = OpenAIUpstream()
    url = loop.run(upstream.start())
    catalog = write_catalog(work / "catalog.yaml", url)
    doc = yaml.safe_load(catalog.read_text())
    doc["models"].append(
        {
            "id": EMBED_MODEL,
            "kind": "embeddings",
            "owned_by": "openai",
            "context_window": 8191,
            "capabilities": ["embeddings"],
            "dimensions": DIMENSIONS,
            "price": {"input": 0.13},
            "serve": [{"deployment": "upstream-api", "model": "text-embedding-3-large"}],
        }
    )
    catalog.write_text(yaml.safe_dump(doc))
    secret = "attacks-" + secrets.token_hex(24)
    stack = start_stack(
        work,
        env={
            "JANUS_CATALOG": str(catalog),
            "JANUS_JWT_SECRET": secret,
            PROVIDER_KEY_ENV: "sk-proj-" + secrets.token_hex(24),
            "JANUS_BOTS_PER_WEEK": str(BOTS),
        },
    )
    try:
        yield World(stack, upstream, secret)
    finally:
        stack.stop()
        loop.run(upstream.close())
        loop.stop()


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}[unit]


def k8s_memory_limit(service: str) -> int:
    """The memory limit of ``service``'s container in deploy/k8s/base."""
    for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / f"{service}.yaml").read_text()):
        if doc and doc.get("kind") == "Deployment":
            [container] = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == service]
            return _bytes(container["resources"]["limits"]["memory"])
    raise AssertionError(f"no Deployment for {service}")


def peak_rss(pid: int) -> int:
    """The process's largest resident set so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_four_concurrent_maximum_embeddings_requests_stay_inside_every_memory_limit(world: World) -> None:
    client = world.client("mem-user")
    inputs = MAX_VALUES // DIMENSIONS

    def one(i: int) -> int:
        out = client.embeddings.create(
            model=EMBED_MODEL,
            input=[f"text {i} {n}" for n in range(inputs)],
            dimensions=DIMENSIONS,
            encoding_format="float",
        )
        assert len(out.data) == inputs and len(out.data[-1].embedding) == DIMENSIONS
        return len(out.data)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(4))) == [inputs] * 4
    for name, svc in world.stack.services.items():
        limit, peak = k8s_memory_limit(name), peak_rss(svc.proc.pid)
        assert peak < limit, f"{name}: peak RSS {peak / 2**20:.0f} MiB, limit {limit / 2**20:.0f} MiB"


def test_a_larger_embeddings_request_is_refused_before_any_upstream_call(world: World) -> None:
    client = world.client("big-user")
    before = len(world.upstream.requests)
    with pytest.raises(openai.APIStatusError) as err:
        client.embeddings.create(
            model=EMBED_MODEL,
            input=["x"] * (MAX_VALUES // DIMENSIONS + 1),
            dimensions=DIMENSIONS,
            encoding_format="float",
        )
    assert err.value.status_code == 413
    assert err.value.code == "embeddings_too_large" and "at most 512 inputs" in err.value.message
    assert len(world.upstream.requests) == before
    usage = httpx.get(world.stack.base_url + "/usage", headers={"Authorization": f"Bearer {client.api_key}"})
    assert usage.json()["weekly"]["reserved"] == 0 and usage.json()["weekly"]["used"] == 0


def test_a_new_bot_id_with_every_request_folds_into_other_and_usage_shows_the_names_sent(
    world: World,
) -> None:
    # printable text of any kind (the SDK's HTTP client sends header values as ASCII)
    names = [f"Support bot #{i} (prod/eu) = {{ok}}?" for i in range(BOTS + 15)]
    token = make_token("bot-user", "enterprise", "bot-user@example.com", secret=world.secret)

    async def run() -> dict[str, dict[str, int]]:
        async with openai.AsyncOpenAI(base_url=world.stack.base_url, max_retries=0, api_key=token) as client:
            for name in names:
                await client.chat.completions.create(
                    model="gpt-5-nano",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=5,
                    extra_headers={"X-Bot-ID": name},
                )
        async with aiohttp.ClientSession() as session:

            async def all_settled() -> dict[str, dict[str, int]] | None:
                async with session.get(
                    world.stack.base_url + "/usage", headers={"Authorization": f"Bearer {token}"}
                ) as r:
                    by_bot: dict[str, dict[str, int]] = (await r.json())["week"]["by_bot"]
                return by_bot if sum(b["requests"] for b in by_bot.values()) == len(names) else None

            found: dict[str, dict[str, int]] = await wait_until(all_settled, 20, "every settlement applied")
            return found

    by_bot = asyncio.run(run())
    assert sorted(by_bot) == sorted([*names[:BOTS], "other"])
    assert by_bot["other"]["requests"] == len(names) - BOTS
