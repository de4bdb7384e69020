"""A worker running in this process on a real nats-server, with a catalog that has the built-in fake
provider and an OpenAI-compatible provider pointed at the fake upstream (tests/fakes)."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from shared import contract, subjects
from shared.bus import Bus
from shared.settings import load_settings
from tests.fakes.openai_upstream import OpenAIUpstream
from tools.localnats import NatsServer

KEY_ENV = "JANUS_TEST_UPSTREAM_KEY"
KEY = "sk-test-upstream-key-123456"

CATALOG = """
providers:
  - id: fake
    kind: fake
    deployments:
      - id: fake-local
  - id: slowfake
    kind: fake
    deployments:
      - id: fake-slow
        options: {{latency_ms: "1500", tokens_per_second: "25"}}
      - id: fake-slow-capped
        max_concurrency: 2
        options: {{latency_ms: "1500", tokens_per_second: "25"}}
  - id: oai
    kind: openai_compat
    deployments:
      - id: oai-1
        base_url: "{base_url}"
        api_key_env: {key_env}
models:
  - id: fake-chat
    owned_by: test
    capabilities: [streaming, tools]
    serve: [{{deployment: fake-local, model: fake-upstream-name}}]
  - id: slow-chat
    owned_by: test
    serve: [{{deployment: fake-slow, model: slow-upstream-name}}]
  - id: slow-capped-chat
    owned_by: test
    serve: [{{deployment: fake-slow-capped, model: slow-upstream-name}}]
  - id: oai-chat
    owned_by: test
    capabilities: [streaming, tools]
    serve: [{{deployment: oai-1, model: gpt-upstream}}]
  - id: emb-small
    kind: embeddings
    owned_by: test
    dimensions: 8
    capabilities: [embeddings]
    serve: [{{deployment: fake-local, model: emb-up}}, {{deployment: oai-1, model: emb-up}}]
"""

_ids = itertools.count()


def work(
    model: str,
    body: dict[str, Any],
    *,
    provider: str = "fake",
    deployment: str = "fake-local",
    upstream: str = "fake-upstream-name",
    kind: str = "chat",
    frames: int = contract.FRAMES_BATCHED,
) -> contract.WorkRequest:
    return contract.WorkRequest(
        request_id=f"req{next(_ids)}-{int(time.time() * 1000)}",
        kind=kind,  # type: ignore[arg-type]
        deployment=deployment,
        provider=provider,
        upstream_model=upstream,
        response_model=model,
        body=msgspec.json.encode({"model": model, **body}),  # as the gateway forwards it: the client's own
        stream=bool(body.get("stream")),
        created=1712345678,
        frames=frames,
    )


def oai_work(
    body: dict[str, Any], kind: str = "chat", frames: int = contract.FRAMES_BATCHED
) -> contract.WorkRequest:
    return work(
        "emb-small" if kind == "embeddings" else "oai-chat",
        body,
        provider="oai",
        deployment="oai-1",
        upstream="emb-up" if kind == "embeddings" else "gpt-upstream",
        kind=kind,
        frames=frames,
    )


async def run_work(
    bus: Bus,
    req: contract.WorkRequest,
    timeout: float = 10.0,
    on_frame: Any = None,
    headers: dict[str, str] | None = None,
) -> list[Any]:
    """Publish one WorkRequest and collect its frames up to and including the terminal one."""
    frames: list[Any] = []
    with bus.open_inbox(req.request_id) as box:
        await bus.publish(
            subjects.work(req.provider),
            contract.encode(req),
            reply=box.subject,
            headers=headers,
        )
        while True:
            msg = await box.next(timeout)
            assert not Bus.is_no_responders(msg), "no worker is listening"
            frame = contract.frame_decoder.decode(msg.data)
            frames.append(frame)
            if on_frame is not None:
                await on_frame(frame)
            if isinstance(frame, contract.TERMINAL):
                return frames


def check_sequence(frames: list[Any]) -> Any:
    """Frames numbered 0.. with no gaps, an Accepted (if any) first, exactly one terminal frame, last."""
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert not any(isinstance(f, contract.Accepted) for f in frames[1:])
    assert sum(isinstance(f, contract.TERMINAL) for f in frames) == 1
    assert isinstance(frames[-1], contract.TERMINAL)
    return frames[-1]


def chunks_of(frames: list[Any]) -> list[bytes]:
    """Every chunk of a streamed answer in order: those of each Chunk frame, then the Done's."""
    out: list[bytes] = []
    for f in frames:
        if isinstance(f, contract.Chunk):
            out += [f.data, *f.more]
        elif isinstance(f, contract.Done):
            out += f.chunks
    return out


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream() as up:
        yield up


@pytest.fixture
def catalog_file(tmp_path: Path, upstream: OpenAIUpstream) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.format(base_url=upstream.base_url, key_env=KEY_ENV))
    return path


@pytest.fixture
async def worker(
    nats_server: NatsServer, catalog_file: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[WorkerService]:
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = load_settings(
        WorkerSettings,
        {
            "JANUS_NATS_URL": nats_server.url,
            "JANUS_CATALOG": str(catalog_file),
            "JANUS_HEARTBEAT_SECONDS": "0.2",
            "JANUS_HEALTH_INTERVAL_SECONDS": "0.2",
            "JANUS_READ_TIMEOUT_SECONDS": "5",
            "JANUS_MAX_CONCURRENCY": "8",
        },
    )
    svc = WorkerService(settings)
    wbus = await Bus.connect(nats_server.url, "worker")
    await svc.start(wbus)
    try:
        yield svc
    finally:
        await svc.stop()
        with contextlib.suppress(Exception):
            await wbus.drain()
