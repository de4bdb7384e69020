"""Budget windows as pure arithmetic on integer UTC seconds.

No reset job exists: every window is evaluated when a request arrives. Times are whole seconds since
the epoch (UTC has no daylight saving, so a week is always 604800 s), which makes every announced
reset an exact second: the pool is new at precisely the instant ``*_end`` returns.

- session: rolling. It opens at the first admitted request after the previous session expired and
  lasts ``hours``; a closed session is stored as start 0.
- week: starts at ``reset_weekday`` (0 = Monday) ``reset_time`` (HH:MM) UTC.
- month: the calendar month, UTC.
"""

from __future__ import annotations

import datetime as dt
import math

WEEK = 7 * 86400
# 1970-01-05 was the first Monday of the epoch
_FIRST_MONDAY = 4 * 86400


def now_s(now: float) -> int:
    """A clock reading as the whole second it falls in."""
    return math.floor(now)


def session_length(hours: float) -> int:
    return max(1, round(hours * 3600))


def session_expired(start: int, length: int, now: int) -> bool:
    """True when no session is open at ``now`` (never opened, or ``length`` seconds have passed)."""
    return start <= 0 or now >= start + length


def session_end(start: int, length: int, now: int) -> int:
    """When the session resets: the open session's end, or the end of the one a request now opens."""
    return (now if session_expired(start, length, now) else start) + length


def parse_reset_time(hhmm: str) -> int:
    """``"HH:MM"`` as seconds after midnight; raises ValueError on anything else."""
    hh, sep, mm = hhmm.partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit():
        raise ValueError(f"reset_time must be HH:MM, got {hhmm!r}")
    h, m = int(hh), int(mm)
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"reset_time out of range: {hhmm!r}")
    return h * 3600 + m * 60


def week_start(now: int, reset_weekday: int = 0, reset_seconds: int = 0) -> int:
    """The latest weekly reset at or before ``now``."""
    anchor = _FIRST_MONDAY + reset_weekday * 86400 + reset_seconds
    return anchor + ((now - anchor) // WEEK) * WEEK


def week_end(now: int, reset_weekday: int = 0, reset_seconds: int = 0) -> int:
    return week_start(now, reset_weekday, reset_seconds) + WEEK


def month_start(now: int) -> int:
    d = dt.datetime.fromtimestamp(now, dt.UTC)
    return int(dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC).timestamp())


def month_end(now: int) -> int:
    d = dt.datetime.fromtimestamp(now, dt.UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp())


def iso(ts: int) -> str:
    """``2026-04-03T10:00:00Z``: the form the rate-limit headers and /v1/usage carry.

    Window bounds are whole seconds, so nothing is rounded here. The gateway formats the headers
    from a reset that may carry a fraction and rounds it up; a stated reset is never early.
    """
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_admit(start: int, count: int, limit: int, length: int, now: int) -> tuple[bool, int, int]:
    """One request against a request-rate window: (admitted, window start, count after it).

    The window is rolling like the session: it opens at the first request after the previous one
    expired and lasts ``length`` seconds, and at most ``limit`` requests are admitted in it. A refused
    request leaves the window as it was (it is not counted). Exact, and two integers of state; the
    cost of that is the fixed window's edge: two full windows back to back can admit ``2 * limit``
    within ``length`` seconds, never more.
    """
    if session_expired(start, length, now):
        start, count = now, 0
    if count >= limit:
        return False, start, count
    return True, start, count + 1


def rate_reset(start: int, length: int, now: int) -> int:
    """Whole seconds from ``now`` until the open window ends and the full limit is available again
    (at least 1 while a window is open; 0 when none is)."""
    return 0 if session_expired(start, length, now) else start + length - now
