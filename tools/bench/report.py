"""The benchmark report: one row per phase, the overhead of Janus over the direct path, the design
targets (measured and compared, never asserted), one printed table and one JSON document."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import msgspec

from tools.bench.janus import CHAT_MODEL, PROVIDER
from tools.bench.load import Result
from tools.bench.procs import PhaseRun

# The figures the team designs for. A miss is reported, never raised: speed is for benchmarks.
TARGETS = {
    "added_p50_ms_at_c1": 1.0,
    "janus_cpu_ms_per_buffered_request_at_c1": 1.2,
    "janus_cpu_ms_per_buffered_request_at_c16": 0.5,
    "janus_cpu_ms_per_streamed_chunk_at_c16": 0.03,
    "janus_rps": 1000.0,
    "incomplete_streams_at_c64": 0,
}


class Row(msgspec.Struct, omit_defaults=False):
    target: str  # "direct" | "janus" | "slope" (the per-chunk phases, see chunk_slope)
    mode: str
    concurrency: int
    requests: int
    errors: int
    incomplete_streams: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    overhead_p50_ms: float | None = None
    overhead_p99_ms: float | None = None
    overhead_ttft_p50_ms: float | None = None
    # the measured stack's processes: Janus's, or in a "bare" row the bare pipeline's (edge, worker,
    # nats-server), kept in the same fields so the table and the JSON read both alike
    janus_cpu_ms_per_request: float | None = None
    janus_cpu_ms_by_process: dict[str, float] = {}  # per request
    upstream_cpu_ms_per_request: float | None = None
    client_cpu_ms_per_request: float | None = None
    ttft_p99_ms: float | None = None
    first_error: str = ""
    stages: dict[str, Any] = {}  # mean ms per Janus stage, from the services' own histograms
    chunks: int | None = None  # content deltas per upstream stream
    # NATS messages per request, from nats-server's /varz around the window: into the server
    # (publishes) and out of it (deliveries); heartbeats and health reports during it included
    bus_in_per_request: float | None = None
    bus_out_per_request: float | None = None
    # and their bytes (payloads and headers), which a budget record rewritten whole at each write
    # dominates once its user has settled many requests within the idempotency horizon
    bus_in_bytes_per_request: int | None = None
    bus_out_bytes_per_request: int | None = None


def _per_request(seconds: float, n: int) -> float | None:
    return round(seconds * 1000 / n, 3) if n else None


def make_row(
    target: str,
    run: PhaseRun,
    janus_names: list[str],
    *,
    chunks: int | None = None,
    bus: tuple[int, ...] | None = None,
) -> Row:
    """``bus``: messages into and out of nats-server during the window, then (when given) their bytes."""
    r: Result = run.result
    n = r.requests
    janus_cpu = {k: v for k, v in run.cpu.items() if k in janus_names}
    return Row(
        chunks=chunks,
        bus_in_per_request=round(bus[0] / n, 2) if bus and n else None,
        bus_out_per_request=round(bus[1] / n, 2) if bus and n else None,
        bus_in_bytes_per_request=round(bus[2] / n) if bus and len(bus) > 3 and n else None,
        bus_out_bytes_per_request=round(bus[3] / n) if bus and len(bus) > 3 and n else None,
        target=target,
        mode=r.mode,
        concurrency=r.concurrency,
        requests=n,
        errors=r.errors,
        incomplete_streams=r.incomplete_streams,
        rps=r.rps,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
        ttft_p50_ms=r.ttft_p50_ms,
        ttft_p99_ms=r.ttft_p99_ms,
        janus_cpu_ms_per_request=_per_request(sum(janus_cpu.values()), n) if janus_cpu else None,
        janus_cpu_ms_by_process={k: _per_request(v, n) or 0.0 for k, v in sorted(janus_cpu.items())},
        upstream_cpu_ms_per_request=_per_request(run.cpu.get("upstream", 0.0), n),
        client_cpu_ms_per_request=round(r.client_cpu_ms / n, 3) if n else None,
        first_error=r.first_error[:500],
    )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def add_overheads(rows: list[Row]) -> None:
    """Janus (and the bare pipeline) minus direct for the same mode and concurrency (differences of
    percentiles)."""
    direct = {(r.mode, r.concurrency): r for r in rows if r.target == "direct"}
    for r in rows:
        d = direct.get((r.mode, r.concurrency))
        if r.target not in ("janus", "bare") or d is None:
            continue
        r.overhead_p50_ms = _minus(r.p50_ms, d.p50_ms)
        r.overhead_p99_ms = _minus(r.p99_ms, d.p99_ms)
        r.overhead_ttft_p50_ms = _minus(r.ttft_p50_ms, d.ttft_p50_ms)


SLOPE_CONCURRENCY = 16


def chunk_slope(rows: list[Row]) -> dict[str, Any] | None:
    """Janus CPU ms per streamed chunk: the slope of CPU per stream against chunks per stream, fitted
    over the two ``slope`` phases (same concurrency, few and many chunks). What a stream costs
    whatever its length (auth, routing, reserve, settle) cancels out."""
    pts = sorted(
        (r.chunks, r.janus_cpu_ms_per_request)
        for r in rows
        if r.target == "slope" and r.chunks and r.janus_cpu_ms_per_request is not None
    )
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (c0, cpu0), (c1, cpu1) = pts[0], pts[-1]
    assert cpu0 is not None and cpu1 is not None
    return {
        "concurrency": SLOPE_CONCURRENCY,
        "chunks": [c0, c1],
        "cpu_ms_per_stream": [cpu0, cpu1],
        "cpu_ms_per_chunk": round((cpu1 - cpu0) / (c1 - c0), 4),
        "cpu_ms_per_stream_without_chunks": round(cpu0 - c0 * (cpu1 - cpu0) / (c1 - c0), 3),
    }


def evaluate(rows: list[Row]) -> dict[str, dict[str, Any]]:
    janus = [r for r in rows if r.target == "janus"]
    out: dict[str, dict[str, Any]] = {}

    def put(name: str, value: float | None, ok: bool | None, how: str) -> None:
        out[name] = {"target": TARGETS[name], "measured": value, "met": ok, "how": how}

    c1 = [r.overhead_p50_ms for r in janus if r.concurrency == 1 and r.mode == "buffered"]
    v = c1[0] if c1 and c1[0] is not None else None
    put(
        "added_p50_ms_at_c1",
        v,
        None if v is None else v <= TARGETS["added_p50_ms_at_c1"],
        "Janus p50 minus direct p50, buffered, concurrency 1",
    )
    for c in (1, 16):
        name = f"janus_cpu_ms_per_buffered_request_at_c{c}"
        cpu = [r.janus_cpu_ms_per_request for r in janus if r.mode == "buffered" and r.concurrency == c]
        v = cpu[0] if cpu else None
        put(
            name,
            v,
            None if v is None else v <= TARGETS[name],
            f"buffered, concurrency {c}; all services and nats-server summed",
        )
    slope = chunk_slope(rows)
    v = slope["cpu_ms_per_chunk"] if slope else None
    name = "janus_cpu_ms_per_streamed_chunk_at_c16"
    put(
        name,
        v,
        None if v is None else v <= TARGETS[name],
        "slope of Janus CPU per stream against chunks per stream (the 'slope' phases)",
    )
    rps = [r.rps for r in janus if r.mode == "buffered" and r.errors == 0]
    v = max(rps) if rps else None
    put(
        "janus_rps",
        v,
        None if v is None else v >= TARGETS["janus_rps"],
        "best buffered requests/s through the whole pipeline with no errors",
    )
    c64 = [r for r in janus if r.mode == "stream" and r.concurrency == 64]
    v = float(c64[0].incomplete_streams + c64[0].errors) if c64 else None
    put(
        "incomplete_streams_at_c64",
        v,
        None if v is None else v == 0,
        "streams without [DONE], with an in-band error, or failed, at concurrency 64",
    )
    return out


def floor_under_targets(rows: list[Row], floor: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The CPU a buffered request cannot go below with these libraries on this machine: the floor
    section's bare aiohttp edge and client, plus one bus message's cost times the messages Janus
    sends per request (its own ``bus in/req``), beside Janus's figure and the target. Where the
    floor section ran the bare pipeline (edge, bus, worker, upstream with no Janus code), its CPU
    per request and, at concurrency 1, its added p50 are given too, beside Janus's."""
    out: dict[str, dict[str, float]] = {}
    for c in (1, 16):
        parts = floor.get(f"c{c}")
        janus = [r for r in rows if r.target == "janus" and r.mode == "buffered" and r.concurrency == c]
        if not isinstance(parts, dict) or not janus or janus[0].bus_in_per_request is None:
            continue
        row = janus[0]
        msgs = row.bus_in_per_request or 0.0
        cpu = (
            parts["edge_cpu_ms_per_request"]
            + parts["client_cpu_ms_per_request"]
            + msgs * parts["hop_cpu_ms_per_message"]
        )
        figures = {
            "floor_cpu_ms": round(cpu, 3),
            "bus_in_per_request": msgs,
            "janus_cpu_ms": row.janus_cpu_ms_per_request or 0.0,
            "target": TARGETS[f"janus_cpu_ms_per_buffered_request_at_c{c}"],
        }
        if "pipeline_cpu_ms_per_request" in parts:
            figures["pipeline_cpu_ms"] = parts["pipeline_cpu_ms_per_request"]
            for name, value in parts.get("pipeline_cpu_ms_by_process", {}).items():
                figures[f"pipeline_{name}_cpu_ms"] = value
        if "pipeline_added_p50_ms" in parts and row.overhead_p50_ms is not None:
            figures["pipeline_added_p50_ms"] = parts["pipeline_added_p50_ms"]
            figures["janus_added_p50_ms"] = row.overhead_p50_ms
            figures["added_p50_target"] = TARGETS["added_p50_ms_at_c1"]
        out[f"c{c}"] = figures
    return out


def floor_text(under: dict[str, dict[str, float]]) -> str:
    if not under:
        return ""
    lines = [
        "Floor under the CPU targets (bare aiohttp edge + bare aiohttp client + Janus's bus messages",
        "per request x one nats-py message; no Janus code), CPU ms per buffered request:",
    ]
    for c, f in under.items():
        lines.append(
            f"  {c}: floor {f['floor_cpu_ms']:.3f} ({f['bus_in_per_request']:g} messages), "
            f"Janus {f['janus_cpu_ms']:.3f}, target {f['target']:g}"
        )
    piped = {c: f for c, f in under.items() if "pipeline_cpu_ms" in f}
    if piped:
        lines.append(
            "The bare pipeline (aiohttp edge -> nats-py request/reply -> aiohttp client -> upstream, "
            "two messages, no Janus code)\nas the floor section measured it, minutes after Janus's "
            "phases (beside each of them: 'Janus beside the bare pipeline'):"
        )
        for c, f in piped.items():
            text = (
                f"  {c}: CPU ms {f['pipeline_cpu_ms']:.3f}/req, Janus {f['janus_cpu_ms']:.3f}, "
                f"target {f['target']:g}"
            )
            if "pipeline_edge_cpu_ms" in f:
                text += (
                    f" (edge {f['pipeline_edge_cpu_ms']:.3f}, worker {f['pipeline_worker_cpu_ms']:.3f}, "
                    f"nats-server {f['pipeline_nats-server_cpu_ms']:.3f})"
                )
            if "pipeline_added_p50_ms" in f:
                text += (
                    f"; added p50 {f['pipeline_added_p50_ms']:.3f} ms, Janus {f['janus_added_p50_ms']:.3f}, "
                    f"target {f['added_p50_target']:g}"
                )
            lines.append(text)
    return "\n".join(lines)


def beside_bare(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per concurrency with a Janus buffered phase and the bare pipeline's phase right after it:
    both CPU figures, the bare one by process, what Janus adds and how many times the bare cost it
    is, and at concurrency 1 both added p50s. Measured seconds apart, these compare whatever the
    machine's speed was in that minute, which separate runs do not."""
    bare = {r.concurrency: r for r in rows if r.target == "bare" and r.mode == "buffered"}
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        b = bare.get(r.concurrency)
        if r.target != "janus" or r.mode != "buffered" or b is None:
            continue
        if r.janus_cpu_ms_per_request is None or b.janus_cpu_ms_per_request is None:
            continue
        janus_cpu, bare_cpu = r.janus_cpu_ms_per_request, b.janus_cpu_ms_per_request
        figures: dict[str, Any] = {
            "janus_cpu_ms": janus_cpu,
            "bare_cpu_ms": bare_cpu,
            "bare_cpu_ms_by_process": b.janus_cpu_ms_by_process,
            "janus_minus_bare_cpu_ms": round(janus_cpu - bare_cpu, 3),
            # a phase too short to read any CPU (10 ms ticks) has no ratio
            "janus_over_bare": round(janus_cpu / bare_cpu, 2) if bare_cpu else None,
        }
        if r.concurrency == 1:
            figures["janus_added_p50_ms"] = r.overhead_p50_ms
            figures["bare_added_p50_ms"] = b.overhead_p50_ms
        out[f"c{r.concurrency}"] = figures
    return out


def beside_bare_text(beside: dict[str, dict[str, Any]]) -> str:
    if not beside:
        return ""
    lines = [
        "Janus beside the bare pipeline (aiohttp edge -> nats-py request/reply -> aiohttp client ->",
        "upstream, no Janus code), buffered, each bare phase run right after Janus's:",
    ]
    for c, f in beside.items():
        parts = ", ".join(f"{n} {v:.3f}" for n, v in f["bare_cpu_ms_by_process"].items())
        text = (
            f"  {c}: CPU ms/req Janus {f['janus_cpu_ms']:.3f}, bare {f['bare_cpu_ms']:.3f} ({parts}); "
            f"Janus adds {f['janus_minus_bare_cpu_ms']:.3f}"
        )
        if f["janus_over_bare"] is not None:
            text += f" ({f['janus_over_bare']:g}x)"
        if f.get("janus_added_p50_ms") is not None and f.get("bare_added_p50_ms") is not None:
            text += f"; added p50 ms Janus {f['janus_added_p50_ms']:.3f}, bare {f['bare_added_p50_ms']:.3f}"
        lines.append(text)
    return "\n".join(lines)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _kib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1024:.1f}"


def table(rows: list[Row]) -> str:
    head = (
        "phase",
        "mode",
        "conc",
        "requests",
        "rps",
        "p50 ms",
        "p99 ms",
        "ttft p50",
        "+p50 ms",
        "+p99 ms",
        "+ttft ms",
        "cpu ms/req",
        "incomplete",
        "errors",
    )
    lines = [head]
    for r in rows:
        lines.append(
            (
                r.target,
                r.mode,
                str(r.concurrency),
                str(r.requests),
                _fmt(r.rps, 0),
                _fmt(r.p50_ms, 3),
                _fmt(r.p99_ms, 3),
                _fmt(r.ttft_p50_ms, 3),
                _fmt(r.overhead_p50_ms, 3),
                _fmt(r.overhead_p99_ms, 3),
                _fmt(r.overhead_ttft_p50_ms, 3),
                _fmt(r.janus_cpu_ms_per_request, 3),
                str(r.incomplete_streams) if r.mode == "stream" else "-",
                str(r.errors),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    # the first two columns are names (left-aligned), the rest figures (right-aligned)
    text = [
        "  ".join(
            c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def breakdown(rows: list[Row]) -> str:
    """CPU ms per request by Janus process: where the time goes."""
    janus = [r for r in rows if r.target not in ("direct", "bare") and r.janus_cpu_ms_by_process]
    if not janus:
        return ""
    names = sorted({n for r in janus for n in r.janus_cpu_ms_by_process})
    lines = [
        "Janus CPU ms per request by process (+ upstream and load generator, not Janus):",
        "  "
        + "phase  mode      conc  "
        + "  ".join(f"{n:>11}" for n in names)
        + "     upstream   loadgen   bus in/req  bus out/req  bus in KiB/req  bus out KiB/req",
    ]
    for r in janus:
        cells = "  ".join(f"{r.janus_cpu_ms_by_process.get(n, 0.0):>11.3f}" for n in names)
        upstream = _fmt(r.upstream_cpu_ms_per_request, 3)
        client = _fmt(r.client_cpu_ms_per_request, 3)
        bus_in, bus_out = _fmt(r.bus_in_per_request), _fmt(r.bus_out_per_request)
        kib_in, kib_out = _kib(r.bus_in_bytes_per_request), _kib(r.bus_out_bytes_per_request)
        lines.append(
            f"  {r.target:<6} {r.mode:<9} {r.concurrency:>4}  {cells}  {upstream:>11}  {client:>8}"
            f"  {bus_in:>11}  {bus_out:>11}  {kib_in:>14}  {kib_out:>15}"
        )
    slope = chunk_slope(rows)
    if slope:
        (c0, c1), (cpu0, cpu1) = slope["chunks"], slope["cpu_ms_per_stream"]
        lines.append(
            f"Per streamed chunk at c={slope['concurrency']}:"
            f" {slope['cpu_ms_per_chunk']:.4f} Janus CPU ms (streams of {c0} and {c1} chunks:"
            f" {cpu0:.3f} and {cpu1:.3f} ms a stream;"
            f" {slope['cpu_ms_per_stream_without_chunks']:.3f} ms of it is not per chunk)"
        )
    return "\n".join(lines)


_RESERVE = "janus_metering_operation_seconds[operation=reserve]"
# the stage columns printed (all stages are in the JSON), with short headings
_STAGE_COLUMNS = (
    ("janus_http_request_duration_seconds[route=/v1/chat/completions]", "gateway total"),
    ("janus_gateway_overhead_seconds[route=/v1/chat/completions]", "gateway overhead"),
    ("janus_route_decision_seconds", "route decision"),
    (_RESERVE, "reserve"),
    ("janus_metering_operation_seconds[operation=settle]", "settle"),
    (f"janus_upstream_request_duration_seconds[gen_ai_provider_name={PROVIDER}]", "worker upstream call"),
    (f"janus_time_to_first_token_seconds[gen_ai_request_model={CHAT_MODEL}]", "gateway ttft"),
)


def stages_text(rows: list[Row]) -> str:
    """Mean ms per stage as each service measures it: where a request's time goes."""
    janus = [r for r in rows if r.target == "janus" and r.stages]
    if not janus:
        return ""
    present = [(k, h) for k, h in _STAGE_COLUMNS if any(k in r.stages for r in janus)]
    lines = [
        "Mean ms per stage, as the services measure it (see rows[].stages in the JSON for all);"
        " reserves/req: how many requests waited on a reserve (the others were admitted on a"
        " credit lease):",
        "  mode      conc  " + "  ".join(f"{h:>{max(len(h), 8)}}" for _, h in present) + "  reserves/req",
    ]
    for r in janus:
        cells = "  ".join(
            f"{_fmt(r.stages.get(k, {}).get('mean_ms'), 3):>{max(len(h), 8)}}" for k, h in present
        )
        reserves = r.stages.get(_RESERVE, {}).get("count")
        per = _fmt(reserves / r.requests, 3) if reserves is not None and r.requests else _fmt(None, 3)
        lines.append(f"  {r.mode:<9} {r.concurrency:>4}  {cells}  {per:>12}")
    return "\n".join(lines)


def targets_text(targets: dict[str, dict[str, Any]]) -> str:
    lines = ["Design targets (measured, not asserted):"]
    for name, t in targets.items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(
            f"  {name:<41} target {t['target']:<8} measured {_fmt(t['measured'], 3):<10} {verdict}"
            f"  ({t['how']})"
        )
    return "\n".join(lines)


def document(
    rows: list[Row],
    targets: dict[str, dict[str, Any]],
    settings: dict[str, Any],
    notes: list[str],
    extras: dict[str, Any],
) -> dict[str, Any]:
    return {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "settings": settings,
        "rows": [msgspec.to_builtins(r) for r in rows],
        "targets": targets,
        "chunk_slope": chunk_slope(rows),
        "beside_bare": beside_bare(rows),
        "extras": extras,
        "notes": notes,
    }


def write(doc: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "latest.json"
    # encode first, then write, so an encoding error never leaves a truncated report behind
    data = msgspec.json.format(msgspec.json.encode(doc), indent=2)
    path.write_bytes(data + b"\n")
    return path
