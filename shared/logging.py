"""structlog, JSON lines on stdout, the request id bound per request.

Secrets never reach a log line: tokens, keys and prompt text are not logged above DEBUG, and
``redact`` scrubs anything shaped like a bearer token or an ``sk-`` key that slips into a value.

The gateway writes one line per request at INFO, so the chain a line goes through is built for
that: one processor does what structlog's stock ones would do in five (bound fields, level,
timestamp, exception, redaction), the line is encoded once as bytes, and the timestamp's date and
time of day are formatted once a second. Fields bound with ``bind_request`` live in one context
variable, so adding them to a line is one dict read instead of a walk over every context variable
of the task (``structlog.contextvars`` keeps one variable per key). The line is the same JSON.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import msgspec
import structlog
from structlog.processors import format_exc_info

# a value JSON has no type for (an exception, a path) is written as its ``str``
_json = msgspec.json.Encoder(enc_hook=str)
_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{8,}|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)")
_SECRET_BYTES = re.compile(_SECRET.pattern.encode())
_NO_FIELDS: dict[str, Any] = {}

# the fields bound to what the current task logs (its request id); each task works on its own copy
_fields: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "janus_log_fields", default=_NO_FIELDS
)
_service = ""
_second = -1
_second_text = ""


def redact(text: str) -> str:
    return _SECRET.sub("[redacted]", text)


def _timestamp() -> str:
    """Now in UTC as ISO 8601 with microseconds and ``Z``, as structlog's ``TimeStamper`` writes it."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"


def _prepare(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Bound fields (the line's own win), service, level and timestamp; an exception as text."""
    for k, v in _fields.get().items():
        event.setdefault(k, v)
    event.setdefault("service", _service)
    event["level"] = "error" if method == "exception" else method
    event["timestamp"] = _timestamp()
    if "exc_info" in event:
        event = format_exc_info(logger, method, event)
    return event


def _render(_: Any, __: str, event: MutableMapping[str, Any]) -> bytes:
    """The line as JSON, with anything shaped like a key or a token scrubbed wherever it is: in any
    value, nested or not, and in what ``str`` made of an object. A secret's characters are ones
    JSON writes as they are, so it reads the same in the line as in the value."""
    line = _json.encode(event)
    if b"sk-" in line or b"eyJ" in line:
        line = _SECRET_BYTES.sub(b"[redacted]", line)
    return line


def configure(service: str, level: str = "INFO", stream: BinaryIO | None = None) -> None:
    """JSON lines at ``level`` and above, to ``stream`` (stdout unless given), each flushed as written."""
    global _service
    _service = service
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stdout, level=lvl, format="%(message)s")
    structlog.configure(
        processors=[_prepare, _render],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.BytesLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def bind_request(**fields: Any) -> None:
    """Add ``fields`` to every line the current task (and tasks it starts) logs from now on."""
    bound = _fields.get()
    _fields.set({**bound, **fields} if bound else fields)


def unbind_request(*keys: str) -> None:
    bound = _fields.get()
    _fields.set({k: v for k, v in bound.items() if k not in keys} or _NO_FIELDS)
