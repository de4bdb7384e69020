"""API keys and bring-your-own-key over a real JetStream KV, and the ``janus`` CLI as a process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from shared import subjects
from shared.apikeys import KeyStore, hash_key, watch_revocations
from shared.bus import Bus
from shared.byok import ByokStore, Sealer, generate_key
from shared.errors import JanusError, NotFound
from tools.localnats import NatsServer, seed_file
from tools.localstack import ROOT


async def test_key_lifecycle_and_revocation_broadcast(bus: Bus) -> None:
    store = await KeyStore.open(bus)
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def on_revoked(h: str) -> None:
        heard.put_nowait(h)

    await watch_revocations(bus, on_revoked)
    await bus.flush()
    key, rec = await store.create("alice", "pro", "laptop")
    assert key.startswith("sk-janus-") and len(key) > 40
    found = await store.authenticate(key)
    assert found is not None and (found.user, found.plan, found.name) == ("alice", "pro", "laptop")
    assert await store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    # only the hash is stored
    raw = await bus.kv(subjects.KEYS_BUCKET)
    stored = b"".join([(await Bus.kv_get(raw, k))[0] for k in await Bus.kv_keys(raw)])
    assert key.encode() not in stored and key[9:].encode() not in stored

    await store.create("bob", "free")
    assert [r.user for r in await store.list("alice")] == ["alice"]
    assert len(await store.list()) == 2

    revoked = await store.revoke(rec.id[:8])
    assert revoked.revoked is not None
    assert await asyncio.wait_for(heard.get(), 5) == hash_key(key)
    assert await store.authenticate(key) is None
    with pytest.raises(NotFound):
        await store.revoke("ffffffffffff")


async def test_byok_is_encrypted_and_bound_to_user_and_provider(bus: Bus) -> None:
    sealer = Sealer.from_key(generate_key())
    store = await ByokStore.open(bus, sealer)
    await store.set("carol", "openai", "sk-provider-secret-123456")
    assert await store.get("carol", "openai") == "sk-provider-secret-123456"
    assert await store.get("carol", "anthropic") is None
    kv = await bus.kv(subjects.BYOK_BUCKET)
    keys = await Bus.kv_keys(kv)
    data = (await Bus.kv_get(kv, keys[0]))[0]
    assert b"provider-secret" not in data
    # a sealed key copied to another user's entry does not open
    await Bus.kv_put(kv, keys[0].replace("carol", "mallory"), data)
    with pytest.raises(JanusError):
        await store.get("mallory", "openai")
    # and another deployment's key cannot open it either
    other = ByokStore(kv, Sealer.from_key(generate_key()))
    with pytest.raises(JanusError):
        await other.get("carol", "openai")
    assert await store.delete("carol", "openai") is True
    assert await store.get("carol", "openai") is None


def cli(nats: NatsServer, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # the CLI as operators run it: its own identity, no more
    identity = {"JANUS_NATS_URL": nats.client_url, "JANUS_NATS_NKEY_FILE": seed_file("operator")}
    full = {**os.environ, **identity, **env}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_keys_and_byok(nats_server: NatsServer) -> None:
    made = cli(nats_server, "keys", "create", "--user", "dave", "--plan", "developer", "--name", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk-janus-") and "\n" not in key
    listing = cli(nats_server, "keys", "list", "--user", "dave")
    assert listing.returncode == 0 and "dave" in listing.stdout and key not in listing.stdout
    key_id = listing.stdout.splitlines()[1].split()[0]
    gone = cli(nats_server, "keys", "revoke", key_id)
    assert gone.returncode == 0 and key_id in gone.stdout
    assert "revoked" in gone.stdout
    assert cli(nats_server, "keys", "create", "--user", "x", "--plan", "nope").returncode == 2

    bkey = cli(nats_server, "byok", "genkey").stdout.strip()
    secret = "sk-user-own-openai-key-0000"
    ok = cli(
        nats_server,
        "byok",
        "set",
        "--user",
        "dave",
        "--provider",
        "openai",
        "--key-env",
        "MY_KEY",
        JANUS_BYOK_KEY=bkey,
        MY_KEY=secret,
    )
    assert ok.returncode == 0, ok.stderr
    assert secret not in ok.stdout + ok.stderr
    missing = cli(
        nats_server,
        "byok",
        "set",
        "--user",
        "dave",
        "--provider",
        "openai",
        "--key-env",
        "NOPE",
        JANUS_BYOK_KEY=bkey,
    )
    assert missing.returncode == 2
    deleted = cli(
        nats_server, "byok", "delete", "--user", "dave", "--provider", "openai", JANUS_BYOK_KEY=bkey
    )
    assert deleted.returncode == 0
