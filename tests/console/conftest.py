"""The console's stack: the offline catalog plus one OpenAI-compatible provider that takes a user's
own key (never called here), with bring-your-own-key enabled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from shared.byok import generate_key
from tests.hostile.conftest import write_catalog
from tools.localstack import Stack, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("console")
    # a closed port: the provider exists for the BYOK page; no test sends it traffic
    catalog = write_catalog(work / "catalog.yaml", "http://127.0.0.1:9/v1")
    doc = yaml.safe_load(catalog.read_text())
    for provider in doc["providers"]:
        if provider["id"] == "upstream":
            provider["byok"] = True  # only a provider the catalog marks takes a user's own key
    catalog.write_text(yaml.safe_dump(doc))
    s = start_stack(work, env={"JANUS_CATALOG": str(catalog), "JANUS_BYOK_KEY": generate_key()})
    try:
        yield s
    finally:
        s.stop()
