"""A NATS cluster on loopback for the fault and scale-out tests: three routed nats-servers with
JetStream, and what their monitoring endpoints say about leaders and placement."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.bus import Bus
from tools.localnats import NatsServer, cluster_url, free_port, start_nats


def start_cluster(
    workdir: Path,
    size: int = 3,
    *,
    timeout: float = 30,
    configs: Sequence[str] = (),
    envs: Sequence[Mapping[str, str]] = (),
    launcher: Sequence[str] = (),
    placement: int = 0,
) -> list[NatsServer]:
    """``size`` nats-servers with JetStream routed into one cluster on loopback, each with a
    monitoring port; returns once JetStream can place a stream on ``placement`` nodes (0: all
    ``size``; before that, creating a replicated stream or bucket fails with "no suitable peers for
    placement"). ``configs`` and ``envs``: each node's configuration text and extra environment (see
    ``start_nats``), e.g. its placement tags; ``launcher`` starts every node."""
    for attempt in range(3):
        try:
            return _start_cluster(workdir, size, timeout, configs, envs, launcher, placement or size)
        except PortTaken:
            if attempt == 2:
                raise
            for i in range(size):  # a fresh cluster: no node may remember the first attempt's peers
                shutil.rmtree(workdir / f"jetstream-n{i + 1}", ignore_errors=True)
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """A port chosen by ``free_port`` was bound by another process before the server bound it."""


def _start_cluster(
    workdir: Path,
    size: int,
    timeout: float,
    configs: Sequence[str],
    envs: Sequence[Mapping[str, str]],
    launcher: Sequence[str],
    placement: int,
) -> list[NatsServer]:
    cluster_ports = [free_port() for _ in range(size)]
    servers: list[NatsServer] = []
    try:
        for i, cp in enumerate(cluster_ports):
            try:
                servers.append(
                    start_nats(
                        workdir,
                        name=f"n{i + 1}",
                        cluster_port=cp,
                        routes=[p for p in cluster_ports if p != cp],
                        monitor_port=free_port(),
                        config=configs[i] if configs else "",
                        env=envs[i] if envs else None,
                        launcher=launcher,
                    )
                )
            except RuntimeError as exc:
                if "address already in use" in str(exc):
                    raise PortTaken(str(exc)) from None
                raise
        deadline = time.monotonic() + timeout
        wait_meta_leader(servers, timeout, peers=size)
        wait_placement(servers, placement, max(1.0, deadline - time.monotonic()))
    except BaseException:
        for srv in servers:
            srv.stop(signal.SIGKILL)
        raise
    return servers


def meta_leader(servers: list[NatsServer]) -> str | None:
    """The name of the JetStream meta leader as a running server of the cluster reports it."""
    for srv in servers:
        if not srv.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            leader = srv.monitor("jsz").get("meta_cluster", {}).get("leader")
            if leader:
                return str(leader)
    return None


def stream_leader(servers: list[NatsServer], stream: str) -> str | None:
    """The name of the node leading ``stream``'s replica group (e.g. ``KV_janus_budget``)."""
    for srv in servers:
        if not srv.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            for account in srv.monitor("jsz?streams=true").get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream and detail.get("cluster", {}).get("leader"):
                        return str(detail["cluster"]["leader"])
    return None


def meta_peers_current(servers: list[NatsServer], leader: str) -> int:
    """How many nodes the meta leader counts as current members, itself included (0: unknown)."""
    for srv in servers:
        if srv.name != leader or not srv.running:
            continue
        with contextlib.suppress(OSError, ValueError):
            meta = srv.monitor("jsz").get("meta_cluster", {})
            if meta.get("leader") == leader:
                return 1 + sum(1 for r in meta.get("replicas") or [] if r.get("current"))
    return 0


def wait_meta_leader(servers: list[NatsServer], timeout: float = 30, *, peers: int = 1) -> str:
    """The meta leader's name, once there is one that counts ``peers`` current members."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = meta_leader(servers)
        if leader and (peers <= 1 or meta_peers_current(servers, leader) >= peers):
            return leader
        time.sleep(0.1)
    raise RuntimeError(f"the NATS cluster elected no JetStream meta leader with {peers} current peers")


def wait_placement(servers: list[NatsServer], replicas: int, timeout: float = 30) -> None:
    """Create (and delete) a stream with ``replicas`` replicas, retrying until the cluster places it:
    the meta leader learns the other nodes' JetStream resources a little after they join."""

    async def probe() -> None:
        bus = await Bus.connect(cluster_url(servers), "stack-probe")
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await bus.ensure_stream("STACK_PROBE", ["stack.probe"], replicas=replicas)
                    await bus.js.delete_stream("STACK_PROBE")
                    return
                except Exception as exc:  # "no suitable peers for placement", timeouts
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the NATS cluster cannot place a stream on {replicas} nodes: {exc!r}"
                        ) from None
                    await asyncio.sleep(0.2)
        finally:
            await bus.close()

    # a thread of its own: the caller may be inside a running event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()
