"""Fake Anthropic Messages API: ``POST /v1/messages`` (JSON, or SSE when ``"stream": true``),
replaying ``tests/fixtures/anthropic``. Catalog: a deployment with ``base_url: <fake.base_url>``."""

from __future__ import annotations

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["AnthropicUpstream", "Drop", "Fail", "Stall"]


class AnthropicUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("anthropic", ["/v1/messages"])
