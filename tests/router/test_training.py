"""Each step of ``tools/train_router.py`` and of the features/scorer it feeds, on small made-up data:
the subject-demeaned target, the within-subject centring, the standardisation fold-back, ridge, the
length term, the trees and their export, the answer template stripping, the short-text floors and
the serving-time clipping."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import msgspec
import numpy as np
import pytest

from services.router import features as F
from services.router.scorer import Scorer, WeightsFile, parse_trees, tree_sum
from tools import train_router as T
from tools.routing_data import EVAL_SUBJECTS, Row, evaluate


def test_demeaned_gain_is_zero_mean_within_every_subject() -> None:
    rows = [
        Row("mmlu", s, "p", st, w)
        for s, st, w in [("a", 1, 0), ("a", 1, 1), ("a", 0, 0), ("b", 0, 1), ("b", 1, 1)]
    ]
    y = T.demeaned_gain(rows)
    assert y[:3].sum() == pytest.approx(0) and y[3:].sum() == pytest.approx(0)
    assert y[0] == pytest.approx(1 - 1 / 3) and y[3] == pytest.approx(-1 + 0.5)


def test_standardizer_folds_back_to_raw_feature_weights() -> None:
    rng = np.random.default_rng(0)
    x = np.c_[np.ones(50), rng.normal(3, 2, (50, F.DIM - 1))]
    st = T.Standardizer(x)
    beta = rng.normal(size=F.DIM)
    np.testing.assert_allclose(x @ st.fold(beta), st.apply(x) @ beta, rtol=1e-9, atol=1e-9)
    # only the dense block is scaled
    assert np.all(st.sd[F.DENSE :] == 1) and np.all(st.mu[F.DENSE :] == 0)


def test_within_centres_every_column_per_subject() -> None:
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 0.0], [7.0, 4.0]])
    w = T.within(x, np.array(["a", "a", "b", "b"]))
    np.testing.assert_allclose(w, [[-1, -5], [1, 5], [-1, -2], [1, 2]])


def test_fixed_effects_give_a_subject_marker_no_weight() -> None:
    """A feature every prompt of a subject shares (its vocabulary) says nothing about which of its
    prompts are hard; centred within subject, it is constant zero and keeps no weight."""
    rng = np.random.default_rng(3)
    n = 200
    subjects = np.repeat(np.array(["a", "b"]), n // 2)
    x = np.zeros((n, F.DIM))
    x[:, 0] = 1.0
    cue = F.DENSE  # a hashed column that marks hard prompts in both subjects
    marker = F.DENSE + 1  # a hashed column present in every prompt of subject "a" only
    x[:, cue] = rng.integers(0, 2, n)
    x[: n // 2, marker] = 1.0
    y = T.within((x[:, cue] + rng.normal(0, 0.1, n))[:, None], subjects)[:, 0]
    beta = T.fit(x, y, subjects, lam_hashed=1.0, alpha=0.0)
    assert abs(beta[marker]) < 1e-9 and beta[cue] > 0.5


def test_categories_cover_mmlu_once_and_make_one_fold_each() -> None:
    names = [s for c in T.CATEGORIES.values() for s in c.split()]
    assert len(names) == len(set(names)) == 57 and EVAL_SUBJECTS <= set(names)
    rows = [Row("mmlu", s, "p", 1, 0) for s in ("anatomy", "virology", "philosophy", "x", "anatomy")]
    folds = T.category_folds(rows)
    assert folds[0] == folds[1] == folds[4]  # both "other"
    assert len({folds[0], folds[2], folds[3]}) == 3  # humanities, and an unmapped subject alone
    plans = T.fold_plans(rows)
    assert len(plans["subjects"]) == len(T.SEEDS) and len(plans["categories"]) == 1


def test_ridge_recovers_weights_and_shrinks_with_the_penalty() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    true = np.array([0.5, -1.0, 2.0, 0.0, 0.3])
    y = x @ true
    np.testing.assert_allclose(T.ridge(x.T @ x, x.T @ y, np.full(5, 1e-9)), true, atol=1e-6)
    strong = T.ridge(x.T @ x, x.T @ y, np.full(5, 1e4))
    assert np.linalg.norm(strong) < 0.2 * np.linalg.norm(true)


def test_penalty_leaves_bias_and_length_free() -> None:
    p = T.penalty(123.0)
    assert p[0] == 0 and p[T.LENGTH] == T.LAMBDA_LENGTH
    assert np.all(p[F.DENSE :] == 123.0) and p[F.DENSE_NAMES.index("code_hits")] == T.LAMBDA_DENSE


def _synthetic(subjects: range, seed: int) -> list[Row]:
    """Prompts where, within every subject, those asking for a multi-step derivation gain from the
    strong model and the plain recall ones do not; subjects differ in their mean gain."""
    rnd = random.Random(seed)
    rows = []
    for s in subjects:
        base = rnd.choice([0.0, 0.3])
        for i in range(30):
            hard = i % 2 == 0
            ask = "derive step by step then justify each intermediate result" if hard else "name it"
            text = f"Topic {s} question {rnd.randint(0, 10**6)}: {ask}."
            gain = 1.0 if (hard or rnd.random() < base) else 0.0
            rows.append(Row("mmlu", f"s{s}", text, gain, 0.0))
    return rows


def test_fit_learns_within_subject_cues_that_transfer_to_unseen_subjects() -> None:
    train, held = _synthetic(range(6), 1), _synthetic(range(100, 104), 2)
    x, y, subjects = T.design([r.prompt for r in train]), T.demeaned_gain(train), T.subjects_of(train)
    beta = T.fit(x, y, subjects, lam_hashed=1.0, alpha=0.0)
    z = T.design([r.prompt for r in held]) @ beta
    hard = np.asarray(["derive" in r.prompt for r in held])
    assert z[hard].min() > z[~hard].max()  # the cue ranks every prompt of the new subjects
    assert evaluate(list(z), held).apgr > 0.6  # random: 0.5; the noise on easy prompts caps it
    with_length = T.fit(x, y, subjects, 1.0, alpha=0.5)
    assert with_length[T.LENGTH] == pytest.approx(beta[T.LENGTH] + 0.5)


def test_training_tool_writes_a_loadable_deterministic_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _synthetic(range(10), 3)
    monkeypatch.setattr(T, "load_train", lambda: rows)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert T.main(["--out", str(out), "--lambdas", "1,10", "--alphas", "0,0.1", "--gammas", "0,1"]) == 0
    assert a.read_bytes() == b.read_bytes()
    raw = json.loads(a.read_text())
    assert raw["metrics"]["lambda_hashed"] in (1.0, 10.0) and raw["metrics"]["alpha_length"] in (0.0, 0.1)
    assert raw["metrics"]["gamma_trees"] in (0.0, 1.0)
    assert bool(raw["trees"]) == (raw["metrics"]["gamma_trees"] > 0)
    assert all(lo <= hi for lo, hi in zip(raw["dense_lo"], raw["dense_hi"], strict=True))
    scorer = Scorer.load(a)
    assert scorer.score("derive step by step then justify each intermediate result") > scorer.score("name it")


def test_exported_trees_walk_like_the_fitted_ones() -> None:
    """What was trained is what runs: the router's tree walk over the exported trees gives
    scikit-learn's prediction (less the constant the ensemble starts from) for every prompt."""
    rng = np.random.default_rng(5)
    x = np.c_[np.ones(600), rng.random((600, F.DIM - 1))]
    d = F.DENSE_NAMES.index
    y = (x[:, d("log_chars")] > 0.5) * (x[:, d("digit_frac")] > 0.3) + rng.normal(0, 0.05, 600)
    gb = T.fit_trees(x, y)
    exported = T.export_trees(gb, weight=2.0)
    assert all(n[0] == -1 or F.DENSE_NAMES[int(n[0])] in T.TREE_SIGNALS for t in exported for n in t)
    walked = np.array([tree_sum(parse_trees(exported), list(row)) for row in x[:, : F.DENSE]])
    diff = walked - 2.0 * T.predict_trees(gb, x)
    assert np.ptp(diff) < 1e-4
    # the trees found the interaction: both signals high scores above either alone
    both, one = walked[(y > 0.9)], walked[(y < 0.1)]
    assert both.min() > one.max()


def test_scorer_walks_trees_and_rejects_malformed_ones() -> None:
    digits = F.DENSE_NAMES.index("digit_frac")
    # one split on the digit share: <= 0.5 adds 0.1, above adds 0.7
    tree = [[digits, 0.5, 1, 2, 0.0], [-1, 0.0, -1, -1, 0.1], [-1, 0.0, -1, -1, 0.7]]
    zero = [0.0] * F.DENSE
    scorer = Scorer(_weights(dense=zero, trees=[tree, tree]))
    assert scorer.logit("1234567890" * 20) == pytest.approx(1.4)
    assert scorer.logit("no digits here at all") == pytest.approx(0.2)
    for bad in (
        [[digits, 0.5, 0, 2, 0.0], [-1, 0, -1, -1, 0], [-1, 0, -1, -1, 0]],  # a loop back to the root
        [[digits, 0.5, 1, 5, 0.0], [-1, 0, -1, -1, 0]],  # a child that is not there
        [[F.DENSE, 0.5, 1, 2, 0.0], [-1, 0, -1, -1, 0], [-1, 0, -1, -1, 0]],  # no such signal
        [[digits, 0.5, 1]],  # a short node
        [],
    ):
        with pytest.raises(ValueError, match="malformed tree"):
            Scorer(_weights(trees=[bad]))


def test_answer_template_is_stripped_before_features() -> None:
    mc = "Which organ makes insulin?\nA. liver\nB. pancreas\nC. heart\nD. lung\nAnswer:"
    assert F.strip_template(mc) == "Which organ makes insulin?\nliver\npancreas\nheart\nlung"
    plain = "Plan A. is cheaper.\nAnswer: no"
    assert F.strip_template(plain) == plain
    assert F.features(mc) == F.features("Which organ makes insulin?\nliver\npancreas\nheart\nlung")


def test_short_texts_are_not_extreme() -> None:
    named = dict(zip(F.DENSE_NAMES, F.dense("Hi!"), strict=True))
    assert named["punct_frac"] == pytest.approx(1 / F.MIN_CHARS)
    assert named["upper_frac"] == pytest.approx(1 / F.MIN_CHARS)
    _, idx = F.features("Hi!")
    assert F.block_scale(idx) == (1 / math.sqrt(F.MIN_NGRAMS), 1 / math.sqrt(F.MIN_NGRAMS))


def _weights(**kw: object) -> WeightsFile:
    dense = [0.0] * F.DENSE
    dense[F.DENSE_NAMES.index("digit_frac")] = 1.0
    base = {
        "version": 3,
        "word_bits": F.WORD_BITS,
        "char_bits": F.CHAR_BITS,
        "dense_names": list(F.DENSE_NAMES),
        "dense": dense,
        "hashed": [0.0] * (F.WORD_BUCKETS + F.CHAR_BUCKETS),
        "quantiles": [i / 100 for i in range(101)],
    }
    return msgspec.convert({**base, **kw}, WeightsFile)


def test_scorer_clips_dense_signals_into_the_training_range() -> None:
    text = "1234567890" * 20  # digit share 1.0
    assert Scorer(_weights()).logit(text) == pytest.approx(1.0)
    clipped = Scorer(_weights(dense_lo=[0.0] * F.DENSE, dense_hi=[0.25] * F.DENSE))
    assert clipped.logit(text) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="truncated"):
        Scorer(_weights(dense_lo=[0.0] * 3, dense_hi=[1.0] * 3))
    with pytest.raises(ValueError, match="feature layout"):
        Scorer(_weights(word_bits=F.WORD_BITS + 1))


def test_out_of_fold_scores_every_prompt_by_a_model_blind_to_its_subject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole-data-set figures of ``make eval-routing`` score each training prompt with a model
    selected and fitted without the prompt's subject; the scores are percentiles of that model."""
    rows = _synthetic(range(10), 5)
    x = T.design([r.prompt for r in rows])
    seen: list[set[str]] = []
    select, build = T.select, T.build

    def spy_select(train: list[Row], xt: np.ndarray, grid: T.Grid) -> T.Selection:
        seen.append({r.subject for r in train})
        return select(train, xt, grid)

    def spy_build(train: list[Row], *a: object) -> dict[str, object]:
        assert {r.subject for r in train} == seen[-1]  # the model is fitted on what selection saw
        return build(train, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(T, "select", spy_select)
    monkeypatch.setattr(T, "build", spy_build)
    scores = T.out_of_fold(rows, x, ([1.0], [0.0, 0.1], [0.0]), seed=7)
    folds = T.subject_folds(rows, 7)
    assert len(seen) == T.FOLDS
    for k, subjects in enumerate(seen):
        held = {r.subject for r, f in zip(rows, folds, strict=True) if f == k}
        assert held and not held & subjects and held | subjects == {r.subject for r in rows}
    assert np.all((scores >= 0) & (scores <= 1))
    hard = np.asarray(["derive" in r.prompt for r in rows])
    assert scores[hard].mean() > scores[~hard].mean() + 0.3  # the cue carries to unseen subjects
    assert evaluate(list(scores), rows).apgr > 0.6
