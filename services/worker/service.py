"""The provider worker: serves ``subjects.work(provider)`` for its providers, one queue group each.

Per WorkRequest: the call as its own task (bounded by ``max_concurrency``: beyond it the work is
refused as retryable so the gateway moves on at once), ``Accepted`` if nothing else went out within
``accept_delay_seconds``, heartbeats while the provider is silent, chunks, and exactly one terminal
frame - also when the call raises, is cancelled (``subjects.WORK_CANCEL``, broadcast) or outlives
its deadline.
A failed or cancelled call still reports the usage produced, so metering charges what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from services.worker import policy
from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext
from services.worker.call import Call, failed_frame
from services.worker.health import HealthTracker
from services.worker.keys import ProviderKeys
from services.worker.replier import Replier
from services.worker.settings import WorkerSettings
from services.worker.transport import Transport
from shared import metrics, prompt, subjects
from shared.bus import Bus, Msg
from shared.byok import ByokStore, Sealer
from shared.catalog import Catalog, ConfigError, Deployment, Provider, load_catalog
from shared.contract import (
    Done,
    Failed,
    HealthReport,
    Usage,
    WorkRequest,
    cancel_decoder,
    encode,
    work_decoder,
    work_id_decoder,
)
from shared.errors import (
    Cancelled,
    InvalidRequest,
    JanusError,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamAuthFailed,
    UpstreamClientError,
    UpstreamError,
    UpstreamTimeout,
)
from shared.logging import bind_request, get_logger, unbind_request
from shared.openai_request import ChatRequest, EmbeddingsRequest, decode_chat, decode_embeddings
from shared.service import Service

log = get_logger("worker")

# label children resolved once per provider (and model, kind) instead of on every call
_IN_FLIGHT = metrics.children(metrics.WORKER_IN_FLIGHT)
_CALLS = metrics.children(metrics.UPSTREAM_CALLS)
_UPSTREAM_SECONDS = metrics.children(metrics.UPSTREAM_DURATION)
_TOKENS = metrics.children(metrics.TOKENS)


class WorkerService(Service[WorkerSettings]):
    name: ClassVar[str] = "worker"
    default_ops_port: ClassVar[int] = 9102
    settings_cls = WorkerSettings

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(settings)
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.catalog: Catalog = load_catalog(settings.catalog or None)
        pace = settings.fake_pace()
        for d in (d for p in self.catalog.providers if p.kind == "fake" for d in p.deployments):
            d.options = {**d.options, **pace}
        ids = settings.providers() or [p.id for p in self.catalog.providers]
        self.providers: dict[str, Provider] = {}
        self.adapters: dict[str, Any] = {}
        for pid in ids:
            provider = self.catalog.provider_by_id.get(pid)
            if provider is None:
                raise ConfigError(f"JANUS_WORKER_PROVIDERS: unknown provider {pid!r}")
            cls = ADAPTERS.get(provider.kind)
            if cls is None:
                raise ConfigError(f"provider {pid!r}: no adapter for kind {provider.kind!r}")
            self.providers[pid] = provider
            self.adapters[pid] = cls()
        # by variable name, from the environment or a mounted Secret re-read on rotation
        self.keys = ProviderKeys(list(self.providers.values()), settings.provider_keys_dir)
        # an upstream answer larger than the worker may send on is refused as it arrives
        self.transport = Transport(
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            pool_size=settings.pool_size,
            max_body_bytes=settings.max_response_bytes,
        )
        self.health: HealthTracker | None = None
        self.calls: dict[str, set[asyncio.Task[Any]]] = {}
        self.in_flight = 0
        # per provider and per deployment: a slow upstream fills its own share, never another's
        self.caps = {
            pid: settings.provider_cap(p.max_concurrency, len(self.providers))
            for pid, p in self.providers.items()
        }
        self.deployment_caps = {
            d.id: d.max_concurrency
            for p in self.providers.values()
            for d in p.deployments
            if d.max_concurrency
        }
        # which provider each served deployment belongs to: a label names only these (bounded)
        self.deployment_provider = {d.id: p.id for p in self.providers.values() for d in p.deployments}
        # what a model label may say: the catalog's names for its models, in requests and responses
        self.model_labels = {*self.catalog.model_by_name, *(m.name_in_responses for m in self.catalog.models)}
        self.provider_busy: dict[str, int] = dict.fromkeys(self.caps, 0)
        self.deployment_busy: dict[str, int] = dict.fromkeys(self.deployment_caps, 0)
        # calls in flight per served deployment, capped or not: the gauges read these when scraped
        self.deployment_flight: dict[str, int] = dict.fromkeys(self.deployment_provider, 0)
        self._idle = asyncio.Event()  # set whenever no call is in flight (for a graceful stop)
        self._work_subs: list[Any] = []
        self._started = False
        self.byok: ByokStore | None = None  # users' own provider keys, when JANUS_BYOK_KEY is set

    # --------------------------------------------------------------------------------- lifecycle
    async def start(self, bus: Bus) -> None:
        await super().start(bus)
        await self.transport.start()
        self.keys.start(self.settings.provider_keys_refresh_seconds)
        if self.settings.byok_key:
            sealer = Sealer.from_key(self.settings.byok_key)
            self.byok = await ByokStore.open(bus, sealer, create=False)

        async def publish_health(report: HealthReport) -> None:
            await bus.publish(subjects.HEALTH, encode(report))

        self.health = HealthTracker(publish_health, self.settings.health_interval_seconds)
        self.health.start()
        # cancels are heard by every worker (no queue group); subscribe before taking work
        await bus.serve(subjects.WORK_CANCEL, self._on_cancel, concurrency=64)
        cap = self.settings.max_concurrency
        for pid in self.providers:
            metrics.WORKER_CAPACITY.labels(pid).set(self.caps[pid])
            # read when scraped, not moved twice per call
            metrics.WORKER_IN_FLIGHT.labels(pid).set_function(_reader(self.provider_busy, pid))
            for d in self.providers[pid].deployments:
                metrics.WORKER_DEPLOYMENT_CAPACITY.labels(pid, d.id).set(
                    min(self.deployment_caps.get(d.id, self.caps[pid]), self.caps[pid])
                )
                metrics.WORKER_DEPLOYMENT_IN_FLIGHT.labels(pid, d.id).set_function(
                    _reader(self.deployment_flight, d.id)
                )
            # the subscription admits a little more than the capacity, so that excess work is
            # refused at once (and the gateway falls back) rather than left waiting unanswered
            sub = await bus.serve(
                subjects.work(pid),
                self._on_work,
                queue=subjects.work_queue(pid),
                concurrency=self.caps[pid] + 64,
            )
            self._work_subs.append(sub)
        await bus.flush()
        self._started = True
        log.info(
            "worker_serving",
            providers=self.caps,
            deployments=self.deployment_caps,
            capacity=cap,
            worker=self.worker_id,
        )

    async def stop(self) -> None:
        # stop taking work first; in-flight calls finish (the lifecycle bounds the wait)
        for sub in self._work_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.in_flight:
            self._idle.clear()
            await self._idle.wait()
        if self.health is not None:
            await self.health.stop()
        await self.keys.stop()
        await self.transport.close()

    def ready(self) -> bool:
        return self._started

    def ready_detail(self) -> dict[str, bool]:
        return {"subscribed": self._started}

    # ---------------------------------------------------------------------------------- handlers
    async def _on_cancel(self, msg: Msg) -> None:
        try:
            request_id = cancel_decoder.decode(msg.data).request_id
        except msgspec.DecodeError:
            return
        for task in self.calls.get(request_id, ()):
            task.cancel()

    async def _on_work(self, msg: Msg) -> None:
        if not msg.reply:
            return
        assert self.bus is not None
        r = Replier(self.bus, msg.reply)
        try:
            req = work_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            # the work as a whole is unreadable (a gateway of another release, or a neighbour sending
            # junk): its request id, where it can be read, ties this refusal to the request logged
            log.warning("work_undecodable", request_id=_request_id_of(msg), error=str(exc)[:200])
            await r.send(Failed(seq=r.next(), error=InvalidRequest("malformed work request").to_wire()))
            return
        full = self._full(req)
        if full or self.stopping:
            # retryable: the gateway moves on to another replica or the plan's next deployment
            err = ServiceUnavailable(
                f"the provider worker is at capacity for {full or 'new work'}", code="worker_busy"
            )
            await r.send(Failed(seq=r.next(), error=err.to_wire()))
            return
        task = asyncio.current_task()
        assert task is not None
        tasks = self.calls.setdefault(req.request_id, set())
        tasks.add(task)
        self.in_flight += 1
        provider_busy, deployment_busy = self.provider_busy, self.deployment_busy
        provider, deployment = req.provider, req.deployment
        # only keys the worker counts (its providers', its deployments') are moved
        provider_held = provider in provider_busy
        if provider_held:
            provider_busy[provider] += 1
        deployment_held = deployment in deployment_busy
        if deployment_held:
            deployment_busy[deployment] += 1
        # a provider this worker serves is counted in provider_busy, which its gauge reads; work
        # naming another is counted under "unknown" (a label only names a served provider)
        unknown = provider not in self.providers
        if unknown:
            _IN_FLIGHT("unknown").inc()
        served = self._served_deployment(req)
        if served:
            self.deployment_flight[served] += 1
        bind_request(request_id=req.request_id)
        try:
            await self._run(req, r, msg.headers or {}, task, served)
        finally:
            unbind_request("request_id")
            tasks.discard(task)
            if not tasks:
                self.calls.pop(req.request_id, None)
            self.in_flight -= 1
            if provider_held:
                provider_busy[provider] -= 1
            if deployment_held:
                deployment_busy[deployment] -= 1
            if unknown:
                _IN_FLIGHT("unknown").dec()
            if served:
                self.deployment_flight[served] -= 1
            if not self.in_flight:
                self._idle.set()

    def _full(self, req: WorkRequest) -> str:
        """What is at its cap for this work ('' when there is room): the pod, provider or deployment."""
        if self.in_flight >= self.settings.max_concurrency:
            return "this worker"
        if self.provider_busy.get(req.provider, 0) >= self.caps.get(req.provider, 1 << 30):
            return f"provider {req.provider!r}"
        if self.deployment_busy.get(req.deployment, 0) >= self.deployment_caps.get(req.deployment, 1 << 30):
            return f"deployment {req.deployment!r}"
        return ""

    def _served_deployment(self, req: WorkRequest) -> str:
        """The work's deployment when this worker serves it under the work's provider, else ''; only
        such an id becomes a label, whatever a caller on the bus writes into the work."""
        return req.deployment if self.deployment_provider.get(req.deployment) == req.provider else ""

    async def _user_key(self, req: WorkRequest) -> str:
        """The caller's own key for this provider (bring your own key); never logged."""
        if not self.catalog.takes_user_keys(req.provider):
            # only a gateway that ignores the catalog asks this: a keyless provider would serve free
            raise PermissionDenied(
                f"provider {req.provider!r} does not take users' own keys", code="byok_not_supported"
            )
        key = await self.byok.get(req.user, req.provider) if self.byok is not None else None
        if not key:
            # the gateway saw a key moments ago; without it the call must not run on ours
            raise PermissionDenied(
                f"no key of your own is registered for provider {req.provider!r}", code="byok_missing"
            )
        return key

    def _context(
        self, req: WorkRequest, user_key: str | None = None
    ) -> tuple[Provider, Deployment, Any, ChatContext]:
        provider = self.providers.get(req.provider)
        pair = self.catalog.deployment_by_id.get(req.deployment)
        if provider is None or pair is None or pair[0].id != provider.id:
            raise ServiceUnavailable(
                f"this worker does not serve deployment {req.deployment!r}", code="unknown_deployment"
            )
        deployment = pair[1]
        key = user_key or self.keys.get(deployment.id)
        if deployment.api_key_env and not key:
            # retryable: another deployment of the plan may be configured
            raise UpstreamError(
                f"deployment {deployment.id!r} has no API key configured", code="upstream_auth"
            )
        chat = req.kind == "chat"
        model = None if chat else self.catalog.model(req.response_model)  # an embedding's dimensions
        # the request's one decode here, with the gateway's decoder, so adapters translate exactly what
        # the gateway checked and priced; a body it would refuse is refused here the same way
        request: ChatRequest | EmbeddingsRequest
        if chat:
            request = decode_chat(req.body)
            # a gateway that sent no estimate: the same one, made here
            prompt_tokens = req.prompt_tokens or prompt.estimate_request(request)
        else:
            request, prompt_tokens = decode_embeddings(req.body), 0
        policy.apply(request, req.user)
        ctx = ChatContext(
            provider=provider,
            deployment=deployment,
            upstream_model=req.upstream_model,
            request=request,
            raw=req.body,
            stream=req.stream and chat,
            api_key=key,
            request_id=req.request_id,
            max_output_tokens=req.max_output_tokens or None,
            dimensions=model.dimensions if model is not None else None,
            prompt_tokens=prompt_tokens,
        )
        return provider, deployment, self.adapters[provider.id], ctx

    async def _run(
        self, req: WorkRequest, r: Replier, headers: dict[str, str], task: asyncio.Task[Any], served: str
    ) -> None:
        """The call, in ``task``: its terminal frame sent whatever happens, then accounted."""
        call: Call | None = None
        terminal: Done | Failed
        r.start_heartbeats(
            self.settings.heartbeat_seconds, self.settings.accept_delay_seconds, self.worker_id
        )
        deadline = _Deadline(task, _remaining(req, headers))
        try:
            try:
                try:
                    user_key = await self._user_key(req) if req.byok else None
                    _, _, adapter, ctx = self._context(req, user_key)
                    call = Call(req, ctx, adapter, self.transport, r)
                    terminal = await call.execute()
                    if len(terminal.body) > self.settings.max_response_bytes:
                        terminal = _too_large(call, terminal, self.settings.max_response_bytes)
                finally:
                    deadline.close()
            except asyncio.CancelledError:
                # the deadline's own cancel was taken back by close(): one still counted came from
                # elsewhere (the gateway's cancel, a stopping worker), and that one wins
                err: JanusError
                if deadline.expired and not task.cancelling():
                    err = _past_deadline()
                else:
                    task.uncancel()
                    err = Cancelled("the request was cancelled")
                terminal = failed_frame(call, err)
            except TimeoutError:
                terminal = failed_frame(call, _past_deadline())
            except JanusError as exc:
                if req.byok and isinstance(exc, UpstreamAuthFailed):
                    # the caller's own key was refused: theirs to fix, and no sign of our deployment's health
                    exc = UpstreamClientError(
                        f"provider {req.provider!r} refused the API key you registered for it "
                        f"(PUT /v1/byok/{req.provider} replaces it): {exc.message}",
                        status=401,
                        code="byok_key_rejected",
                    )
                terminal = failed_frame(call, exc)
            except Exception:
                log.exception("call_crashed", provider=req.provider, deployment=req.deployment)
                terminal = failed_frame(call, JanusError("internal error in the provider worker"))
        finally:
            await r.stop_heartbeats()
        try:
            await r.finish(terminal)
        except PayloadTooLarge as exc:
            # a frame the bus still refuses (a large body goes in slices, so this takes a server
            # configured with a tiny max_payload): the client gets a clear error instead, and the
            # usage the provider reported is still settled
            usage = terminal.usage
            terminal = failed_frame(
                call,
                PayloadTooLarge(
                    f"the response is too large to deliver: {exc.message}", code="message_too_large"
                ),
            )
            terminal.usage, terminal.seq = usage, r.next()
            await r.send(terminal)
        self._account(req, call, terminal, served)

    def _account(self, req: WorkRequest, call: Call | None, terminal: Done | Failed, served: str) -> None:
        """Metrics and deployment health for one call; ``served``: its deployment as a label may
        name it (``_served_deployment``), else ''."""
        provider = req.provider if req.provider in self.providers else "unknown"
        usage: Usage = terminal.usage
        if usage.prompt_tokens or usage.completion_tokens:
            # the work names the model: a label only names one of the catalog's (bounded)
            model = req.response_model if req.response_model in self.model_labels else metrics.OTHER
            if usage.prompt_tokens:
                _TOKENS(provider, model, "input").inc(usage.prompt_tokens)
            if usage.completion_tokens:
                _TOKENS(provider, model, "output").inc(usage.completion_tokens)
            if usage.cached_tokens:
                _TOKENS(provider, model, "cached").inc(usage.cached_tokens)
            if usage.reasoning_tokens:
                _TOKENS(provider, model, "reasoning").inc(usage.reasoning_tokens)
        if call is None:
            return
        seconds = terminal.upstream_seconds
        _UPSTREAM_SECONDS(provider).observe(seconds)
        _CALLS(provider, served or "unknown", "ok" if isinstance(terminal, Done) else "error").inc()
        health = self.health
        if isinstance(terminal, Done):
            if health is not None:
                health.record(req.deployment, provider, seconds)
            return
        err = JanusError.from_wire(terminal.error)
        error_type = err.code or err.kind
        metrics.UPSTREAM_ERRORS.labels(provider, error_type).inc()
        # log once, here, at the error's own level
        getattr(log, err.log_level)(
            "call_failed",
            provider=provider,
            deployment=req.deployment,
            kind=err.kind,
            code=err.code,
            status=err.http_status,
            produced=terminal.produced,
        )
        if health is not None and err.blames_deployment:
            health.record(req.deployment, provider, seconds, error=error_type, retryable=err.retryable)


def _past_deadline() -> JanusError:
    return UpstreamTimeout("the request's deadline passed", code="deadline_exceeded")


class _Deadline:
    """Cancels a call's task once the gateway's deadline passes (``seconds`` from now; None: no
    deadline). What ``asyncio.timeout`` does for the worker, with one loop timer and a flag instead of
    its state machine, entered and left around every call (about 150 bytecodes a call; the worker
    ran 2.9 % fewer instructions a request without it, by ``make bench-instructions``)."""

    __slots__ = ("_handle", "_task", "expired")

    def __init__(self, task: asyncio.Task[Any], seconds: float | None) -> None:
        self._task = task
        self.expired = False
        self._handle = (
            asyncio.get_running_loop().call_later(seconds, self._expire) if seconds is not None else None
        )

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def close(self) -> None:
        """No expiry from now on; one that happened has its cancel taken back (``uncancel``), as
        ``asyncio.timeout`` does, whether the call raised it or not."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired:
            self._task.uncancel()


def _reader(counts: dict[str, int], key: str) -> Callable[[], float]:
    """What a gauge reads when scraped: ``counts[key]`` as it is then."""
    return lambda: counts.get(key, 0)


def _request_id_of(msg: Msg) -> str:
    """The request id of a work message that does not decode as a whole: its own field, else the
    ``Janus-Request-Id`` header a gateway of an earlier release sent."""
    try:
        request_id = work_id_decoder.decode(msg.data).request_id
    except msgspec.DecodeError:
        request_id = ""
    return request_id[:100] or (msg.headers or {}).get(subjects.H_REQUEST_ID, "")[:100]


def _remaining(req: WorkRequest, headers: dict[str, str]) -> float | None:
    """Seconds left before the gateway's deadline (unix seconds: the work's own, else the
    ``Janus-Deadline`` header a gateway of an earlier release sent), if it sent one."""
    if req.deadline:
        return max(0.0, req.deadline - time.time())
    raw = headers.get(subjects.H_DEADLINE)
    if not raw:
        return None
    try:
        return max(0.0, float(raw) - time.time())
    except ValueError:
        return None


def _too_large(call: Call, done: Done, limit: int) -> Failed:
    """A Failed frame in place of an answer over ``limit`` bytes, still carrying its usage (the
    provider did the work)."""
    mib = 1024 * 1024
    failed = failed_frame(
        call,
        PayloadTooLarge(
            f"the answer is {len(done.body) / mib:.1f} MiB, over this service's limit of {limit / mib:.1f} "
            "MiB; send less per request (for embeddings: fewer inputs, or encoding_format=base64, about "
            "a quarter the size of floats)",
            code="response_too_large",
        ),
    )
    failed.usage = done.usage
    return failed
