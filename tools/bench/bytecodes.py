"""Python bytecodes per buffered request in the gateway and the worker, by function and by line,
beside the bare pipeline's edge and worker: where, in Python, the instructions go.

    python -m tools.bench.bytecodes [--requests 300] [--processes gateway,worker,edge,bare-worker]
                                    [--top 40] [--lines services/gateway/app.py]
    make bench-bytecodes

Why. ``make bench-instructions`` counts what a process executes, but callgrind sees the
interpreter's C functions, never which Python function made it run them. This counts the other
side: every bytecode each Python function executes per request (``sys.settrace`` with opcode
events), so a change to the request path can be aimed at the functions that run the most, and
judged before ``make bench-instructions`` confirms it. Like that count, it does not depend on the
machine's speed: two runs of the same code agree to a few bytecodes a request.

How. As ``make bench-instructions`` does it: the fake upstream starts, and for each process
measured a fresh Janus stack (or bare pipeline) starts with that one process restarted under this
module's tracer (``_trace``), which runs the service as ``python -m`` would and counts nothing
until told. The process is warmed with ``--warmup`` buffered requests at concurrency 1, counting
starts (SIGUSR1), ``--requests`` more are sent, and the counts are written (SIGUSR2). A traced
process runs about 30 times slower, so the measured stack's settlement window is stretched as for
callgrind (``instructions.STRETCHED``).

What it is not. A bytecode is not a fixed cost: a call into C (msgspec, the C parts of aiohttp,
uvloop) counts as the one bytecode that calls it, however long it runs, and callgrind's total is
what decides. Use both: this to find, that to measure.
"""

from __future__ import annotations

import collections
import json
import linecache
import os
import runpy
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tools.bench.instructions import (
    BARE,
    JANUS,
    STRETCHED,
    arguments,
    bare_under,
    fake_upstream,
    janus_under,
    processes_of,
    save,
)
from tools.bench.procs import ROOT

_OWN = (str(ROOT / "services") + os.sep, str(ROOT / "shared") + os.sep)


# ------------------------------------------------------------------------------ in the traced process
def _trace(out: str, argv: list[str]) -> None:
    """Run ``argv`` (``-m module args...``, optionally after a Python executable) counting bytecodes
    per function, and per line in Janus's own code, between SIGUSR1 and SIGUSR2 (which writes ``out``)."""
    ops: collections.Counter[tuple[str, int, str]] = collections.Counter()
    calls: collections.Counter[tuple[str, int, str]] = collections.Counter()
    lines: collections.Counter[tuple[str, int]] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if event == "opcode":
            ops[(code.co_filename, code.co_firstlineno, code.co_name)] += 1
            if code.co_filename.startswith(_OWN):
                lines[(code.co_filename, frame.f_lineno)] += 1
        elif event == "call":
            frame.f_trace_opcodes = True
            calls[(code.co_filename, code.co_firstlineno, code.co_name)] += 1
        return tracer

    def start(signum: int, frame: FrameType | None) -> None:
        ops.clear()
        calls.clear()
        lines.clear()
        sys.settrace(tracer)
        threading.settrace(tracer)
        # the frames already running (the event loop's) are traced from their next bytecode on
        while frame is not None:
            frame.f_trace = tracer
            frame.f_trace_opcodes = True
            frame = frame.f_back

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.settrace(None)
        threading.settrace(None)
        doc = {
            "functions": [[*k, ops[k], calls[k]] for k in set(ops) | set(calls)],
            "lines": [[*k, n] for k, n in lines.items()],
        }
        Path(out + ".part").write_text(json.dumps(doc))
        os.replace(out + ".part", out)  # whole, or not there

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if argv and argv[0] != "-m":  # a Python executable first, as a command prefix puts it
        argv = argv[1:]
    if len(argv) < 2 or argv[0] != "-m":
        raise SystemExit("usage: python -m tools.bench.bytecodes _trace OUT [python] -m module [args]")
    sys.argv = argv[1:]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


# ------------------------------------------------------------------------------------- measuring
def _count(pid: int, out: Path, send: Any, warmup: int, requests: int) -> dict[str, Any]:
    send(warmup)
    os.kill(pid, signal.SIGUSR1)
    result = send(requests)
    if result.errors or result.requests != requests:
        raise RuntimeError(f"the load did not complete: {result}")
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 60
    while not out.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the traced process wrote no counts to {out}")
        time.sleep(0.05)
    return dict(json.loads(out.read_text()))


def _prefix(out: Path) -> tuple[str, ...]:
    return ("env", "PYTHONHASHSEED=0", sys.executable, "-m", "tools.bench.bytecodes", "_trace", str(out))


def _short(path: str) -> str:
    for marker in ("site-packages" + os.sep, str(ROOT) + os.sep):
        if marker in path:
            return path.split(marker, 1)[1]
    return "stdlib:" + Path(path).name if path.startswith(sys.base_prefix) else path


def _group(path: str) -> str:
    """Janus's own code by module; a library by its package; the standard library by module."""
    short = _short(path)
    if short.startswith(("services" + os.sep, "shared" + os.sep, "tools" + os.sep)):
        return short
    return short.split(os.sep, 1)[0]


def summarise(raw: dict[str, Any], requests: int, top: int, lines_of: str = "") -> dict[str, Any]:
    per_fn = []
    groups: collections.Counter[str] = collections.Counter()
    total = calls = 0
    for path, first, name, ops, n in raw["functions"]:
        total += ops
        calls += n
        groups[_group(path)] += ops
        per_fn.append((ops, n, f"{_short(path)}:{first}({name})"))
    per_fn.sort(reverse=True)
    out: dict[str, Any] = {
        "bytecodes_per_request": round(total / requests, 1),
        "calls_per_request": round(calls / requests, 1),
        "by_module": {g: round(n / requests, 1) for g, n in groups.most_common(top)},
        "top_functions": [
            {"function": f, "bytecodes": round(ops / requests, 1), "calls": round(n / requests, 2)}
            for ops, n, f in per_fn[:top]
        ],
    }
    if lines_of:
        rows = sorted((p, ln, n) for p, ln, n in raw["lines"] if lines_of in p and ln is not None)
        out["lines"] = [
            {
                "line": f"{_short(p)}:{ln}",
                "bytecodes": round(n / requests, 1),
                "source": linecache.getline(p, ln).strip()[:100],
            }
            for p, ln, n in rows
            if n >= requests / 2
        ]
    return out


def run(processes: tuple[str, ...], requests: int, warmup: int, top: int, lines_of: str) -> dict[str, Any]:
    key, upstream = fake_upstream()
    per: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="janus-bytecodes-") as tmp:
            work = Path(tmp)
            for name in processes:
                print(f"{name}: traced, {warmup} requests to warm, {requests} counted ...", flush=True)
                out = work / f"{name}.bytecodes.json"
                under = (
                    janus_under(name, upstream, key, work, _prefix(out), start_timeout=120)
                    if name in JANUS
                    else bare_under(BARE[name], upstream, _prefix(out), start_timeout=120)
                )
                with under as (pid, send):
                    raw = _count(pid, out, send, warmup, requests)
                per[name] = summarise(raw, requests, top, lines_of)
    finally:
        upstream.stop()
    ratios = {
        janus: round(per[janus]["bytecodes_per_request"] / per[bare]["bytecodes_per_request"], 2)
        for janus, bare in (("gateway", "edge"), ("worker", "bare-worker"))
        if janus in per and bare in per
    }
    return {
        "processes": per,
        "janus_over_bare": ratios,
        "settings": {"requests": requests, "warmup": warmup, "concurrency": 1, "janus": STRETCHED},
    }


def report(result: dict[str, Any]) -> str:
    lines = ["Python bytecodes per buffered request at concurrency 1:"]
    for name, p in result["processes"].items():
        lines.append(
            f"\n{name}: {p['bytecodes_per_request']:,.0f} bytecodes, {p['calls_per_request']:,.0f} calls"
        )
        lines.append("  by module or package:")
        lines += [f"    {n:9,.1f}  {g}" for g, n in p["by_module"].items()]
        lines.append("  functions:")
        lines += [
            f"    {f['bytecodes']:9,.1f}  {f['calls']:5.2f} calls  {f['function']}"
            for f in p["top_functions"]
        ]
        for row in p.get("lines", []):
            lines.append(f"    {row['bytecodes']:9,.1f}  {row['line']}  {row['source']}")
    for name, ratio in result["janus_over_bare"].items():
        lines.append(f"{name} over its bare counterpart: {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_trace"]:
        _trace(argv[1], argv[2:])
        return
    ap = arguments("python -m tools.bench.bytecodes", __doc__, 300, 200)
    ap.add_argument("--top", type=int, default=40, help="functions and modules listed per process")
    ap.add_argument("--lines", default="", help="also list the lines of Janus files whose path has this")
    args = ap.parse_args(argv)
    result = run(processes_of(ap, args.processes), args.requests, args.warmup, args.top, args.lines)
    save(result, report(result), args.out, "bytecodes.json")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
