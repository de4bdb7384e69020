"""One whole stack for the hostile-input tests (starting one costs CPU on a shared machine): the
offline catalog plus an OpenAI-compatible provider, a fake upstream on 127.0.0.1 that needs a key
held in the environment, short read timeouts, and an issued API key in the key store."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from shared.apikeys import KeyStore
from shared.bus import Bus
from tests.fakes.openai_upstream import OpenAIUpstream
from tools.localstack import ROOT, Stack, start_stack
from tools.token import make_token

T = TypeVar("T")
PROVIDER_KEY_ENV = "JANUS_HOSTILE_UPSTREAM_KEY"
UPSTREAM_MODEL = "upstream-chat"


class LoopThread:
    """An event loop in a thread, for servers the stack's subprocesses call while tests block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Hostile:
    stack: Stack
    upstream: OpenAIUpstream
    provider_key: str
    api_key: str
    secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.stack.gateway_port}"

    def token(self, user: str, plan: str = "enterprise", **extra: object) -> str:
        return make_token(user, plan, f"{user}@example.com", secret=self.secret, **extra)


def write_catalog(path: Path, upstream_url: str, **fake_options: str) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "catalog.yaml").read_text())
    for provider in doc["providers"]:
        if provider["kind"] == "fake":
            for dep in provider["deployments"]:
                dep.setdefault("options", {}).update(fake_options)
    if upstream_url:
        doc["providers"].append(
            {
                "id": "upstream",
                "kind": "openai_compat",
                "deployments": [
                    {"id": "upstream-api", "base_url": upstream_url, "api_key_env": PROVIDER_KEY_ENV}
                ],
            }
        )
        doc["models"].append(
            {
                "id": UPSTREAM_MODEL,
                "owned_by": "openai",
                "context_window": 128000,
                "max_output_tokens": 4096,
                "capabilities": ["streaming", "tools", "json"],
                "price": {"input": 0.1, "output": 0.2},
                "quality": 1,
                "serve": [{"deployment": "upstream-api", "model": "gpt-4o-mini"}],
            }
        )
    path.write_text(yaml.safe_dump(doc))
    return path


async def _issue_key(nats_url: str, user: str, plan: str) -> str:
    bus = await Bus.connect(nats_url, "test")
    try:
        key, _ = await (await KeyStore.open(bus)).create(user, plan, "hostile tests")
        return key
    finally:
        await bus.close()


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    work = tmp_path_factory.mktemp("hostile")
    loop = LoopThread()
    upstream = OpenAIUpstream()
    url = loop.run(upstream.start())
    provider_key = "sk-proj-" + secrets.token_hex(24)
    secret = "hostile-" + secrets.token_hex(24)
    env = {
        "JANUS_CATALOG": str(write_catalog(work / "catalog.yaml", url)),
        "JANUS_JWT_SECRET": secret,
        PROVIDER_KEY_ENV: provider_key,
        "JANUS_HEADER_TIMEOUT_SECONDS": "1",
        "JANUS_BODY_TIMEOUT_SECONDS": "1.5",
    }
    stack = start_stack(work, env=env)
    try:
        api_key = asyncio.run(_issue_key(stack.nats.url, "key-user", "enterprise"))
        yield Hostile(stack, upstream, provider_key, api_key, secret)
    finally:
        stack.stop()
        loop.run(upstream.close())
        loop.stop()
