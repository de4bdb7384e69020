"""A local nats-server keeps serving however much it logs, and its log outlives it.

After a cluster node dies, a worker that fails over keeps answering requests the dead node had
delivered; its new server refuses each answer and logs a permissions violation per frame. Sent to a
pipe nobody read, those lines filled it within seconds and froze every server goroutine that logged
next: the worker's connection, routes, JetStream's API.
"""

from __future__ import annotations

import nats

from shared import subjects
from tests.eventually import eventually
from tools.localnats import NatsServer, seed_file

# well over a pipe's 64 KiB of log lines (one ~150-byte line per refused publish)
REFUSED = 3000


async def test_a_server_flooded_with_violations_still_answers_and_logs_them(nats_server: NatsServer) -> None:
    refusals: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        refusals.append(exc)

    worker = await nats.connect(
        nats_server.client_url,
        nkeys_seed=seed_file("worker"),
        error_cb=on_error,
        allow_reconnect=False,
        pending_size=64 * 1024 * 1024,
    )
    try:
        for i in range(REFUSED):
            # a gateway's reply inbox: exactly what a failed-over worker keeps writing to
            await worker.publish(f"{subjects.inbox_prefix('gateway')}.stale{i:05d}.frame", b"x")
        # the server logs each refusal as it tells the client: a log it cannot write stops both
        await eventually(lambda: len(refusals) >= REFUSED, 30, "every publish refused")
        await worker.flush(timeout=10)
    finally:
        await worker.close()

    def logged() -> int:
        return nats_server.log_file.read_text(errors="replace").count("Publish Violation")

    await eventually(lambda: logged() >= REFUSED, 10, "every refusal in the server's log")
