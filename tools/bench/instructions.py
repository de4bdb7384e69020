"""Instructions per buffered request in the gateway and the worker, counted by callgrind, beside the
bare pipeline's edge and worker: a figure that does not move with the machine's minute.

    python -m tools.bench.instructions [--requests 1500] [--warmup 300]
                                       [--processes gateway,worker,edge,bare-worker]
    make bench-instructions

Why. ``make bench`` reads CPU time, which is what the design targets are stated in; on a shared
2-core machine the same code measures up to twice as much on a slow minute as on a fast one, far
more than most changes to the request path are worth. Valgrind's callgrind counts the instructions
a process executes, whatever the machine's speed: at concurrency 1, two runs of the same code
agree to within 0.1 % (see "Time under callgrind"). A change to the hot path is judged here,
before and after, on any day; its effect in milliseconds is then ``make bench``'s to show when the
machine lets it.

How. The fake upstream starts as in ``make bench``. For each process measured, a fresh Janus stack
(or bare pipeline) starts and that one process is restarted under ``valgrind --tool=callgrind``
while the others run natively. It is warmed with ``--warmup`` buffered requests, its counters are
zeroed (``callgrind_control -z``), it is sent ``--requests`` more at concurrency 1, and its counters
are dumped (``callgrind_control -d``): instructions divided by requests.

Time under callgrind. A process runs about 50 times slower under callgrind, while what the gateway
does per window of time keeps its wall-clock length: with its 20 ms settlement bundles, nearly
every request measured would get a bundle of its own (about twelve share one natively at
concurrency 1), and how many share one would follow the machine's speed again (0.84 to 0.90
million instructions a request for the same code on one day). The measured stack's bundle window
is therefore stretched to ``STRETCHED`` (1 s, about what 20 ms is at that slowdown): then two runs
agree within 0.1 %, also with another process holding a core. The window's own cost per request
is what ``make bench`` measures.

Before and after. Run both from the same checkout (``git stash`` or ``git checkout`` in place, not
a second worktree): the same bare edge counts about 1.2 % apart when started from two checkouts at
different paths (415,165 against 419,998), which is more than a small change is worth.

What the figure is not. An instruction is not a fixed amount of time, and the figure compares code
with code, Janus with the bare pipeline; it does not convert to milliseconds. nats-server (Go) and
metering (its work per request depends on how requests fall into its batches in time) are not
measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tools.bench import janus as janus_mod
from tools.bench.floor import BarePipeline
from tools.bench.load import run_load
from tools.bench.procs import ROOT, Upstream
from tools.localstack import ServiceProc

JANUS = ("gateway", "worker")
# settings of the measured Janus stack: the gateway's settlement bundle window, stretched as the
# process is slowed (see "Time under callgrind" above)
STRETCHED = {"JANUS_SETTLE_BUNDLE_MS": "1000"}
BARE = {"edge": "edge", "bare-worker": "worker"}
PROCESSES = (*JANUS, *BARE)


def callgrind_prefix(out_file: Path) -> tuple[str, ...]:
    """The command a measured process runs under: callgrind, with string hashing fixed (Python
    salts it per process, which moved the bare edge's count by 0.5 % from one start to the next)."""
    return (
        "env",
        "PYTHONHASHSEED=0",
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        f"--log-file={out_file}-valgrind.log",
        "--dump-instr=no",
    )


def instructions(dump: Path) -> int:
    """The total instructions (``Ir``) a callgrind dump file records."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def _control(flag: str, pid: int) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True, timeout=120)


def _count(pid: int, dump: Path, send: Callable[[int], Any], warmup: int, requests: int) -> float:
    """Instructions per request of ``pid``, running under callgrind with ``dump`` as its output."""
    send(warmup)
    _control("-z", pid)
    result = send(requests)
    if result.errors or result.requests != requests:
        raise RuntimeError(f"the load did not complete: {result}")
    _control("-d", pid)
    dumps = sorted(dump.parent.glob(dump.name + ".*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump next to {dump}")
    return instructions(dumps[-1]) / requests


def _sender(url: str, model: str, token: str) -> Callable[[int], Any]:
    def send(n: int) -> Any:
        return asyncio.run(
            run_load(url, "buffered", 1, model=model, token=token, requests=n, request_timeout=120)
        )

    return send


@contextlib.contextmanager
def janus_under(
    name: str,
    upstream: Upstream,
    key: str,
    work: Path,
    prefix: tuple[str, ...],
    log_level: str = "WARNING",
    start_timeout: float = 300,
) -> Iterator[tuple[int, Callable[[int], Any]]]:
    """A fresh Janus stack (its settlement window ``STRETCHED``) whose process ``name`` runs under
    the command ``prefix``: (that process's pid, a sender of buffered requests at concurrency 1)."""
    janus = janus_mod.start(
        work / name, upstream.base_url, key, dimensions=16, log_level=log_level, settings=STRETCHED
    )
    under: ServiceProc | None = None
    try:
        svc = janus.stack.services[name]
        svc.stop()
        log_path = work / f"{name}.under.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", f"services.{name}"],
                cwd=str(ROOT),
                env=svc.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        under = ServiceProc(name, proc, svc.ops_port, svc.env, log_path)
        under.wait_ready(start_timeout)
        yield proc.pid, _sender(janus.base_url, janus_mod.CHAT_MODEL, janus.token)
    finally:
        if under is not None:
            under.stop(timeout=60)
        janus.stop()


@contextlib.contextmanager
def bare_under(
    role: str, upstream: Upstream, prefix: tuple[str, ...], start_timeout: float = 300
) -> Iterator[tuple[int, Callable[[int], Any]]]:
    """The bare pipeline with its ``role`` ("edge" or "worker") under the command ``prefix``."""
    bare = BarePipeline(upstream.base_url, under=role, under_prefix=prefix, start_timeout=start_timeout)
    try:
        yield bare.pids[role], _sender(bare.url, "bare", "")
    finally:
        bare.stop()


def fake_upstream() -> tuple[str, Upstream]:
    """The bench's fake upstream (buffered answers, streams of 8 chunks) and the key it takes."""
    key = janus_mod.new_upstream_key()
    return key, Upstream(
        chunks=8, chunk_delay_ms=0.0, api_key_env=janus_mod.KEY_ENV, env={janus_mod.KEY_ENV: key}
    )


def run(processes: tuple[str, ...], requests: int, warmup: int, log_level: str) -> dict[str, Any]:
    key, upstream = fake_upstream()
    per: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="janus-instructions-") as tmp:
            work = Path(tmp)
            for name in processes:
                print(
                    f"{name}: under callgrind, {warmup} requests to warm, {requests} counted ...", flush=True
                )
                dump = work / f"callgrind.{name}.out"
                under = (
                    janus_under(name, upstream, key, work, callgrind_prefix(dump), log_level)
                    if name in JANUS
                    else bare_under(BARE[name], upstream, callgrind_prefix(dump))
                )
                with under as (pid, send):
                    per[name] = _count(pid, dump, send, warmup, requests)
    finally:
        upstream.stop()
    ratios = {
        janus: round(per[janus] / per[bare], 2)
        for janus, bare in (("gateway", "edge"), ("worker", "bare-worker"))
        if janus in per and bare in per
    }
    return {
        "instructions_per_request": {k: round(v) for k, v in per.items()},
        "janus_over_bare": ratios,
        "settings": {
            "requests": requests,
            "warmup": warmup,
            "concurrency": 1,
            "log_level": log_level,
            "janus": STRETCHED,
        },
    }


def report(result: dict[str, Any]) -> str:
    lines = ["instructions per buffered request at concurrency 1 (callgrind):"]
    for name, n in result["instructions_per_request"].items():
        lines.append(f"  {name:12s} {n:>12,}")
    for name, ratio in result["janus_over_bare"].items():
        lines.append(f"  {name} over its bare counterpart: {ratio:.2f}x")
    return "\n".join(lines)


def arguments(prog: str, doc: str | None, requests: int, warmup: int) -> argparse.ArgumentParser:
    """The options this tool and ``tools.bench.bytecodes`` share."""
    ap = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=requests, help="requests counted per process")
    ap.add_argument("--warmup", type=int, default=warmup, help="requests sent before counting")
    ap.add_argument("--processes", default=",".join(PROCESSES), help=f"comma list of {', '.join(PROCESSES)}")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results", help="report directory")
    return ap


def processes_of(ap: argparse.ArgumentParser, raw: str) -> tuple[str, ...]:
    processes = tuple(p.strip() for p in raw.split(",") if p.strip())
    unknown = set(processes) - set(PROCESSES)
    if unknown:
        ap.error(f"unknown processes: {sorted(unknown)}")
    return processes


def save(result: dict[str, Any], text: str, out: Path, name: str) -> None:
    """Print the report and write the result as ``out/name``."""
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    ap = arguments("python -m tools.bench.instructions", __doc__, 1500, 300)
    ap.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = ap.parse_args(argv)
    processes = processes_of(ap, args.processes)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install valgrind)")
    result = run(processes, args.requests, args.warmup, args.log_level)
    save(result, report(result), args.out, "instructions.json")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
