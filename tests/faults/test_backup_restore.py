"""Backup and restore: `janus backup` from a running Janus, `janus restore` into a fresh JetStream,
and the new Janus serves the same budgets and API keys, with the same ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.faults.kit import launch, ledger, settled_usage
from tools.localnats import start_nats

pytestmark = pytest.mark.timeout(150)

MODEL = "gpt-5-nano"


def janus(nats_url: str, *args: str) -> str:
    """The operator's command line, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "JANUS_NATS_URL": nats_url},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_restored_jetstream_serves_the_same_budgets_and_keys(tmp_path: Path) -> None:
    dump = tmp_path / "janus-backup.jsonl"
    first = launch(tmp_path / "a")
    try:
        url = first.harness_url  # backup reads what no service identity may: an all-powerful user
        key = janus(url, "keys", "create", "--user", "restored-user", "--plan", "free").strip()
        async with openai.AsyncOpenAI(base_url=first.base_url, api_key=key, max_retries=0) as client:
            for i in range(2):
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"hi {i}"}]
                )
        async with aiohttp.ClientSession() as session:
            before = await settled_usage(session, first.base_url, key)
        assert before["session"]["used"] > 0
        entries_before = sorted(
            (e.request_id, e.credits) for e in await ledger(url) if e.user == "restored-user"
        )
        assert len(entries_before) == 2
        janus(url, "backup", "--out", str(dump))
    finally:
        first.stop()

    # a fresh JetStream: restore first, then start Janus on it
    fresh = start_nats(tmp_path / "b")
    janus(fresh.url, "restore", "--in", str(dump))
    second = launch(tmp_path / "b", cluster=[fresh])
    try:
        async with aiohttp.ClientSession() as session:
            after = await settled_usage(session, second.base_url, key)
        for pool in ("session", "weekly"):
            assert after[pool]["used"] == before[pool]["used"], pool
            assert after[pool]["limit"] == before[pool]["limit"], pool
        entries_after = sorted(
            (e.request_id, e.credits) for e in await ledger(fresh.url) if e.user == "restored-user"
        )
        assert entries_after == entries_before
        # the key still works, and the budget goes on from where it was
        async with openai.AsyncOpenAI(base_url=second.base_url, api_key=key, max_retries=0) as client:
            await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "again"}])
        async with aiohttp.ClientSession() as session:
            later = await settled_usage(session, second.base_url, key)
        assert later["session"]["used"] > before["session"]["used"]
    finally:
        second.stop()
