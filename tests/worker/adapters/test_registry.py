"""The adapter registry is loud: every provider kind has its adapter, and a module that cannot be
imported fails the import of the registry instead of quietly dropping its provider (which would
also drop it from the conformance battery)."""

from __future__ import annotations

import importlib
import sys

import pytest
import yaml

from services.worker.adapters import ADAPTERS
from services.worker.adapters.base import BatchesPerModel, PassesOpenAIThrough
from tools.localstack import ROOT

KINDS = {"fake", "openai_compat", "anthropic", "gemini", "bedrock", "ollama", "cohere"}


def test_every_kind_the_catalog_uses_has_an_adapter() -> None:
    catalog = yaml.safe_load((ROOT / "config" / "catalog.yaml").read_text())
    used = {p["kind"] for p in catalog["providers"]}
    assert used <= set(ADAPTERS)
    assert set(ADAPTERS) == KINDS
    assert all(cls.kind == kind for kind, cls in ADAPTERS.items())


def test_a_broken_adapter_module_fails_the_registry_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "services.worker.adapters")
    monkeypatch.setitem(sys.modules, "services.worker.adapters.cohere", None)  # import raises
    with pytest.raises(ImportError):
        importlib.import_module("services.worker.adapters")


def test_optional_hooks_are_declared_where_they_exist() -> None:
    local = {kind for kind, cls in ADAPTERS.items() if cls.capabilities.local}
    assert local == {"fake"}
    assert {k for k, cls in ADAPTERS.items() if issubclass(cls, PassesOpenAIThrough)} == {"openai_compat"}
    assert {k for k, cls in ADAPTERS.items() if issubclass(cls, BatchesPerModel)} == {"bedrock"}
