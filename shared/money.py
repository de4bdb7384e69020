"""Credits are integer microdollars. This is the one function that turns tokens into credits.

Prices are USD per 1M tokens, so a price is also *credits per token* (0.20 USD/1M = 0.2 credits a
token). Each price is fixed to integer millionths of a credit once (``PriceUnits``), the request's
cost is summed in those units, and rounded up to a whole credit once per request.
"""

from __future__ import annotations

import msgspec

from shared.catalog import Price
from shared.contract import Usage

_SCALE = 1_000_000


class PriceUnits(msgspec.Struct, frozen=True):
    """A price in millionths of a credit per token (exact integers)."""

    input: int
    cached_input: int
    output: int

    @classmethod
    def of(cls, price: Price) -> PriceUnits:
        cached = price.input if price.cached_input is None else price.cached_input
        return cls(round(price.input * _SCALE), round(cached * _SCALE), round(price.output * _SCALE))


def cost_credits(usage: Usage, price: PriceUnits) -> int:
    """The cost of one request in whole credits, rounded up once."""
    cached = min(max(usage.cached_tokens, 0), max(usage.prompt_tokens, 0))
    units = (
        (max(usage.prompt_tokens, 0) - cached) * price.input
        + cached * price.cached_input
        + max(usage.completion_tokens, 0) * price.output
    )
    return -(-units // _SCALE)


def output_within(credits: int, input_tokens: int, price: PriceUnits) -> int:
    """The most output tokens that ``credits`` can pay for beside ``input_tokens`` of prompt, with
    the rounding ``cost_credits`` applies; -1 when the prompt alone costs more. The inverse of
    ``cost_credits`` for a hold (no cached tokens), so ``cost_credits(input, result) <= credits``."""
    units = credits * _SCALE - max(input_tokens, 0) * price.input
    if units < 0:
        return -1
    if price.output <= 0:
        return 2**62  # free output: only the other bounds (the request's own cap) apply
    return units // price.output
