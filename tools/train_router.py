"""Train the complexity scorer and write ``services/router/weights.json``.

    python -m tools.train_router            (``make train-router``)

Data: only the 45 MMLU training subjects; the evaluation groups (GSM8K, MT-Bench and 12 MMLU
subjects, see ``tools/eval_routing.py``) are never read here.

Model: linear over the features of ``services/router/features.py`` (dense signals plus hashed word
and character n-grams), in two parts, both fitted in numpy (closed form, deterministic):

- a ridge regression on the strong model's quality gain ``strong - weak`` (-1, 0 or 1 per prompt)
  *minus the mean gain of the prompt's subject*. Across subjects the mean gain mostly tells which
  subject a prompt comes from (and partly how the subject was graded: the strong model scores below
  chance on high-school mathematics), and a model fitted to it learns subject identity, which does
  not carry over to prompts of other kinds. Within a subject the gain tells which prompts of the
  same kind need the strong model; those cues are what should transfer.
- plus ``alpha`` times the prompt length (``log_chars``), the one signal known to rank whole kinds of
  prompts (prompt length alone is the baseline every router is compared with).

Model selection: the L2 strength of the hashed block and ``alpha`` are chosen together by
cross-validation *by subject* (whole subjects held out, 5 folds, 3 seeded shuffles), never on the
evaluation groups. The score scale stays a percentile of the training prompts' logits
(``quantiles``), so the thresholds in ``services/router/routing.yaml`` keep their meaning after
retraining. The dense signals' 1st..99th percentiles are written too: serving clips into them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.router import features as F
from services.router.scorer import DEFAULT_WEIGHTS
from tools.eval_routing import Row, data_dir, evaluate, length_scores, load_train

SEEDS = (20240403, 1, 2)
FOLDS = 5
LAMBDA_DENSE = 1000.0  # L2 on the standardised dense signals other than the length
LAMBDA_LENGTH = 1e-3  # the prompt length (log chars) is left practically free
LAMBDAS = "30,100,300,1000"  # L2 strengths of the hashed block to try
ALPHAS = "0,0.03,0.1,0.3,1"  # weights of the added length term to try
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


def demeaned_gain(rows: Sequence[Row]) -> np.ndarray:
    """strong - weak, minus the mean of that over the prompt's subject."""
    gain = np.asarray([r.strong - r.weak for r in rows], dtype=np.float64)
    subjects = np.asarray([r.subject for r in rows])
    out = gain.copy()
    for s in np.unique(subjects):
        m = subjects == s
        out[m] -= gain[m].mean()
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


def fit(x_raw: np.ndarray, y: np.ndarray, lam_hashed: float, alpha: float) -> np.ndarray:
    """Raw-feature weights (bias first): ridge on standardised dense columns, plus alpha * length."""
    st = Standardizer(x_raw)
    x = st.apply(x_raw)
    beta = st.fold(ridge(x.T @ x, x.T @ y, penalty(lam_hashed)))
    beta[LENGTH] += alpha
    return beta


def subject_folds(rows: Sequence[Row], seed: int) -> np.ndarray:
    subjects = sorted({r.subject for r in rows})
    rng = np.random.default_rng(seed)
    rng.shuffle(subjects)
    fold_of = {s: i % FOLDS for i, s in enumerate(subjects)}
    return np.asarray([fold_of[r.subject] for r in rows])


def cross_validate(
    rows: Sequence[Row], x: np.ndarray, lams: Sequence[float], alphas: Sequence[float]
) -> dict[tuple[float, float], float]:
    """Mean APGR on held-out subjects per (hashed L2, alpha); key (0, -1): prompt length alone."""
    scores: dict[tuple[float, float], list[float]] = {(0.0, -1.0): []}
    for seed in SEEDS:
        folds = subject_folds(rows, seed)
        for k in range(FOLDS):
            test = folds == k
            train = [r for r, t in zip(rows, test, strict=True) if not t]
            held = [r for r, t in zip(rows, test, strict=True) if t]
            st = Standardizer(x[~test])
            xt = st.apply(x[~test])
            y = demeaned_gain(train)
            gram, xty = xt.T @ xt, xt.T @ y
            for lam in lams:
                z = x[test] @ st.fold(ridge(gram, xty, penalty(lam)))
                for alpha in alphas:
                    apgr = evaluate(list(z + alpha * x[test, LENGTH]), held).apgr
                    scores.setdefault((lam, alpha), []).append(apgr)
            scores[(0.0, -1.0)].append(evaluate(length_scores(held), held).apgr)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--lambdas", default=LAMBDAS, help="L2 strengths of the hashed block to try")
    ap.add_argument("--alphas", default=ALPHAS, help="weights of the added length term to try")
    args = ap.parse_args(argv)
    rows = load_train()
    if not rows:
        print(f"no training data under {data_dir()}", file=sys.stderr)
        return 1
    print(f"training rows: {len(rows)} from {len({r.subject for r in rows})} MMLU subjects")
    x = design([r.prompt for r in rows])
    lams = [float(s) for s in args.lambdas.split(",")]
    alphas = [float(s) for s in args.alphas.split(",")]
    cv = cross_validate(rows, x, lams, alphas)
    length = cv.pop((0.0, -1.0))
    print(f"cv by subject ({FOLDS} folds x {len(SEEDS)} shuffles), prompt length alone: APGR {length:.3f}")
    for (lam, alpha), apgr in cv.items():
        print(f"cv by subject, lambda_hashed={lam:g} alpha={alpha:g}: APGR {apgr:.3f}")
    (lam, alpha), cv_apgr = max(cv.items(), key=lambda kv: (kv[1], kv[0]))
    beta = fit(x, demeaned_gain(rows), lam, alpha)
    z = x @ beta
    lo = np.quantile(x[:, : F.DENSE], CLIP, axis=0)
    hi = np.quantile(x[:, : F.DENSE], 1 - CLIP, axis=0)
    out = {
        "version": 2,
        "word_bits": F.WORD_BITS,
        "char_bits": F.CHAR_BITS,
        "dense_names": list(F.DENSE_NAMES),
        "dense": [round(float(w), 6) for w in beta[: F.DENSE]],
        "hashed": [round(float(w), 5) for w in beta[F.DENSE :]],
        "quantiles": [round(float(np.quantile(z, q / 100)), 6) for q in range(101)],
        "dense_lo": [round(float(v), 6) for v in lo],
        "dense_hi": [round(float(v), 6) for v in hi],
        "trained_on": "RouteLLM MMLU responses, 45 training subjects (evaluation groups excluded); "
        "target: quality gain minus its subject mean, plus a length term",
        "metrics": {
            "cv_apgr": round(cv_apgr, 4),
            "cv_apgr_length": round(length, 4),
            "lambda_hashed": lam,
            "alpha_length": alpha,
            "rows": len(rows),
        },
    }
    Path(args.out).write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"chose lambda_hashed={lam:g} alpha={alpha:g} (cv APGR {cv_apgr:.3f}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
