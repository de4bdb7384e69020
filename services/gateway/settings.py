"""Gateway settings; each field ``foo`` is read from ``JANUS_FOO``."""

from __future__ import annotations

from shared.settings import CommonSettings


class GatewaySettings(CommonSettings, kw_only=True):
    host: str = "127.0.0.1"  # containers set 0.0.0.0
    port: int = 8080
    jwt_secret: str = ""  # required: the service refuses to start without it
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 4096
    first_frame_timeout_seconds: float = 5.0  # the worker's Accepted must arrive within this
    stall_timeout_seconds: float = 30.0  # between frames; workers heartbeat well inside it
    max_attempts: int = 3
    route_timeout_seconds: float = 2.0
    reserve_timeout_seconds: float = 2.0
    usage_timeout_seconds: float = 2.0
    cancel_wait_seconds: float = 5.0  # after a cancel, how long to wait for the worker's usage
    request_deadline_seconds: float = 600.0  # sent to workers as Janus-Deadline
    auth_cache_size: int = 10_000
