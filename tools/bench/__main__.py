"""``make bench``: the same load sent straight to a fake upstream and through Janus, in one run.

    python -m tools.bench [--concurrency 1,16,64] [--modes buffered,stream] [--seconds 4]
                          [--requests N] [--warmup 1] [--targets direct,janus,bare] [--profile]

1. start the fake OpenAI-compatible upstream (its own process);
2. direct: for each mode and concurrency, closed-loop load straight at the upstream;
3. janus: start nats-server and the four services with a generated catalog whose one provider is
   the upstream (``openai_compat``), issue a JWT for a plan too large to run out, and send the
   same load through the gateway, reading the CPU time of every Janus process and nats-server's
   message and byte counters (``/varz``) around each window;
   bare: right after each Janus buffered phase, the same load through the bare pipeline (the
   design with no Janus code: ``tools.bench.floor.BarePipeline``), so Janus and what its libraries
   alone cost are measured seconds apart, whatever the machine's speed did in between;
   then the two ``slope`` phases: streams at concurrency 16 of ``--chunks`` and of
   ``--long-chunks`` chunks (a second upstream), whose CPU difference per chunk is what one
   streamed chunk costs Janus;
4. run the extra sections other benchmarks plug in (``tools.bench.extras``);
5. print one table and write it as JSON to ``bench-results/latest.json``.

The design targets are printed as measured against target, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.bench import janus as janus_mod
from tools.bench import report, stages
from tools.bench.extras import run_extras
from tools.bench.floor import BarePipeline
from tools.bench.load import MODES
from tools.bench.procs import ROOT, CpuMeter, Phase, PhaseRun, Upstream, run_phase
from tools.bench.profile import Profiler, profile_text, profiler_available


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str, allowed: tuple[str, ...]) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {allowed}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--concurrency", type=_ints, default=[1, 16, 64], help="comma list (default 1,16,64)")
    ap.add_argument(
        "--modes",
        type=lambda t: _names(t, MODES),
        default=["buffered", "stream"],
        help="comma list of buffered, stream, embeddings (default buffered,stream)",
    )
    ap.add_argument(
        "--targets",
        type=lambda t: _names(t, ("direct", "janus", "bare")),
        default=["direct", "janus", "bare"],
        help="comma list of direct, janus, bare (bare runs beside janus's buffered phases)",
    )
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    ap.add_argument(
        "--requests", type=int, default=0, help="measured requests per phase (overrides --seconds)"
    )
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    ap.add_argument("--timeout", type=float, default=30.0, help="bound on one request, seconds")
    ap.add_argument("--chunks", type=int, default=8, help="content deltas per upstream stream")
    ap.add_argument(
        "--long-chunks",
        type=int,
        default=64,
        help="content deltas per stream of the second slope phase; 0 skips both slope phases",
    )
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="upstream pause between events")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results", help="report directory")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the stack's files and logs here")
    ap.add_argument("--no-extras", action="store_true", help="skip the metering and routing sections")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample every service with py-spy during the Janus buffered phase at --profile-at",
    )
    ap.add_argument("--profile-at", type=int, default=16, help="concurrency of the profiled phase")
    ap.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the services' JANUS_LOG_LEVEL (default WARNING: no access line per request; INFO is the "
        "services' own default, which adds the gateway's line for every request to what is measured)",
    )
    return ap.parse_args(argv)


def _phases(
    target: str, url: str, args: argparse.Namespace, model_for: dict[str, str], token: str = ""
) -> list[Phase]:
    return [
        Phase(target, url, mode, c, model_for[mode], token) for mode in args.modes for c in args.concurrency
    ]


def _run(
    phase: Phase,
    meter: CpuMeter,
    args: argparse.Namespace,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> PhaseRun:
    print(f"  {phase.target:<6} {phase.mode:<10} c={phase.concurrency:<3} ...", end="", flush=True)
    run = run_phase(
        phase,
        meter,
        requests=args.requests,
        seconds=args.seconds,
        warmup_seconds=args.warmup,
        timeout=args.timeout,
        before=before,
        after=after,
    )
    r = run.result
    print(
        f" {r.requests} requests, {r.rps:.0f}/s, p50 {r.p50_ms} ms"
        + (f", {r.errors} errors" if r.errors else "")
        + (f", {r.incomplete_streams} incomplete" if r.incomplete_streams else ""),
        flush=True,
    )
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    notes: list[str] = []
    rows: list[report.Row] = []
    profiles: dict[str, Any] = {}
    tmp = None if args.workdir else Path(tempfile.mkdtemp(prefix="janus-bench-"))
    workdir = args.workdir or tmp
    assert workdir is not None
    key = janus_mod.new_upstream_key()
    model_for = {
        "buffered": janus_mod.CHAT_MODEL,
        "stream": janus_mod.CHAT_MODEL,
        "embeddings": janus_mod.EMBED_MODEL,
    }

    upstream = Upstream(
        chunks=args.chunks,
        chunk_delay_ms=args.chunk_delay_ms,
        api_key_env=janus_mod.KEY_ENV,
        env={janus_mod.KEY_ENV: key},
    )
    print(f"fake upstream on {upstream.base_url} (pid {upstream.proc.pid})", flush=True)
    long_upstream = None
    try:
        if "janus" in args.targets and args.long_chunks > args.chunks:
            long_upstream = Upstream(
                chunks=args.long_chunks,
                chunk_delay_ms=args.chunk_delay_ms,
                api_key_env=janus_mod.KEY_ENV,
                env={janus_mod.KEY_ENV: key},
            )
        if "direct" in args.targets:
            meter = CpuMeter({"upstream": upstream.proc.pid})
            for phase in _phases("direct", upstream.base_url, args, model_for, key):
                rows.append(report.make_row("direct", _run(phase, meter, args), []))
        if "bare" in args.targets and "janus" not in args.targets:
            notes.append(
                "the bare pipeline runs beside Janus's buffered phases: without janus it did not run"
            )
        if "janus" in args.targets:
            rows += _janus_phases(args, workdir, upstream, long_upstream, key, model_for, notes, profiles)
    finally:
        upstream.stop()
        if long_upstream:
            long_upstream.stop()

    extras: dict[str, Any] = {}
    if not args.no_extras:
        extras, extra_notes = run_extras()
        notes += extra_notes
    if profiles:
        extras["profile"] = profiles

    report.add_overheads(rows)
    targets = report.evaluate(rows)
    floor = extras.get("floor", {}).get("result")
    under = report.floor_under_targets(rows, floor) if isinstance(floor, dict) else {}
    if under:
        extras["floor"]["under_targets"] = under
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("out", "workdir")
    }
    settings["wall_seconds"] = round(time.monotonic() - started, 1)
    doc = report.document(rows, targets, settings, notes, extras)
    path = report.write(doc, args.out)

    print()
    print(report.table(rows))
    for text in (
        report.breakdown(rows),
        report.stages_text(rows),
        report.beside_bare_text(report.beside_bare(rows)),
    ):
        if text:
            print()
            print(text)
    if profiles:
        print()
        print(profile_text(profiles))
    print()
    print(report.targets_text(targets))
    if under:
        print()
        print(report.floor_text(under))
    for note in notes:
        print(f"note: {note}")
    print(f"\nwrote {path} ({settings['wall_seconds']} s)", flush=True)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _janus_phases(
    args: argparse.Namespace,
    workdir: Path,
    upstream: Upstream,
    long_upstream: Upstream | None,
    key: str,
    model_for: dict[str, str],
    notes: list[str],
    profiles: dict[str, Any],
) -> list[report.Row]:
    print("starting nats-server and the four services ...", flush=True)
    try:
        janus = janus_mod.start(
            workdir / "janus",
            upstream.base_url,
            key,
            dimensions=16,
            long_upstream_url=long_upstream.base_url if long_upstream else "",
            log_level=args.log_level,
        )
    except Exception as exc:  # the services may not exist yet or may fail to start: report, go on
        notes.append(f"janus stack did not start: {str(exc)[-1500:]}")
        print(f"janus stack did not start:\n{str(exc)[-1500:]}", flush=True)
        return []
    rows: list[report.Row] = []
    bare = None
    try:
        if "bare" in args.targets and "buffered" in args.modes:
            try:
                bare = BarePipeline(upstream.base_url)
            except Exception as exc:
                notes.append(f"the bare pipeline did not start: {str(exc)[-500:]}")
        problem = janus_mod.probe(janus)
        if problem:
            notes.append(f"janus probe request failed: {problem}")
            print(f"janus probe request failed: {problem}", flush=True)
        pids = janus.pids()
        names = list(pids)
        ports = {name: svc.ops_port for name, svc in janus.stack.services.items()}
        upstreams = {"upstream": upstream.proc.pid}
        if long_upstream:
            upstreams["upstream-long"] = long_upstream.proc.pid
        meter = CpuMeter({**pids, **upstreams})
        phases = _phases("janus", janus.base_url, args, model_for, janus.token)
        if long_upstream:
            phases += [
                Phase("slope", janus.base_url, "stream", report.SLOPE_CONCURRENCY, model, janus.token)
                for model in (janus_mod.CHAT_MODEL, janus_mod.LONG_MODEL)
            ]
        for phase in phases:
            profiler = None
            if args.profile and phase.mode == "buffered" and phase.concurrency == args.profile_at:
                if profiler_available():
                    profiler = Profiler(
                        {n: p for n, p in pids.items() if n != "nats-server"},
                        workdir / "profiles",
                        args.warmup + args.seconds,
                    )
                else:
                    notes.append("profile: py-spy not installed (pip install py-spy==0.4.1)")
            if profiler:
                notes.append(
                    f"profile: janus {phase.mode} c={phase.concurrency} ran under py-spy sampling; "
                    "its figures are slightly pessimistic"
                )
                profiler.start()
            scrapes: list[stages.Sample] = []
            bus: list[tuple[int, int, int, int]] = []

            def take(
                into: list[stages.Sample] = scrapes, counts: list[tuple[int, int, int, int]] = bus
            ) -> None:
                counts.append(janus.bus_counters())
                into.append(stages.scrape(ports))

            run = _run(phase, meter, args, before=take, after=take)
            if profiler:
                profiles.update(profiler.finish())
            long = phase.model == janus_mod.LONG_MODEL
            row = report.make_row(
                phase.target,
                run,
                names,
                chunks=args.long_chunks if long else args.chunks,
                bus=tuple(after - before for before, after in zip(bus[0], bus[1], strict=True)),
            )
            row.stages = stages.stage_means(*scrapes)
            rows.append(row)
            dead = set(names) - set(janus.alive())
            if dead:
                where = f"{phase.mode} c={phase.concurrency}"
                notes.append(f"janus processes exited during {where}: {sorted(dead)}")
                break
            if bare is not None and phase.target == "janus" and phase.mode == "buffered":
                bare_meter = CpuMeter({**bare.pids, "upstream": upstream.proc.pid})
                bare_phase = Phase("bare", bare.url, "buffered", phase.concurrency, "bare")
                rows.append(report.make_row("bare", _run(bare_phase, bare_meter, args), list(bare.pids)))
    finally:
        janus.stop()
        if bare is not None:
            bare.stop()
    return rows


if __name__ == "__main__":
    sys.exit(main())
