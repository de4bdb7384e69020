"""Fixtures shared by every test: a real nats-server (port chosen by the server, 127.0.0.1, JetStream
in a temporary directory), a connected Bus, and a whole running stack."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.bus import Bus
from tools.localnats import NatsServer, start_nats
from tools.localstack import Stack, start_stack


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = start_nats(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, "test")
    try:
        yield b
    finally:
        with contextlib.suppress(Exception):
            await b.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services on one nats-server, with the offline fake provider."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        s.stop()
