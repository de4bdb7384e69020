"""The ``/v1/usage`` and ``/v1/usage/daily`` documents, rendered from metering's typed answers.

Metering owns the figures; how they are shown to a client (ISO times, what remains, a map by name)
is the edge's business, like the ``X-RateLimit-*`` headers drawn from the same pools.
"""

from __future__ import annotations

import time

import msgspec

from services.gateway.credits import iso
from shared.contract import DayUsage, PoolUsage, QuotaUsage, TallyRow, UsageReply, UsageReport

_json = msgspec.json.Encoder()


def _pool(p: PoolUsage) -> dict[str, object]:
    return {
        "limit": p.limit,
        "used": p.used,
        "reserved": p.reserved,
        "remaining": max(0, p.limit - p.used - p.reserved),
        "reset": iso(p.reset),
    }


def _quota(q: QuotaUsage) -> dict[str, object]:
    return {
        "limit": q.limit,
        "used": q.used,
        "reserved": q.reserved,
        "remaining": None if q.limit is None else max(0, q.limit - q.used - q.reserved),
    }


def _tallies(rows: list[TallyRow]) -> dict[str, object]:
    return {
        r.name: {
            "credits": r.credits,
            "requests": r.requests,
            "input_tokens": r.input_tokens,
            "output_tokens": r.output_tokens,
        }
        for r in rows
    }


def render(r: UsageReport) -> bytes:
    return _json.encode(
        {
            "object": "usage",
            "plan": r.plan,
            "unit": "credits",
            "session": {**_pool(r.session), "active": r.session_active},
            "weekly": _pool(r.weekly),
            "monthly_tokens": {
                "input": _quota(r.month_input),
                "output": _quota(r.month_output),
                "reset": iso(r.month_reset),
            },
            "week": {
                "start": iso(r.week_start),
                "by_model": _tallies(r.by_model),
                "by_bot": _tallies(r.by_bot),
            },
        }
    )


def _day(d: DayUsage) -> dict[str, object]:
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime(d.day * 86400)),
        "credits": sum(r.credits for r in d.by_model),
        "requests": sum(r.requests for r in d.by_model),
        "input_tokens": sum(r.input_tokens for r in d.by_model),
        "output_tokens": sum(r.output_tokens for r in d.by_model),
        "by_model": _tallies(d.by_model),
        "by_bot": _tallies(d.by_bot),
    }


def usage_body(reply: UsageReply) -> bytes:
    """The document for ``reply``: rendered from its typed answer, or as a previous release's
    metering (which sends none) built it."""
    if reply.report is not None:
        return render(reply.report)
    if reply.daily is not None:
        days = [_day(d) for d in reply.daily]
        return _json.encode({"object": "usage.daily", "unit": "credits", "days": len(days), "data": days})
    return reply.body
