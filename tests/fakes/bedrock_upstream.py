"""Fake Bedrock runtime: ``POST /model/{modelId}/converse`` (JSON) and ``/converse-stream`` (AWS
event-stream frames), replaying ``tests/fixtures/bedrock``. Point a deployment's ``base_url`` at it;
requests are recorded with their SigV4 ``Authorization`` header for inspection (not verified)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fixtures.replay import Drop, Fail, ReplayUpstream, Stall

__all__ = ["BedrockUpstream", "Drop", "Fail", "Stall"]


class BedrockUpstream(ReplayUpstream):
    def __init__(self) -> None:
        super().__init__("bedrock", ["/model/{model}/converse", "/model/{model}/converse-stream"])

    def is_stream(self, request: web.Request, body: dict[str, Any]) -> bool:
        return request.path.endswith("/converse-stream")
