"""Golden auto decisions: the shipped scorer on a fixed set of prompts (greetings, code, math, word
problems, design questions, arena-hard samples), on the router tests' own catalog and "plus" plan.

A failure means routing behaviour changed. Check the changed decisions are sensible (greetings stay
cheap, code goes to the coding model, demanding prompts score above chat), then re-record them with
``python -m tools.eval_routing --write-golden``, which prints every decision that moved.
"""

from __future__ import annotations

import json

import pytest

from services.router.policy import Policy
from tools.eval_routing import GOLDEN, golden_decision, golden_policy

ROWS = json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def policy() -> Policy:
    return golden_policy()


@pytest.mark.parametrize("row", ROWS, ids=[r["prompt"][:30] for r in ROWS])
def test_golden_decision(policy: Policy, row: dict[str, object]) -> None:
    got = golden_decision(policy, str(row["prompt"]))
    assert (got["model"], got["reason"]) == (row["model"], row["reason"])
    assert got["score"] == pytest.approx(row["score"], abs=1e-3)


def test_the_golden_set_covers_every_kind_of_decision() -> None:
    assert {r["reason"] for r in ROWS} >= {"complexity", "rule:code", "rule:math"}
    assert {r["model"] for r in ROWS} >= {"small", "mid", "coder", "big"}


def test_greetings_are_cheap_and_arena_prompts_score_above_them_on_average() -> None:
    greetings = [r for r in ROWS if r["prompt"] in ("Hi!", "hi", "Hello, how are you today?")]
    arena = [r for r in ROWS if r.get("source") == "arena-hard-v0.1"]
    assert greetings and all(r["model"] == "small" for r in greetings)
    # on average: single arena prompts can score as low as a greeting (see the README's limits)
    assert arena
    mean_arena = sum(float(r["score"]) for r in arena) / len(arena)
    assert mean_arena > max(float(r["score"]) for r in greetings)
