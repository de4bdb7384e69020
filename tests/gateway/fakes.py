"""Stand-ins for the router, metering and a worker pool that speak the real bus contract, so a test can
drive the gateway (a real subprocess) through every case. They live on the test's own Bus and vanish
with it."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared import contract, subjects
from shared.bus import Bus, Msg
from shared.contract import (
    Accepted,
    Chunk,
    Done,
    ErrorReply,
    Failed,
    PoolState,
    ReserveReply,
    ReserveRequest,
    RoutePlan,
    RouteRequest,
    Settlement,
    Target,
    Usage,
    WorkRequest,
)
from shared.errors import JanusError, ModelNotFound

SESSION_RESET = 1_775_210_400.0  # 2026-04-03T10:00:00Z
WEEKLY_RESET = 1_775_433_600.0  # 2026-04-06T00:00:00Z

Send = Callable[[contract.Frame], Awaitable[None]]
Behaviour = Callable[["Fakes", WorkRequest, Send], Awaitable[None]]


def pools(session_left: int = 400_000, weekly_left: int = 1_900_000) -> list[PoolState]:
    return [
        PoolState("session", 500_000, session_left, SESSION_RESET),
        PoolState("weekly", 2_000_000, weekly_left, WEEKLY_RESET),
    ]


def plan_for(
    req: RouteRequest, providers: tuple[str, ...] = ("pa",), fallback_model: str = ""
) -> RoutePlan | ErrorReply:
    """The plan a router answers; with ``fallback_model``, every provider after the first serves
    that model instead (the router's fallback to another model of the same quality)."""
    if req.model == "nope":
        return contract.error_reply(ModelNotFound(f"The model '{req.model}' does not exist.", param="model"))
    model = req.model if req.model not in ("", "auto") else "gpt-5-nano"
    response_model = "text-embedding-3-small" if req.kind == "embeddings" else model
    return RoutePlan(
        model=model if req.kind == "chat" else "neboloop/nebo-embed-small",
        response_model=response_model,
        targets=[
            Target(f"dep-{p}", p, fallback_model or response_model, model=fallback_model)
            if i and fallback_model
            else Target(f"dep-{p}", p, response_model)
            for i, p in enumerate(providers)
        ],
        reason="direct" if req.model not in ("", "auto") else "tier_default",
        auto=req.model in ("", "auto"),
        score=0.25 if req.model in ("", "auto") else None,
    )


def chat_body(work: WorkRequest, text: str = "Hello!", usage: Usage | None = None) -> bytes:
    u = usage or Usage(12, 3)
    return json.dumps(
        {
            "id": f"chatcmpl-{work.request_id}",
            "object": "chat.completion",
            "created": work.created,
            "model": work.response_model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            },
        }
    ).encode()


def chunk_data(work: WorkRequest, delta: dict[str, Any], finish: str | None = None) -> bytes:
    return json.dumps(
        {
            "id": f"chatcmpl-{work.request_id}",
            "object": "chat.completion.chunk",
            "created": work.created,
            "model": work.response_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    ).encode()


def usage_chunk(work: WorkRequest, usage: Usage) -> bytes:
    """The last chunk of a stream whose client asked ``stream_options.include_usage``."""
    return json.dumps(
        {
            "id": f"chatcmpl-{work.request_id}",
            "object": "chat.completion.chunk",
            "created": work.created,
            "model": work.response_model,
            "choices": [],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
        }
    ).encode()


def embedding_body(work: WorkRequest) -> bytes:
    return json.dumps(
        {
            "object": "list",
            "model": work.response_model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    ).encode()


# ---------------------------------------------------------------------------------- worker behaviours
async def answer(f: Fakes, work: WorkRequest, send: Send) -> None:
    """A healthy worker: buffered or streamed, as asked."""
    await send(Accepted(0, worker="w1"))
    usage = Usage(12, 3)
    if work.kind == "embeddings":
        await send(Done(1, Usage(4), body=embedding_body(work), upstream_seconds=0.001))
        return
    if not work.stream:
        await send(Done(1, usage, body=chat_body(work, usage=usage), upstream_seconds=0.001))
        return
    seq = 1
    for delta in ({"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo!"}):
        await send(Chunk(seq, chunk_data(work, delta)))
        seq += 1
    await send(Chunk(seq, chunk_data(work, {}, "stop")))
    await send(Done(seq + 1, usage, finish_reason="stop", upstream_seconds=0.001))


async def answer_in_slices(f: Fakes, work: WorkRequest, send: Send) -> None:
    """A buffered body too large for one bus message, as a worker sends it: Chunk frames carrying
    consecutive slices, the last slice in the Done."""
    await send(Accepted(0))
    body = embedding_body(work)
    cuts = (0, 10, 25, 40)
    for seq, (a, b) in enumerate(itertools.pairwise(cuts), start=1):
        await send(Chunk(seq, body[a:b]))
    await send(Done(len(cuts), Usage(4), body=body[cuts[-1] :], upstream_seconds=0.001))


async def slices_then_fail(f: Fakes, work: WorkRequest, send: Send) -> None:
    """Two slices of a body that never completes, then a retryable failure."""
    await send(Accepted(0))
    await send(Chunk(1, b'{"object": "list", "broken'))
    await send(Chunk(2, b'": true, '))
    err = contract.ErrorInfo(
        kind="upstream", message="provider returned 503", status=503, code="upstream_error"
    )
    await send(Failed(3, err, usage=Usage(5, 0)))


async def fail_retryable(f: Fakes, work: WorkRequest, send: Send) -> None:
    await send(Accepted(0))
    err = JanusError.from_wire(
        contract.ErrorInfo(
            kind="upstream", message="provider returned 503", status=503, code="upstream_error"
        )
    )
    await send(Failed(1, err.to_wire(), usage=Usage(5, 0)))


async def stall(f: Fakes, work: WorkRequest, send: Send) -> None:
    await send(Accepted(0))
    await f.cancelled(work.request_id).wait()


async def chunk_then_stall(f: Fakes, work: WorkRequest, send: Send) -> None:
    await send(Accepted(0))
    await send(Chunk(1, chunk_data(work, {"role": "assistant", "content": "Hi"})))
    await f.cancelled(work.request_id).wait()


async def chunk_then_fail(f: Fakes, work: WorkRequest, send: Send) -> None:
    await send(Accepted(0))
    await send(Chunk(1, chunk_data(work, {"role": "assistant", "content": "Hi"})))
    err = contract.ErrorInfo(
        kind="upstream", message="connection reset by provider", status=502, code="upstream_error"
    )
    await send(Failed(2, err, usage=Usage(12, 1), produced=True))


async def flood(f: Fakes, work: WorkRequest, send: Send) -> None:
    """Streams large chunks as fast as it can until cancelled, then reports what it produced."""
    await send(Accepted(0))
    seq, produced = 1, 0
    ev = f.cancelled(work.request_id)
    text = "y" * 16_000
    while not ev.is_set():
        await send(Chunk(seq, chunk_data(work, {"content": text})))
        seq += 1
        produced += 1
        await asyncio.sleep(0.002)
    err = contract.ErrorInfo(kind="stream_interrupted", message="cancelled", code="cancelled")
    await send(Failed(seq, err, usage=Usage(12, produced), produced=True))


async def oversized(f: Fakes, work: WorkRequest, send: Send) -> None:
    """A buffered answer of 400 KB in slices, as a worker that ignores every limit would send it."""
    await send(Accepted(0))
    for seq in range(1, 11):
        await send(Chunk(seq, b"z" * 40_000))
    await send(Done(11, Usage(4), body=b"}", upstream_seconds=0.001))


async def gap(f: Fakes, work: WorkRequest, send: Send) -> None:
    await send(Accepted(0))
    await send(Done(2, Usage(12, 3), body=chat_body(work)))


async def endless(f: Fakes, work: WorkRequest, send: Send) -> None:
    """Streams until cancelled, then reports what it produced, as a real worker does."""
    await send(Accepted(0))
    seq, produced = 1, 0
    ev = f.cancelled(work.request_id)
    while not ev.is_set():
        await send(Chunk(seq, chunk_data(work, {"content": "x"})))
        seq += 1
        produced += 1
        try:
            await asyncio.wait_for(ev.wait(), 0.05)
        except TimeoutError:
            pass
    err = contract.ErrorInfo(kind="stream_interrupted", message="cancelled", code="cancelled")
    await send(Failed(seq, err, usage=Usage(12, produced), produced=True))


class Fakes:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.providers: tuple[str, ...] = ("pa",)
        self.fallback_model = ""
        self.admit = True
        self.behaviours: dict[str, Behaviour] = {}
        self.route_requests: list[RouteRequest] = []
        self.plan_cache_seconds = 0.0  # what the fake router allows gateways to reuse its plans for
        self.reserves: list[ReserveRequest] = []
        self.works: list[tuple[WorkRequest, dict[str, str]]] = []
        self.settlements: list[Settlement] = []
        self.cancels: list[str] = []
        self.renewals: list[contract.HoldRenewal] = []
        self._cancel_events: dict[str, asyncio.Event] = {}
        self.settled = asyncio.Event()

    def cancelled(self, request_id: str) -> asyncio.Event:
        return self._cancel_events.setdefault(request_id, asyncio.Event())

    async def start(self, workers: dict[str, Behaviour]) -> Fakes:
        self.behaviours = workers
        await self.bus.serve(subjects.ROUTE, self._route, queue=subjects.ROUTER_QUEUE)
        await self.bus.serve(subjects.METER_RESERVE, self._reserve, queue=subjects.METERING_QUEUE)
        await self.bus.serve(subjects.METER_USAGE, self._usage, queue=subjects.METERING_QUEUE)
        await self.bus.ensure_stream(subjects.SETTLE_STREAM, [subjects.SETTLE])
        # a plain subscriber sees every publish, so a duplicate the stream would hide is still counted
        await self.bus.serve(subjects.SETTLE, self._settle)
        await self.bus.serve(subjects.WORK_CANCEL, self._cancel)
        await self.bus.serve(subjects.METER_RENEW, self._renew, queue=subjects.METERING_QUEUE)
        for provider, behaviour in workers.items():
            await self.bus.serve(
                subjects.work(provider), self._worker(behaviour), queue=subjects.work_queue(provider)
            )
        await self.bus.flush()
        return self

    async def _route(self, msg: Msg) -> None:
        req = contract.route_request_decoder.decode(msg.data)
        self.route_requests.append(req)
        plan = plan_for(req, self.providers, self.fallback_model)
        if isinstance(plan, RoutePlan):
            plan.cache_seconds = self.plan_cache_seconds
        await msg.respond(contract.encode(plan))

    async def _reserve(self, msg: Msg) -> None:
        req = contract.reserve_request_decoder.decode(msg.data)
        self.reserves.append(req)
        if self.admit:
            reply = ReserveReply(True, pools(), hold=1000)
        else:
            reply = ReserveReply(
                False, pools(session_left=0), denied_pool="session", message="Session credit pool exhausted."
            )
        await msg.respond(contract.encode(reply))

    async def _usage(self, msg: Msg) -> None:
        q = contract.usage_query_decoder.decode(msg.data)
        body = json.dumps({"user": q.user, "plan": q.plan, "pools": []}).encode()
        await msg.respond(contract.encode(contract.UsageReply(body)))

    async def _settle(self, msg: Msg) -> None:
        self.settlements.extend(contract.settlements_of(msg.data))
        self.settled.set()

    async def _renew(self, msg: Msg) -> None:
        upkeep = contract.upkeep_decoder.decode(msg.data)
        if isinstance(upkeep, contract.HoldRenewal):
            self.renewals.append(upkeep)

    async def _cancel(self, msg: Msg) -> None:
        rid = contract.cancel_decoder.decode(msg.data).request_id
        self.cancels.append(rid)
        self.cancelled(rid).set()

    def _worker(self, behaviour: Behaviour) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            work = contract.work_decoder.decode(msg.data)
            self.works.append((work, dict(msg.headers or {})))

            async def send(frame: contract.Frame) -> None:
                await self.bus.publish(msg.reply, contract.encode(frame))

            await behaviour(self, work, send)

        return handle

    async def settlement_for(self, request_id: str, within: float = 10.0) -> list[Settlement]:
        """Every settlement published for ``request_id``, once at least one has arrived."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [s for s in self.settlements if s.request_id == request_id]
            if found:
                await asyncio.sleep(0.2)  # a duplicate would arrive right behind the first
                return [s for s in self.settlements if s.request_id == request_id]
            self.settled.clear()
            try:
                await asyncio.wait_for(self.settled.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
        return []
