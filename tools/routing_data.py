"""The routing data sets (RouteLLM's MMLU, GSM8K and MT-Bench judgements) and the metrics a
complexity scorer is judged by; what ``tools.eval_routing`` reports and ``tools.train_router`` fits.

Data: ``$ROUTING_DATA`` (default ``../shared/data/routing`` beside the checkout). The evaluation
groups are all of GSM8K, all of MT-Bench, and 12 MMLU subjects (``EVAL_SUBJECTS``); training reads
the other 45 subjects (``load_train``).

Metric definitions follow RouteLLM's ``routellm/evals/evaluate.py`` and ``benchmarks.py``:
thresholds are the 11 decile edges of the router's scores (``pd.qcut(scores, 10)``); at each edge
every prompt whose score is ``>=`` the edge goes to the strong model (``>`` at the last edge, so one
point is all-weak); quality is the mean of the routed model's result; the curve is sorted by the
share of strong calls; APGR = (AUC - weak AUC) / (strong AUC - weak AUC) with the trapezoid rule;
CPT(x) interpolates the share of strong calls at which quality reaches weak + x * (strong - weak).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
EVAL_SUBJECTS = frozenset(
    {
        "abstract_algebra",
        "college_physics",
        "econometrics",
        "high_school_statistics",
        "high_school_us_history",
        "machine_learning",
        "marketing",
        "moral_scenarios",
        "nutrition",
        "professional_law",
        "virology",
        "world_religions",
    }
)
FIXTURES = ROOT / "tests" / "fixtures" / "routing"

csv.field_size_limit(1 << 24)


@dataclass(frozen=True, slots=True)
class Row:
    group: str  # "mmlu", "gsm8k", "mt-bench"
    subject: str  # MMLU subject, else the group
    prompt: str
    strong: float  # quality of the strong model's answer, 0..1
    weak: float

    @property
    def label(self) -> int:
        """1 when the strong model is needed (it did better than the weak one)."""
        return int(self.strong > self.weak)


def data_dir() -> Path:
    env = os.environ.get("ROUTING_DATA")
    return Path(env) if env else (ROOT.parent / "shared" / "data" / "routing")


def _contaminated(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with path.open() as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def _bool(v: str) -> float:
    return 1.0 if v.strip() == "True" else 0.0


def load_mmlu(base: Path, subjects: Callable[[str], bool]) -> list[Row]:
    root = base / "routellm" / "mmlu"
    bad = _contaminated(root / "contaminated_prompts.jsonl")
    rows: list[Row] = []
    for path in sorted((root / "responses").glob("mmlu_*.csv")):
        subject = path.stem[len("mmlu_") :]
        if not subjects(subject):
            continue
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                if r["prompt"] not in bad:
                    rows.append(Row("mmlu", subject, r["prompt"], _bool(r[STRONG]), _bool(r[WEAK])))
    return rows


def load_gsm8k(base: Path) -> list[Row]:
    root = base / "routellm" / "gsm8k"
    bad = _contaminated(root / "contaminated_prompts.jsonl")
    with (root / "gsm8k_responses.csv").open(newline="") as f:
        return [
            Row("gsm8k", "gsm8k", r["prompt"], _bool(r[STRONG]), _bool(r[WEAK]))
            for r in csv.DictReader(f)
            if r["prompt"] not in bad
        ]


def load_mt_bench(base: Path) -> list[Row]:
    root = base / "routellm" / "mt_bench"
    bad = _contaminated(root / "contaminated_prompts.jsonl")
    grades: dict[tuple[int, str], list[float]] = {}
    with (root / "judgements.jsonl").open() as f:
        for line in f:
            j = json.loads(line)
            grades.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]))
    rows: list[Row] = []
    with (root / "question.jsonl").open() as f:
        for line in f:
            q = json.loads(line)
            turns = q["turns"]
            if turns[0] in bad or (len(turns) > 1 and turns[1] in bad):
                continue
            s, w = grades[(q["question_id"], STRONG)], grades[(q["question_id"], WEAK)]
            # route on turn 1; quality = mean grade over both turns, on 0..1
            rows.append(Row("mt-bench", "mt-bench", turns[0], sum(s) / len(s) / 10, sum(w) / len(w) / 10))
    return rows


def load_eval(base: Path | None = None) -> list[Row]:
    base = base or data_dir()
    return load_mmlu(base, lambda s: s in EVAL_SUBJECTS) + load_gsm8k(base) + load_mt_bench(base)


def load_train(base: Path | None = None) -> list[Row]:
    return load_mmlu(base or data_dir(), lambda s: s not in EVAL_SUBJECTS)


def load_rows_jsonl(path: Path) -> list[Row]:
    with path.open() as f:
        return [Row(**json.loads(line)) for line in f if line.strip()]


def load_arena_hard(base: Path | None = None) -> list[str]:
    with ((base or data_dir()) / "arena-hard-v0.1" / "question.jsonl").open() as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def load_everyday() -> list[str]:
    return (FIXTURES / "everyday_prompts.txt").read_text().strip().split("\n")


# ------------------------------------------------------------------------------------ metrics
@dataclass(frozen=True, slots=True)
class Result:
    apgr: float
    cpt50: float  # % strong calls to recover 50% of the gap
    cpt80: float
    strong_for_95: float  # % strong calls to reach 95% of the strong model's quality
    weak_quality: float
    strong_quality: float


def _trapezoid(y: Sequence[float], x: Sequence[float]) -> float:
    return sum((x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2 for i in range(1, len(x)))


def _interp(v: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """``np.interp(v, xs, ys)``: clamps outside, linear inside (xs assumed increasing, as numpy
    does: RouteLLM feeds it the quality curve, which is nearly but not always monotone)."""
    if v <= xs[0]:
        return ys[0]
    if v >= xs[-1]:
        return ys[-1]
    for i in range(1, len(xs)):
        if v < xs[i] or (v == xs[i]):
            x0, x1 = xs[i - 1], xs[i]
            if x1 == x0:
                return ys[i]
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (v - x0) / (x1 - x0)
    return ys[-1]


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    # numpy's default ("linear") quantile, which pandas' qcut uses for its edges
    pos = (len(sorted_vals) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def evaluate(scores: Sequence[float], rows: Sequence[Row], num_results: int = 10) -> Result:
    n = len(rows)
    ordered = sorted(scores)
    edges = [_quantile(ordered, i / num_results) for i in range(num_results + 1)]
    points: list[tuple[float, float]] = []
    for i, t in enumerate(edges):
        last = i == len(edges) - 1
        strong_n = 0
        total = 0.0
        for s, r in zip(scores, rows, strict=True):
            if s > t or (s == t and not last):
                strong_n += 1
                total += r.strong
            else:
                total += r.weak
        points.append((strong_n / n * 100, total / n * 100))
    points.sort(key=lambda p: p[0])
    pct = [p[0] for p in points]
    acc = [p[1] for p in points]
    weak_q = sum(r.weak for r in rows) / n * 100
    strong_q = sum(r.strong for r in rows) / n * 100
    x = [p / 100 for p in pct]
    auc = _trapezoid(acc, x)
    weak_auc = _trapezoid([weak_q] * len(x), x)
    strong_auc = _trapezoid([strong_q] * len(x), x)
    gap = strong_q - weak_q
    return Result(
        apgr=(auc - weak_auc) / (strong_auc - weak_auc),
        cpt50=_interp(weak_q + 0.5 * gap, acc, pct),
        cpt80=_interp(weak_q + 0.8 * gap, acc, pct),
        strong_for_95=_interp(0.95 * strong_q, acc, pct),
        weak_quality=weak_q,
        strong_quality=strong_q,
    )


def random_baseline(rows: Sequence[Row], seeds: Iterable[int] = range(20)) -> Result:
    """Mean over seeds of a router that scores each prompt at random (RouteLLM's ``random``)."""
    import random

    results = []
    for seed in seeds:
        rnd = random.Random(seed)
        results.append(evaluate([rnd.random() for _ in rows], rows))
    k = len(results)
    return Result(*(sum(getattr(r, f) for r in results) / k for f in Result.__dataclass_fields__))


def length_scores(rows: Sequence[Row]) -> list[float]:
    return [float(len(r.prompt)) for r in rows]
