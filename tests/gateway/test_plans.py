"""The gateway's cache of route plans: only what the router marked, only until it said, never shared."""

from __future__ import annotations

from services.gateway.plans import PlanCache, key_of
from shared.contract import RoutePlan, RouteRequest, Target


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plan(cache_seconds: float) -> RoutePlan:
    return RoutePlan(
        model="m",
        response_model="m",
        targets=[Target("d", "p", "up")],
        reason="direct",
        cache_seconds=cache_seconds,
    )


def test_a_marked_plan_is_reused_until_the_router_said_then_asked_again() -> None:
    clock = Clock()
    cache = PlanCache(clock=clock)
    key = key_of(RouteRequest("r1", "m", "pro"))
    assert cache.get(key) is None
    cache.put(key, plan(2.0), "model=m; reason=direct; score=-")
    clock.now += 1.9
    hit = cache.get(key)
    assert hit is not None and hit[0] == plan(2.0) and hit[1] == "model=m; reason=direct; score=-"
    clock.now += 0.1
    assert cache.get(key) is None and len(cache) == 0


def test_an_unmarked_plan_is_never_kept() -> None:
    cache = PlanCache(clock=Clock())
    key = key_of(RouteRequest("r1", "m", "pro"))
    cache.put(key, plan(0.0), "h")
    assert cache.get(key) is None and len(cache) == 0


def test_the_key_is_everything_but_the_request_itself() -> None:
    base = RouteRequest("r1", "m", "pro", prompt_tokens=10)
    # another request id or prompt size: the same plan
    assert key_of(base) == key_of(RouteRequest("r2", "m", "pro", prompt_tokens=900))
    for other in (
        RouteRequest("r1", "m2", "pro"),
        RouteRequest("r1", "m", "free"),
        RouteRequest("r1", "m", "pro", kind="embeddings"),
        RouteRequest("r1", "m", "pro", needs_tools=True),
        RouteRequest("r1", "m", "pro", needs_vision=True),
        RouteRequest("r1", "m", "pro", needs_json=True),
    ):
        assert key_of(other) != key_of(base), other


def test_every_use_gets_its_own_plan() -> None:
    cache = PlanCache(clock=Clock())
    key = key_of(RouteRequest("r1", "m", "pro"))
    original = plan(5.0)
    cache.put(key, original, "h")
    original.targets = []  # the caller goes on using the plan it routed with
    first = cache.get(key)
    assert first is not None
    first[0].targets = [Target("byok", "p", "up")]  # what bring-your-own-key does to a plan
    second = cache.get(key)
    assert second is not None and second[0].targets == [Target("d", "p", "up")]


def test_the_cache_is_bounded() -> None:
    cache = PlanCache(max_entries=3, clock=Clock())
    for i in range(10):
        cache.put(key_of(RouteRequest("r", f"m{i}", "pro")), plan(5.0), "h")
        assert len(cache) <= 3
    assert cache.get(key_of(RouteRequest("r", "m9", "pro"))) is not None
