"""The learned scorer: deterministic features, a sane weights file, and RouteLLM's metrics on a
committed slice of the evaluation groups (never trained on)."""

from __future__ import annotations

import json
import statistics

import pytest

from services.router import features as F
from services.router.scorer import Scorer
from tools.routing_data import (
    FIXTURES,
    Row,
    evaluate,
    length_scores,
    load_everyday,
    load_rows_jsonl,
    random_baseline,
)


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return load_rows_jsonl(FIXTURES / "eval_slice.jsonl")


def test_features_are_deterministic_and_in_range() -> None:
    text = "Write a Python function:\n```\ndef f(x):\n    return x ** 2\n```\nWhat is f(3)?"
    d1, i1 = F.features(text)
    d2, i2 = F.features(text)
    assert (d1, i1) == (d2, i2)
    assert len(d1) == F.DENSE and all(0.0 <= v <= 2.0 for v in d1)
    assert all(F.DENSE <= i < F.DIM for i in i1) and i1 == sorted(set(i1))
    named = dict(zip(F.DENSE_NAMES, d1, strict=True))
    assert named["code_hits"] > 0 and named["question_marks"] > 0
    assert F.features("") == (F.dense(""), [])


def test_scores_are_percentiles(scorer: Scorer) -> None:
    for text in ("", "hi", "x" * 100_000, "∫ éè 漢字 🙂"):
        assert 0.0 <= scorer.score(text) <= 1.0


def test_weights_file_is_plain_json_with_the_feature_layout(scorer: Scorer) -> None:
    raw = json.loads((FIXTURES.parent.parent.parent / "services" / "router" / "weights.json").read_text())
    assert raw["word_bits"] == F.WORD_BITS and raw["dense_names"] == list(F.DENSE_NAMES)
    assert raw["quantiles"] == sorted(raw["quantiles"])


def test_metric_definitions_on_a_hand_made_case() -> None:
    # two prompts need the strong model; a perfect scorer recovers the whole gap quickly
    rows = [
        Row("t", "t", str(i), s, w)
        for i, (s, w) in enumerate(
            [(1, 0), (1, 0), (1, 1), (1, 1), (0, 0), (1, 1), (0, 0), (1, 1), (0, 0), (1, 1)]
        )
    ]
    perfect = evaluate([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], rows)
    inverse = evaluate([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], rows)
    assert perfect.apgr > 0.8 > 0.2 > inverse.apgr
    assert perfect.weak_quality == 50.0 and perfect.strong_quality == 70.0
    assert perfect.cpt50 <= 20.0 and inverse.cpt50 >= 80.0
    assert 0.4 < random_baseline(rows, range(50)).apgr < 0.6


def test_learned_scorer_on_the_evaluation_slice(scorer: Scorer, rows: list[Row]) -> None:
    learned = evaluate([scorer.logit(r.prompt) for r in rows], rows)
    length = evaluate(length_scores(rows), rows)
    rand = random_baseline(rows)
    print(
        f"slice n={len(rows)}: learned APGR {learned.apgr:.3f}, length {length.apgr:.3f}, "
        f"random {rand.apgr:.3f}"
    )
    assert learned.apgr > 0.5 and learned.apgr > rand.apgr
    assert learned.apgr > length.apgr  # the learned scorer must earn its keep over prompt length


def test_arena_hard_prompts_score_higher_than_everyday_chat(scorer: Scorer) -> None:
    with (FIXTURES / "arena_hard_sample.jsonl").open() as f:
        hard = [scorer.score(json.loads(line)["prompt"]) for line in f]
    easy = [scorer.score(p) for p in load_everyday()]
    assert statistics.mean(hard) > statistics.mean(easy) + 0.05
