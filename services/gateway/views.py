"""Read-only views beyond ``/v1/usage``: the caller's daily history and the operator overview.

    GET /v1/me                    who the token says the caller is: user, email, plan, whether it is
                                  an API key, whether it carries the operator role
    GET /v1/usage/daily?days=30   the caller's spend per UTC day (1-90 days, default 30), by model
                                  and by X-Bot-ID; answered by metering from its daily aggregates
    GET /v1/admin/overview        operators only (a JWT whose roles name ``admin_role``):
                                  every deployment's health and circuit state (a router's view),
                                  this gateway replica's request, error and fallback counts by
                                  provider, and this week's top spenders (metering's scan)

The overview's user ids come from metering's records, never from Prometheus: metrics carry no user
label. Fallback and error counts are this replica's since it started (fleet-wide rates are the
Grafana dashboard's ``janus_fallbacks_total`` / ``janus_http_requests_total`` panels).
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from services.gateway.auth import Authenticator
from services.gateway.dispatch import Call
from services.gateway.edge import CALL
from services.gateway.usage import usage_body
from shared import contract, metrics, subjects
from shared.bus import Bus
from shared.errors import InvalidRequest, PermissionDenied

_JSON = "application/json"
MAX_DAYS = 90
_json = msgspec.json.Encoder()
_decode_doc = msgspec.json.Decoder()


def _days(request: web.Request) -> int:
    raw = request.query.get("days", "30")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
        raise InvalidRequest(
            f"'days' must be a whole number from 1 to {MAX_DAYS}.", param="days", code="invalid_value"
        )
    return int(raw)


def _replica_counts() -> dict[str, object]:
    """This process's fallbacks by provider and requests by status class, from its own counters."""
    fallbacks: dict[str, float] = {}
    for family in metrics.FALLBACKS.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                provider = s.labels.get("gen_ai_provider_name", "")
                fallbacks[provider] = fallbacks.get(provider, 0) + s.value
    statuses: dict[str, float] = {}
    for family in metrics.HTTP_REQUESTS.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels.get("route", "").startswith("/v1/chat"):
                cls = s.labels.get("status", "0")[:1] + "xx"
                statuses[cls] = statuses.get(cls, 0) + s.value
    total = sum(statuses.values())
    errors = sum(v for k, v in statuses.items() if k == "5xx")
    return {
        "chat_requests": int(total),
        "chat_by_status": {k: int(v) for k, v in sorted(statuses.items())},
        "error_rate": round(errors / total, 4) if total else 0.0,
        "fallbacks_by_provider": {k: int(v) for k, v in sorted(fallbacks.items())},
        "fallback_rate": round(sum(fallbacks.values()) / total, 4) if total else 0.0,
    }


class Views:
    def __init__(self, auth: Authenticator, bus: Bus, timeout: float) -> None:
        self.auth = auth
        self.bus = bus
        self.timeout = timeout

    async def _ask(self, subject: str, msg: msgspec.Struct) -> contract.UsageReply:
        data = await self.bus.request(subject, contract.encode(msg), self.timeout)
        reply = contract.usage_reply_decoder.decode(data)
        if isinstance(reply, contract.ErrorReply):
            raise reply.exception()
        return reply

    async def me(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        p = await self.auth.authenticate(request.headers.get("Authorization"))
        call.user, call.plan_name = p.user, p.plan
        body = _json.encode(
            {
                "object": "caller",
                "user": p.user,
                "email": p.email,
                "plan": p.plan,
                "api_key_id": p.key_id or None,
                "admin": p.admin,
            }
        )
        return web.Response(
            body=body, headers={**call.headers, "Content-Type": _JSON, "Cache-Control": "no-store"}
        )

    async def daily(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        principal = await self.auth.authenticate(request.headers.get("Authorization"))
        call.user, call.plan_name = principal.user, principal.plan
        reply = await self._ask(subjects.METER_DAILY, contract.DailyQuery(principal.user, _days(request)))
        return web.Response(body=usage_body(reply), headers={**call.headers, "Content-Type": _JSON})

    async def overview(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        principal = await self.auth.authenticate(request.headers.get("Authorization"))
        call.user, call.plan_name = principal.user, principal.plan
        if not principal.admin:
            raise PermissionDenied(
                "The operator view needs a token with the operator role.", code="admin_required"
            )
        health = await self._ask(subjects.ROUTE_HEALTH, contract.AdminQuery())
        top = await self._ask(subjects.METER_ADMIN, contract.AdminQuery(top=10))
        # a router or metering of the previous release sends only its JSON document
        deployments: Any = health.deployments
        if deployments is None:
            deployments = _decode_doc.decode(health.body)["data"]
        users: Any = top.top_users
        week_users = top.week_users
        if users is None:
            legacy = _decode_doc.decode(top.body)
            users, week_users = legacy["data"], legacy["week_users"]
        body = _json.encode(
            {
                "object": "admin.overview",
                "deployments": deployments,
                "this_replica": _replica_counts(),
                "top_users_this_week": users,
                "users_this_week": week_users,
            }
        )
        return web.Response(
            body=body, headers={**call.headers, "Content-Type": _JSON, "Cache-Control": "no-store"}
        )


def add_routes(router: web.UrlDispatcher, views: Views) -> None:
    router.add_get("/v1/me", views.me)
    router.add_get("/v1/usage/daily", views.daily)
    router.add_get("/v1/admin/overview", views.overview)
