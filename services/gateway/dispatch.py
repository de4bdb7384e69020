"""Sending the work to a worker pool and turning its frames into the HTTP response.

    for each target of the route plan (at most max_attempts):
        open inbox -> publish WorkRequest (reply = inbox) -> read frames
        retryable failure before the first chunk went out -> next target
    Chunk     -> its chunks (``data`` and ``more``: one upstream read) to the sink together
    Done      -> buffered: Done.body as is | stream: its last chunks, then data: [DONE]
    Failed    -> HTTP error before the first chunk | in-band error event after it
    disconnect-> Cancel, wait briefly for the worker's usage, settle with it (a client that stops
                 reading counts as gone once a write waits JANUS_STREAM_WRITE_TIMEOUT_SECONDS)
    meanwhile -> every JANUS_HOLD_RENEW_SECONDS, tell metering the hold is still in use
    finally   -> exactly one settlement per request (ok, usage actually produced)

A sink (``sinks.py``) hides the difference between a buffered and a streamed response; the attempt
loop is one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from aiohttp import web

from services.gateway.frames import REPLY_OVERFLOW, SHUTDOWN, FrameReader
from services.gateway.meter import Meter
from services.gateway.settings import GatewaySettings
from services.gateway.sinks import Sink
from shared import contract, metrics, subjects
from shared.bus import Bus, Inbox
from shared.contract import (
    FRAMES_BATCHED,
    Cancel,
    Chunk,
    Done,
    Failed,
    LeaseDraw,
    ModelUsage,
    RoutePlan,
    Settlement,
    Usage,
    WorkRequest,
)
from shared.errors import JanusError, ServiceUnavailable
from shared.logging import get_logger

log = get_logger("gateway.dispatch")

# the reason is an error code, which may come from a worker's frame: bounded, whatever a worker sends
_FALLBACKS = metrics.children(metrics.FALLBACKS, most=metrics.PEER_LABEL_SETS)


class Call:
    """One HTTP request's state, shared by the handler, the dispatcher and the edge middleware."""

    __slots__ = (
        "bot",
        "by_model",
        "byok",
        "error_code",
        "headers",
        "held",
        "lease",
        "model",
        "ok",
        "plan_name",
        "prompt_tokens",
        "request_id",
        "start",
        "status",
        "upstream_seconds",
        "usage",
        "user",
    )

    def __init__(self, request_id: str, start: float) -> None:
        self.request_id = request_id
        self.start = start
        self.headers: dict[str, str] = {"X-Request-Id": request_id}
        self.user = ""
        self.plan_name = ""
        self.bot = "default"
        self.byok = False  # served on the user's own provider key: recorded, not charged
        self.lease = ""  # admitted on this gateway's credit lease: its id, and what the request drew
        self.held: LeaseDraw | None = None
        self.model = ""  # catalog id once routed
        self.prompt_tokens = 0
        self.upstream_seconds = 0.0
        self.status = 0  # set when the handler knows better than the response (499: client left)
        self.usage = Usage()  # produced by every attempt so far: what the settlement charges
        # the same by catalog model: a fallback to another model is charged at that model's price
        self.by_model: dict[str, Usage] = {}
        self.ok = False
        self.error_code: str | None = None  # an in-band error's code, for the request's log line


def _add(total: Usage, more: Usage) -> Usage:
    return Usage(
        total.prompt_tokens + more.prompt_tokens,
        total.completion_tokens + more.completion_tokens,
        total.cached_tokens + more.cached_tokens,
        total.reasoning_tokens + more.reasoning_tokens,
    )


def settlement(call: Call) -> Settlement:
    """The request's one settlement: the model that served it (the last one tried) with its usage,
    and what attempts on other models produced, each to be priced at its own model's price."""
    by_model = call.by_model
    other = (
        []
        if len(by_model) == 1 and call.model in by_model  # one model tried: most requests
        else [ModelUsage(m, u) for m, u in by_model.items() if m != call.model and u != Usage()]
    )
    return Settlement(
        call.request_id,
        call.user,
        call.plan_name,
        call.model,
        call.by_model.get(call.model, Usage()),
        bot=call.bot,
        ok=call.ok,
        byok=call.byok,
        at=time.time(),
        other=other,
        lease=call.lease,
        held=call.held,
    )


class _HoldKeeper:
    """Renews a request's hold (or the lease it drew on) every ``interval`` while it runs, until
    ``cancel``. A loop timer, not a task per request: almost every request ends long before its
    first renewal, and a timer costs it no wake-up; a task is started only for a renewal that is due."""

    __slots__ = ("_call", "_interval", "_meter", "_task", "_timer")

    def __init__(self, meter: Meter, call: Call, interval: float) -> None:
        self._meter = meter
        self._call = call
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(interval, self._due)

    def _due(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():  # one renewal at a time: a slow one is not stacked
            call = self._call
            self._task = loop.create_task(self._meter.renew(call.user, call.lease or call.request_id))
        self._timer = loop.call_later(self._interval, self._due)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()


class Dispatcher:
    def __init__(
        self,
        bus: Bus,
        settings: GatewaySettings,
        meter: Meter,
        response_names: Mapping[str, str] | None = None,
    ) -> None:
        self.bus = bus
        self.s = settings
        self.meter = meter
        # a fallback model's answer names that model, as a catalog id maps to it in responses
        self.response_names = response_names or {}
        self.active: set[Inbox] = set()
        self.draining = False

    def abort_all(self) -> None:
        """Wake every request still waiting on a worker so it ends now (shutdown past the grace)."""
        self.draining = True
        for box in list(self.active):
            box.interrupt(SHUTDOWN)

    async def _cancel(self, request_id: str) -> None:
        try:
            await self.bus.publish(subjects.WORK_CANCEL, contract.encode(Cancel(request_id)))
        except JanusError:
            pass

    async def _terminal_usage(self, reader: FrameReader, sink: Sink, within: float) -> Usage | None:
        """After a cancel: the usage in the worker's terminal frame, if it comes in time."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await reader.next(left)
            except JanusError:
                return None
            if isinstance(frame, (Done, Failed)):
                return frame.usage
            if isinstance(frame, Chunk):
                sink.chunks += 1 + len(frame.more)
        return None

    async def _after_loss(self, call: Call, reader: FrameReader, sink: Sink, wait: float) -> Usage:
        """The client or the gateway gave up mid-call: stop the worker, learn what it produced."""
        await self._cancel(call.request_id)
        usage = await self._terminal_usage(reader, sink, wait)
        if usage is None:
            # no word from the worker: charge the prompt estimate and one token per chunk sent
            usage = Usage(prompt_tokens=call.prompt_tokens, completion_tokens=sink.chunks)
        return usage

    async def run(self, call: Call, plan: RoutePlan, work: WorkRequest, sink: Sink) -> web.StreamResponse:
        # a BYOK request holds nothing; any other keeps its hold alive while it runs
        keeper = None if call.byok else _HoldKeeper(self.meter, call, self.s.hold_renew_seconds)
        work.frames = FRAMES_BATCHED  # what ``_frames`` reads
        try:
            return await self._attempts(call, plan, work, sink)
        except Exception as exc:
            if sink.resp is None or isinstance(exc, JanusError):
                raise
            # the stream is already open: a new HTTP response is impossible, end it in-band
            log.exception("stream_failed")
            return await sink.fail(JanusError("internal error"))
        finally:
            if keeper is not None:
                keeper.cancel()
            # exactly one settlement per request, whatever happened: it also releases the hold
            self.meter.settle(settlement(call))

    async def _attempts(
        self, call: Call, plan: RoutePlan, work: WorkRequest, sink: Sink
    ) -> web.StreamResponse:
        last: JanusError | None = None  # made only when an attempt failed: most requests have none
        # in the work itself, not in NATS headers: a worker reads no headers then (a worker of an
        # earlier release, without the field, keeps its own upstream timeouts)
        work.deadline = time.time() + self.s.request_deadline_seconds
        # cycle through the plan: with a single deployment, a retry still lands on another worker
        # replica of the same pool (a killed worker's subscription is gone from the queue group)
        plan_targets = plan.targets
        n = len(plan_targets)
        for i in range(max(1, self.s.max_attempts) if n else 0):
            target = plan_targets[i % n]
            if last is not None:  # the attempt before failed: only that starts another
                _FALLBACKS(plan_targets[(i - 1) % n].provider, last.code or "error").inc()
            work.deployment = target.deployment
            work.provider = target.provider
            work.upstream_model = target.upstream_model
            call.model = target.model or plan.model
            work.response_model = (
                self.response_names.get(call.model, plan.response_model)
                if target.model
                else plan.response_model
            )
            sink.reset()
            box = self.bus.open_inbox(
                call.request_id if i == 0 else f"{call.request_id}_{i}", self.s.max_reply_bytes
            )
            self.active.add(box)
            try:
                reader = FrameReader(
                    box, target.provider, self.s.first_frame_timeout_seconds, self.s.stall_timeout_seconds
                )
                if self.draining:
                    raise ServiceUnavailable("the gateway is shutting down", code="shutting_down")
                await self.bus.publish(
                    subjects.work(target.provider), contract.encode(work), reply=box.subject
                )
                outcome = await self._frames(call, reader, sink)
            finally:
                self.active.discard(box)
                box.close()
            resp, err, got = outcome
            if call.by_model:
                call.usage = _add(call.usage, got)
                call.by_model[call.model] = _add(call.by_model.get(call.model, Usage()), got)
            else:  # the first attempt (usage is never changed in place, so one object serves both)
                call.usage = call.by_model[call.model] = got
            if resp is not None:
                call.ok = err is None
                return resp
            assert err is not None
            last = err
            if sink.started or not err.retryable or self.draining:
                break
            log.info("fallback", provider=target.provider, code=err.code)
        if last is None:
            last = ServiceUnavailable("the route plan has no deployments", code="no_targets")
        return await sink.fail(last)

    async def _frames(
        self, call: Call, reader: FrameReader, sink: Sink
    ) -> tuple[web.StreamResponse | None, JanusError | None, Usage]:
        """One attempt: (response when finished, error when it failed, usage produced)."""
        try:
            while True:
                try:
                    frame = await reader.next()
                except JanusError as err:
                    if err.code == REPLY_OVERFLOW:
                        # the worker answered more than the gateway holds; its frames, usage
                        # included, were dropped, but the prompt was surely processed
                        await self._cancel(call.request_id)
                        return (
                            None,
                            err,
                            Usage(prompt_tokens=call.prompt_tokens, completion_tokens=sink.chunks),
                        )
                    if reader.expect == 0:
                        return None, err, Usage()
                    # the worker took the work and went silent (or the gateway is stopping)
                    if not sink.started:
                        await self._cancel(call.request_id)
                        return None, err, Usage()
                    wait = 1.0 if self.draining else 0.0
                    return None, err, await self._after_loss(call, reader, sink, wait)
                if isinstance(frame, Chunk):
                    try:
                        await sink.chunk(frame.data, reader.ready(), frame.more)
                    except JanusError as err:  # a buffered answer past what the gateway holds
                        await self._cancel(call.request_id)
                        return None, err, Usage(prompt_tokens=call.prompt_tokens)
                elif isinstance(frame, Done):
                    call.upstream_seconds = frame.upstream_seconds
                    try:
                        return await sink.done(frame), None, frame.usage
                    except ConnectionError:
                        # the answer is complete upstream; only the final [DONE] was lost
                        call.status = 499
                        assert sink.resp is not None
                        return sink.resp, None, frame.usage
                elif isinstance(frame, Failed):
                    return None, JanusError.from_wire(frame.error), frame.usage
                elif not reader.ready():
                    await sink.idle()  # a heartbeat (or Accepted), and nothing more waiting yet
        except ConnectionError:
            # the client went away mid-stream (aiohttp raises ClientConnectionResetError on write)
            call.status = 499
            usage = await self._after_loss(call, reader, sink, self.s.cancel_wait_seconds)
            assert sink.resp is not None
            return sink.resp, ServiceUnavailable("client closed the connection", code="client_closed"), usage
