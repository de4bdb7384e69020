"""The gateway's table of callers' last known credit pools: the tightest pool's fraction, the six
headers, and a bound on how many callers it remembers."""

from __future__ import annotations

import pytest

from services.gateway.credits import QUIET_SECONDS, Credits, CreditView, request_rate_headers
from shared.contract import PoolState, RequestRate
from shared.errors import ServiceUnavailable


def pools(session_left: int, weekly_left: int) -> list[PoolState]:
    return [
        PoolState("session", 1000, session_left, 1775203200.2),
        PoolState("weekly", 10_000, weekly_left, 0),
    ]


def test_the_tightest_pool_is_the_fraction_and_the_headers_are_the_documents() -> None:
    view = CreditView(pools(500, 1000))
    assert view.fraction == 0.1  # the weekly pool has 10% left, the session 50%
    assert view.headers == {
        "X-RateLimit-Session-Limit-Credits": "1000",
        "X-RateLimit-Session-Remaining-Credits": "500",
        "X-RateLimit-Session-Reset": "2026-04-03T08:00:01Z",
        "X-RateLimit-Weekly-Limit-Credits": "10000",
        "X-RateLimit-Weekly-Remaining-Credits": "1000",
        "X-RateLimit-Weekly-Reset": "1970-01-01T00:00:00Z",
    }


def test_the_table_forgets_the_least_recently_used_caller_first() -> None:
    credits = Credits(bus=None, timeout=1.0, max_users=2)  # type: ignore[arg-type]
    for user in ("a", "b"):
        credits.remember(user, "pro", pools(1, 1))
    assert credits.remember("a", "pro", pools(2, 2)) is not None  # "a" is now the most recent
    credits.remember("c", "pro", pools(3, 3))
    assert len(credits._views) == 2
    assert ("b", "pro") not in credits._views and ("a", "pro") in credits._views
    assert credits.remember("d", "pro", []) is None  # an answer without pools changes nothing


class SilentMetering:
    """A bus on which metering never answers."""

    def __init__(self) -> None:
        self.asked = 0

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        self.asked += 1
        raise ServiceUnavailable("janus.meter.usage did not answer", code="bus_timeout")


async def test_unseen_callers_do_not_each_wait_for_a_silent_metering() -> None:
    now = [100.0]
    bus = SilentMetering()
    credits = Credits(bus, timeout=2.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert await credits.view("a", "pro") is None and bus.asked == 1
    assert await credits.view("b", "pro") is None and bus.asked == 1  # within the quiet moment
    now[0] += QUIET_SECONDS
    assert await credits.view("c", "pro") is None and bus.asked == 2  # asked again after it


@pytest.mark.parametrize(
    ("reset", "text"),
    [(0, "0s"), (1, "1s"), (59, "59s"), (60, "1m0s"), (61, "1m1s"), (3600, "1h0m0s"), (3725, "1h2m5s")],
)
def test_reset_header_is_a_duration_like_openais(reset: int, text: str) -> None:
    h = request_rate_headers(RequestRate(limit=5, remaining=2, reset=reset))
    assert h == {
        "X-RateLimit-Limit-Requests": "5",
        "X-RateLimit-Remaining-Requests": "2",
        "X-RateLimit-Reset-Requests": text,
    }


def test_an_overdrawn_pool_or_window_shows_zero_remaining() -> None:
    view = CreditView(pools(-5, 0))
    assert view.headers["X-RateLimit-Session-Remaining-Credits"] == "0"
    assert view.headers["X-RateLimit-Weekly-Remaining-Credits"] == "0"
    assert view.fraction == 0.0
    h = request_rate_headers(RequestRate(limit=5, remaining=-1, reset=1))
    assert h["X-RateLimit-Remaining-Requests"] == "0"
