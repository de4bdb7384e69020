"""A fallback to another model is charged at that model's price: the settlement names the model
that served the answer and lists what earlier attempts on other models produced, and the hold is
priced on the dearest model the plan may reach, so the fallback still fits in it."""

from __future__ import annotations

import aiohttp

from services.gateway.dispatch import Call, settlement
from shared.contract import ModelUsage, Usage
from tests.gateway import fakes as F
from tests.gateway.conftest import Gateway
from tests.gateway.test_flow import CHAT, post


async def test_a_fallback_model_is_priced_as_itself_and_named_in_the_answer(
    gateway: Gateway, fakes: F.Fakes, http: aiohttp.ClientSession
) -> None:
    fakes.providers = ("pa", "pb")
    fakes.fallback_model = "gpt-5-mini"  # five times gpt-5-nano's price
    await fakes.start({"pa": F.fail_retryable, "pb": F.answer})
    r, body = await post(http, gateway, {**CHAT, "model": "gpt-5-nano"})
    assert r.status == 200, body
    rid = r.headers["X-Request-Id"]
    assert [w.response_model for w, _ in fakes.works] == ["gpt-5-nano", "gpt-5-mini"]
    assert b'"model": "gpt-5-mini"' in body
    assert fakes.reserves[-1].model == "gpt-5-mini"  # held at the dearer price
    [s] = await fakes.settlement_for(rid)
    assert s.model == "gpt-5-mini" and s.usage == Usage(12, 3)
    assert s.other == [ModelUsage("gpt-5-nano", Usage(5, 0))]  # the failed attempt's prompt


def test_one_model_settles_as_before() -> None:
    call = Call("r1", 0.0)
    call.model, call.ok = "m", True
    call.by_model = {"m": Usage(3, 4)}
    s = settlement(call)
    assert (s.model, s.usage, s.other) == ("m", Usage(3, 4), [])


def test_an_attempt_that_never_ran_leaves_the_earlier_model_charged() -> None:
    """The fallback's attempt ended before any outcome (the gateway began shutting down): the one
    model with usage is not the model named last, and its usage still goes in ``other``."""
    call = Call("r2", 0.0)
    call.by_model = {"gpt-5-nano": Usage(5, 0)}
    call.model = "gpt-5-mini"
    s = settlement(call)
    assert (s.model, s.usage) == ("gpt-5-mini", Usage())
    assert s.other == [ModelUsage("gpt-5-nano", Usage(5, 0))]
