"""The worker service with the built-in fake provider, over a real nats-server."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import msgspec
import numpy as np
import pytest
from prometheus_client import generate_latest

from services.worker import service as worker_service
from services.worker.service import WorkerService
from shared import contract, subjects
from shared.bus import Bus
from shared.errors import Cancelled, JanusError
from tests.eventually import eventually
from tests.kit.metrics import parse_metric
from tests.openai_schema import validate
from tests.worker.conftest import check_sequence, chunks_of, run_work, work

MESSAGES = [{"role": "user", "content": "Tell me something about gateways."}]


async def test_stream_frames_in_order_with_usage_chunk(bus: Bus, worker: WorkerService) -> None:
    req = work(
        "fake-chat",
        {
            "model": "fake-chat",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    frames = await run_work(bus, req)
    done = check_sequence(frames)
    assert isinstance(done, contract.Done)
    chunks = [json.loads(c) for c in chunks_of(frames)]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["id"] == f"chatcmpl-{req.request_id}"
        assert c["model"] == "fake-chat" and c["created"] == 1712345678
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    last = chunks[-1]
    assert last["choices"] == []
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text.startswith("Janus ")
    assert last["usage"]["completion_tokens"] == len(text.split()) == done.usage.completion_tokens
    assert last["usage"]["prompt_tokens"] == done.usage.prompt_tokens > 0
    assert done.deployment == "fake-local" and done.finish_reason == "stop"


async def test_stream_without_include_usage_has_no_usage_chunk(bus: Bus, worker: WorkerService) -> None:
    frames = await run_work(bus, work("fake-chat", {"messages": MESSAGES, "stream": True}))
    chunks = [json.loads(c) for c in chunks_of(frames)]
    assert all(c["choices"] for c in chunks)
    assert "usage" not in chunks[-1]
    assert frames[-1].usage.completion_tokens > 0  # metering still gets the numbers


async def test_buffered_answer_is_deterministic_and_valid(bus: Bus, worker: WorkerService) -> None:
    bodies = []
    for _ in range(2):
        req = work("fake-chat", {"messages": MESSAGES})
        done = check_sequence(await run_work(bus, req))
        body = json.loads(done.body)
        validate("CreateChatCompletionResponse", body)
        assert body["id"] == f"chatcmpl-{req.request_id}" and body["model"] == "fake-chat"
        assert body["usage"]["total_tokens"] == done.usage.prompt_tokens + done.usage.completion_tokens
        bodies.append(body["choices"][0]["message"]["content"])
    assert bodies[0] == bodies[1]


async def test_max_tokens_and_stop(bus: Bus, worker: WorkerService) -> None:
    done = (await run_work(bus, work("fake-chat", {"messages": MESSAGES, "max_tokens": 3})))[-1]
    body = json.loads(done.body)
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"].split()) == 3 == done.usage.completion_tokens
    done = (await run_work(bus, work("fake-chat", {"messages": MESSAGES, "stop": [" "]})))[-1]
    body = json.loads(done.body)
    assert body["choices"][0]["message"]["content"] == "Janus"
    assert body["choices"][0]["finish_reason"] == "stop"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "required": ["city", "days"],
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer", "minimum": 1},
                    "unit": {"type": "string", "enum": ["c", "f"]},
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "required": ["tz"],
                "properties": {"tz": {"enum": ["UTC", "CET"]}},
            },
        },
    },
]


async def test_tool_calls_parallel_and_named(bus: Bus, worker: WorkerService) -> None:
    ask = [{"role": "user", "content": "What are both the weather and the time in Paris?"}]
    done = (await run_work(bus, work("fake-chat", {"messages": ask, "tools": TOOLS})))[-1]
    body = json.loads(done.body)
    validate("CreateChatCompletionResponse", body)
    msg = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather", "get_time"]
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "example", "days": 1}
    assert json.loads(msg["tool_calls"][1]["function"]["arguments"]) == {"tz": "UTC"}

    named = {
        "messages": ask,
        "tools": TOOLS,
        "stream": True,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }
    frames = await run_work(bus, work("fake-chat", named))
    chunks = [json.loads(c) for c in chunks_of(frames)]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    assert calls[0]["function"]["name"] == "get_time" and calls[0]["id"].startswith("call_")
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"tz": "UTC"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    none = await run_work(bus, work("fake-chat", {"messages": ask, "tools": TOOLS, "tool_choice": "none"}))
    assert "tool_calls" not in json.loads(none[-1].body)["choices"][0]["message"]


async def test_heartbeats_while_the_upstream_is_silent(bus: Bus, worker: WorkerService) -> None:
    frames = await run_work(bus, slow({"messages": MESSAGES, "stream": True, "max_tokens": 2}))
    done = check_sequence(frames)
    assert isinstance(done, contract.Done)
    first_chunk = next(i for i, f in enumerate(frames) if isinstance(f, contract.Chunk))
    # 1.5 s of silence with a 0.2 s heartbeat: several heartbeats before the first token
    assert sum(isinstance(f, contract.Heartbeat) for f in frames[:first_chunk]) >= 2


async def test_cancel_ends_with_failed_and_the_usage_produced(bus: Bus, worker: WorkerService) -> None:
    req = slow({"messages": MESSAGES, "stream": True})
    seen = 0

    async def cancel_after_three(frame: object) -> None:
        nonlocal seen
        if isinstance(frame, contract.Chunk):
            seen += 1
            if seen == 3:
                await bus.publish(subjects.WORK_CANCEL, contract.encode(contract.Cancel(req.request_id)))

    frames = await run_work(bus, req, on_frame=cancel_after_three)
    failed = check_sequence(frames)
    assert isinstance(failed, contract.Failed)
    assert failed.error.code == "cancelled" and failed.produced
    cancelled = JanusError.from_wire(failed.error)
    assert isinstance(cancelled, Cancelled) and cancelled.http_status == 499 and not cancelled.retryable
    chunks = sum(isinstance(f, contract.Chunk) for f in frames)
    assert 3 <= failed.usage.completion_tokens < 16  # charged for what was made, no more
    assert failed.usage.completion_tokens >= chunks - 1
    assert failed.usage.prompt_tokens > 0
    await eventually(lambda: worker.in_flight == 0 and not worker.calls, 5, "the cancelled call forgotten")


async def test_embeddings_base64_round_trips(bus: Bus, worker: WorkerService) -> None:
    inputs = ["alpha", "beta"]
    floats = (
        await run_work(bus, work("emb-small", {"input": inputs}, kind="embeddings", upstream="emb-up"))
    )[-1]
    b64 = (
        await run_work(
            bus,
            work(
                "emb-small",
                {"input": inputs, "encoding_format": "base64"},
                kind="embeddings",
                upstream="emb-up",
            ),
        )
    )[-1]
    fbody, bbody = json.loads(floats.body), json.loads(b64.body)
    validate("CreateEmbeddingResponse", fbody)
    assert fbody["model"] == "emb-small" and floats.usage.prompt_tokens > 0
    for f, b in zip(fbody["data"], bbody["data"], strict=True):
        vec = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert len(f["embedding"]) == 8  # the catalog's dimensions
        assert np.allclose(vec, np.asarray(f["embedding"], dtype=np.float32))
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


async def test_bad_requests_fail_cleanly(bus: Bus, worker: WorkerService) -> None:
    done = (await run_work(bus, work("emb-small", {"input": [[1], "x"]}, kind="embeddings")))[-1]
    assert isinstance(done, contract.Failed) and done.error.kind == "invalid_request"
    # one answer per request: two asked for is refused, not silently answered once
    refused = check_sequence(await run_work(bus, work("fake-chat", {"messages": MESSAGES, "n": 2})))
    assert isinstance(refused, contract.Failed) and refused.error.kind == "invalid_request"
    assert JanusError.from_wire(refused.error).param == "n"
    req = work("fake-chat", {"messages": MESSAGES}, deployment="no-such-deployment")
    failed = check_sequence(await run_work(bus, req))
    assert isinstance(failed, contract.Failed) and JanusError.from_wire(failed.error).retryable


async def health_reports(bus: Bus) -> asyncio.Queue[contract.HealthReport]:
    reports: asyncio.Queue[contract.HealthReport] = asyncio.Queue()

    async def on_report(msg) -> None:  # type: ignore[no-untyped-def]
        reports.put_nowait(contract.health_decoder.decode(msg.data))

    await bus.serve(subjects.HEALTH, on_report)
    await bus.flush()
    return reports


async def test_health_is_reported_per_deployment(bus: Bus, worker: WorkerService) -> None:
    reports = await health_reports(bus)
    for _ in range(3):
        await run_work(bus, work("fake-chat", {"messages": MESSAGES}))
    first = await asyncio.wait_for(reports.get(), 5)
    assert first.deployment == "fake-local" and first.provider == "fake" and first.ok
    second = await asyncio.wait_for(reports.get(), 5)  # the rest, folded into one periodic report
    assert second.deployment == "fake-local" and second.ok
    # not one report per request. A call to another deployment is reported at once, on the same
    # connection, so it arrives after any report the first three calls caused: seen it, nothing else
    # came before it
    await run_work(bus, slow({"messages": MESSAGES, "max_tokens": 1}))
    marker = await asyncio.wait_for(reports.get(), 5)
    assert marker.deployment == "fake-slow"


async def test_a_cancel_says_nothing_about_the_deployment(bus: Bus, worker: WorkerService) -> None:
    reports = await health_reports(bus)
    req = slow({"messages": MESSAGES, "stream": True})

    async def cancel_at_first_chunk(frame: object) -> None:
        if isinstance(frame, contract.Chunk):
            await bus.publish(subjects.WORK_CANCEL, contract.encode(contract.Cancel(req.request_id)))

    assert check_sequence(await run_work(bus, req, on_frame=cancel_at_first_chunk)).error.code == "cancelled"
    # a deployment's first recorded call is reported at once: a cancel counted against it would be
    # this report, so the next call's is the positive marker that the cancel was not recorded
    await run_work(bus, slow({"messages": MESSAGES, "max_tokens": 1}))
    first = await asyncio.wait_for(reports.get(), 5)
    assert (first.deployment, first.ok, first.error) == ("fake-slow", True, None)


def slow(body: dict[str, object]) -> contract.WorkRequest:
    return work("slow-chat", body, provider="slowfake", deployment="fake-slow", upstream="slow-upstream-name")


@pytest.mark.parametrize("sent_as", ["field", "header of an earlier gateway"])
async def test_deadline_ends_the_call(bus: Bus, worker: WorkerService, sent_as: str) -> None:
    req = slow({"messages": MESSAGES, "stream": True})
    headers = None
    if sent_as == "field":
        req.deadline = time.time() + 0.4
    else:
        headers = {subjects.H_DEADLINE: f"{time.time() + 0.4:.3f}"}
    frames = await run_work(bus, req, headers=headers)
    failed = check_sequence(frames)
    assert isinstance(failed, contract.Failed) and failed.error.code == "deadline_exceeded"
    assert JanusError.from_wire(failed.error).retryable and not failed.produced


async def test_work_beyond_capacity_is_refused_at_once(bus: Bus, worker: WorkerService) -> None:
    # a worker serving several providers gives each half of its capacity unless told otherwise
    capacity = worker.caps["slowfake"]
    assert capacity == worker.settings.max_concurrency // 2
    results = await asyncio.gather(
        *(run_work(bus, slow({"messages": MESSAGES, "max_tokens": 1})) for _ in range(capacity + 2))
    )
    terminals = [check_sequence(frames) for frames in results]
    refused = [t for t in terminals if isinstance(t, contract.Failed)]
    assert len(refused) == 2 and all(t.error.code == "worker_busy" for t in refused)
    assert "slowfake" in refused[0].error.message
    assert JanusError.from_wire(refused[0].error).retryable
    assert sum(isinstance(t, contract.Done) for t in terminals) == capacity


async def test_a_hanging_provider_fills_only_its_own_share(bus: Bus, worker: WorkerService) -> None:
    """The slow provider's calls sit at its cap; the other provider's calls are still served."""
    cap = worker.caps["slowfake"]
    hanging = [
        asyncio.create_task(run_work(bus, slow({"messages": MESSAGES, "max_tokens": 1})))
        for _ in range(cap + 1)
    ]
    deadline = time.monotonic() + 5
    while worker.provider_busy["slowfake"] < cap:
        assert time.monotonic() < deadline, "the slow provider never reached its cap"
        await asyncio.sleep(0.02)
    for _ in range(3):
        served = check_sequence(await run_work(bus, work("fake-chat", {"messages": MESSAGES})))
        assert isinstance(served, contract.Done), served
    assert worker.provider_busy["slowfake"] == cap, "the slow calls must still be in flight meanwhile"
    terminals = [check_sequence(frames) for frames in await asyncio.gather(*hanging)]
    assert sum(isinstance(t, contract.Failed) and t.error.code == "worker_busy" for t in terminals) == 1
    assert (
        parse_metric(generate_latest().decode(), "janus_worker_capacity", gen_ai_provider_name="slowfake")
        == cap
    )


def capped(body: dict[str, object]) -> contract.WorkRequest:
    return work(
        "slow-capped-chat",
        body,
        provider="slowfake",
        deployment="fake-slow-capped",
        upstream="slow-upstream-name",
    )


def _metric(name: str, **labels: str) -> float:
    return parse_metric(generate_latest().decode(), name, **labels)


async def test_a_capped_deployment_fills_only_its_own_cap(bus: Bus, worker: WorkerService) -> None:
    """A catalog max_concurrency on one deployment refuses its work beyond the cap (naming the
    deployment, retryable, so the gateway falls back) while the provider's share still has room and
    the provider's other deployment keeps serving; its in-flight and capacity series show the cap."""
    cap = worker.deployment_caps["fake-slow-capped"]
    assert 0 < cap < worker.caps["slowfake"]
    labels = {"gen_ai_provider_name": "slowfake", "deployment": "fake-slow-capped"}
    assert _metric("janus_worker_deployment_capacity", **labels) == cap
    ok_before = _metric("janus_upstream_calls_total", outcome="ok", **labels)
    hanging = [
        asyncio.create_task(run_work(bus, capped({"messages": MESSAGES, "max_tokens": 1})))
        for _ in range(cap + 1)
    ]
    await eventually(
        lambda: worker.deployment_busy["fake-slow-capped"] == cap, 5, "the capped deployment reaching its cap"
    )
    assert _metric("janus_worker_deployment_in_flight", **labels) == cap
    assert _metric("janus_worker_in_flight", gen_ai_provider_name="slowfake") == cap
    busy_when_taken: list[int] = []

    async def taken(frame: object) -> None:
        if isinstance(frame, contract.Accepted):
            busy_when_taken.append(worker.deployment_busy["fake-slow-capped"])

    other = slow({"messages": MESSAGES, "max_tokens": 1})
    served = check_sequence(await run_work(bus, other, on_frame=taken))
    assert isinstance(served, contract.Done), served
    assert busy_when_taken == [cap], "the other deployment's work must be taken while the cap is full"
    terminals = [check_sequence(frames) for frames in await asyncio.gather(*hanging)]
    refused = [t for t in terminals if isinstance(t, contract.Failed)]
    assert len(refused) == 1 and refused[0].error.code == "worker_busy", refused
    assert "fake-slow-capped" in refused[0].error.message
    assert JanusError.from_wire(refused[0].error).retryable
    assert _metric("janus_upstream_calls_total", outcome="ok", **labels) == ok_before + cap
    assert _metric("janus_worker_deployment_in_flight", **labels) == 0
    assert _metric("janus_worker_in_flight", gen_ai_provider_name="slowfake") == 0
    # uncapped, a deployment's capacity is its provider's share
    assert (
        _metric("janus_worker_deployment_capacity", gen_ai_provider_name="slowfake", deployment="fake-slow")
        == worker.caps["slowfake"]
    )


async def test_a_deployment_label_names_only_a_served_deployment(bus: Bus, worker: WorkerService) -> None:
    """Work naming a deployment this worker does not serve (a compromised neighbour on the bus) is
    refused and never becomes a label: series stay bounded by the catalog."""
    bogus = f"no-such-deployment-{time.time_ns()}"
    failed = check_sequence(await run_work(bus, work("fake-chat", {"messages": MESSAGES}, deployment=bogus)))
    assert isinstance(failed, contract.Failed) and failed.error.code == "unknown_deployment"
    served = check_sequence(await run_work(bus, work("fake-chat", {"messages": MESSAGES})))
    assert isinstance(served, contract.Done)
    text = generate_latest().decode()
    assert parse_metric(text, "janus_upstream_calls_total", deployment="fake-local") >= 1
    assert bogus not in text


async def test_a_model_label_names_only_a_catalog_model(bus: Bus, worker: WorkerService) -> None:
    """Work naming a model the catalog lacks (the work's response model is the gateway's word) is
    served, and its tokens are counted under "other": a neighbour inventing a model per request
    cannot grow the worker's series."""
    bogus = f"no-such-model-{time.time_ns()}"
    before = parse_metric(generate_latest().decode(), "janus_tokens_total", gen_ai_request_model="other")
    done = check_sequence(await run_work(bus, work(bogus, {"messages": MESSAGES})))
    assert isinstance(done, contract.Done) and done.usage.completion_tokens > 0
    text = generate_latest().decode()
    assert bogus not in text
    counted = parse_metric(text, "janus_tokens_total", gen_ai_request_model="other")
    u = done.usage
    assert counted == before + u.prompt_tokens + u.completion_tokens + u.cached_tokens + u.reasoning_tokens


async def test_undecodable_work_is_logged_by_the_request_id_beside_it(
    bus: Bus, worker: WorkerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def __getattr__(self, level: str) -> object:
            return lambda event, **kw: seen.append((event, kw))

    monkeypatch.setattr(worker_service, "log", Recorder())
    sent = [
        # a gateway of an earlier release named the request in a header
        (b"\xc1 not msgpack", {subjects.H_REQUEST_ID: "req-junk-1"}),
        # one of a later release whose work this worker cannot read still names it in the work
        (msgspec.msgpack.encode({"type": "work.request.v9", "request_id": "req-junk-2", "kind": 7}), None),
        (b"\xc1 not msgpack", None),
    ]
    for data, headers in sent:
        with bus.open_inbox("junk") as box:
            await bus.publish(subjects.work("fake"), data, reply=box.subject, headers=headers)
            failed = contract.frame_decoder.decode((await box.next(5)).data)
        assert isinstance(failed, contract.Failed) and failed.error.kind == "invalid_request"
    logged = [kw["request_id"] for event, kw in seen if event == "work_undecodable"]
    assert logged == ["req-junk-1", "req-junk-2", ""]
