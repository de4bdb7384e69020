"""The router's own configuration: the ``routing:`` section of a YAML file.

Read from the file named by ``JANUS_ROUTING`` (default: ``routing.yaml`` beside this module),
decoded by msgspec, checked against the catalog at startup so a rule naming an unknown model stops
the router with the path of the bad field.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import re2

from shared.catalog import Catalog, ConfigError

DEFAULT_ROUTING = Path(__file__).with_name("routing.yaml")


# anything but a letter, digit or underscore (in any script): what a keyword may touch on a side
_NOT_WORD = r"[^\pL\pN_]"


class Rule(msgspec.Struct, forbid_unknown_fields=True, dict=True):
    """A keyword or pattern rule. It matches when any keyword (whole word, case-insensitive) or
    any regular expression is found in the prompt. It names a model, or a minimum quality class.

    Rules run on users' text, so they are compiled with RE2, whose matching time is linear in the
    text whatever the pattern: a pattern like ``SELECT .* FROM`` cannot be made to backtrack by a
    prompt full of ``SELECT``. RE2 has no lookarounds and no backreferences (a pattern that needs
    them is refused at load), and its ``\\b`` and ``\\w`` are ASCII."""

    name: str
    keywords: list[str] = []
    patterns: list[str] = []
    model: str | None = None
    min_quality: int | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.min_quality is None):
            raise msgspec.ValidationError("a rule names exactly one of `model` or `min_quality`")
        if not self.keywords and not self.patterns:
            raise msgspec.ValidationError("a rule needs `keywords` or `patterns`")
        parts = list(self.patterns)
        if self.keywords:
            # bounded by a non-word character or an end rather than \b, so keywords ending in a
            # symbol ("c++") still match; RE2 has no lookarounds, and only a match is asked for
            words = "|".join(re2.escape(k) for k in self.keywords)
            parts.append(f"(?:^|{_NOT_WORD})(?:{words})(?:{_NOT_WORD}|$)")
        try:
            self.regex = re2.compile("(?im)" + "|".join(f"(?:{p})" for p in parts))
        except re2.error as exc:
            raise msgspec.ValidationError(
                f"bad pattern (RE2 syntax: no lookarounds or backreferences): {exc}"
            ) from None


class Threshold(msgspec.Struct, forbid_unknown_fields=True):
    score: float  # complexity percentile from which ...
    quality: int  # ... this quality class is required


class Budget(msgspec.Struct, forbid_unknown_fields=True):
    low_fraction: float = 0.2  # below this share of budget left, prefer cheaper classes
    step_down: int = 1  # how many quality classes to give up when the budget is low


class Health(msgspec.Struct, forbid_unknown_fields=True):
    ewma_alpha: float = 0.2  # weight of the newest report in the latency and error averages
    failure_threshold: int = 3  # consecutive retryable failures that open the circuit
    cooldown_seconds: float = 15.0  # open -> half-open after this long
    probe_interval_seconds: float = 5.0  # a half-open deployment gets one trial per interval


class Routing(msgspec.Struct, forbid_unknown_fields=True, dict=True):
    thresholds: list[Threshold] = msgspec.field(
        default_factory=lambda: [Threshold(0.0, 1), Threshold(0.6, 2), Threshold(0.9, 3)]
    )
    rules: list[Rule] = []
    budget: Budget = msgspec.field(default_factory=Budget)
    health: Health = msgspec.field(default_factory=Health)
    expected_output_tokens: int = 400  # for comparing model prices on one request
    # after the chosen model's deployments, also fall back to the next-cheapest model of the same
    # quality class (the plan's ``model`` stays the chosen one; each target names its own model)
    fallback_models: bool = False
    max_targets: int = 6

    def __post_init__(self) -> None:
        self.thresholds = sorted(self.thresholds, key=lambda t: t.score)

    def required_quality(self, score: float) -> int:
        q = 1
        for t in self.thresholds:
            if score >= t.score:
                q = t.quality
        return q


class RoutingFile(msgspec.Struct, forbid_unknown_fields=True):
    routing: Routing = msgspec.field(default_factory=Routing)


def load_routing(path: str | os.PathLike[str] | None = None, catalog: Catalog | None = None) -> Routing:
    p = Path(path or DEFAULT_ROUTING)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        routing = msgspec.yaml.decode(data, type=RoutingFile).routing
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    if catalog is not None:
        for i, rule in enumerate(routing.rules):
            if rule.model is not None and catalog.model(rule.model) is None:
                raise ConfigError(f"{p}: unknown model {rule.model!r} - at `$.routing.rules[{i}].model`")
    return routing
