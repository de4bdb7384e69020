"""Metering throughput: reserve + settle pairs per second for one replica and for two.

Each pair is what the gateway does per request: a ``janus.meter.reserve`` request, then a
JetStream-published settlement (de-duplicated by request id). The pair latency is measured at the
client; "applied/s" counts settlements the replicas have written to KV and acknowledged, up to the
moment the settlement stream is drained. Runs against a real nats-server with JetStream, bounded
to about 20 s:

    python -m tools.bench_metering [--seconds 6] [--concurrency 32] [--users 500]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from shared import contract, subjects
from shared.bus import Bus
from shared.contract import ReserveRequest, Settlement, Usage
from tools.localnats import start_nats
from tools.localstack import ROOT, ServiceProc, base_env, start_service

MODEL = "gpt-5-nano"
PLAN = "enterprise"


async def _load(bus: Bus, seconds: float, concurrency: int, users: int) -> tuple[int, int, list[float]]:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    admitted = refused = 0

    async def client() -> None:
        nonlocal admitted, refused
        while time.monotonic() < deadline:
            rid = uuid.uuid4().hex
            user = f"bench-{random.randrange(users)}"
            t0 = time.perf_counter()
            raw = await bus.request(
                subjects.METER_RESERVE,
                contract.encode(
                    ReserveRequest(rid, user, PLAN, MODEL, input_tokens=200, max_output_tokens=500)
                ),
                timeout=10,
            )
            reply = contract.reserve_reply_decoder.decode(raw)
            if not isinstance(reply, contract.ReserveReply) or not reply.admitted:
                refused += 1
                continue
            s = Settlement(rid, user, PLAN, MODEL, Usage(200, random.randrange(1, 500)), at=time.time())
            await bus.js_publish(subjects.SETTLE, contract.encode(s), msg_id=rid)
            latencies.append(time.perf_counter() - t0)
            admitted += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return admitted, refused, latencies


async def _drained(bus: Bus, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await bus.js.consumer_info(subjects.SETTLE_STREAM, subjects.SETTLE_DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("settlements were not all applied in time")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def _phase(bus: Bus, replicas: int, args: argparse.Namespace) -> list[str]:
    t0 = time.perf_counter()
    ok, refused, lat = await _load(bus, args.seconds, args.concurrency, args.users)
    sent = time.perf_counter() - t0
    await _drained(bus)
    applied = time.perf_counter() - t0
    return [
        str(replicas),
        f"{ok / sent:,.0f}",
        f"{ok / applied:,.0f}",
        f"{_pct(lat, 0.5):.2f}",
        f"{_pct(lat, 0.99):.2f}",
        str(refused),
    ]


async def _main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="janus-bench-metering-"))
    nats = start_nats(work)
    procs: list[ServiceProc] = []
    try:
        # the plan's request rate is still counted on every reserve, but set high enough to never
        # refuse: the benchmark measures throughput, not the limit
        plans = yaml.safe_load((ROOT / "config" / "plans.yaml").read_text())
        plans["plans"][PLAN]["requests_per_minute"] = 10**9
        (work / "plans.yaml").write_text(yaml.safe_dump(plans))
        env = base_env(nats.url, JANUS_LOG_LEVEL="WARNING", JANUS_PLANS=str(work / "plans.yaml"))
        procs.append(start_service("metering", env, work, tag="-1"))
        bus = await Bus.connect(nats.url, "bench")
        rows = [await _phase(bus, 1, args)]
        procs.append(start_service("metering", env, work, tag="-2"))
        rows.append(await _phase(bus, 2, args))
        await bus.close()
    finally:
        for p in procs:
            p.stop(signal.SIGTERM, timeout=5)
        nats.stop()
    head = ["replicas", "pairs/s", "applied/s", "p50 ms", "p99 ms", "refused"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print(f"metering: {args.concurrency} concurrent clients, {args.users} users, {args.seconds:g}s per run")
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--users", type=int, default=500)
    asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()
