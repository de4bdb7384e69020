"""``python -m services.worker`` as the stack runs it: ready, serving, metrics, graceful stop."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp

from services.worker.settings import WorkerSettings
from shared import contract
from shared.bus import Bus
from tests.worker.conftest import check_sequence, run_work, work
from tools.localnats import NatsServer
from tools.localstack import start_service


async def test_worker_process_serves_and_exports_metrics(
    nats_server: NatsServer, bus: Bus, catalog_file: Path, tmp_path: Path
) -> None:
    env = {
        "JANUS_NATS_URL": nats_server.url,
        "JANUS_CATALOG": str(catalog_file),
        "JANUS_WORKER_PROVIDERS": "fake",
        "JANUS_MAX_CONCURRENCY": "7",
    }
    proc = start_service("worker", env, tmp_path)
    try:
        req = work("fake-chat", {"messages": [{"role": "user", "content": "hello"}], "stream": True})
        assert isinstance(check_sequence(await run_work(bus, req)), contract.Done)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{proc.ops_port}/metrics") as r,
        ):
            text = await r.text()
        assert 'janus_worker_capacity{gen_ai_provider_name="fake"} 7.0' in text
        assert 'gen_ai_token_type="output"' in text
        assert "janus_upstream_request_duration_seconds_count" in text
    finally:
        assert proc.stop(signal.SIGTERM) == 0, proc.log_tail()


def test_settings_name_their_variables() -> None:
    assert WorkerSettings(worker_providers=" fake, oai ,").providers() == ["fake", "oai"]
