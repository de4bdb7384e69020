"""Train the complexity scorer and write ``services/router/weights.json``.

    python -m tools.train_router            (``make train-router``)

Trains only on the 45 MMLU training subjects; the evaluation groups (GSM8K, MT-Bench and 12 MMLU
subjects, see ``tools/eval_routing.py``) are never read here. The regularisation strength is chosen
by cross-validation *by subject* (whole subjects held out per fold), because a random split leaks:
prompts of one subject look alike.

The model is linear over the features in ``services/router/features.py``, fitted by least squares
on the quality gain ``strong - weak`` (-1, 0 or 1 per prompt) with L2, by full-batch Adam on a
sparse matrix built from numpy index arrays. The gain, rather than the 0/1 label "strong did
better", is what routing trades for: prompts where the weak model beats the strong one count
against sending them to the strong one. (Cross-validated by subject, the 0/1 logistic label scored
below random here; the gain target above prompt length.) The process is deterministic: the same
data gives the same file.
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

SEED = 20240403
FOLDS = 5


class Matrix:
    """A CSR-like sparse matrix: just the products logistic regression needs."""

    def __init__(self, rows: Sequence[Row]) -> None:
        dense, r_idx, c_idx, vals = [], [], [], []
        for i, row in enumerate(rows):
            d, idx = F.features(row.prompt)
            dense.append(d)
            sw, sc = F.block_scale(idx)
            for j in idx:
                r_idx.append(i)
                c_idx.append(j - F.DENSE)
                vals.append(sc if F.is_char_index(j) else sw)
        self.n = len(rows)
        self.dense = np.asarray(dense, dtype=np.float64)
        self.r = np.asarray(r_idx, dtype=np.int64)
        self.c = np.asarray(c_idx, dtype=np.int64)
        self.v = np.asarray(vals, dtype=np.float64)
        self.h = F.WORD_BUCKETS + F.CHAR_BUCKETS

    def take(self, mask: np.ndarray) -> Matrix:
        out = object.__new__(Matrix)
        keep = mask[self.r]
        remap = np.cumsum(mask) - 1
        out.n = int(mask.sum())
        out.dense = self.dense[mask]
        out.r, out.c, out.v = remap[self.r[keep]], self.c[keep], self.v[keep]
        out.h = self.h
        return out

    def dot(self, wd: np.ndarray, wh: np.ndarray) -> np.ndarray:
        return self.dense @ wd + np.bincount(self.r, self.v * wh[self.c], minlength=self.n)

    def tdot(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.dense.T @ g, np.bincount(self.c, self.v * g[self.r], minlength=self.h)


def fit(x: Matrix, y: np.ndarray, lam_hashed: float, lam_dense: float = 1e-3,
        steps: int = 300, lr: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    wd = np.zeros(x.dense.shape[1])
    wd[0] = y.mean()  # the bias starts at the mean gain
    wh = np.zeros(x.h)
    params = [wd, wh]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        gd, gh = x.tdot((x.dot(wd, wh) - y) / x.n)
        grads = [gd + lam_dense * wd, gh + lam_hashed * wh]
        for k, g in enumerate(grads):
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            params[k] -= lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
    return wd, wh


def cross_validate(rows: list[Row], x: Matrix, y: np.ndarray, lam: float) -> float:
    subjects = sorted({r.subject for r in rows})
    rng = np.random.default_rng(SEED)
    rng.shuffle(subjects)
    fold_of = {s: i % FOLDS for i, s in enumerate(subjects)}
    folds = np.asarray([fold_of[r.subject] for r in rows])
    apgrs = []
    for k in range(FOLDS):
        test = folds == k
        wd, wh = fit(x.take(~test), y[~test], lam)
        z = x.take(test).dot(wd, wh)
        held = [r for r, t in zip(rows, test, strict=True) if t]
        apgrs.append(evaluate(list(z), held).apgr)
    return float(np.mean(apgrs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--grid", default="3e-4,1e-3,1e-2", help="L2 strengths of the hashed block to try")
    args = ap.parse_args(argv)
    rows = load_train()
    if not rows:
        print(f"no training data under {data_dir()}", file=sys.stderr)
        return 1
    print(f"training rows: {len(rows)} from {len({r.subject for r in rows})} MMLU subjects")
    x = Matrix(rows)
    y = np.asarray([r.strong - r.weak for r in rows], dtype=np.float64)
    print(f"mean quality gain of the strong model: {y.mean():.3f}")
    base = cross_validate_length(rows)
    print(f"cv by subject, prompt length alone: APGR {base:.3f}")
    best = (-1.0, 0.0)
    for lam in (float(s) for s in args.grid.split(",")):
        score = cross_validate(rows, x, y, lam)
        print(f"cv by subject, lambda_hashed={lam:g}: APGR {score:.3f}")
        best = max(best, (score, lam))
    cv_apgr, lam = best
    wd, wh = fit(x, y, lam)
    z = np.sort(x.dot(wd, wh))
    quantiles = [float(np.quantile(z, q / 100)) for q in range(101)]
    out = {
        "version": 1,
        "word_bits": F.WORD_BITS,
        "char_bits": F.CHAR_BITS,
        "dense_names": list(F.DENSE_NAMES),
        "dense": [round(float(w), 5) for w in wd],
        "hashed": [round(float(w), 4) for w in wh],
        "quantiles": [round(q, 5) for q in quantiles],
        "trained_on": "RouteLLM MMLU responses, 45 training subjects (evaluation groups excluded)",
        "metrics": {"cv_apgr": round(cv_apgr, 4), "lambda_hashed": lam, "rows": len(rows)},
    }
    Path(args.out).write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"chose lambda_hashed={lam:g} (cv APGR {cv_apgr:.3f}); wrote {args.out}")
    return 0


def cross_validate_length(rows: list[Row]) -> float:
    subjects = sorted({r.subject for r in rows})
    rng = np.random.default_rng(SEED)
    rng.shuffle(subjects)
    fold_of = {s: i % FOLDS for i, s in enumerate(subjects)}
    apgrs = []
    for k in range(FOLDS):
        held = [r for r in rows if fold_of[r.subject] == k]
        apgrs.append(evaluate(length_scores(held), held).apgr)
    return float(np.mean(apgrs))


if __name__ == "__main__":
    sys.exit(main())
