"""How few frames carry an answer: a quick buffered answer is one frame, the events of one upstream
read travel as one Chunk the moment they are read, a stream's last read rides in its Done, and a
gateway that predates batched frames still gets one chunk per frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from services.worker.adapters.base import UpstreamRequest
from services.worker.service import WorkerService
from services.worker.transport import Transport
from shared import contract
from shared.bus import Bus
from tests.fakes.openai_upstream import WORDS, OpenAIUpstream
from tests.openai_schema import validate
from tests.worker.conftest import check_sequence, chunks_of, oai_work, run_work

MESSAGES = [{"role": "user", "content": "Hi"}]
STREAM = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}


def contents(chunks: list[bytes]) -> list[str | None]:
    docs = [json.loads(c) for c in chunks]
    for d in docs:
        validate("CreateChatCompletionStreamResponse", d)
    return [d["choices"][0]["delta"].get("content") for d in docs if d["choices"]]


async def test_a_quick_buffered_answer_is_one_frame(bus: Bus, worker: WorkerService) -> None:
    # timers far away: whatever the machine's load, nothing but the answer may go out
    worker.settings.accept_delay_seconds = worker.settings.heartbeat_seconds = 30
    frames = await run_work(bus, oai_work({"messages": MESSAGES}))
    assert len(frames) == 1, frames
    done = frames[0]
    assert isinstance(done, contract.Done) and done.seq == 0 and done.usage.completion_tokens
    validate("CreateChatCompletionResponse", json.loads(done.body))


async def test_an_answer_slower_than_the_accept_delay_is_preceded_by_accepted(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    worker.settings.accept_delay_seconds, worker.settings.heartbeat_seconds = 0.05, 30
    upstream.faults.stall_seconds = 0.5
    frames = await run_work(bus, oai_work({"messages": MESSAGES}))
    check_sequence(frames)
    assert [type(f) for f in frames] == [contract.Accepted, contract.Done]
    assert frames[0].worker == worker.worker_id


async def test_events_of_one_read_travel_in_one_frame_without_waiting_for_more(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    """The provider sends the role chunk and three words in one write and the rest only once the
    gateway's side has the first frame: that frame carries the three words (the role rides on the
    first), so it left without waiting for more."""
    upstream.faults.burst = 3
    first: list[contract.Chunk] = []

    async def release_on_first_chunk(frame: Any) -> None:
        if isinstance(frame, contract.Chunk) and not first:
            first.append(frame)
            upstream.faults.release.set()

    frames = await run_work(bus, oai_work(STREAM), on_frame=release_on_first_chunk)
    done = check_sequence(frames)
    assert isinstance(done, contract.Done)
    assert contents([first[0].data, *first[0].more]) == WORDS[:3]
    assert json.loads(first[0].data)["choices"][0]["delta"]["role"] == "assistant"
    # everything in order, the usage chunk (known only at the end) in the Done
    assert "".join(c or "" for c in contents(chunks_of(frames))) == "".join(WORDS)
    assert done.chunks and json.loads(done.chunks[-1])["usage"]["completion_tokens"] == 7


async def test_a_gateway_that_reads_single_chunks_gets_one_chunk_per_frame(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream
) -> None:
    upstream.faults.burst = 3
    upstream.faults.release.set()
    frames = await run_work(bus, oai_work(STREAM, frames=contract.FRAMES_SINGLE))
    done = check_sequence(frames)
    assert isinstance(done, contract.Done) and not done.chunks
    chunks = [f for f in frames if isinstance(f, contract.Chunk)]
    assert all(not f.more for f in chunks)
    assert "".join(c or "" for c in contents([f.data for f in chunks])) == "".join(WORDS)
    assert json.loads(chunks[-1].data)["usage"]["completion_tokens"] == 7


class _Adapter:
    @staticmethod
    def error_message(status: int, body: bytes) -> str:
        return body.decode()


@pytest.fixture
async def whole_stream_server() -> AsyncIterator[str]:
    """An SSE answer sent whole, with its length: its end is known with its first read."""
    events = b"".join(b'data: {"n": %d}\n\n' % i for i in range(5)) + b"data: [DONE]\n\n"

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=events, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/whole", whole)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/whole"
    finally:
        await runner.cleanup()


async def test_the_read_that_ends_the_stream_says_so(whole_stream_server: str) -> None:
    transport = Transport(connect_timeout=5, read_timeout=5)
    await transport.start()
    try:
        req = UpstreamRequest("POST", whole_stream_server, {}, b"{}", framing="sse")
        reads = [(len(msgs), ended) async for msgs, ended in transport.stream(req, _Adapter())]
    finally:
        await transport.close()
    assert reads == [(6, True)]
