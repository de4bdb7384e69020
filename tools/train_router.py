"""Train the complexity scorer and write ``services/router/weights.json``.

    python -m tools.train_router            (``make train-router``)

Data: only the 45 MMLU training subjects; the evaluation groups (GSM8K, MT-Bench and 12 MMLU
subjects, see ``tools/routing_data.py``) are never read here.

Model: a linear part over the features of ``services/router/features.py`` (dense signals plus hashed
word and character n-grams) and a few shallow boosted regression trees over the dense signals alone,
both fitted to the same target:

- the strong model's quality gain ``strong - weak`` (-1, 0 or 1 per prompt) *minus the mean gain of
  the prompt's subject*. Across subjects the mean gain mostly tells which subject a prompt comes
  from (and partly how the subject was graded: the strong model scores below chance on high-school
  mathematics), and a model fitted to it learns subject identity, which does not carry over to
  prompts of other kinds. Within a subject the gain tells which prompts of the same kind need the
  strong model; those cues are what should transfer.
- the linear part is a ridge regression (numpy, closed form) on features *also* centred within
  each subject (the fixed-effects estimator): what a subject's prompts share in common (its
  vocabulary, its usual length) says nothing about which of them are hard, and left in it only adds
  noise to the within-subject slopes. Serving applies the weights to the raw features.
- the trees (scikit-learn's gradient boosting, depth 2) see interactions of the dense signals a
  linear model cannot, such as "long *and* full of numbers"; they are weighted by ``gamma`` times the
  ratio of the linear part's spread to theirs, so ``gamma`` reads the same whatever the scales.
- plus ``alpha`` times the prompt length (``log_chars``), the one signal known to rank whole kinds of
  prompts (prompt length alone is the baseline every router is compared with).

Model selection: the L2 strength of the hashed block, ``alpha`` and ``gamma`` are chosen together by
cross-validation, never on the evaluation groups, under two held-out schemes averaged: whole
subjects held out (5 folds, 3 seeded shuffles), like the 12 held-out MMLU subjects; and whole MMLU
categories held out (STEM, humanities, social sciences, other; 4 folds), a larger shift, like
GSM8K and MT-Bench against MMLU. Subject folds alone favour the n-grams (within MMLU, the
vocabulary of a neighbouring subject still helps); category folds favour length and the trees.

The score scale stays a percentile of the training prompts' logits (``quantiles``), so the
thresholds in ``services/router/routing.yaml`` keep their meaning after retraining. The dense
signals' 1st..99th percentiles are written too: serving clips the linear part's inputs into them.
Every step is deterministic: retraining reproduces the file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from services.router import features as F
from services.router.scorer import DEFAULT_WEIGHTS, Scorer, WeightsFile
from tools.routing_data import Row, data_dir, evaluate, length_scores, load_train

SEEDS = (20240403, 1, 2)
FOLDS = 5
LAMBDA_DENSE = 1000.0  # L2 on the standardised dense signals other than the length
LAMBDA_LENGTH = 1e-3  # the prompt length (log chars) is left practically free
LAMBDAS = "100,300,1000,3000"  # L2 strengths of the hashed block to try
ALPHAS = "0.1,0.3,0.5,1,2,3"  # weights of the added length term to try
GAMMAS = "0,1,2,3,5,8"  # weights of the trees (relative to the linear part's spread) to try
TREES = 100
TREE_DEPTH = 2
TREE_RATE = 0.05
TREE_LEAF = 100  # fewest training prompts in a leaf: a tree rule must hold for many prompts
# the dense signals the trees may split on: not the word-length ones. Within an MMLU subject,
# questions in plain short words are often the harder ones, and trees (which, unlike the linear
# part, are not clipped into the training range) carried that to chat: "Hi!" and "Tell me a joke."
# scored like arena-hard prompts (mean percentile 0.55 against 0.55). Without them everyday chat
# scores well below arena-hard again, at a cost of 0.01 in subject-held-out cross-validation.
TREE_SIGNALS = tuple(n for n in F.DENSE_NAMES if n not in ("bias", "avg_word_len", "long_word_frac"))
CLIP = 0.01  # serving clips dense signals to their CLIP..1-CLIP quantiles over the training prompts
LENGTH = F.DENSE_NAMES.index("log_chars")


def design(texts: Sequence[str]) -> np.ndarray:
    """The feature matrix, one column per feature index of ``services.router.features``."""
    x = np.zeros((len(texts), F.DIM), dtype=np.float64)
    for i, text in enumerate(texts):
        d, idx = F.features(text)
        x[i, : F.DENSE] = d
        sw, sc = F.block_scale(idx)
        for j in idx:
            x[i, j] = sc if F.is_char_index(j) else sw
    return x


def subjects_of(rows: Sequence[Row]) -> np.ndarray:
    return np.asarray([r.subject for r in rows])


def demeaned_gain(rows: Sequence[Row]) -> np.ndarray:
    """strong - weak, minus the mean of that over the prompt's subject."""
    gain = np.asarray([r.strong - r.weak for r in rows], dtype=np.float64)
    return within(gain[:, None], subjects_of(rows))[:, 0]


def within(x: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """``x`` with each column's mean over the row's subject taken out."""
    out = x.copy()
    for s in np.unique(subjects):
        m = subjects == s
        out[m] -= x[m].mean(axis=0)
    return out


class Standardizer:
    """Centres and scales the dense columns (not the bias, not the hashed block) so one L2 strength
    fits them all; ``fold`` turns weights on the scaled columns back into weights on raw features."""

    def __init__(self, x: np.ndarray) -> None:
        self.mu = np.zeros(x.shape[1])
        self.sd = np.ones(x.shape[1])
        self.mu[1 : F.DENSE] = x[:, 1 : F.DENSE].mean(axis=0)
        self.sd[1 : F.DENSE] = x[:, 1 : F.DENSE].std(axis=0) + 1e-9

    def apply(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mu) / self.sd

    def fold(self, beta: np.ndarray) -> np.ndarray:
        raw = beta / self.sd
        raw[0] = beta[0] - float(np.sum(beta * self.mu / self.sd))
        return raw


def penalty(lam_hashed: float) -> np.ndarray:
    p = np.full(F.DIM, lam_hashed)
    p[: F.DENSE] = LAMBDA_DENSE
    p[0] = 0.0
    p[LENGTH] = LAMBDA_LENGTH
    return p


def ridge(gram: np.ndarray, xty: np.ndarray, pen: np.ndarray) -> np.ndarray:
    """argmin |X b - y|^2 + sum(pen * b^2), from X'X and X'y."""
    return np.linalg.solve(gram + np.diag(pen), xty)


class Linear:
    """The fixed-effects ridge for one training set: the Gram matrix of the standardised features
    centred within subject, solved once per L2 strength."""

    def __init__(self, x_raw: np.ndarray, y: np.ndarray, subjects: np.ndarray) -> None:
        self.st = Standardizer(x_raw)
        xw = within(self.st.apply(x_raw), subjects)
        xw[:, 0] = 1.0  # the bias column stays (its weight is the mean of y, about 0)
        self.gram, self.xty = xw.T @ xw, xw.T @ y

    def weights(self, lam_hashed: float) -> np.ndarray:
        """Raw-feature weights, bias first."""
        return self.st.fold(ridge(self.gram, self.xty, penalty(lam_hashed)))


def fit(
    x_raw: np.ndarray, y: np.ndarray, subjects: np.ndarray, lam_hashed: float, alpha: float
) -> np.ndarray:
    """The linear part's raw-feature weights (bias first), plus alpha * length."""
    beta = Linear(x_raw, y, subjects).weights(lam_hashed)
    beta[LENGTH] += alpha
    return beta


def tree_columns() -> list[int]:
    return [F.DENSE_NAMES.index(n) for n in TREE_SIGNALS]


def fit_trees(x_raw: np.ndarray, y: np.ndarray) -> GradientBoostingRegressor:
    """Boosted depth-2 trees on the dense signals named in ``TREE_SIGNALS``."""
    gb = GradientBoostingRegressor(
        n_estimators=TREES,
        max_depth=TREE_DEPTH,
        learning_rate=TREE_RATE,
        min_samples_leaf=TREE_LEAF,
        random_state=0,
    )
    return gb.fit(x_raw[:, tree_columns()], y)


def predict_trees(gb: GradientBoostingRegressor, x_raw: np.ndarray) -> np.ndarray:
    return np.asarray(gb.predict(x_raw[:, tree_columns()]))


def tree_scale(z_linear: np.ndarray, gb: GradientBoostingRegressor, x_raw: np.ndarray) -> float:
    """Ratio of the linear part's spread to the trees', over the training prompts."""
    return float(z_linear.std() / (predict_trees(gb, x_raw).std() + 1e-12))


def export_trees(gb: GradientBoostingRegressor, weight: float) -> list[list[list[float]]]:
    """The trees as the weights file stores them (see ``services.router.scorer.WeightsFile``),
    each leaf's value times the learning rate and ``weight``; the constant the ensemble starts
    from is left out (a shift of every logit changes no ranking, and the percentiles are taken on
    the same logits)."""
    out = []
    columns = tree_columns()
    for est in gb.estimators_[:, 0]:
        t = est.tree_
        nodes = []
        for k in range(t.node_count):
            left, right = int(t.children_left[k]), int(t.children_right[k])
            if left < 0:
                nodes.append([-1, 0.0, -1, -1, round(float(t.value[k, 0, 0]) * TREE_RATE * weight, 7)])
            else:
                nodes.append([columns[int(t.feature[k])], float(t.threshold[k]), left, right, 0.0])
        out.append(nodes)
    return out


# MMLU's own grouping of its subjects (Hendrycks et al., categories.py of the MMLU repository)
CATEGORIES = {
    "stem": (
        "abstract_algebra astronomy college_biology college_chemistry college_computer_science "
        "college_mathematics college_physics computer_security conceptual_physics "
        "electrical_engineering elementary_mathematics high_school_biology high_school_chemistry "
        "high_school_computer_science high_school_mathematics high_school_physics "
        "high_school_statistics machine_learning"
    ),
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history high_school_world_history "
        "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
        "prehistory professional_law world_religions"
    ),
    "social_sciences": (
        "econometrics high_school_geography high_school_government_and_politics "
        "high_school_macroeconomics high_school_microeconomics high_school_psychology "
        "human_sexuality professional_psychology public_relations security_studies sociology "
        "us_foreign_policy"
    ),
    "other": (
        "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging "
        "management marketing medical_genetics miscellaneous nutrition professional_accounting "
        "professional_medicine virology"
    ),
}
CATEGORY_OF = {s: c for c, names in CATEGORIES.items() for s in names.split()}


def subject_folds(rows: Sequence[Row], seed: int) -> np.ndarray:
    subjects = sorted({r.subject for r in rows})
    rng = np.random.default_rng(seed)
    rng.shuffle(subjects)
    fold_of = {s: i % FOLDS for i, s in enumerate(subjects)}
    return np.asarray([fold_of[r.subject] for r in rows])


def category_folds(rows: Sequence[Row]) -> np.ndarray:
    """One fold per MMLU category; a subject outside the map is a category of its own."""
    names = sorted({CATEGORY_OF.get(r.subject, r.subject) for r in rows})
    return np.asarray([names.index(CATEGORY_OF.get(r.subject, r.subject)) for r in rows])


def fold_plans(rows: Sequence[Row]) -> dict[str, list[np.ndarray]]:
    """The held-out schemes model selection averages: fold assignments per scheme."""
    return {
        "subjects": [subject_folds(rows, seed) for seed in SEEDS],
        "categories": [category_folds(rows)],
    }


Key = tuple[float, float, float]


LENGTH_ONLY: Key = (0.0, -1.0, 0.0)


def cross_validate(
    rows: Sequence[Row],
    x: np.ndarray,
    lams: Sequence[float],
    alphas: Sequence[float],
    gammas: Sequence[float],
    plans: Sequence[np.ndarray],
) -> dict[Key, float]:
    """Mean APGR over the held-out folds of ``plans`` per (hashed L2, alpha, gamma); key
    ``LENGTH_ONLY``: prompt length alone."""
    scores: dict[Key, list[float]] = {LENGTH_ONLY: []}
    subjects = subjects_of(rows)
    for folds in plans:
        for k in np.unique(folds):
            test = folds == k
            train = [r for r, t in zip(rows, test, strict=True) if not t]
            held = [r for r, t in zip(rows, test, strict=True) if t]
            y = demeaned_gain(train)
            lin = Linear(x[~test], y, subjects[~test])
            gb = fit_trees(x[~test], y) if any(gammas) else None
            trees_held = predict_trees(gb, x[test]) if gb is not None else 0.0
            for lam in lams:
                beta = lin.weights(lam)
                z = x[test] @ beta
                scale = tree_scale(x[~test] @ beta, gb, x[~test]) if gb is not None else 0.0
                for alpha in alphas:
                    for gamma in gammas:
                        logit = z + alpha * x[test, LENGTH] + gamma * scale * trees_held
                        scores.setdefault((lam, alpha, gamma), []).append(evaluate(list(logit), held).apgr)
            scores[LENGTH_ONLY].append(evaluate(length_scores(held), held).apgr)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def build(
    rows: Sequence[Row],
    x: np.ndarray,
    lam: float,
    alpha: float,
    gamma: float,
    metrics: dict[str, float | int],
) -> dict[str, object]:
    """The weights file's content for a model fitted to ``rows`` (their feature matrix ``x``) with
    the given hyperparameters."""
    y, subjects = demeaned_gain(rows), subjects_of(rows)
    beta = fit(x, y, subjects, lam, alpha)
    trees: list[list[list[float]]] = []
    if gamma:
        gb = fit_trees(x, y)
        beta_linear = beta.copy()
        beta_linear[LENGTH] -= alpha
        trees = export_trees(gb, gamma * tree_scale(x @ beta_linear, gb, x))
    lo = np.quantile(x[:, : F.DENSE], CLIP, axis=0)
    hi = np.quantile(x[:, : F.DENSE], 1 - CLIP, axis=0)
    out: dict[str, object] = {
        "version": 3,
        "word_bits": F.WORD_BITS,
        "char_bits": F.CHAR_BITS,
        "dense_names": list(F.DENSE_NAMES),
        "dense": [round(float(w), 6) for w in beta[: F.DENSE]],
        "hashed": [round(float(w), 5) for w in beta[F.DENSE :]],
        "quantiles": [],  # below, from the logits the router computes
        "dense_lo": [round(float(v), 6) for v in lo],
        "dense_hi": [round(float(v), 6) for v in hi],
        "trees": trees,
        "trained_on": "RouteLLM MMLU responses, 45 training subjects (evaluation groups excluded); "
        "target: quality gain minus its subject mean; fixed-effects ridge plus depth-2 boosted "
        "trees on the dense signals, plus a length term",
        "metrics": metrics,
    }
    # the percentile scale, taken on the training prompts' logits as the router computes them (its
    # own scorer: clipped dense signals, the exported trees walked), so what was trained is what runs
    scorer = Scorer(msgspec.convert({**out, "quantiles": [q / 100 for q in range(101)]}, WeightsFile))
    z = np.asarray([scorer.logit(r.prompt) for r in rows])
    out["quantiles"] = [round(float(np.quantile(z, q / 100)), 6) for q in range(101)]
    return out


Grid = tuple[Sequence[float], Sequence[float], Sequence[float]]


@dataclass
class Selection:
    """Model selection's outcome: mean APGR per hyperparameter key, per held-out scheme and averaged
    over the schemes, prompt length alone per scheme, and the winning key."""

    by_scheme: dict[str, dict[Key, float]]
    length: dict[str, float]
    cv: dict[Key, float]
    best: Key


def select(rows: Sequence[Row], x: np.ndarray, grid: Grid) -> Selection:
    """Cross-validate every key of ``grid`` under both held-out schemes; the best mean wins (ties to
    the larger key, so the choice is deterministic)."""
    by_scheme = {name: cross_validate(rows, x, *grid, plans) for name, plans in fold_plans(rows).items()}
    length = {name: cv.pop(LENGTH_ONLY) for name, cv in by_scheme.items()}
    cv = {key: float(np.mean([c[key] for c in by_scheme.values()])) for key in by_scheme["subjects"]}
    best = max(cv.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return Selection(by_scheme, length, cv, best)


def out_of_fold(rows: Sequence[Row], x: np.ndarray, grid: Grid, seed: int = SEEDS[0]) -> np.ndarray:
    """A score for every training prompt from a model that never saw the prompt's subject: per
    subject fold, the hyperparameters are selected again on the other subjects alone (nested
    cross-validation), the model is built as ``main`` builds the shipped one, and the prompt gets
    that model's percentile score. Scores of different fold models are comparable because each is
    a percentile of its own training prompts, as the shipped model's are."""
    folds = subject_folds(rows, seed)
    out = np.zeros(len(rows))
    for k in range(FOLDS):
        held = folds == k
        train = [r for r, h in zip(rows, held, strict=True) if not h]
        lam, alpha, gamma = select(train, x[~held], grid).best
        scorer = Scorer(msgspec.convert(build(train, x[~held], lam, alpha, gamma, {}), WeightsFile))
        for i in np.flatnonzero(held):
            out[i] = scorer.score(rows[int(i)].prompt)
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def default_grid() -> Grid:
    return _floats(LAMBDAS), _floats(ALPHAS), _floats(GAMMAS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--lambdas", default=LAMBDAS, help="L2 strengths of the hashed block to try")
    ap.add_argument("--alphas", default=ALPHAS, help="weights of the added length term to try")
    ap.add_argument("--gammas", default=GAMMAS, help="weights of the trees to try (0: linear only)")
    args = ap.parse_args(argv)
    rows = load_train()
    if not rows:
        print(f"no training data under {data_dir()}", file=sys.stderr)
        return 1
    print(f"training rows: {len(rows)} from {len({r.subject for r in rows})} MMLU subjects")
    x = design([r.prompt for r in rows])
    grid = (_floats(args.lambdas), _floats(args.alphas), _floats(args.gammas))
    sel = select(rows, x, grid)
    by_scheme, length, cv = sel.by_scheme, sel.length, sel.cv
    ranked = sorted(cv.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    print("cv APGR, subjects held out / categories held out / mean:")
    print(f"  prompt length alone: {length['subjects']:.3f} / {length['categories']:.3f}")

    def line(key: Key) -> str:
        lam, alpha, gamma = key
        return (
            f"  lambda_hashed={lam:g} alpha={alpha:g} gamma={gamma:g}: {by_scheme['subjects'][key]:.3f}"
            f" / {by_scheme['categories'][key]:.3f} / {cv[key]:.3f}"
        )

    for key, _ in ranked[:10]:
        print(line(key))
    linear = [kv for kv in ranked if kv[0][2] == 0]
    if linear and linear[0] is not ranked[0]:
        print("best without trees:\n" + line(linear[0][0]))
    (lam, alpha, gamma), cv_apgr = sel.best, cv[sel.best]
    out = build(
        rows,
        x,
        lam,
        alpha,
        gamma,
        metrics={
            "cv_apgr": round(cv_apgr, 4),
            "cv_apgr_subjects": round(by_scheme["subjects"][(lam, alpha, gamma)], 4),
            "cv_apgr_categories": round(by_scheme["categories"][(lam, alpha, gamma)], 4),
            "cv_apgr_length_subjects": round(length["subjects"], 4),
            "cv_apgr_length_categories": round(length["categories"], 4),
            "lambda_hashed": lam,
            "alpha_length": alpha,
            "gamma_trees": gamma,
            "rows": len(rows),
        },
    )
    Path(args.out).write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(
        f"chose lambda_hashed={lam:g} alpha={alpha:g} gamma={gamma:g} (cv APGR {cv_apgr:.3f}); "
        f"wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
