"""The lifecycle every service shares: logging, NATS, an ops HTTP server, signals, draining.

    run(MyService)  ->  load MyService.settings_cls from the environment (a bad value: exit 2)
                        -> configure logs, warn of unknown JANUS_* variables
                        -> connect NATS -> service.start(bus)
                        -> ops server (/metrics /healthz /readyz) -> wait for SIGTERM/SIGINT
                        -> not ready -> service.stop() (stop taking work, finish in-flight
                           within the grace bound) -> drain NATS -> exit 0

``/healthz`` answers while the process's event loop runs (liveness is never tied to NATS, so a NATS
outage does not get every pod restarted); ``/readyz`` answers 200 only once ``start()`` has returned
(the gateway is listening), while NATS is connected and the service says it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Collection
from typing import ClassVar, Generic, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import metrics
from shared.bus import Bus, redact_url
from shared.catalog import ConfigError
from shared.errors import JanusError
from shared.logging import configure, get_logger
from shared.settings import NATS_DRAIN_SECONDS, CommonSettings, load_settings, unknown_variables

log = get_logger("service")

# (young, middle, old) generation thresholds once a service has started; Python's default is (700, 10, 10)
_GC_THRESHOLDS = (10_000, 20, 20)


S = TypeVar("S", bound=CommonSettings)


class Service(Generic[S]):
    """A service, generic over its settings: ``run`` loads ``settings_cls`` and hands it over typed,
    so no service narrows ``CommonSettings`` on its own."""

    name: ClassVar[str] = "service"
    default_ops_port: ClassVar[int] = 0
    settings_cls: type[S]

    def __init__(self, settings: S) -> None:
        self.settings = settings
        self.bus: Bus | None = None
        self.started = False  # start() has returned: until then the service may not be listening yet
        self.stopping = False

    async def start(self, bus: Bus) -> None:
        """Subscribe and open whatever the service serves."""
        self.bus = bus

    async def stop(self) -> None:
        """Stop taking new work and finish what is in flight (within the grace bound)."""

    def ready(self) -> bool:
        return True

    def ready_detail(self) -> dict[str, bool]:
        return {}


async def _ops_app(svc: Service[S]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": svc.name})

    async def readyz(_: web.Request) -> web.Response:
        nats_ok = svc.bus is not None and svc.bus.connected
        ok = nats_ok and svc.started and not svc.stopping and svc.ready()
        body = {
            "ready": ok,
            "nats": nats_ok,
            "started": svc.started,
            "stopping": svc.stopping,
            **svc.ready_detail(),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest())
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


def _settle_heap() -> None:
    """Take everything built at start (modules, catalog, compiled decoders) out of the cyclic GC.

    Those objects live as long as the process, yet every full collection walked all of them, and
    the default young-generation threshold ran a collection every few requests: in the benchmark
    8-12% of a service's CPU went to the collector. Frozen objects are never scanned; the larger
    threshold still collects request garbage (asyncio makes cycles) every few thousand allocations.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


async def _watch_loop_lag(interval: float = 0.5) -> None:
    """How late a timer fires is how long every task on this loop waits for the CPU or behind a
    blocking call: the latency a request cannot show on its own."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        metrics.EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - interval))


async def serve(svc: Service[S]) -> None:
    settings = svc.settings
    bus = await Bus.connect(
        settings.nats_url, svc.name, nkey_file=settings.nats_nkey_file, ca_file=settings.nats_ca_file
    )
    metrics.UP_INFO.labels(svc.name).set(1)
    ops = web.AppRunner(await _ops_app(svc), access_log=None)
    await ops.setup()
    port = settings.ops_port or svc.default_ops_port
    site = web.TCPSite(ops, settings.ops_host, port)
    await site.start()
    sockets = getattr(site._server, "sockets", None)
    bound = sockets[0].getsockname()[1] if sockets else port
    await svc.start(bus)
    _settle_heap()
    svc.started = True
    log.info("started", ops_port=bound, nats=redact_url(settings.nats_url))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    lag = loop.create_task(_watch_loop_lag())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    grace = settings.drain_grace()
    log.info("stopping", grace_seconds=grace)
    svc.stopping = True  # /readyz flips first, so load balancers stop sending work
    try:
        await asyncio.wait_for(svc.stop(), grace)
    except TimeoutError:
        log.warning("stop_grace_exceeded")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(bus.drain(), NATS_DRAIN_SECONDS)
    lag.cancel()
    await ops.cleanup()
    log.info("stopped")


def run(cls: type[Service[S]], known: Collection[str]) -> None:
    """Run the service ``cls`` until SIGTERM; ``known``: every ``JANUS_*`` name a Janus program reads
    (a variable set for another service is no typo)."""
    try:
        settings = load_settings(cls.settings_cls)
        # every service, not only gateway and metering: they all read the same shared settings, and
        # a bound the holds cannot cover should stop the rollout at its first pod
        settings.check_hold_lifetime()
    except ConfigError as exc:
        print(f"janus-{cls.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure(cls.name, settings.log_level)
    for name, closest in unknown_variables(known):
        # the name only: a value may be a secret
        log.warning("unknown_setting", variable=name, closest=closest or None)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        loop_factory = None
    try:
        svc = cls(settings)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(svc))
    except ConfigError as exc:
        log.error("config_error", error=str(exc))
        raise SystemExit(2) from None
    except JanusError as exc:
        log.error("startup_failed", error=exc.message)
        raise SystemExit(1) from None
