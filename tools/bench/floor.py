"""The floor under Janus's figures: what the libraries the design card names cost per request on this
machine, with no Janus code at all, measured the way ``make bench`` measures Janus (CPU of each
process over a window of closed-loop load, read from ``/proc``).

    python -m tools.bench.floor [--concurrency 1,16] [--seconds 3]

- ``edge``: an aiohttp server (uvloop, as the services run) whose one handler reads a chat request,
  decodes it with msgspec and answers a canned completion: the gateway's HTTP edge, bare. Driven by
  the bench's own load generator.
- ``client``: an aiohttp ``ClientSession`` configured as the worker's transport, posting to the
  bench's fake upstream in ``c`` loops: the worker's upstream call, bare.
- ``hop``: nats-py request/reply between two processes through a real nats-server (no JetStream):
  the cost of one message crossing the bus, counted in the sender, the server and the receiver,
  per message delivered (a round trip is two).
- ``pipeline``: the four-service design with nothing of Janus in it, end to end: a bare aiohttp
  edge that sends each request over the bus (nats-py request/reply, two messages) to a bare worker
  that posts it to the fake upstream with an aiohttp client and publishes the body back, which the
  edge returns. No auth, budget, routing, metering or settlement. Driven by the bench's load
  generator; CPU summed over the edge, the worker and nats-server, as ``make bench`` sums Janus's.

A buffered request through Janus needs at least one edge, one client and a few hops, so
``edge + client + hops x hop`` (``hops`` = the bus messages in per request that ``make bench``
reports) is what the stack costs before any of Janus's own work. Also run by ``make bench`` as the
``floor`` extra section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.bench.procs import ROOT, CpuMeter, Phase, Upstream, _readline, cpu_seconds, run_phase

_ANSWER = json.dumps(
    {
        "id": "chatcmpl-floor",
        "object": "chat.completion",
        "created": 0,
        "model": "floor",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def _loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


# ----------------------------------------------------------------------------------- processes
async def _serve_chat(chat: Any) -> None:
    """Serve ``chat`` at /v1/chat/completions on a port the system picks, print it, run for ever."""
    from aiohttp import web

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"listening {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def _serve_edge() -> None:
    import msgspec
    from aiohttp import web

    decode = msgspec.json.Decoder().decode

    async def chat(request: web.Request) -> web.Response:
        decode(await request.read())
        return web.Response(body=_ANSWER, content_type="application/json")

    _loop().run_until_complete(_serve_chat(chat))


def _run_client(url: str, concurrency: int, warmup: float, seconds: float) -> None:
    import aiohttp

    body = json.dumps({"model": "floor", "messages": [{"role": "user", "content": "ping"}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer floor"}

    async def main() -> None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            trust_env=False,
        )
        done = 0
        stop = 0.0
        took: list[float] = []

        async def one() -> None:
            nonlocal done
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with session.post(url + "/chat/completions", data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"the fake upstream answered {resp.status}")
                done += 1
                took.append(time.perf_counter() - t0)

        stop = time.monotonic() + warmup
        await asyncio.gather(*(one() for _ in range(concurrency)))
        took.clear()
        done, cpu0 = 0, time.process_time()
        stop = time.monotonic() + seconds
        await asyncio.gather(*(one() for _ in range(concurrency)))
        cpu = time.process_time() - cpu0
        await session.close()
        if not done:
            raise RuntimeError("no request reached the fake upstream")
        print(json.dumps({"requests": done, "cpu_ms": cpu * 1000 / done, "p50_ms": _p50(took)}))

    _loop().run_until_complete(main())


def _run_hop(role: str, url: str, concurrency: int, warmup: float, seconds: float) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        if role == "responder":

            async def answer(msg: Any) -> None:
                await msg.respond(b"pong" * 16)

            await nc.subscribe("floor.hop", cb=answer)
            await nc.flush()
            print("ready", flush=True)
            await asyncio.Event().wait()
        done = 0
        stop = 0.0
        payload = b"ping" * 64
        took: list[float] = []

        async def one() -> None:
            nonlocal done
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                await nc.request("floor.hop", payload, timeout=5)
                done += 1
                took.append(time.perf_counter() - t0)

        stop = time.monotonic() + warmup
        await asyncio.gather(*(one() for _ in range(concurrency)))
        print("warm", flush=True)
        sys.stdin.readline()
        done = 0
        took.clear()
        stop = time.monotonic() + seconds
        await asyncio.gather(*(one() for _ in range(concurrency)))
        print(json.dumps({"round_trips": done, "p50_ms": _p50(took)}), flush=True)
        sys.stdin.readline()
        await nc.close()

    _loop().run_until_complete(main())


def _serve_pipe_edge(nats_url: str) -> None:
    import msgspec
    import nats
    from aiohttp import web

    decode = msgspec.json.Decoder().decode

    async def main() -> None:
        nc = await nats.connect(nats_url)

        async def chat(request: web.Request) -> web.Response:
            body = await request.read()
            decode(body)
            reply = await nc.request("floor.work", body, timeout=30)
            return web.Response(body=reply.data, content_type="application/json")

        await _serve_chat(chat)

    _loop().run_until_complete(main())


def _serve_pipe_worker(nats_url: str, upstream_url: str) -> None:
    import aiohttp
    import msgspec
    import nats

    decode = msgspec.json.Decoder().decode
    headers = {"Content-Type": "application/json", "Authorization": "Bearer floor"}

    async def main() -> None:
        nc = await nats.connect(nats_url)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
            trust_env=False,
        )
        tasks: set[asyncio.Task[None]] = set()

        async def call(msg: Any) -> None:
            async with session.post(
                upstream_url + "/chat/completions", data=msg.data, headers=headers
            ) as resp:
                body = await resp.read()
            decode(body)
            await nc.publish(msg.reply, body)

        async def on_work(msg: Any) -> None:
            # a subscription callback runs one message at a time: the call is a task of its own
            task = asyncio.get_running_loop().create_task(call(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await nc.subscribe("floor.work", queue="workers", cb=on_work)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.Event().wait()

    _loop().run_until_complete(main())


# ------------------------------------------------------------------------------------ measuring
def _spawn(*args: str, stdin: bool = False, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """``prefix``: a command the process runs under (``valgrind ...``), or none."""
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "tools.bench.floor", *args],
        cwd=str(ROOT),
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
    )


def _line(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().decode().strip()


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _p50(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] * 1000 if values else 0.0


def _served(pid: int | None, url: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """The bench's load generator against ``url``: (CPU ms per request of ``pid``, p50 ms)."""
    meter = CpuMeter({"server": pid} if pid else {})
    phase = Phase("floor", url, "buffered", concurrency, "floor")
    run = run_phase(phase, meter, requests=0, seconds=seconds, warmup_seconds=1.0, timeout=30)
    if not run.result.requests or run.result.errors:
        raise RuntimeError(f"the load against {url} failed: {run.result}")
    return run.cpu.get("server", 0.0) * 1000 / run.result.requests, run.result.p50_ms or 0.0


def edge(concurrency: int, seconds: float) -> tuple[float, float]:
    server = _spawn("_edge")
    try:
        port = int(_line(server).split()[1])
        return _served(server.pid, f"http://127.0.0.1:{port}/v1", concurrency, seconds)
    finally:
        _stop(server)


def client(upstream: Upstream, concurrency: int, seconds: float) -> tuple[float, float]:
    proc = _spawn("_client", upstream.base_url, str(concurrency), "1.0", str(seconds))
    try:
        out = proc.communicate(timeout=seconds + 60)[0]
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise
    doc = json.loads(out.decode().strip().splitlines()[-1])
    return float(doc["cpu_ms"]), float(doc["p50_ms"])


def hop(concurrency: int, seconds: float) -> tuple[float, float]:
    """(CPU ms per message in all three processes, p50 ms of a request/reply round trip)."""
    from tools.localnats import start_nats

    with tempfile.TemporaryDirectory() as tmp:
        server = start_nats(Path(tmp))
        responder = _spawn("_hop", "responder", server.url, "0", "0", "0")
        requester = None
        try:
            assert _line(responder) == "ready"
            requester = _spawn(
                "_hop", "requester", server.url, str(concurrency), "1.0", str(seconds), stdin=True
            )
            assert requester.stdin is not None
            assert _line(requester) == "warm"
            pids = {"server": server.proc.pid, "responder": responder.pid, "requester": requester.pid}
            before = {n: cpu_seconds(p) or 0.0 for n, p in pids.items()}
            requester.stdin.write(b"\n")
            requester.stdin.flush()
            doc = json.loads(_line(requester))
            if not doc["round_trips"]:
                raise RuntimeError("no request/reply crossed the bus")
            spent = sum((cpu_seconds(p) or 0.0) - before[n] for n, p in pids.items())
            requester.stdin.write(b"\n")
            requester.stdin.flush()
            return spent * 1000 / (2 * doc["round_trips"]), float(doc["p50_ms"])
        finally:
            _stop(responder, *([requester] if requester else []))
            server.stop()


class BarePipeline:
    """The bare pipeline's processes, started together: a nats-server of its own, the bare worker
    (posting to ``upstream_url``) and the bare edge, whose base URL is ``url``. ``make bench`` runs
    load through it right after each Janus buffered phase, so the two are measured a few seconds
    apart on a machine whose speed moves by the minute.

    ``under`` names a process ("edge" or "worker") to run under a command (``under_prefix``, e.g.
    callgrind, for ``tools.bench.instructions``), given ``start_timeout`` seconds to come up."""

    def __init__(
        self,
        upstream_url: str,
        *,
        under: str = "",
        under_prefix: tuple[str, ...] = (),
        start_timeout: float = 30,
    ) -> None:
        from tools.localnats import start_nats

        self._tmp = tempfile.TemporaryDirectory()
        self.server = start_nats(Path(self._tmp.name))
        self._procs: list[subprocess.Popen[bytes]] = []
        try:
            prefix = {under: under_prefix} if under else {}
            worker = self._start(
                "_pipe_worker", self.server.url, upstream_url, prefix=prefix.get("worker", ())
            )
            if _readline(worker, start_timeout) != "ready":
                raise RuntimeError("the bare worker did not start")
            edge_proc = self._start("_pipe_edge", self.server.url, prefix=prefix.get("edge", ()))
            line = _readline(edge_proc, start_timeout)
            if not line.startswith("listening "):
                raise RuntimeError(f"the bare edge did not start: {line!r}")
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
        self.pids = {"edge": edge_proc.pid, "worker": worker.pid, "nats-server": self.server.proc.pid}

    def _start(self, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        proc = _spawn(*args, prefix=prefix)
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        _stop(*self._procs)
        self.server.stop()
        self._tmp.cleanup()


def pipeline(upstream: Upstream, concurrency: int, seconds: float) -> tuple[dict[str, float], float]:
    """(CPU ms per request of the bare edge, the bare worker and nats-server, p50 ms)."""
    bare = BarePipeline(upstream.base_url)
    try:
        meter = CpuMeter(bare.pids)
        phase = Phase("floor", bare.url, "buffered", concurrency, "floor")
        run = run_phase(phase, meter, requests=0, seconds=seconds, warmup_seconds=1.0, timeout=30)
        if not run.result.requests or run.result.errors:
            raise RuntimeError(f"the load through the bare pipeline failed: {run.result}")
        per = {n: run.cpu.get(n, 0.0) * 1000 / run.result.requests for n in bare.pids}
        return per, run.result.p50_ms or 0.0
    finally:
        bare.stop()


def run(concurrency: tuple[int, ...] = (1, 16), seconds: float = 3.0) -> dict[str, Any]:
    """Per concurrency: CPU ms per request (edge, client) and per message (hop), and p50 latencies:
    the fake upstream alone (``direct``), behind a bare aiohttp server (``edge``), called by a bare
    aiohttp client (``client``), and a bus request/reply (``hop``). At concurrency 1,
    ``added_p50_ms`` estimates what these parts alone add to a buffered request through one HTTP
    edge, one work request/reply on the bus and one upstream call: (edge - direct) + hop +
    (client - direct). The CPU a buffered request cannot go below is edge + client + hop x the bus
    messages per request that ``make bench`` reports."""
    upstream = Upstream(chunks=8, chunk_delay_ms=0.0, api_key_env="", env={})
    out: dict[str, Any] = {}
    try:
        for c in concurrency:
            _, direct_p50 = _served(None, upstream.base_url, c, seconds)
            edge_cpu, edge_p50 = edge(c, seconds)
            client_cpu, client_p50 = client(upstream, c, seconds)
            hop_cpu, hop_p50 = hop(c, seconds)
            pipe_parts, pipe_p50 = pipeline(upstream, c, seconds)
            pipe_cpu = sum(pipe_parts.values())
            figures = {
                "edge_cpu_ms_per_request": round(edge_cpu, 4),
                "client_cpu_ms_per_request": round(client_cpu, 4),
                "hop_cpu_ms_per_message": round(hop_cpu, 4),
                "direct_p50_ms": round(direct_p50, 3),
                "edge_p50_ms": round(edge_p50, 3),
                "client_p50_ms": round(client_p50, 3),
                "hop_round_trip_p50_ms": round(hop_p50, 3),
                "pipeline_cpu_ms_per_request": round(pipe_cpu, 4),
                "pipeline_cpu_ms_by_process": {n: round(v, 4) for n, v in pipe_parts.items()},
                "pipeline_p50_ms": round(pipe_p50, 3),
            }
            if c == 1:  # above 1 the latencies are mostly queueing, and their sum means nothing
                figures["added_p50_ms"] = round(
                    (edge_p50 - direct_p50) + hop_p50 + (client_p50 - direct_p50), 3
                )
                figures["pipeline_added_p50_ms"] = round(pipe_p50 - direct_p50, 3)
            out[f"c{c}"] = figures
            print(
                f"floor c={c}: CPU ms: aiohttp edge {edge_cpu:.4f}/req, aiohttp client {client_cpu:.4f}/req, "
                f"one bus message {hop_cpu:.4f} (sender + nats-server + receiver); p50 ms: direct "
                f"{direct_p50:.3f}, edge {edge_p50:.3f}, client {client_p50:.3f}, bus round trip "
                f"{hop_p50:.3f}"
                + (f", so these parts alone add {figures['added_p50_ms']:.3f}" if c == 1 else ""),
                flush=True,
            )
            print(
                f"floor c={c}: bare pipeline (edge, bus, worker, upstream; no Janus code): CPU ms "
                f"{pipe_cpu:.4f}/req (edge {pipe_parts['edge']:.4f}, worker {pipe_parts['worker']:.4f}, "
                f"nats-server {pipe_parts['nats-server']:.4f}), p50 {pipe_p50:.3f} ms"
                + (f", {figures['pipeline_added_p50_ms']:.3f} over direct" if c == 1 else ""),
                flush=True,
            )
    finally:
        upstream.stop()
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_edge":
        return _serve_edge()
    if argv and argv[0] == "_client":
        return _run_client(argv[1], int(argv[2]), float(argv[3]), float(argv[4]))
    if argv and argv[0] == "_pipe_edge":
        return _serve_pipe_edge(argv[1])
    if argv and argv[0] == "_pipe_worker":
        return _serve_pipe_worker(argv[1], argv[2])
    if argv and argv[0] == "_hop":
        return _run_hop(argv[1], argv[2], int(argv[3]), float(argv[4]), float(argv[5]))
    ap = argparse.ArgumentParser(
        prog="python -m tools.bench.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--concurrency", default="1,16", help="comma list (default 1,16)")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    conc = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    print(json.dumps(run(conc, args.seconds), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
