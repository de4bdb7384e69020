"""The benchmark's processes: CPU accounting from ``/proc``, the fake upstream, and one load phase.

CPU time is read from ``/proc/<pid>/stat`` (utime + stime of every thread of the process, in clock
ticks), before and after the measured window of a phase, so a figure is the CPU a process spent on
exactly the measured requests. Every Janus process (the four services and nats-server) is counted.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from tools.bench.load import Result

ROOT = Path(__file__).resolve().parent.parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields are counted after the last ')'
    fields = raw[raw.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class CpuMeter:
    """CPU seconds per named process between ``start()`` and ``stop()``."""

    pids: dict[str, int]
    before: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.before = {n: cpu_seconds(p) or 0.0 for n, p in self.pids.items()}

    def stop(self) -> None:
        after = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.spent = {n: max(0.0, (after[n] or 0.0) - self.before.get(n, 0.0)) for n in self.pids}

    @property
    def total(self) -> float:
        return sum(self.spent.values())


class Upstream:
    """The fake upstream as its own process."""

    def __init__(self, *, chunks: int, chunk_delay_ms: float, api_key_env: str, env: dict[str, str]) -> None:
        args = [sys.executable, "-m", "tools.bench.upstream", "--chunks", str(chunks),
                "--chunk-delay-ms", str(chunk_delay_ms), "--api-key-env", api_key_env]
        # stderr goes to a file: a pipe nobody reads would block the child once it filled up
        self.errors = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, cwd=str(ROOT), env={**os.environ, **env},
                                     stdout=subprocess.PIPE, stderr=self.errors)
        line = _readline(self.proc, 15)
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"fake upstream did not start: {line!r} {self._stderr()}")
        self.port = int(line.split()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _stderr(self) -> str:
        return _tail(self.errors)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _tail(f: IO[bytes], n: int = 2000) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")[-n:]


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One stdout line, bounded in time: a hung child must not hang the benchmark.

    Selecting on the pipe is sound here only because each child writes one line and then waits
    (for stdin, or for a signal), so no second line can sit unseen in the reader's buffer."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise TimeoutError(f"no output from pid {proc.pid} in {timeout:.0f}s")
    finally:
        sel.close()
    return proc.stdout.readline().decode().strip()


@dataclass
class Phase:
    target: str  # "direct" or "janus"
    url: str
    mode: str
    concurrency: int
    model: str
    token: str = ""


@dataclass
class PhaseRun:
    result: Result
    cpu: dict[str, float]  # seconds per process during the measured window


def run_phase(phase: Phase, meter: CpuMeter, *, requests: int, seconds: float, warmup_seconds: float,
              timeout: float, before: Callable[[], None] | None = None,
              after: Callable[[], None] | None = None) -> PhaseRun:
    """Run the load generator as its own process, reading CPU counters at the window's edges.

    ``before`` and ``after`` run just outside the CPU window (scraping metrics, say)."""
    args = [sys.executable, "-m", "tools.bench.load", "--url", phase.url, "--mode", phase.mode,
            "--concurrency", str(phase.concurrency), "--model", phase.model, "--requests", str(requests),
            "--seconds", str(seconds), "--warmup-seconds", str(warmup_seconds), "--timeout", str(timeout),
            "--sync"]
    # the token goes by environment, not argv, so it never shows in a process listing
    env = {**os.environ, "BENCH_TOKEN": phase.token}
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, cwd=str(ROOT), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=errors)
    assert proc.stdin is not None
    # a whole phase is bounded: warm-up, the window, and every request's own bound once over
    bound = warmup_seconds + (seconds if requests <= 0 else 0) + timeout + 30
    started = time.monotonic()
    try:
        _expect(proc, "warm", bound, errors)
        if before:
            before()
        meter.start()
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        _expect(proc, "measured", bound - (time.monotonic() - started), errors)
        meter.stop()
        if after:
            after()
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        line = _readline(proc, 30)
        proc.wait(10)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        errors.close()
    return PhaseRun(msgspec.json.decode(line, type=Result), dict(meter.spent))


def _expect(proc: subprocess.Popen[bytes], tag: str, timeout: float, errors: IO[bytes]) -> None:
    try:
        line = _readline(proc, max(1.0, timeout))
    except TimeoutError:
        raise RuntimeError(f"load generator timed out waiting for {tag!r}") from None
    if line != tag:
        proc.wait(5)
        raise RuntimeError(f"load generator: expected {tag!r}, got {line!r}\n{_tail(errors)}")
