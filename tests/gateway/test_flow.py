"""The request flow through a real gateway process: route, reserve, work frames, response, settlement."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from shared.contract import FRAMES_BATCHED, Accepted, Chunk, Done, Heartbeat, Usage, WorkRequest
from tests.eventually import eventually
from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway, auth
from tests.openai_schema import validate

CHAT = {"model": "gpt-5-nano", "messages": [{"role": "user", "content": "Say hello"}]}
CREDIT_HEADERS = {
    "X-RateLimit-Session-Limit-Credits": "500000",
    "X-RateLimit-Session-Remaining-Credits": "400000",
    "X-RateLimit-Session-Reset": "2026-04-03T10:00:00Z",
    "X-RateLimit-Weekly-Limit-Credits": "2000000",
    "X-RateLimit-Weekly-Remaining-Credits": "1900000",
    "X-RateLimit-Weekly-Reset": "2026-04-06T00:00:00Z",
}


async def post(
    http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.post(gw.url + path, json=body, headers=auth()) as r:
        return r, await r.read()


def sse_events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    events = raw.split(b"\n\n")[:-1]
    assert all(e.startswith(b"data: ") for e in events), events
    return [e[len(b"data: ") :] for e in events]


def assert_error(body: bytes, code: str | None = None) -> dict[str, Any]:
    doc = json.loads(body)
    validate("ErrorResponse", doc)
    if code is not None:
        assert doc["error"]["code"] == code, doc
    return doc["error"]


async def access_line(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The gateway's access line for ``request_id``, once it is in the log."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        lines = (json.loads(x) for x in gateway.proc.log_tail(200_000).splitlines() if x.startswith("{"))
        found[:] = [x for x in lines if x.get("event") == "request" and x.get("request_id") == request_id]
        return bool(found)

    await eventually(logged, 5, "the access line")
    [line] = found
    return line


async def test_buffered_chat(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    await fakes.start({"pa": F.answer})
    r, body = await post(
        http,
        gateway,
        {
            **CHAT,
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
            ],
        },
    )
    assert r.status == 200, body
    doc = json.loads(body)
    validate("CreateChatCompletionResponse", doc)
    assert doc["model"] == "gpt-5-nano"
    for k, v in CREDIT_HEADERS.items():
        assert r.headers[k] == v
    assert r.headers["X-Janus-Route"] == "model=gpt-5-nano; reason=direct; score=-"
    rid = r.headers["X-Request-Id"]
    # the worker got the client's bytes unchanged, the reservation the capped output and the estimate
    work, headers = fakes.works[0]
    assert json.loads(work.body)["tools"][0]["function"]["name"] == "get_weather"
    # the request id and the deadline travel in the work itself: the worker parses no NATS headers
    assert work.request_id == rid and work.deadline > time.time() and headers == {}
    assert fakes.route_requests[0].needs_tools is True
    reserve = fakes.reserves[0]
    assert reserve.model == "gpt-5-nano" and reserve.max_output_tokens == 4096 and reserve.input_tokens > 0
    settled = await fakes.settlement_for(rid)
    assert len(settled) == 1
    assert settled[0].ok and settled[0].usage == Usage(12, 3) and settled[0].user == "alice"


async def test_streamed_chat(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    await fakes.start({"pa": F.answer})
    r, raw = await post(
        http,
        gateway,
        {
            **CHAT,
            "model": "auto",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 50,
        },
    )
    assert r.status == 200, raw
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-RateLimit-Weekly-Reset"] == "2026-04-06T00:00:00Z"
    assert r.headers["X-Janus-Route"] == "model=gpt-5-nano; reason=tier_default; score=0.25"
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    for e in events[:-1]:
        validate("CreateChatCompletionStreamResponse", json.loads(e))
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "Hello!"
    assert fakes.route_requests[0].text == "Say hello"
    assert fakes.reserves[0].max_output_tokens == 50
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and settled[0].ok and settled[0].usage == Usage(12, 3)


async def test_embeddings(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    await fakes.start({"pa": F.answer})
    r, body = await post(
        http,
        gateway,
        {"model": "text-embedding-3-small", "input": ["a", "bc"], "encoding_format": "base64"},
        "/v1/embeddings",
    )
    assert r.status == 200, body
    doc = json.loads(body)
    validate("CreateEmbeddingResponse", doc)
    assert doc["model"] == "text-embedding-3-small"
    assert fakes.route_requests[0].kind == "embeddings"
    assert fakes.works[0][0].kind == "embeddings"
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and settled[0].usage == Usage(4)


async def test_no_worker_is_503(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    fakes.providers = ("pa", "pb")
    await fakes.start({})
    r, body = await post(http, gateway, CHAT)
    assert r.status == 503
    assert_error(body, "no_worker")
    assert r.headers["X-RateLimit-Session-Remaining-Credits"] == "400000"
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and not settled[0].ok and settled[0].usage == Usage()


async def test_stalled_worker_is_504(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    await fakes.start({"pa": F.stall})
    r, body = await post(http, gateway, CHAT)
    assert r.status == 504
    assert_error(body, "stall_timeout")
    rid = r.headers["X-Request-Id"]
    assert (await fakes.settlement_for(rid))[0].ok is False
    assert rid in fakes.cancels  # the silent worker is told to stop


async def test_stall_after_first_chunk_ends_in_band(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.chunk_then_stall})
    r, raw = await post(http, gateway, {**CHAT, "stream": True})
    assert r.status == 200
    events = sse_events(raw)
    assert b"[DONE]" not in events
    validate("CreateChatCompletionStreamResponse", json.loads(events[0]))
    assert_error(events[-1], "stall_timeout")
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    # no word from the worker: the prompt estimate and one token per chunk sent
    assert len(settled) == 1 and not settled[0].ok and settled[0].usage.completion_tokens == 1


async def test_a_chunk_is_never_held_back_behind_a_heartbeat(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    """Chunks that arrive together share one write; a chunk followed only by a heartbeat must still
    reach the client at once. The worker here finishes only after the client has read the first
    event: a held chunk would end the stream with a stall error instead of [DONE]."""
    seen = asyncio.Event()

    async def chunk_heartbeat_wait(f: F.Fakes, work: WorkRequest, send: F.Send) -> None:
        await send(Accepted(0))
        await send(Chunk(1, F.chunk_data(work, {"role": "assistant", "content": "Hi"})))
        await send(Heartbeat(2))
        await asyncio.wait_for(seen.wait(), 10)
        await send(Chunk(3, F.chunk_data(work, {}, "stop")))
        await send(Done(4, Usage(12, 1), finish_reason="stop", upstream_seconds=0.001))

    await fakes.start({"pa": chunk_heartbeat_wait})
    async with http.post(
        gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth()
    ) as r:
        assert r.status == 200
        first = await r.content.readuntil(b"\n\n")
        seen.set()
        raw = first + await r.content.read()
    events = sse_events(raw)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "Hi"
    assert events[-1] == b"[DONE]" and len(events) == 3


async def test_failure_after_first_chunk_ends_in_band(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    fakes.providers = ("pa", "pb")
    await fakes.start({"pa": F.chunk_then_fail, "pb": F.answer})
    r, raw = await post(http, gateway, {**CHAT, "stream": True})
    events = sse_events(raw)
    assert_error(events[-1], "upstream_error")
    assert len(fakes.works) == 1  # no fallback once content went out
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert settled[0].usage == Usage(12, 1) and not settled[0].ok


async def test_a_body_in_slices_is_joined(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.answer_in_slices})
    r, body = await post(http, gateway, {"model": "text-embedding-3-small", "input": "a"}, "/v1/embeddings")
    assert r.status == 200, body
    assert body == F.embedding_body(fakes.works[0][0])
    validate("CreateEmbeddingResponse", json.loads(body))


async def test_a_failed_attempts_slices_are_dropped_before_the_fallback(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    fakes.providers = ("pa", "pb")
    await fakes.start({"pa": F.slices_then_fail, "pb": F.answer_in_slices})
    r, body = await post(http, gateway, {"model": "text-embedding-3-small", "input": "a"}, "/v1/embeddings")
    assert r.status == 200, body
    assert [w.provider for w, _ in fakes.works] == ["pa", "pb"]
    assert body == F.embedding_body(fakes.works[1][0])
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and settled[0].ok and settled[0].usage == Usage(9)


async def test_fallback_before_first_token(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    fakes.providers = ("pa", "pb")
    await fakes.start({"pa": F.fail_retryable, "pb": F.answer})
    r, raw = await post(http, gateway, {**CHAT, "stream": True})
    assert r.status == 200
    assert sse_events(raw)[-1] == b"[DONE]"
    assert [w.provider for w, _ in fakes.works] == ["pa", "pb"]
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    # the failed attempt's usage is charged too
    assert len(settled) == 1 and settled[0].ok and settled[0].usage == Usage(17, 3)


async def test_gap_in_frames_is_an_error(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.gap})
    r, body = await post(http, gateway, CHAT)
    assert r.status == 502
    assert_error(body, "frame_gap")
    # the access line: a failure of ours at warning, with its message
    line = await access_line(gateway, r.headers["X-Request-Id"])
    assert line["level"] == "warning" and line["status"] == 502 and line["code"] == "frame_gap"
    assert line["error"] and line["route"] == "/v1/chat/completions" and line["service"] == "gateway"


async def test_budget_refused(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    fakes.admit = False
    await fakes.start({"pa": F.answer})
    r, body = await post(http, gateway, CHAT)
    assert r.status == 429
    # the caller's to fix: an info line with the code, no message
    line = await access_line(gateway, r.headers["X-Request-Id"])
    assert line["level"] == "info" and line["status"] == 429 and line["code"] and "error" not in line
    assert r.headers["x-should-retry"] == "false"
    for k, v in CREDIT_HEADERS.items():
        if k != "X-RateLimit-Session-Remaining-Credits":
            assert r.headers[k] == v
    assert r.headers["X-RateLimit-Session-Remaining-Credits"] == "0"
    assert_error(body, "budget_exceeded")
    assert fakes.works == []


async def test_a_plan_the_router_marks_reusable_skips_the_router(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    # a model name no other test uses: the gateway process (and its plan cache) is shared by the module
    fakes.plan_cache_seconds = 60.0
    await fakes.start({"pa": F.answer})
    body = {**CHAT, "model": "reusable-model"}
    ids = []
    for _ in range(3):
        r, raw = await post(http, gateway, body)
        assert r.status == 200, raw
        assert r.headers["X-Janus-Route"] == "model=reusable-model; reason=direct; score=-"
        ids.append(r.headers["X-Request-Id"])
    assert len(fakes.route_requests) == 1
    # every request is still reserved, served and settled on its own
    assert [rq.request_id for rq in fakes.reserves] == ids
    assert [w.request_id for w, _ in fakes.works] == ids
    assert all(rq.model == "reusable-model" for rq in fakes.reserves)
    for rid in ids:
        assert len(await fakes.settlement_for(rid)) == 1
    # other needs are another plan; auto is always decided afresh, even when a router marks it
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    r, raw = await post(http, gateway, {**body, "tools": tools})
    assert r.status == 200, raw
    assert len(fakes.route_requests) == 2 and fakes.route_requests[1].needs_tools
    for _ in range(2):
        r, raw = await post(http, gateway, {**CHAT, "model": "auto"})
        assert r.status == 200, raw
    assert len(fakes.route_requests) == 4


async def test_an_unmarked_plan_is_asked_for_every_time(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    await fakes.start({"pa": F.answer})
    for _ in range(2):
        r, raw = await post(http, gateway, {**CHAT, "model": "unmarked-model"})
        assert r.status == 200, raw
    assert len(fakes.route_requests) == 2


async def test_unknown_model(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    await fakes.start({"pa": F.answer})
    r, body = await post(http, gateway, {**CHAT, "model": "nope"})
    assert r.status == 404
    assert_error(body, "model_not_found")
    assert fakes.reserves == []


async def test_client_disconnect_cancels_and_settles_usage(gateway: Gateway, fakes: F.Fakes) -> None:
    await fakes.start({"pa": F.endless})
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    body = json.dumps({**CHAT, "stream": True}).encode()
    headers = "".join(f"{k}: {v}\r\n" for k, v in auth().items())
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    rid = next(
        line.split(b": ", 1)[1].decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    )
    await reader.readuntil(b"data: ")  # at least one chunk has reached the client
    writer.transport.abort()
    settled = await fakes.settlement_for(rid)
    assert rid in fakes.cancels
    assert len(settled) == 1 and not settled[0].ok
    assert settled[0].usage.prompt_tokens == 12 and settled[0].usage.completion_tokens >= 1


async def test_models_and_usage(gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession) -> None:
    await fakes.start({})
    async with http.get(gateway.url + "/v1/models", headers=auth()) as r:
        doc = await r.json()
    validate("ListModelsResponse", doc)
    ids = [m["id"] for m in doc["data"]]
    assert "gpt-5-nano" in ids and "neboloop/nebo-embed-small" in ids
    for name in ("neboloop/nebo-embed-small", "text-embedding-3-small", "qwen3:latest"):
        async with http.get(gateway.url + "/v1/models/" + name, headers=auth()) as r:
            assert r.status == 200
            one = await r.json()
        validate("Model", one)
        assert one["id"] == name
    async with http.get(gateway.url + "/v1/models/neboloop/unknown", headers=auth()) as r:
        assert r.status == 404
        assert_error(await r.read(), "model_not_found")
    async with http.get(gateway.url + "/v1/usage", headers=auth("bob", "developer")) as r:
        assert r.status == 200
        assert await r.json() == {"user": "bob", "plan": "developer", "pools": []}


async def test_official_sdk(gateway: Gateway, fakes: F.Fakes) -> None:
    import openai

    await fakes.start({"pa": F.answer})
    client = openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=auth()["Authorization"][7:], max_retries=2
    )
    try:
        done = await client.chat.completions.create(
            model="gpt-5-nano", messages=[{"role": "user", "content": "hi"}]
        )
        assert done.choices[0].message.content == "Hello!" and done.model == "gpt-5-nano"
        stream = await client.chat.completions.create(
            model="gpt-5-nano", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "Hello!"
        emb = await client.embeddings.create(model="neboloop/nebo-embed-small", input="hi")
        assert emb.data[0].embedding == [0.1, 0.2, 0.3]
        fakes.admit = False
        before = len(fakes.reserves)
        try:
            await client.chat.completions.create(
                model="gpt-5-nano", messages=[{"role": "user", "content": "x"}]
            )
            raise AssertionError("expected a 429")
        except openai.RateLimitError as exc:
            assert exc.code == "budget_exceeded"
        assert len(fakes.reserves) == before + 1  # x-should-retry: false stopped the SDK's retries
    finally:
        await client.close()


async def test_chunks_that_travel_together_reach_the_client_in_order(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    """A worker of this gateway's frame set sends no Accepted before a quick first token, the events
    of one upstream read in one Chunk frame, and the stream's last read in its Done."""
    seen = asyncio.Event()

    async def batched(f: F.Fakes, work: WorkRequest, send: F.Send) -> None:
        words = [F.chunk_data(work, {"role": "assistant", "content": "He"})] + [
            F.chunk_data(work, {"content": w}) for w in ("l", "lo", " there")
        ]
        await send(Chunk(0, words[0], more=words[1:3]))
        await asyncio.wait_for(seen.wait(), 10)  # the first read is the client's before the rest
        await send(Chunk(1, words[3]))
        await send(
            Done(
                2,
                Usage(12, 4),
                finish_reason="stop",
                upstream_seconds=0.001,
                chunks=[F.chunk_data(work, {}, "stop"), F.usage_chunk(work, Usage(12, 4))],
            )
        )

    await fakes.start({"pa": batched})
    async with http.post(
        gateway.url + "/v1/chat/completions",
        headers=auth(),
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.status == 200
        first = await r.content.readuntil(b"\n\n")
        seen.set()
        raw = first + await r.content.read()
    assert fakes.works[0][0].frames == FRAMES_BATCHED
    events = sse_events(raw)
    assert events[-1] == b"[DONE]" and len(events) == 7
    docs = [json.loads(e) for e in events[:-1]]
    for d in docs:
        validate("CreateChatCompletionStreamResponse", d)
    assert "".join(d["choices"][0]["delta"].get("content", "") for d in docs[:-1]) == "Hello there"
    assert docs[-2]["choices"][0]["finish_reason"] == "stop" and docs[-1]["usage"]["completion_tokens"] == 4
    settled = await fakes.settlement_for(r.headers["X-Request-Id"])
    assert len(settled) == 1 and settled[0].ok and settled[0].usage == Usage(12, 4)
