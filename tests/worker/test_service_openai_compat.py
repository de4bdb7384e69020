"""The worker with the openai_compat adapter against the fake OpenAI upstream, over a real nats-server."""

from __future__ import annotations

import base64
import json

import numpy as np

from services.worker import policy
from services.worker.service import WorkerService
from shared import contract
from shared.bus import Bus
from shared.errors import JanusError
from tests.fakes.openai_upstream import OpenAIUpstream, token_text, vector_for
from tests.openai_schema import validate
from tests.worker.conftest import KEY, check_sequence, chunks_of, oai_work, run_work

MESSAGES = [{"role": "user", "content": "Hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


async def test_stream_relays_chunks_and_usage(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    req = oai_work({"model": "oai-chat", "messages": MESSAGES, "stream": True})
    frames = await run_work(bus, req)
    done = check_sequence(frames)
    assert isinstance(done, contract.Done)
    sent = upstream.requests[-1]
    assert sent.body["model"] == "gpt-upstream"
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    chunks = [json.loads(c) for c in chunks_of(frames)]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
        assert c["model"] == "oai-chat" and c["id"] == f"chatcmpl-{req.request_id}"
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        == "Hello from the fake upstream."
    )
    # the client did not ask for usage: it gets none, metering still does
    assert all(c["choices"] for c in chunks)
    assert done.usage == contract.Usage(
        prompt_tokens=11, completion_tokens=7, cached_tokens=3, reasoning_tokens=2
    )


async def test_stream_tool_call_fragments(bus: Bus, worker: WorkerService) -> None:
    body = {"messages": MESSAGES, "tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}}
    frames = await run_work(bus, oai_work(body))
    chunks = [json.loads(c) for c in chunks_of(frames)]
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0] == {
        "index": 0,
        "id": "call_up_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city": "Paris"}'
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    assert chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2


async def test_buffered_passthrough_rewrites_id_and_model(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    req = oai_work({"model": "oai-chat", "messages": MESSAGES, "tools": TOOLS, "stream": False})
    done = check_sequence(await run_work(bus, req))
    body = json.loads(done.body)
    validate("CreateChatCompletionResponse", body)
    assert body["id"] == f"chatcmpl-{req.request_id}" and body["model"] == "oai-chat"
    assert body["created"] == 1712345678 and body["system_fingerprint"] == "fp_fake"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    assert done.usage.prompt_tokens == 11 and done.usage.reasoning_tokens == 2
    assert "stream_options" not in upstream.requests[-1].body


async def test_members_janus_does_not_model_reach_the_provider_as_sent(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    """The worker reads a typed request, yet an OpenAI-compatible provider still gets every member the
    client sent that the parameter policy leaves alone, nested ones included."""
    message = {
        "role": "user",
        "name": "ann",
        "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}],
    }
    body = {
        "messages": [message],
        "stream": True,
        "top_k": 5,
        "logit_bias": {"42": -100},
        "reasoning_effort": "low",
        "user": "ceo@victim.example",
        "metadata": {"team": "x"},
        "stream_options": {"include_usage": False, "include_obfuscation": False},
        "store": False,
        "service_tier": "auto",
    }
    req = oai_work(body)
    assert isinstance(check_sequence(await run_work(bus, req)), contract.Done)
    sent = upstream.requests[-1].body
    assert sent["messages"] == [message]
    assert (sent["top_k"], sent["logit_bias"], sent["reasoning_effort"]) == (5, {"42": -100}, "low")
    assert sent["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    assert sent["user"] == policy.principal_id(req.user)
    assert not {"metadata", "store", "service_tier"} & sent.keys()


async def test_a_body_the_gateway_would_refuse_is_refused_before_any_upstream_call(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    """The worker decodes with the gateway's own decoder: one shape, one set of checks."""
    for bad, param in (
        ({"role": "wizard", "content": "x"}, "messages[0].role"),
        ({"role": "tool", "content": 3}, "messages[0].content"),
    ):
        failed = check_sequence(await run_work(bus, oai_work({"messages": [bad]})))
        assert isinstance(failed, contract.Failed) and not failed.produced
        err = JanusError.from_wire(failed.error)
        assert (err.http_status, err.param) == (400, param)
    assert upstream.requests == []


async def test_upstream_400_is_not_retryable(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    upstream.faults.fail_times, upstream.faults.status = 1, 400
    upstream.faults.message = "Invalid value for 'temperature'"
    failed = check_sequence(await run_work(bus, oai_work({"messages": MESSAGES, "stream": True})))
    assert isinstance(failed, contract.Failed) and not failed.produced
    err = JanusError.from_wire(failed.error)
    assert failed.error.kind == "upstream_refused" and not err.retryable
    assert err.http_status == 400 and "temperature" in err.message
    assert failed.usage == contract.Usage()


async def test_upstream_500_and_429_are_retryable_with_retry_after(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    upstream.faults.fail_times, upstream.faults.status, upstream.faults.retry_after = 1, 500, "2"
    failed = (await run_work(bus, oai_work({"messages": MESSAGES})))[-1]
    err = JanusError.from_wire(failed.error)
    assert err.retryable and err.retry_after == 2.0 and err.http_status == 500
    upstream.faults.fail_times, upstream.faults.status, upstream.faults.retry_after = 1, 429, "7"
    failed = (await run_work(bus, oai_work({"messages": MESSAGES, "stream": True})))[-1]
    err = JanusError.from_wire(failed.error)
    assert err.retryable and err.retry_after == 7.0 and err.http_status == 429
    # the fault is spent: the next call succeeds
    assert isinstance((await run_work(bus, oai_work({"messages": MESSAGES})))[-1], contract.Done)


async def test_mid_stream_drop_is_stream_interrupted(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    for hard in (False, True):
        upstream.faults.drop_after, upstream.faults.drop_hard = 2, hard
        frames = await run_work(bus, oai_work({"messages": MESSAGES, "stream": True}))
        failed = check_sequence(frames)
        assert isinstance(failed, contract.Failed)
        assert failed.error.kind == "stream_interrupted" and failed.produced
        assert failed.usage.completion_tokens > 0  # counted: the provider never reported it


async def test_in_band_error_event(bus: Bus, worker: WorkerService, upstream: OpenAIUpstream) -> None:
    upstream.faults.in_band_error = True
    failed = (await run_work(bus, oai_work({"messages": MESSAGES, "stream": True})))[-1]
    assert isinstance(failed, contract.Failed)
    assert JanusError.from_wire(failed.error).retryable and "overloaded" in failed.error.message


async def test_slow_upstream_gets_heartbeats(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    upstream.faults.stall_seconds = 0.7
    frames = await run_work(bus, oai_work({"messages": MESSAGES, "stream": True}))
    assert isinstance(check_sequence(frames), contract.Done)
    assert sum(isinstance(f, contract.Heartbeat) for f in frames) >= 2


async def test_embeddings_ask_floats_and_encode_base64(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    body = {"input": ["one two", "three"], "encoding_format": "base64"}
    done = check_sequence(await run_work(bus, oai_work(body, kind="embeddings")))
    assert upstream.requests[-1].body["encoding_format"] == "float"
    assert upstream.requests[-1].body["model"] == "emb-up"
    out = json.loads(done.body)
    assert out["model"] == "emb-small" and done.usage.prompt_tokens == 3
    for item, text in zip(out["data"], body["input"], strict=True):
        vec = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert vec.tolist() == vector_for(text, 8)


async def test_token_id_inputs_pass_through_to_an_openai_compatible_upstream(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    for given, sent in (([[1, 2, 3], [40, 5]], [[1, 2, 3], [40, 5]]), ([7, 8, 9, 10], [[7, 8, 9, 10]])):
        done = check_sequence(await run_work(bus, oai_work({"input": given}, kind="embeddings")))
        assert isinstance(done, contract.Done), done
        assert upstream.requests[-1].body["input"] == sent
        out = json.loads(done.body)
        assert [d["embedding"] for d in out["data"]] == [vector_for(token_text(t), 8) for t in sent]
        assert done.usage.prompt_tokens == sum(len(t) for t in sent)


async def test_an_answer_larger_than_one_bus_message_arrives_in_slices(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    """40 vectors of 3072 floats are ~2.5 MB of JSON, over nats-server's 1 MiB default: the body
    goes out as Chunk slices, each within the server's limit, and the Done carries the last one."""
    body = {"input": [f"passage {i}" for i in range(40)], "dimensions": 3072}
    frames = await run_work(bus, oai_work(body, kind="embeddings"))
    done = check_sequence(frames)
    assert isinstance(done, contract.Done) and done.usage.prompt_tokens == 80
    slices = [f for f in frames if isinstance(f, contract.Chunk)]
    assert len(slices) >= 2 and all(len(f.data) <= bus.max_payload for f in slices)
    out = json.loads(b"".join(f.data for f in slices) + done.body)
    assert [d["index"] for d in out["data"]] == list(range(40))
    assert out["data"][7]["embedding"] == vector_for("passage 7", 3072)
    small = check_sequence(await run_work(bus, oai_work({"input": "still here"}, kind="embeddings")))
    assert isinstance(small, contract.Done)


async def test_an_answer_over_the_response_limit_is_a_413_still_charged(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    worker.settings.max_response_bytes = 1024 * 1024
    body = {"input": [f"passage {i}" for i in range(40)], "dimensions": 3072}  # ~2.5 MB as floats
    failed = check_sequence(await run_work(bus, oai_work(body, kind="embeddings")))
    assert isinstance(failed, contract.Failed)
    assert failed.error.code == "response_too_large" and failed.error.status == 413
    assert "base64" in failed.error.message and not JanusError.from_wire(failed.error).retryable
    assert failed.usage.prompt_tokens == 80, "the provider's reported usage is still settled"
    # as base64 the same answer fits
    done = check_sequence(
        await run_work(bus, oai_work({**body, "encoding_format": "base64"}, kind="embeddings"))
    )
    assert isinstance(done, contract.Done)


async def test_unreachable_upstream_is_retryable(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    await upstream.close()  # nothing listens there any more: a connect error
    failed = (await run_work(bus, oai_work({"messages": MESSAGES})))[-1]
    err = JanusError.from_wire(failed.error)
    assert failed.error.kind == "upstream" and err.retryable
