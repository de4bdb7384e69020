"""The budget's ceiling as a property: over random request shapes, models, prices and budget states,
what the worker forwards (the output cap in the provider's own parameter, times ``n``) priced with
the prompt estimate never costs more than metering held for the request.

The gateway's decisions (``parse_chat``, ``output_cap``, ``output_hold``, ``granted_cap``),
metering's admission (``budget.reserve``) and each adapter's request builder are the real code,
called in the order a request meets them."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from services.gateway.body import parse_chat
from services.gateway.meter import granted_cap, output_hold
from services.metering import budget
from services.metering.record import Record
from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import ChatContext
from shared import prompt
from shared.catalog import Deployment, Model, Plan, Price, Provider, Serving, SessionPool, WeeklyPool
from shared.contract import ReserveRequest, Usage
from shared.errors import InvalidRequest
from shared.money import PriceUnits, cost_credits
from shared.openai_request import decode_chat
from tests.fixtures.client_requests import chat
from tests.worker.adapters.test_output_cap import CAP_PATH

NOW = 1_800_000_000
RULES = budget.PlanRules.of(
    "free",
    Plan(
        session=SessionPool(credits=500_000, hours=5), weekly=WeeklyPool(credits=2_000_000), default_model="m"
    ),
)

_text = st.text(max_size=200)
_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(
        lambda d, k: {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + "A" * k, "detail": d},
        },
        st.sampled_from(["low", "high", "auto"]),
        st.integers(0, 5000),
    ),
)
_message = st.one_of(
    st.builds(lambda c: {"role": "user", "content": c}, _text),
    st.builds(lambda ps: {"role": "user", "content": ps}, st.lists(_part, min_size=1, max_size=4)),
    st.builds(lambda c: {"role": "system", "content": c}, _text),
)
_function = st.builds(
    lambda n, d: {"name": n or "f", "description": d, "parameters": {"type": "object"}},
    st.text(max_size=20),
    _text,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": draw(st.lists(_message, min_size=1, max_size=4))}
    n = draw(st.one_of(st.none(), st.integers(1, 128)))
    if n is not None:
        body["n"] = n
    body["stream"] = (n or 1) == 1 and draw(st.booleans())
    for key in ("max_tokens", "max_completion_tokens"):
        value = draw(st.one_of(st.none(), st.integers(1, 200_000)))
        if value is not None:
            body[key] = value
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": f} for f in draw(st.lists(_function, max_size=3))]
    if draw(st.booleans()):
        body["functions"] = draw(st.lists(_function, min_size=1, max_size=2))
    return body


def _forwarded(kind: str, body: dict[str, Any], cap: int, stream: bool) -> int:
    dep = Deployment(id="d", base_url="http://127.0.0.1:9", region="us-east-1")
    ctx = ChatContext(
        provider=Provider(id=kind, kind=kind, deployments=[dep]),  # type: ignore[arg-type]
        deployment=dep,
        upstream_model="m",
        **chat(body),
        stream=stream,
        api_key="k",
        max_output_tokens=cap,
    )
    node: Any = json.loads(ADAPTERS[kind]().chat_request(ctx).body)
    for key in CAP_PATH[kind]:
        node = node[key]
    return int(node)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=requests(),
    max_out=st.integers(1, 128_000),
    window=st.integers(1_000, 400_000),
    price_in=st.floats(0, 20),
    price_out=st.floats(0, 80),
    used=st.integers(0, 520_000),
    floor=st.integers(1, 1024),
    default=st.integers(256, 8192),
)
def test_what_is_forwarded_never_costs_more_than_the_hold(
    body: dict[str, Any],
    max_out: int,
    window: int,
    price_in: float,
    price_out: float,
    used: int,
    floor: int,
    default: int,
) -> None:
    model = Model(
        id="m",
        owned_by="o",
        serve=[Serving("d", "m")],
        context_window=window,
        max_output_tokens=max_out,
        price=Price(input=price_in, output=price_out),
    )
    raw = json.dumps(body).encode()
    try:
        facts = parse_chat(raw)
        cap = facts.output_cap(model, "m", default)
    except InvalidRequest:
        return  # refused before anything was held or sent
    # the worker's fallback charge agrees
    assert facts.prompt_tokens == prompt.estimate_request(decode_chat(raw))
    n = body.get("n") or 1
    most, least = output_hold(cap, n, floor)
    price = PriceUnits.of(model.price)
    rec = Record(
        user="u", session_start=NOW, session_used=used, week_start=RULES.week_start(NOW), week_used=used
    )
    reply, _ = budget.reserve(
        rec,
        ReserveRequest("r", "u", "free", "m", facts.prompt_tokens, most, min_output_tokens=least),
        RULES,
        price,
        NOW,
    )
    assume(reply.admitted)
    granted = granted_cap(reply, cap, n)
    assert granted >= 1
    kinds = ["openai_compat"] if n > 1 else sorted(CAP_PATH)
    for kind in kinds:
        sent = _forwarded(kind, body, granted, body["stream"])
        assert sent == granted, kind
        assert (
            cost_credits(Usage(prompt_tokens=facts.prompt_tokens, completion_tokens=sent * n), price)
            <= reply.hold
        ), kind
    assert used + reply.hold <= 500_000
