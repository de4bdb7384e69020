"""The learned complexity scorer, weights from a JSON file: a linear model over ``features`` plus a
few shallow regression trees over its dense signals (interactions a linear model cannot draw, such
as "long *and* full of numbers").

``score(text)`` answers how likely the prompt needs the strong model, as a percentile of the
training prompts (0.8 = harder than 80% of what it was trained on). A percentile is a stable scale
for the thresholds in the routing config: retraining moves raw logits, not percentiles.

Weights are plain JSON (no pickle), produced by ``tools/train_router.py``.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import msgspec

from services.router import features as F

DEFAULT_WEIGHTS = Path(__file__).with_name("weights.json")


class WeightsFile(msgspec.Struct):
    version: int
    word_bits: int
    char_bits: int
    dense_names: list[str]
    dense: list[float]
    hashed: list[float]  # WORD_BUCKETS + CHAR_BUCKETS weights, word block first
    quantiles: list[float]  # logits at percentiles 0, 1, ..., 100 of the training prompts
    # the usual range of each dense signal over the training prompts (1st..99th percentile): a
    # prompt outside it (a greeting has a punctuation share few training prompts have) is
    # clipped into it, so the linear model is not asked to extrapolate
    dense_lo: list[float] = []
    dense_hi: list[float] = []
    # boosted regression trees over the dense signals (raw values, unclipped: a tree does not
    # extrapolate), summed into the logit. A tree is a list of nodes [dense index, threshold, left,
    # right, value]: an inner node sends a prompt left when its signal is <= the threshold; a leaf
    # (dense index -1) adds its value. Node 0 is the root. Files without trees are linear only.
    trees: list[list[list[float]]] = []
    trained_on: str = ""
    metrics: dict[str, float] = {}


class Scorer:
    __slots__ = ("_dense", "_hashed", "_hi", "_lo", "_quantiles", "_trees", "meta")

    def __init__(self, w: WeightsFile) -> None:
        if (w.word_bits, w.char_bits, tuple(w.dense_names)) != (F.WORD_BITS, F.CHAR_BITS, F.DENSE_NAMES):
            raise ValueError("weights were trained for another feature layout: run `make train-router`")
        if len(w.hashed) != F.WORD_BUCKETS + F.CHAR_BUCKETS or len(w.quantiles) != 101:
            raise ValueError("weights file is truncated")
        lo = w.dense_lo or [-math.inf] * F.DENSE
        hi = w.dense_hi or [math.inf] * F.DENSE
        if not len(w.dense) == len(lo) == len(hi) == F.DENSE:
            raise ValueError("weights file is truncated")
        self._lo, self._hi = lo, hi
        self._dense = w.dense
        # index the hashed weights by feature index so the hot loop is one list lookup
        self._hashed = [0.0] * F.DENSE + list(w.hashed)
        self._quantiles = w.quantiles
        self._trees = parse_trees(w.trees)
        self.meta = w

    @classmethod
    def load(cls, path: str | Path | None = None) -> Scorer:
        data = Path(path or DEFAULT_WEIGHTS).read_bytes()
        return cls(msgspec.json.decode(data, type=WeightsFile))

    def logit(self, text: str) -> float:
        dense, idx = F.features(text)
        z = 0.0
        for d, w, lo, hi in zip(dense, self._dense, self._lo, self._hi, strict=True):
            z += w * (lo if d < lo else hi if d > hi else d)
        if idx:
            sw, sc = F.block_scale(idx)
            hw = self._hashed
            zw = zc = 0.0
            for i in idx:
                if F.is_char_index(i):
                    zc += hw[i]
                else:
                    zw += hw[i]
            z += zw * sw + zc * sc
        return z + tree_sum(self._trees, dense) if self._trees else z

    def percentile(self, z: float) -> float:
        q = self._quantiles
        if z <= q[0]:
            return 0.0
        if z >= q[-1]:
            return 1.0
        k = bisect.bisect_right(q, z)
        lo, hi = q[k - 1], q[k]
        frac = (z - lo) / (hi - lo) if hi > lo else 0.0
        return round((k - 1 + frac) / 100.0, 4)

    def score(self, text: str) -> float:
        return self.percentile(self.logit(text))


_Tree = tuple[list[int], list[float], list[int], list[int], list[float]]


def tree_sum(trees: list[_Tree], dense: list[float]) -> float:
    """The trees' part of the logit for one prompt's dense signals. The training tool computes its
    score percentiles with this too, so what was trained is what runs."""
    z = 0.0
    for feature, threshold, left, right, value in trees:
        k = 0
        while feature[k] >= 0:
            k = left[k] if dense[feature[k]] <= threshold[k] else right[k]
        z += value[k]
    return z


def parse_trees(trees: list[list[list[float]]]) -> list[_Tree]:
    return [_tree(t) for t in trees]


def _tree(nodes: list[list[float]]) -> _Tree:
    """One tree as five parallel lists (feature, threshold, left, right, value), checked once so
    the walk at run time cannot index out of range or loop."""
    n = len(nodes)
    if n == 0 or any(len(node) != 5 for node in nodes):
        raise ValueError("weights file has a malformed tree")
    feature = [int(node[0]) for node in nodes]
    left = [int(node[2]) for node in nodes]
    right = [int(node[3]) for node in nodes]
    for k in range(n):
        if feature[k] >= 0 and not (feature[k] < F.DENSE and k < left[k] < n and k < right[k] < n):
            raise ValueError("weights file has a malformed tree")
    return feature, [node[1] for node in nodes], left, right, [node[4] for node in nodes]
