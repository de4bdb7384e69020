"""The README's models table is the offline catalog's, as ``python -m tools.readme_models`` writes it."""

from __future__ import annotations

from shared.catalog import load_catalog
from tools.readme_models import CATALOG, README, current, render


def test_readme_models_table_is_generated_from_the_catalog() -> None:
    table = render(load_catalog(CATALOG))
    assert current(README.read_text()) == table, "run `python -m tools.readme_models` and commit the README"


def test_every_catalog_model_has_a_row() -> None:
    text = current(README.read_text())
    for model in load_catalog(CATALOG).models:
        assert f"| `{model.id}`" in text
