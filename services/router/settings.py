"""The router's settings, each read from ``JANUS_<NAME>`` (see ``shared.settings``)."""

from __future__ import annotations

from shared.settings import CommonSettings


class RouterSettings(CommonSettings, kw_only=True):
    routing: str = ""  # path of the routing config (JANUS_ROUTING); empty: the built-in one
    concurrency: int = 512
    health_refresh_seconds: float = 1.0  # how often open circuits are checked for their cool-down
    # how long a gateway may reuse a plan that depends on nothing but the catalog (0: never); short,
    # so that every router replica keeps seeing a share of the traffic and a new config takes over soon
    plan_cache_seconds: float = 1.0
