"""Routing rules run on users' text in linear time: compiled with RE2, refused at load when a pattern
needs a backtracking engine, and read over a bounded slice of text per decision.

Wall time is not asserted (this machine's load would make it meaningless); the engine is. RE2 runs
in time linear in the text for every pattern it accepts, which is the property that matters: the
shipped ``SELECT .* FROM`` rule over a prompt of 16 KB of ``SELECT`` is quadratic with Python's
``re`` (each ``SELECT`` scans the rest of the line) and linear here."""

from __future__ import annotations

import msgspec
import pytest
import re2

from services.router.config import DEFAULT_ROUTING, Rule, load_routing
from services.router.policy import MAX_TEXT, Policy
from shared.catalog import load_catalog, load_plans
from shared.contract import RouteRequest

ADVERSARIAL = ("SELECT " * (16_384 // 7))[:16_384]


def test_every_shipped_rule_runs_on_re2() -> None:
    routing = load_routing(DEFAULT_ROUTING, catalog=load_catalog())
    assert routing.rules
    for rule in routing.rules:
        assert isinstance(rule.regex, re2._Regexp), rule.name
    # the shipped code rule still tells SQL from prose, and the crafted prompt from a query
    code = next(r for r in routing.rules if r.name == "code")
    assert code.regex.search("please SELECT name FROM users")
    assert not code.regex.search(ADVERSARIAL)


@pytest.mark.parametrize("pattern", [r"(a+)\1", r"(?<!x)y", r"foo(?=bar)"])
def test_a_pattern_that_needs_backtracking_is_refused_at_load(pattern: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="RE2"):
        Rule(name="r", patterns=[pattern], min_quality=2)


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("I love c++ templates", True),
        ("C++", True),
        ("rustacean", False),
        ("use rust.", True),
        ("écrire du rust", True),
        ("rustÄ", False),
        ("stack trace below", True),
        ("stacktrace", False),
    ],
)
def test_keywords_still_match_whole_words_in_any_script(text: str, hit: bool) -> None:
    rule = Rule(name="r", keywords=["c++", "rust", "stack trace"], min_quality=2)
    assert bool(rule.regex.search(text)) is hit


def test_a_decision_reads_a_bounded_slice_of_text() -> None:
    seen: list[int] = []

    class Counting:
        def score(self, text: str) -> float:
            seen.append(len(text))
            return 0.5

    catalog = load_catalog()
    policy = Policy(
        catalog, load_plans(catalog=catalog), load_routing(DEFAULT_ROUTING, catalog=catalog), Counting()
    )
    huge = RouteRequest("r", "auto", "free", text=ADVERSARIAL * 8)
    policy.choose_auto(huge)
    assert seen and max(seen) <= MAX_TEXT
