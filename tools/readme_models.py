"""The README's models table, generated from the offline catalog: ``python -m tools.readme_models``
rewrites it between its markers; ``--check`` exits 1 when the README is out of date (a test runs the
same comparison)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.catalog import Catalog, Model, load_catalog

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CATALOG = ROOT / "config" / "catalog.yaml"
BEGIN = "<!-- models:begin (generated from config/catalog.yaml by `python -m tools.readme_models`) -->"
END = "<!-- models:end -->"


def _tokens(n: int) -> str:
    if n >= 1_000_000 and n % 1_048_576 == 0:
        return f"{n // 1_048_576}M"
    return f"{n // 1000}K" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def _usd(value: float) -> str:
    if value == 0:
        return "free"
    text = f"{value:.2f}"
    return f"${text if float(text) == value else f'{value:g}'}"


def _row(m: Model) -> str:
    names = f"`{m.id}`" + "".join(f" (`{a}`)" for a in m.aliases)
    defaults = ""
    if m.defaults is not None:
        defaults = ", ".join(
            f"{k} {v:g}" for k in m.defaults.__struct_fields__ if (v := getattr(m.defaults, k)) is not None
        )
    if m.kind == "embeddings":
        return (
            f"| {names} | {m.owned_by} | embeddings, {m.dimensions} dimensions | {_tokens(m.context_window)} "
            f"| | {_usd(m.price.input)} | | {defaults} |"
        )
    caps = ", ".join(c for c in m.capabilities if c != "streaming")
    return (
        f"| {names} | {m.owned_by} | {caps or 'text'} | {_tokens(m.context_window)} "
        f"| {_tokens(m.max_output_tokens)} | {_usd(m.price.input)} | {_usd(m.price.output)} | {defaults} |"
    )


def render(catalog: Catalog) -> str:
    head = (
        "| model (aliases) | owned by | does | context | max output | input /1M | output /1M | defaults |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    rows = [_row(m) for m in catalog.models]
    return "\n".join([BEGIN, head, *rows, END])


def current(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's table is out of date")
    args = ap.parse_args()
    text = README.read_text()
    table = render(load_catalog(CATALOG))
    if args.check:
        sys.exit(0 if current(text) == table else 1)
    README.write_text(text.replace(current(text), table))


if __name__ == "__main__":
    main()
