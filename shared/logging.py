"""structlog, JSON lines on stdout, the request id bound per request through contextvars.

Secrets never reach a log line: tokens, keys and prompt text are not logged above DEBUG, and
``redact`` scrubs anything shaped like a bearer token or an ``sk-`` key that slips into a value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

_json = msgspec.json.Encoder()
_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)")


def _serialize(obj: Any, **_: Any) -> str:
    # structlog passes ``default=``; msgspec takes ``enc_hook``, so wrap it
    return _json.encode(obj).decode()


def redact(text: str) -> str:
    return _SECRET.sub("[redacted]", text)


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if isinstance(v, str) and ("sk-" in v or "eyJ" in v):
            event[k] = redact(v)
    return event


def _stringify(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if not isinstance(v, (str, int, float, bool, type(None), list, dict)):
            event[k] = str(v)
    return event


def configure(service: str, level: str = "INFO") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stdout, level=lvl, format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            _stringify,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


bind_request = structlog.contextvars.bind_contextvars
unbind_request = structlog.contextvars.unbind_contextvars
