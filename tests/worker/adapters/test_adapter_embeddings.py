"""Embeddings through the worker's real call path and transport against each provider's fake
upstream: inputs beyond the provider's batch limit are split into several upstream calls and joined
in order, the OpenAI body carries floats or base64 made once by the encoder, and usage is the
provider's token count, or counted when the provider reports none."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgspec
import numpy as np
import pytest

from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext, batch_limit
from services.worker.call import Call
from services.worker.transport import Transport
from shared import tokens
from shared.catalog import Deployment, Provider
from shared.contract import WorkRequest
from shared.errors import JanusError
from tests.fakes.bedrock_upstream import BedrockUpstream
from tests.fakes.cohere_upstream import CohereUpstream
from tests.fakes.gemini_upstream import GeminiUpstream
from tests.fakes.ollama_upstream import OllamaUpstream
from tests.fakes.openai_upstream import vector_for
from tests.fixtures.client_requests import embeddings
from tests.fixtures.replay import Fail, ReplayUpstream

# (kind, fake, upstream model, whether the provider reports token counts)
CASES = [
    ("gemini", GeminiUpstream, "gemini-embedding-001", False),
    ("cohere", CohereUpstream, "embed-v4.0", True),
    ("bedrock", BedrockUpstream, "amazon.titan-embed-text-v2:0", True),
    ("bedrock", BedrockUpstream, "cohere.embed-english-v3", False),
    ("ollama", OllamaUpstream, "nomic-embed-text", True),
]
IDS = [f"{kind}-{model}" for kind, _, model, _ in CASES]


def call_for(kind: str, fake: ReplayUpstream, model: str, body: dict[str, Any], transport: Transport) -> Call:
    dep = Deployment(id=f"{kind}-fake", base_url=fake.base_url, region="us-east-1")
    body = {"model": "emb-model", "input": "probe", **body}
    ctx = ChatContext(
        provider=Provider(id=kind, kind=kind, deployments=[dep]),  # type: ignore[arg-type]
        deployment=dep,
        upstream_model=model,
        **embeddings(body),
        stream=False,
        api_key=None if kind == "bedrock" else "sk-test",
    )
    req = WorkRequest(
        request_id="emb-1",
        kind="embeddings",
        deployment=dep.id,
        provider=kind,
        upstream_model=model,
        response_model="emb-model",
        body=msgspec.json.encode(body),
    )
    return Call(req, ctx, ADAPTERS[kind](), transport, replier=None)  # type: ignore[arg-type]


@pytest.fixture
async def transport(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    t = Transport(connect_timeout=5, read_timeout=10)
    await t.start()
    yield t
    await t.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("kind", "fake_cls", "model", "reports_tokens"), CASES, ids=IDS)
async def test_batches_split_and_join_in_order(
    transport: Transport, kind: str, fake_cls: type, model: str, reports_tokens: bool
) -> None:
    async with fake_cls() as fake:
        probe = call_for(kind, fake, model, {}, transport)
        limit = batch_limit(probe.adapter, probe.ctx)
        n = limit + 3  # the real limit: always more than one batch, the last one short
        texts = [f"document number {i} about {'x' * (i % 5)}" for i in range(n)]
        done = await call_for(
            kind, fake, model, {"input": texts, "encoding_format": "float"}, transport
        ).execute()
        assert len(fake.requests) == math.ceil(n / limit), "one upstream call per batch"
        doc = json.loads(done.body)
        assert [d["index"] for d in doc["data"]] == list(range(n))
        for d, text in zip(doc["data"], texts, strict=True):
            assert d["embedding"] == vector_for(text, fake.embed_dims), "vectors line up with their inputs"
        want = fake.count_tokens(texts) if reports_tokens else sum(tokens.estimate_text(t) for t in texts)
        assert done.usage.prompt_tokens == want == doc["usage"]["prompt_tokens"]

        done64 = await call_for(
            kind, fake, model, {"input": texts[:2], "encoding_format": "base64"}, transport
        ).execute()
        first = json.loads(done64.body)["data"][0]["embedding"]
        floats = np.frombuffer(base64.b64decode(first), dtype="<f4").tolist()
        assert floats == vector_for(texts[0], fake.embed_dims)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("kind", "fake_cls", "model", "reports_tokens"), CASES[:3], ids=IDS[:3])
async def test_dimensions_pass_through_and_errors_are_classified(
    transport: Transport, kind: str, fake_cls: type, model: str, reports_tokens: bool
) -> None:
    async with fake_cls() as fake:
        done = await call_for(kind, fake, model, {"input": "short", "dimensions": 256}, transport).execute()
        assert len(json.loads(done.body)["data"][0]["embedding"]) == 256
        fake.script(Fail(429, retry_after=3))
        with pytest.raises(JanusError) as limited:
            await call_for(kind, fake, model, {"input": "again"}, transport).execute()
        assert limited.value.retryable and limited.value.retry_after == 3
        fake.script(Fail(400))
        with pytest.raises(JanusError) as refused:
            await call_for(kind, fake, model, {"input": "again"}, transport).execute()
        assert not refused.value.retryable and refused.value.http_status == 400
