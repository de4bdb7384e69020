"""Where a service's CPU goes during a benchmark phase: ``py-spy record`` on each service's pid.

Optional (``--profile``): py-spy is an external sampler (``pip install py-spy``) that needs ptrace
permission on the services' processes. Its collapsed-stack output ("frame;frame;frame count" per
line) is summarised as the top frames by own time (leaf) and by inclusive time, per service.
Time spent in native code (the event loop, sockets, msgspec) is charged to the Python frame that
called it, so a large share on ``run (asyncio/runners.py)`` is the event loop's own work.

py-spy counts a thread that is runnable but waiting for a CPU as busy. A write to a local socket
wakes the reader, which on a small machine often takes the CPU from the writer right there, so
socket writes (``writelines``) collect many samples that are not CPU: measured inside the services,
such a write cost ~10 us of CPU but ~150-270 us of wall time on 2 loaded cores. Judge CPU by the
per-process CPU figures of the report; use the profile for what runs, not for how long it holds a CPU.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

TOP = 12
# frames every sample passes through (process entry, the event loop's run, thread bootstrap): they
# would head every inclusive list and say nothing
_ROOTS = ("<frozen runpy>", "<module> (", "asyncio/runners.py", "shared/service.py", "threading.py:")


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profiler_available() -> bool:
    return _py_spy() is not None


class Profiler:
    def __init__(self, pids: dict[str, int], out_dir: Path, seconds: float, rate: int = 250) -> None:
        self.pids = pids
        self.out_dir = out_dir
        self.seconds = max(1, int(seconds))
        self.rate = rate
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        exe = _py_spy()
        assert exe is not None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"{name}.txt"
            # --nonblocking: sample without pausing the service, so the figures stay honest
            self.procs[name] = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(self.seconds), "--rate", str(self.rate),
                 "--format", "raw", "--nonblocking", "--function", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )

    def finish(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, proc in self.procs.items():
            try:
                _, err = proc.communicate(timeout=self.seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            path = self.out_dir / f"{name}.txt"
            if proc.returncode != 0 or not path.exists():
                result[name] = {"error": err.decode(errors="replace")[-500:]}
                continue
            result[name] = summarise(path.read_text(errors="replace"))
        return result


def summarise(collapsed: str, top: int = TOP) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            if not any(r in f for r in _ROOTS):
                inclusive[f] += count
    if not total:
        return {"samples": 0}

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[frame, round(100 * n / total, 1)] for frame, n in c.most_common(top)]

    return {"samples": total, "top_own_pct": pct(own), "top_inclusive_pct": pct(inclusive)}


def profile_text(profiles: dict[str, Any], top: int = 6) -> str:
    lines = ["Top frames by own time, then by inclusive time (py-spy), per service",
             "(socket writes include time spent runnable after waking the peer: see tools/bench/profile.py):"]
    for name, p in profiles.items():
        if "error" in p:
            lines.append(f"  {name}: py-spy failed: {p['error'].strip()[:200]}")
            continue
        lines.append(f"  {name} ({p.get('samples', 0)} samples)")
        for frame, share in p.get("top_own_pct", [])[:top]:
            lines.append(f"    {share:5.1f}%  {frame}")
        inclusive = ", ".join(f"{f.split(' (')[0]} {s:.0f}%" for f, s in p.get("top_inclusive_pct", [])[:top])
        lines.append(f"    inclusive: {inclusive}")
    return "\n".join(lines)
