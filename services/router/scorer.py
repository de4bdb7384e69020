"""The learned complexity scorer: a linear model over ``features``, weights from a JSON file.

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
    trained_on: str = ""
    metrics: dict[str, float] = {}


class Scorer:
    __slots__ = ("_dense", "_hashed", "_hi", "_lo", "_quantiles", "meta")

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
        return z

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

    def probability(self, text: str) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit(text)))
