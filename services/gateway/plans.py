"""Route plans the router said may be reused (``RoutePlan.cache_seconds``), kept briefly per gateway.

A direct request for a model with one deployment gets the same plan every time: nothing in it is
drawn at random or ranked by health. The router marks such plans, and the gateway then answers
identical requests (same model as asked, plan, kind and needs) from here for that long, which takes
a whole bus round trip and the router's work off the request path. A plan the router did not mark
(``auto``, a model with several deployments, an error) is never kept.

Every use gets its own shallow copy: the request path replaces ``targets`` (bring your own key).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from shared.contract import RoutePlan, RouteRequest

Key = tuple[str, str, str, bool, bool, bool]


def key_of(req: RouteRequest) -> Key:
    return (req.model, req.plan, req.kind, req.needs_tools, req.needs_vision, req.needs_json)


class PlanCache:
    __slots__ = ("_clock", "_entries", "max_entries")

    def __init__(self, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        # key -> (plan, X-Janus-Route header value, usable until (monotonic))
        self._entries: dict[Key, tuple[RoutePlan, str, float]] = {}

    def get(self, key: Key) -> tuple[RoutePlan, str] | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        plan, header, until = hit
        if until <= self._clock():
            del self._entries[key]
            return None
        return msgspec.structs.replace(plan), header

    def put(self, key: Key, plan: RoutePlan, header: str) -> None:
        if plan.cache_seconds <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # bounded; keys are few (models x plans x needs) in practice
        self._entries[key] = (msgspec.structs.replace(plan), header, self._clock() + plan.cache_seconds)

    def __len__(self) -> int:
        return len(self._entries)
