"""The JSON lines every service writes: their fields, the request id bound per task, and no secret in
any of them, however deep it sits in a value."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from shared import logging as janus_logging

KEY = "sk-live-" + "A1b2C3d4" * 4
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"


@pytest.fixture
def out() -> Iterator[io.BytesIO]:
    saved = structlog.get_config()
    stream = io.BytesIO()
    janus_logging.configure("gateway", "INFO", stream=stream)
    yield stream
    structlog.configure(**saved)


def lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    raw = stream.getvalue()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


def test_a_line_carries_its_fields_the_service_level_time_and_bound_request_id(out: io.BytesIO) -> None:
    log = janus_logging.get_logger("gateway.http")
    janus_logging.bind_request(request_id="req_1")
    try:
        log.info("request", status=200, duration_ms=1.5, model=None)
        log.debug("not_written")
    finally:
        janus_logging.unbind_request("request_id")
    log.warning("after", request_id="req_own")
    first, second = lines(out)
    stamp = first.pop("timestamp")
    assert first == {
        "event": "request",
        "status": 200,
        "duration_ms": 1.5,
        "model": None,
        "request_id": "req_1",
        "service": "gateway",
        "level": "info",
    }
    # ISO 8601 in UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True) writes it
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert when.tzinfo == UTC and abs(when.timestamp() - time.time()) < 5
    assert second["request_id"] == "req_own" and second["level"] == "warning"


async def test_each_task_logs_its_own_request_id() -> None:
    saved = structlog.get_config()
    stream = io.BytesIO()
    janus_logging.configure("worker", "INFO", stream=stream)
    log = janus_logging.get_logger("worker")
    try:

        async def one(rid: str) -> None:
            janus_logging.bind_request(request_id=rid)
            await asyncio.sleep(0)  # the other task binds its own id meanwhile
            log.info("call", who=rid)
            janus_logging.unbind_request("request_id")
            log.info("after", who=rid)

        await asyncio.gather(one("req_a"), one("req_b"))
        log.info("outside")
    finally:
        structlog.configure(**saved)
    got = [(x["event"], x.get("who"), x.get("request_id")) for x in lines(stream)]
    assert sorted(got, key=str) == sorted(
        [
            ("call", "req_a", "req_a"),
            ("call", "req_b", "req_b"),
            ("after", "req_a", None),
            ("after", "req_b", None),
            ("outside", None, None),
        ],
        key=str,
    )


def test_no_secret_survives_in_any_value(out: io.BytesIO) -> None:
    log = janus_logging.get_logger("gateway")
    log.info(
        "leaky",
        plain=f"Bearer {KEY}",
        escaped=f'line one\n"quoted" {JWT}',
        nested={"headers": [{"Authorization": f"Bearer {KEY}"}]},
        error=ValueError(f"upstream refused {KEY}"),
        path=Path(f"/keys/{KEY}"),
    )
    raw = out.getvalue()
    assert KEY.encode() not in raw and JWT.encode() not in raw
    [line] = lines(out)
    assert line["plain"] == "Bearer [redacted]"
    assert line["escaped"] == 'line one\n"quoted" [redacted]'
    assert line["nested"] == {"headers": [{"Authorization": "Bearer [redacted]"}]}
    # what JSON has no type for is written as its str, scrubbed like the rest
    assert line["error"] == "upstream refused [redacted]"
    assert line["path"] == "/keys/[redacted]"


def test_an_exception_is_written_with_its_traceback_at_error_level(out: io.BytesIO) -> None:
    log = janus_logging.get_logger("metering")
    try:
        raise RuntimeError(f"boom with {KEY}")
    except RuntimeError:
        log.exception("crashed", batch=3)
    [line] = lines(out)
    assert line["level"] == "error" and line["batch"] == 3
    assert "Traceback" in line["exception"] and "RuntimeError: boom with [redacted]" in line["exception"]
    assert "exc_info" not in line
