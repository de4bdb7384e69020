"""Provider keys: from the environment, or from a mounted Secret's files, re-read when rotated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.worker.keys import ProviderKeys
from shared.catalog import Deployment, Provider

PROVIDERS = [
    Provider(id="oai", kind="openai_compat", deployments=[Deployment(id="oai-1", api_key_env="JANUS_T_OAI")]),
    Provider(id="ant", kind="anthropic", deployments=[Deployment(id="ant-1", api_key_env="JANUS_T_ANT")]),
    Provider(id="fake", kind="fake", deployments=[Deployment(id="fake-1")]),
]


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANUS_T_OAI", "sk-env")
    monkeypatch.delenv("JANUS_T_ANT", raising=False)
    keys = ProviderKeys(PROVIDERS)
    assert keys.get("oai-1") == "sk-env" and keys.get("ant-1") is None and keys.get("fake-1") is None


def test_a_rotated_secret_file_is_used_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JANUS_T_ANT", "sk-env-ant")  # no file for it: the environment still serves
    key_file = tmp_path / "JANUS_T_OAI"
    key_file.write_text("sk-old\n")
    keys = ProviderKeys(PROVIDERS, str(tmp_path))
    assert keys.get("oai-1") == "sk-old" and keys.get("ant-1") == "sk-env-ant"
    assert keys.refresh() == []  # nothing changed, nothing reported

    # Kubernetes swaps the Secret's files in place; the mtime moves on
    key_file.write_text("sk-new\n")
    stat = key_file.stat()
    os.utime(key_file, (stat.st_atime, stat.st_mtime + 5))
    assert keys.refresh() == ["oai-1"]
    assert keys.get("oai-1") == "sk-new"

    key_file.unlink()  # the key was removed from the Secret: back to the environment (none here)
    monkeypatch.delenv("JANUS_T_OAI", raising=False)
    assert keys.refresh() == ["oai-1"] and keys.get("oai-1") is None
