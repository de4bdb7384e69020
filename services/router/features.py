"""Prompt features for the complexity scorer, in pure Python (no numpy at run time).

A prompt becomes a sparse vector: a few dense signals (lengths, code, math, question structure)
followed by hashed word uni/bi-grams and hashed character trigrams. Hashing uses ``zlib.crc32``,
which is stable across processes (``hash()`` on ``str`` is salted per process), so training and
serving agree on every index.

The same function feeds ``tools/train_router.py`` and the router, so what was trained is what runs.
"""

from __future__ import annotations

import math
import re
import zlib

# Layout of the feature space; the trained weights file records these and the scorer checks them.
WORD_BITS = 10
CHAR_BITS = 10
WORD_BUCKETS = 1 << WORD_BITS
CHAR_BUCKETS = 1 << CHAR_BITS
# n-grams are read from the head of long prompts only: that bounds the decision time, and the
# length signals below still see the whole text
MAX_CHARS = 2000
# character shares (digits, capitals, punctuation) are taken over at least this many characters
MIN_CHARS = 100
# the hashed blocks are scaled by 1/sqrt(active n-grams), with at least this many counted
MIN_NGRAMS = 64

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+|\bfunction\b|\breturn\b|\bimport \w+|#include|=>|\bconst \w+|"
    r"\bSELECT\b|\bpublic static\b|\bfn \w+\(|[{};]\s*$",
    re.MULTILINE,
)
_MATH = re.compile(r"\\frac|\\sum|\\int|\$[^$]+\$|\d\s*[-+*/^=<>]\s*\d|\b[xyzn]\s*[=^]|\d+%|√|∫|≤|≥")
# the answer template of multiple-choice benchmarks ("A. ...", a closing "Answer:"): the same in
# every training prompt, so it carries no signal, and seen by the n-grams it would make every
# prompt without it look unlike the training data
_TEMPLATE = re.compile(r"^[ \t]*\(?[A-D][.)][ \t]|\n?Answer:\s*\Z", re.MULTILINE)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_REASONING = re.compile(
    r"\b(prove|derive|explain why|step by step|analy[sz]e|compare|evaluate|design|implement|optimi[sz]e|"
    r"algorithm|complexity|debug|refactor|calculate|solve|estimate|justify|critique)\b"
)
_CHAT = re.compile(r"^(hi|hello|hey|thanks|thank you|good (morning|evening|night)|what is|who is|tell me)\b")
_CONSTRAINT = re.compile(r"\b(must|should|exactly|at least|at most|no more than|only|without|each|every)\b")

DENSE_NAMES = (
    "bias",
    "log_chars",
    "log_words",
    "log_lines",
    "digit_frac",
    "upper_frac",
    "punct_frac",
    "question_marks",
    "code_hits",
    "math_hits",
    "numbers",
    "reasoning_words",
    "chat_opening",
    "constraints",
    "avg_word_len",
    "long_word_frac",
    "sentences",
)
DENSE = len(DENSE_NAMES)
DIM = DENSE + WORD_BUCKETS + CHAR_BUCKETS
_WORD_BASE = DENSE
_CHAR_BASE = DENSE + WORD_BUCKETS
_WMASK = WORD_BUCKETS - 1
_CMASK = CHAR_BUCKETS - 1


def _log(n: float) -> float:
    return math.log1p(n)


def dense(text: str) -> list[float]:
    n = len(text) or 1
    digits = upper = punct = 0
    for ch in text[:MAX_CHARS]:
        if ch.isdigit():
            digits += 1
        elif ch.isupper():
            upper += 1
        elif not ch.isalnum() and not ch.isspace():
            punct += 1
    # shares of at least MIN_CHARS characters: in "Hi!" a third of the text is not punctuation-heavy
    head = min(max(n, MIN_CHARS), MAX_CHARS)
    words = text.split()
    nw = len(words) or 1
    lower_head = text[:MAX_CHARS].lower()
    long_words = sum(1 for w in words[:400] if len(w) >= 9)
    return [
        1.0,
        _log(len(text)) / 8.0,
        _log(len(words)) / 6.0,
        _log(text.count("\n")) / 4.0,
        digits / head,
        upper / head,
        punct / head,
        min(text.count("?"), 5) / 5.0,
        min(len(_CODE.findall(text[:MAX_CHARS])), 10) / 10.0,
        min(len(_MATH.findall(text[:MAX_CHARS])), 10) / 10.0,
        _log(len(_NUMBER.findall(text[:MAX_CHARS]))) / 4.0,
        min(len(_REASONING.findall(lower_head)), 5) / 5.0,
        1.0 if _CHAT.match(lower_head.lstrip()) else 0.0,
        min(len(_CONSTRAINT.findall(lower_head)), 8) / 8.0,
        min(sum(len(w) for w in words[:400]) / min(nw, 400), 15.0) / 15.0,
        long_words / min(nw, 400),
        _log(text.count(". ") + text.count("? ") + text.count("! ")) / 4.0,
    ]


def features(text: str) -> tuple[list[float], list[int]]:
    """(dense values, hashed indices). Hashed features are binary; the scorer weighs each
    hashed block by 1/sqrt(its size) so a long prompt does not swamp the dense signals."""
    text = strip_template(text)
    head = text[:MAX_CHARS].lower()
    crc = zlib.crc32
    idx: set[int] = set()
    prev = 0
    for tok in _WORD.findall(head):
        h = crc(tok.encode())
        idx.add(_WORD_BASE + (h & _WMASK))
        if prev:
            idx.add(_WORD_BASE + (((prev * 0x9E3779B1) ^ h) >> 7 & _WMASK))
        prev = h
    compact = " ".join(head.split())
    data = compact.encode()
    for i in range(len(data) - 2):
        idx.add(_CHAR_BASE + (crc(data[i : i + 3]) & _CMASK))
    return dense(text), sorted(idx)


def strip_template(text: str) -> str:
    """The prompt without a multiple-choice answer template (option letters, a final "Answer:")."""
    return _TEMPLATE.sub("", text) if "Answer:" in text or "\nA" in text else text


def block_scale(indices: list[int]) -> tuple[float, float]:
    """The weight of one active index in the word block and in the char block, 1/sqrt(count)."""
    words = sum(1 for i in indices if i < _CHAR_BASE)
    chars = len(indices) - words
    # floored: a three-word prompt must not weigh each of its few n-grams like a whole paragraph
    return 1.0 / math.sqrt(max(words, MIN_NGRAMS)), 1.0 / math.sqrt(max(chars, MIN_NGRAMS))


def is_char_index(i: int) -> bool:
    return i >= _CHAR_BASE
