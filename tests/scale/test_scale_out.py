"""Scale-out on one machine: two replicas of every service (two gateways on their own ports, two
routers, two workers, two metering), on one nats-server and on a 3-node NATS cluster. Under load
every replica serves a share (read from its own /metrics) and the budgets stay exact."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.faults.kit import add_replica, gateway_url, launch, ledger_matches, settled_usage, tally
from tests.kit.cluster import start_cluster
from tests.kit.metrics import parse_metric
from tools.soak import ChatResult, answers, price_of, run_load, token_for

pytestmark = pytest.mark.timeout(120)

MODEL = "gpt-5-nano"

# the metric each kind of replica counts its share of the work in
SHARE = {
    "gateway": "janus_http_requests_total",
    "router": "janus_route_decisions_total",
    "worker": "janus_upstream_request_duration_seconds_count",
    "metering": "janus_budget_decisions_total",
}


@pytest.mark.parametrize("topology", ["one-server", "cluster"])
async def test_every_replica_serves_a_share_and_budgets_stay_exact(tmp_path: Path, topology: str) -> None:
    cluster = start_cluster(tmp_path) if topology == "cluster" else None
    stack = launch(tmp_path, tokens_per_second=200, cluster=cluster)
    try:
        for name in SHARE:
            add_replica(stack, name)
        urls = [stack.base_url, gateway_url(stack.services["gateway-2"])]
        users = {f"scale-{i}": token_for(stack, f"scale-{i}") for i in range(8)}
        prompts = [f"scale-out prompt {i}" for i in range(8)]
        async with aiohttp.ClientSession() as session:
            expected = await answers(session, urls[1], token_for(stack, "scale-warm"), prompts, MODEL)
        results: list[tuple[str, ChatResult]] = []
        price = price_of(stack.env, MODEL)
        report = await run_load(
            urls, users, expected, concurrency=16, seconds=6, model=MODEL, price=price, results=results
        )
        assert report.ok, report.failures[:5]
        assert set(report.per_url) == set(urls)

        for name, metric in SHARE.items():
            for replica in (name, f"{name}-2"):
                served = parse_metric(stack.services[replica].metrics(), metric)
                assert served > 0, f"{replica} served nothing ({metric})"

        charged, broken = tally(results, price)
        assert not broken
        async with aiohttp.ClientSession() as session:
            for user, token in users.items():
                doc = await settled_usage(session, urls[0], token, nats_url=stack.harness_url, user=user)
                assert doc["session"]["used"] == charged[user], user
        await ledger_matches(stack.harness_url, {u: charged[u] for u in users})
    finally:
        stack.stop()
