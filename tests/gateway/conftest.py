"""One nats-server and one gateway subprocess per test module (starting a service costs CPU on a
shared machine); each test brings its own Bus with the fake router, metering and workers it needs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from shared import subjects
from shared.bus import Bus
from tests.gateway.fakes import Fakes
from tools.localnats import NatsServer, free_port, start_nats
from tools.localstack import DEV_SECRET, ServiceProc, base_env, start_service
from tools.token import make_token

GATEWAY_ENV = {
    "JANUS_FIRST_FRAME_TIMEOUT_SECONDS": "1",
    "JANUS_STALL_TIMEOUT_SECONDS": "1",
    "JANUS_CANCEL_WAIT_SECONDS": "2",
    "JANUS_MAX_BODY_BYTES": "200000",
    "JANUS_SHUTDOWN_GRACE_SECONDS": "6",
}


class Gateway:
    def __init__(self, proc: ServiceProc, port: int, nats: NatsServer, workdir: Path) -> None:
        self.proc = proc
        self.port = port
        self.nats = nats
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"


def start_gateway(nats: NatsServer, workdir: Path, tag: str = "", **extra: str) -> Gateway:
    port = free_port()
    env = base_env(nats.url, JANUS_PORT=str(port), **{**GATEWAY_ENV, **extra})
    proc = start_service("gateway", env, workdir, tag=tag)
    return Gateway(proc, port, nats, workdir)


async def make_buckets(srv: NatsServer) -> None:
    """What metering does at start: the gateway may use the key buckets, not make them."""
    b = await Bus.connect(srv.url, "test-buckets")
    try:
        for bucket in (subjects.KEYS_BUCKET, subjects.BYOK_BUCKET):
            await b.kv(bucket)
    finally:
        await b.close()


@pytest.fixture(scope="module")
def gw_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start_nats(tmp_path_factory.mktemp("gw-nats"))
    try:
        asyncio.run(make_buckets(srv))
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def gateway(gw_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(gw_nats, tmp_path_factory.mktemp("gw"))
    try:
        yield gw
    finally:
        gw.proc.stop()


@pytest.fixture
async def gw_bus(gw_nats: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(gw_nats.url, "test")
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            await b.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


@pytest.fixture
def fakes(gw_bus: Bus) -> Fakes:
    return Fakes(gw_bus)


def token(user: str = "alice", plan: str = "pro", **extra: object) -> str:
    return make_token(user, plan, f"{user}@example.com", secret=DEV_SECRET, **extra)


def auth(user: str = "alice", plan: str = "pro") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, plan)}"}
