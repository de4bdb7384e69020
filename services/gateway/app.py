"""The public endpoints and the orchestration of one request:

    authenticate -> validate body -> route (router) -> reserve (metering) -> dispatch (worker)
    -> respond -> settle (JetStream, background)

Route first: the plan names the model, and the reservation is priced on that model. A plan the
router marked reusable (a direct model with one deployment) is taken from ``PlanCache`` for a moment
instead of asking again, which takes the router's round trip off most requests.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from aiohttp import web

from services.gateway import console, keys_api, views
from services.gateway.auth import Authenticator, Principal
from services.gateway.body import parse_chat, parse_embeddings, with_defaults
from services.gateway.byok import ByokApi, ByokProbe
from services.gateway.cors import Cors
from services.gateway.dispatch import Call, Dispatcher
from services.gateway.edge import CALL, Edge
from services.gateway.meter import Meter, granted_cap, output_hold
from services.gateway.models import ModelIndex
from services.gateway.plans import PlanCache, key_of
from services.gateway.settings import GatewaySettings
from services.gateway.sinks import BufferedSink, Sink, StreamSink
from services.gateway.usage import usage_body
from shared import contract, subjects
from shared.bus import Bus
from shared.catalog import Catalog
from shared.contract import ReserveRequest, RouteRequest, Usage, UsageQuery, WorkRequest
from shared.errors import InvalidRequest, PayloadTooLarge
from shared.money import PriceUnits, cost_credits

_JSON = "application/json"
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
BOT_ID_MAX_BYTES = 128
_AUTO = ("", "auto")


def bot_id(value: str) -> str:
    """An ``X-Bot-ID`` as the product documents it: a free-form application name, any printable
    text up to 128 bytes. Control characters (a log line or a CSV export broken in two) and bytes
    that are not UTF-8 (aiohttp hands them over as surrogates) are refused, not cleaned up, so
    /v1/usage shows exactly what the caller sent; metering keeps it under a safe key."""
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        size = -1
    if not 0 < size <= BOT_ID_MAX_BYTES or not value.isprintable():
        raise InvalidRequest(
            f"X-Bot-ID must be printable UTF-8 text of 1 to {BOT_ID_MAX_BYTES} bytes.",
            param="X-Bot-ID",
            code="invalid_bot_id",
        )
    return value


# a model whose catalog entry does not say: as wide as the widest common embeddings model
_UNKNOWN_DIMENSIONS = 3072


def _vectors(inp: object) -> int:
    """How many vectors an embeddings ``input`` asks for (one token-id array is one text)."""
    if isinstance(inp, list) and inp and not isinstance(inp[0], int):
        return len(inp)
    return 1


def _check_embedding_values(vectors: int, dims: int, budget: int) -> None:
    """Refuse, before any upstream call, an embeddings request whose answer (vectors x dimensions
    numbers, held by the worker as the provider's JSON, as floats and as the encoded answer, then
    by the gateway) would take more memory than one request may."""
    if vectors * dims > budget:
        raise PayloadTooLarge(
            f"This request asks for {vectors} embeddings of {dims} dimensions ({vectors * dims:,} numbers); "
            f"one request may ask for at most {budget:,}. Send at most {max(1, budget // dims)} inputs per "
            "request at this size, or fewer 'dimensions'.",
            param="input",
            code="embeddings_too_large",
        )


class Gateway:
    """Everything a request handler needs, built once at start."""

    def __init__(
        self,
        settings: GatewaySettings,
        bus: Bus,
        catalog: Catalog,
        auth: Authenticator,
        meter: Meter,
        dispatcher: Dispatcher,
        byok: ByokProbe | None = None,
    ) -> None:
        self.s = settings
        self.bus = bus
        self.catalog = catalog
        self.auth = auth
        self.meter = meter
        self.dispatcher = dispatcher
        self.byok = byok
        self.models = ModelIndex(catalog)
        self.plans = PlanCache()

    # ---------------------------------------------------------------------------------- helpers
    async def _principal(self, request: web.Request, call: Call) -> Principal:
        principal = await self.auth.authenticate(request.headers.get("Authorization"))
        call.user = principal.user
        call.plan_name = principal.plan
        bot = request.headers.get("X-Bot-ID")
        if bot:
            call.bot = bot_id(bot)
        return principal

    async def _body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.s.max_body_bytes:
            raise PayloadTooLarge(
                f"The request body is {length} bytes; the limit is {self.s.max_body_bytes}."
            )
        if request.content.is_eof():
            return await request.read()  # the whole body came with the headers: no wait, no timer
        # aiohttp enforces client_max_size while reading a body without Content-Length (413);
        # a client trickling its body would otherwise hold this request (and a task) for ever
        try:
            async with asyncio.timeout(self.s.body_timeout_seconds):
                return await request.read()
        except TimeoutError:
            raise InvalidRequest(
                "The client took too long to send the request body.", status=408, code="request_timeout"
            ) from None

    async def _route(self, req: RouteRequest, call: Call) -> contract.RoutePlan:
        key = None if req.model in _AUTO else key_of(req)
        if key is not None:
            hit = self.plans.get(key)
            if hit is not None:
                plan, call.headers["X-Janus-Route"] = hit
                call.model = plan.model
                return plan
        data = await self.bus.request(subjects.ROUTE, contract.encode(req), self.s.route_timeout_seconds)
        plan = contract.route_reply_decoder.decode(data)
        if isinstance(plan, contract.ErrorReply):
            raise plan.exception()
        call.model = plan.model
        score = "-" if plan.score is None else f"{plan.score:g}"
        header = call.headers["X-Janus-Route"] = f"model={plan.model}; reason={plan.reason}; score={score}"
        if key is not None and plan.cache_seconds > 0:
            self.plans.put(key, plan, header)
        return plan

    def _hold_model(self, plan: contract.RoutePlan, prompt_tokens: int, max_output: int) -> str:
        """The model the hold is priced on: the costliest one the plan may fall back to, so a
        fallback to a dearer model (charged at its own price) still fits in what was held."""
        models = {t.model for t in plan.targets if t.model and t.model != plan.model}
        if not models:
            return plan.model
        worst = Usage(prompt_tokens=prompt_tokens, completion_tokens=max_output)

        def cost(name: str) -> int:
            m = self.catalog.model(name)
            return -1 if m is None else cost_credits(worst, PriceUnits.of(m.price))

        return max([plan.model, *sorted(models)], key=cost)

    def _many_choices(self, plan: contract.RoutePlan) -> contract.RoutePlan:
        """The plan's deployments that can answer ``n`` choices in one call (OpenAI-compatible
        ones; the other kinds answer once), refused before anything is held when there is none."""
        kinds = self.catalog.provider_by_id
        able = [t for t in plan.targets if t.provider in kinds and kinds[t.provider].kind == "openai_compat"]
        if not able:
            raise InvalidRequest(
                f"'n' above 1 is not available for {plan.response_model}: its provider "
                "answers one choice per request.",
                param="n",
                code="invalid_value",
            )
        # a copy: the plan may be the cached one other requests share
        return msgspec.structs.replace(plan, targets=able)

    async def _serve(
        self,
        call: Call,
        kind: str,
        plan: contract.RoutePlan,
        body: bytes,
        stream: bool,
        sink: Sink,
        cap: int = 0,
        n: int = 1,
    ) -> web.StreamResponse:
        """Reserve and dispatch. ``cap`` is the output cap per choice (0 for embeddings), ``n`` the
        number of choices: the hold covers ``cap * n`` and the worker is told the cap it may send."""
        if self.byok is not None and plan.targets:
            provider = plan.targets[0].provider
            if self.catalog.takes_user_keys(provider) and await self.byok.has(call.user, provider):
                # served on the user's own key: charged nothing, so never moved to a provider that
                # would be served on ours
                call.byok = True
                plan.targets = [t for t in plan.targets if t.provider == provider]
        most, least = output_hold(cap, n, self.s.min_output_tokens)
        reply, call.lease, call.held = await self.meter.admit(
            ReserveRequest(
                call.request_id,
                call.user,
                call.plan_name,
                self._hold_model(plan, call.prompt_tokens, most),
                call.prompt_tokens,
                most,
                bot=call.bot,
                byok=call.byok,
                min_output_tokens=least,
            ),
            call.headers,
        )
        cap = granted_cap(reply, cap, n)  # less than asked when the budget held less: a shorter answer
        work = WorkRequest(
            request_id=call.request_id,
            kind=kind,  # type: ignore[arg-type]
            deployment="",
            provider="",
            upstream_model="",
            response_model=plan.response_model,
            body=body,
            stream=stream,
            created=int(time.time()),
            user=call.user,
            byok=call.byok,
            max_output_tokens=cap,
            prompt_tokens=call.prompt_tokens,
        )
        return await self.dispatcher.run(call, plan, work, sink)

    # --------------------------------------------------------------------------------- handlers
    async def chat(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        principal = await self._principal(request, call)
        # before anything can refuse the request, so that a 400 or 404 carries the headers too
        credits = await self.meter.credits.view(call.user, call.plan_name)
        if credits is not None:
            call.headers.update(credits.headers)
        body = await self._body(request)
        facts = parse_chat(body)
        req = facts.request
        call.prompt_tokens = facts.prompt_tokens
        auto = req.model in _AUTO
        plan = await self._route(
            RouteRequest(
                call.request_id,
                req.model,
                principal.plan,
                "chat",
                facts.prompt_tokens,
                needs_tools=facts.needs_tools,
                needs_vision=facts.needs_vision,
                needs_json=facts.needs_json,
                text=facts.prompt_text() if auto else "",
                budget_fraction=credits.fraction if auto and credits is not None else None,
            ),
            call,
        )
        model = self.catalog.model(plan.model)
        cap = facts.output_cap(model, plan.response_model, self.s.default_max_tokens)
        if model is not None and model.defaults is not None:
            body = with_defaults(body, req, model.defaults)
        if req.n is not None and req.n > 1:
            plan = self._many_choices(plan)
        wt = self.s.stream_write_timeout_seconds
        sink: Sink = (
            StreamSink(request, call, wt, self.s.sse_keepalive_seconds)
            if req.stream
            else BufferedSink(request, call, wt, self.s.max_reply_bytes)
        )
        return await self._serve(call, "chat", plan, body, req.stream, sink, cap, req.n or 1)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        principal = await self._principal(request, call)
        # as for chat: before anything can refuse the request, so that a 400 or 404 carries them
        credits = await self.meter.credits.view(call.user, call.plan_name)
        if credits is not None:
            call.headers.update(credits.headers)
        body = await self._body(request)
        req, prompt_tokens = parse_embeddings(body)
        call.prompt_tokens = prompt_tokens
        plan = await self._route(
            RouteRequest(call.request_id, req.model, principal.plan, "embeddings", prompt_tokens), call
        )
        model = self.catalog.model(plan.model)
        if (
            req.dimensions is not None
            and model is not None
            and model.dimensions is not None
            and req.dimensions > model.dimensions
        ):
            raise InvalidRequest(
                f"'dimensions' can be at most {model.dimensions} for {plan.response_model}.",
                param="dimensions",
                code="invalid_value",
            )
        dims = req.dimensions or (model.dimensions if model is not None else None) or _UNKNOWN_DIMENSIONS
        _check_embedding_values(_vectors(req.input), dims, self.s.max_embedding_values)
        return await self._serve(
            call,
            "embeddings",
            plan,
            body,
            False,
            BufferedSink(request, call, self.s.stream_write_timeout_seconds, self.s.max_reply_bytes),
        )

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        await self._principal(request, call)
        return web.Response(body=self.models.list_body, headers={**call.headers, "Content-Type": _JSON})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        await self._principal(request, call)
        body = self.models.body(request.match_info["model"])
        return web.Response(body=body, headers={**call.headers, "Content-Type": _JSON})

    async def usage(self, request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        principal = await self._principal(request, call)
        # this gateway's lease of the caller goes back first, so no credits look parked in it
        ret = self.meter.leases.retire((principal.user, principal.plan)) if self.meter.leases else None
        try:
            data = await self.bus.request(
                subjects.METER_USAGE,
                contract.encode(UsageQuery(principal.user, principal.plan, ret)),
                self.s.usage_timeout_seconds,
            )
        except Exception:
            if ret is not None and self.meter.leases is not None:
                self.meter.leases.send(ret)  # given back at most once, whichever arrives
            raise
        reply = contract.usage_reply_decoder.decode(data)
        if isinstance(reply, contract.ErrorReply):
            raise reply.exception()
        self.meter.credits.remember(principal.user, principal.plan, reply.pools)
        return web.Response(body=usage_body(reply), headers={**call.headers, "Content-Type": _JSON})


def build_app(gw: Gateway, edge: Edge) -> web.Application:
    app = web.Application(middlewares=[edge.middleware], client_max_size=gw.s.max_body_bytes)
    cors = Cors(gw.s.cors_origins)
    if cors.enabled:
        cors.install(app)
    openapi = OPENAPI_PATH.read_bytes()

    async def openapi_json(request: web.Request) -> web.StreamResponse:
        call: Call = request[CALL]
        return web.Response(body=openapi, headers={**call.headers, "Content-Type": _JSON})

    r = app.router
    r.add_get("/openapi.json", openapi_json)
    r.add_post("/v1/chat/completions", gw.chat)
    r.add_post("/v1/embeddings", gw.embeddings)
    r.add_get("/v1/models", gw.list_models)
    r.add_get("/v1/models/{model:.+}", gw.get_model)
    r.add_get("/v1/usage", gw.usage)
    byok = ByokApi(gw.auth, gw.catalog, gw.byok, gw.s.byok_key, gw._body)
    r.add_put("/v1/byok/{provider}", byok.put)
    r.add_get("/v1/byok", byok.list_keys)
    r.add_delete("/v1/byok/{provider}", byok.delete)
    keys_api.add_routes(r, keys_api.KeysApi(gw.auth, gw.bus, gw.s.nats_replicas, gw._body))
    views.add_routes(r, views.Views(gw.auth, gw.bus, gw.s.usage_timeout_seconds))
    console.add_routes(r, console.Console())
    return app
