"""JetStream keeps a stream's replicas in different zones: the NATS pods tag themselves with their
zone (the StatefulSet's own start-up script, read from deploy/k8s/base/nats/nats.yaml and run as is),
and the base nats.conf's ``unique_tag`` makes the servers refuse to place two replicas in one zone.

Three real nats-servers on loopback each start through that script with a zone in the variable the
downward API fills; the tests then read each server's tags from ``/varz`` and where JetStream put
the replicas of an R3 stream.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
import yaml
from nats.js.api import StreamConfig

from shared.bus import Bus
from tests.kit.cluster import start_cluster
from tools.localnats import NatsServer, cluster_url

ROOT = Path(__file__).resolve().parents[2]
NATS_DIR = ROOT / "deploy" / "k8s" / "base" / "nats"


def nats_container() -> dict[str, Any]:
    for doc in yaml.safe_load_all((NATS_DIR / "nats.yaml").read_text()):
        if doc and doc["kind"] == "StatefulSet":
            return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")
    raise AssertionError("no NATS StatefulSet")


def launcher() -> list[str]:
    """The container's command: a shell script that sets the tag and runs ``nats-server "$@"``."""
    command = nats_container()["command"]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 4, command
    return ["sh", "-c", command[2], command[3]]


def unique_tag() -> str:
    conf = (NATS_DIR / "nats.conf").read_text()
    jetstream = re.search(r"^jetstream \{(.*?)^\}", conf, re.S | re.M)
    assert jetstream, "no jetstream block in the base nats.conf"
    found = re.search(r'^\s*unique_tag:\s*"([^"]+)"', jetstream.group(1), re.M)
    assert found, "the base nats.conf sets no JetStream unique_tag"
    return found.group(1)


def node_config() -> str:
    """What the base nats.conf says about placement, on a loopback test server."""
    conf = (NATS_DIR / "nats.conf").read_text()
    (tags,) = re.findall(r"^server_tags: .*$", conf, re.M)
    return f'{tags}\njetstream {{\n  unique_tag: "{unique_tag()}"\n}}\n'


def zone_env(pod: str, zone: str | None) -> dict[str, str]:
    env = {"POD_NAME": pod}
    if zone is not None:
        env["NATS_ZONE"] = zone  # what the downward API reads from the pod's zone label
    return env


def test_the_zone_comes_from_the_pod_label_the_downward_api_reads() -> None:
    env = {e["name"]: e for e in nats_container()["env"]}
    path = env["NATS_ZONE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert path == "metadata.labels['topology.kubernetes.io/zone']"
    # no service account token: the tag needs no API access
    for doc in yaml.safe_load_all((NATS_DIR / "nats.yaml").read_text()):
        if doc and doc["kind"] == "StatefulSet":
            assert doc["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert unique_tag() == "az:"


def _tags(servers: list[NatsServer]) -> dict[str, list[str]]:
    return {s.name: list(s.monitor("varz").get("tags") or []) for s in servers}


async def _replica_names(servers: list[NatsServer], replicas: int) -> set[str]:
    bus = await Bus.connect(cluster_url(servers), "zones-test")
    try:
        name = f"ZONES_R{replicas}"
        await bus.js.add_stream(
            StreamConfig(name=name, subjects=[f"zones.r{replicas}"], num_replicas=replicas)
        )
        cluster = (await bus.js.stream_info(name)).cluster
        assert cluster is not None
        return {cluster.leader or "", *(r.name for r in cluster.replicas or [])}
    finally:
        await bus.close()


def _stop(servers: list[NatsServer]) -> None:
    for s in servers:
        s.stop(signal.SIGKILL)


def test_replicas_go_to_three_zones(tmp_path: Path) -> None:
    zones = {"n1": "zone-a", "n2": "zone-b", "n3": "zone-c"}
    servers = start_cluster(
        tmp_path,
        configs=[node_config()] * 3,
        launcher=launcher(),
        envs=[zone_env(pod, zone) for pod, zone in zones.items()],
    )
    try:
        assert _tags(servers) == {pod: [f"az:{zone}"] for pod, zone in zones.items()}
        assert asyncio.run(_replica_names(servers, 3)) == set(zones)
    finally:
        _stop(servers)


def test_two_servers_in_one_zone_cannot_hold_two_replicas(tmp_path: Path) -> None:
    """The constraint is real: with two of three servers in one zone, an R3 stream is refused
    rather than placed with two replicas there, and an R2 stream spans the two zones."""
    zones = {"n1": "zone-a", "n2": "zone-a", "n3": "zone-b"}
    servers = start_cluster(
        tmp_path,
        configs=[node_config()] * 3,
        launcher=launcher(),
        placement=2,
        envs=[zone_env(pod, zone) for pod, zone in zones.items()],
    )
    try:
        with pytest.raises(nats.js.errors.APIError, match=r"(?i)insufficient resources|no suitable peers"):
            asyncio.run(_replica_names(servers, 3))
        placed = asyncio.run(_replica_names(servers, 2))
        assert len(placed) == 2 and "n3" in placed
    finally:
        _stop(servers)


def test_without_a_zone_label_each_server_is_its_own_zone(tmp_path: Path) -> None:
    """A cluster that does not copy the zone label onto pods: every server tags itself by name,
    so R3 streams are still placed (one replica per server) instead of being refused."""
    servers = start_cluster(
        tmp_path,
        configs=[node_config()] * 3,
        launcher=launcher(),
        envs=[zone_env(pod, None) for pod in ("nats-0", "nats-1", "nats-2")],
    )
    try:
        assert sorted(t for tags in _tags(servers).values() for t in tags) == [
            "az:host-nats-0",
            "az:host-nats-1",
            "az:host-nats-2",
        ]
        assert len(asyncio.run(_replica_names(servers, 3))) == 3
    finally:
        _stop(servers)


def test_placement_by_zone_can_be_turned_off_for_a_cluster_with_fewer_zones(tmp_path: Path) -> None:
    """Two zones and three replicas: with NATS_PLACEMENT_BY_ZONE=false the servers tag themselves by
    name despite their zone labels, and R3 streams are placed instead of refused."""
    assert {e["name"]: e.get("value") for e in nats_container()["env"]}["NATS_PLACEMENT_BY_ZONE"] == "true"
    zones = {"nats-0": "zone-a", "nats-1": "zone-a", "nats-2": "zone-b"}
    envs = [zone_env(pod, zone) | {"NATS_PLACEMENT_BY_ZONE": "false"} for pod, zone in zones.items()]
    servers = start_cluster(tmp_path, configs=[node_config()] * 3, launcher=launcher(), envs=envs)
    try:
        assert sorted(t for tags in _tags(servers).values() for t in tags) == [f"az:host-{p}" for p in zones]
        assert len(asyncio.run(_replica_names(servers, 3))) == 3
    finally:
        _stop(servers)
