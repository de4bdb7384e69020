"""A provider id is its worker pool's subject token: one the bus already uses for something else,
or one that is no token at all, is refused when the catalog loads, not when a worker subscribes."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import subjects
from shared.catalog import ConfigError, load_catalog

CATALOG = """
providers:
  - id: {pid}
    kind: fake
    deployments: [{{id: d1}}]
models:
  - id: m1
    owned_by: test
    serve: [{{deployment: d1, model: up}}]
"""


@pytest.mark.parametrize("pid", ["cancel", "'a.b'", "'*'", "'>'"])
def test_a_provider_id_that_is_not_a_pool_subject_is_refused(tmp_path: Path, pid: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.format(pid=pid))
    with pytest.raises(ConfigError, match=r"\$\.providers\[0\]\.id"):
        load_catalog(path)


def test_a_good_provider_id_loads_and_its_work_is_not_a_cancel(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.format(pid="cancel-free"))
    assert subjects.work(load_catalog(path).providers[0].id) != subjects.WORK_CANCEL
    with pytest.raises(ValueError, match="not a provider pool"):
        subjects.work("cancel")
