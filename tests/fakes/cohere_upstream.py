"""Fake Cohere Chat v2: ``POST /v2/chat`` (JSON, or SSE when ``"stream": true``), replaying
``tests/fixtures/cohere``."""

from __future__ import annotations

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["CohereUpstream", "Drop", "Fail", "Stall"]


class CohereUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("cohere", ["/v2/chat"])
