"""The gateway service: the HTTP server's lifecycle around the shared service shell.

Shutdown order (readiness has already flipped in ``shared.service``): stop accepting connections,
ask keep-alive connections to close after their current response, let open requests and streams
finish, then end whatever is left with an explicit error (in-band for streams), settle, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from services.gateway.apikeys import ApiKeys
from services.gateway.app import Gateway, build_app
from services.gateway.auth import Authenticator
from services.gateway.byok import ByokProbe
from services.gateway.dispatch import Dispatcher
from services.gateway.edge import Edge
from services.gateway.guard import GuardedRunner
from services.gateway.leases import LeaseBook
from services.gateway.meter import Meter
from services.gateway.settings import GatewaySettings
from services.gateway.tls import redirect_app, server_context
from shared import contract
from shared.bus import Bus
from shared.catalog import ConfigError, load_catalog, load_plans
from shared.logging import get_logger
from shared.money import PriceUnits
from shared.service import Service

log = get_logger("gateway")

# time kept back from the shutdown grace to end the remaining streams and settle them
_ABORT_RESERVE_SECONDS = 3.0


class GatewayService(Service[GatewaySettings]):
    name = "gateway"
    default_ops_port = 9100
    settings_cls = GatewaySettings

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        if not 1 <= settings.settle_bundle_max <= contract.MAX_BUNDLE:
            raise ConfigError(
                f"bad setting: JANUS_SETTLE_BUNDLE_MAX ({settings.settle_bundle_max}) must be within "
                f"1..{contract.MAX_BUNDLE} (metering refuses a longer bundle)"
            )
        if not 0 <= settings.settle_bundle_ms <= 1000:
            raise ConfigError(
                f"bad setting: JANUS_SETTLE_BUNDLE_MS ({settings.settle_bundle_ms:g}) must be within "
                "0..1000: settlements gathered longer are lost with a gateway that dies"
            )
        self.catalog = load_catalog(settings.catalog or None)
        self.plans = load_plans(settings.plans or None, self.catalog)
        self.api_keys = ApiKeys(
            ttl=settings.api_key_cache_seconds,
            negative_ttl=settings.api_key_negative_cache_seconds,
            replicas=settings.nats_replicas,
        )
        self.auth = Authenticator(settings, self.plans, api_keys=self.api_keys)
        self.edge = Edge()
        self.runner: web.AppRunner | None = None
        self.meter: Meter | None = None
        self.dispatcher: Dispatcher | None = None
        self.port = 0
        self.tls = server_context(settings)  # checked before anything starts: a bad file fails fast
        self.redirect: web.AppRunner | None = None

    async def start(self, bus: Bus) -> None:
        await super().start(bus)
        s = self.settings
        await self.auth.jwt.start()
        await self.api_keys.start(bus)
        leases = None
        if s.lease_requests > 0:
            prices = {name: PriceUnits.of(m.price) for name, m in self.catalog.model_by_name.items()}
            leases = LeaseBook(bus, prices, max_requests=s.lease_requests, idle_seconds=s.lease_idle_seconds)
            leases.start()
        self.meter = Meter(
            bus,
            s.reserve_timeout_seconds,
            settle_deadline=s.settle_deadline_seconds,
            leases=leases,
            bundle_max=s.settle_bundle_max,
            bundle_seconds=s.settle_bundle_ms / 1000.0,
        )
        names = {m.id: m.name_in_responses for m in self.catalog.models}
        self.dispatcher = Dispatcher(bus, s, self.meter, names)
        byok = ByokProbe()
        await byok.start(bus, s.nats_replicas)
        gw = Gateway(s, bus, self.catalog, self.auth, self.meter, self.dispatcher, byok)
        # the same bounds on every listener: the plain redirect one faces the same clients
        limits: dict[str, Any] = dict(
            header_timeout=s.header_timeout_seconds,
            access_log=None,
            handle_signals=False,
            max_line_size=s.max_header_bytes,
            max_field_size=s.max_header_bytes,
            max_headers=s.max_headers,
            keepalive_timeout=s.keepalive_timeout_seconds,
            lingering_time=s.lingering_seconds,
        )
        self.runner = GuardedRunner(build_app(gw, self.edge), **limits)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.host, s.port, backlog=1024, ssl_context=self.tls)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else s.port
        log.info("listening", host=s.host, port=self.port, tls=self.tls is not None)
        if s.http_redirect_port:
            self.redirect = GuardedRunner(redirect_app(self.port), **limits)
            await self.redirect.setup()
            await web.TCPSite(self.redirect, s.host, s.http_redirect_port).start()
            log.info("redirecting", host=s.host, port=s.http_redirect_port, to=self.port)

    async def _wait_idle(self, until: float) -> bool:
        if self.edge.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.edge.idle.wait(), max(0.0, until - time.monotonic()))
        return self.edge.in_flight == 0

    async def stop(self) -> None:
        runner = self.runner
        if runner is None:
            return
        start = time.monotonic()
        grace = self.settings.drain_grace()
        if self.redirect is not None:
            await self.redirect.cleanup()
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()
        idle = await self._wait_idle(start + max(grace - _ABORT_RESERVE_SECONDS, grace / 2))
        if not idle and self.dispatcher is not None:
            log.warning("aborting_requests", count=self.edge.in_flight)
            self.dispatcher.abort_all()
            await self._wait_idle(time.monotonic() + 2.0)
        if self.meter is not None:
            await self.meter.close()
            await self.meter.drain(within=max(0.5, start + grace - time.monotonic() - 0.5))
        await runner.cleanup()
        await self.auth.jwt.close()
