"""The benchmark's tools work end to end with tiny numbers. Only shapes and counts are checked,
never speed: speed is what the benchmark reports, not what a test asserts."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tools.bench import extras
from tools.bench.load import run_load
from tools.bench.upstream import Shape, UpstreamServer
from tools.localstack import ROOT

KEY = "sk-bench-test"


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamServer]:
    srv = UpstreamServer(Shape(chunks=5, api_key=KEY))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


def _client(srv: UpstreamServer, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key=key, max_retries=0)


async def test_upstream_speaks_openai_wire_format_to_the_official_sdk(upstream: UpstreamServer) -> None:
    async with _client(upstream) as client:
        msgs: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
        done = await client.chat.completions.create(model="m-1", messages=msgs)
        assert done.model == "m-1"
        assert done.choices[0].finish_reason == "stop"
        assert done.usage is not None and done.usage.completion_tokens == 5
        assert done.usage.total_tokens == done.usage.prompt_tokens + 5

        text, usage, finish = [], None, None
        stream = await client.chat.completions.create(
            model="m-1",
            messages=msgs,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert "".join(text) == done.choices[0].message.content
        assert finish == "stop" and usage is not None and usage.completion_tokens == 5

        emb = await client.embeddings.create(model="e-1", input=["a", "b", "c"])
        assert [d.index for d in emb.data] == [0, 1, 2]
        assert len(emb.data[0].embedding) == 16
        b64 = await client.embeddings.create(model="e-1", input="a", encoding_format="base64")
        assert b64.data[0].embedding  # the SDK hands base64 through as a string or decodes it

    async with _client(upstream, "sk-wrong") as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="m", messages=msgs)


async def test_load_counts_requests_and_complete_streams(upstream: UpstreamServer) -> None:
    url = f"http://127.0.0.1:{upstream.port}/v1"
    for mode in ("buffered", "stream", "embeddings"):
        r = await run_load(url, mode, 3, model="m", token=KEY, requests=30, warmup_requests=3)
        assert (r.requests, r.errors, r.incomplete_streams) == (30, 0, 0), r
        assert r.p50_ms is not None and r.p99_ms is not None
        assert (r.ttft_p50_ms is not None) == (mode == "stream")
    r = await run_load(url, "buffered", 2, model="m", token="sk-wrong", requests=4)
    assert r.errors == 4 and r.statuses == {"401": 4}


async def test_load_flags_a_stream_that_ends_without_done() -> None:
    """A truncated stream must count as incomplete, or the c=64 figure would mean nothing."""
    event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(answer)
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await run_load(f"http://127.0.0.1:{port}/v1", "stream", 2, model="m", requests=6)
    finally:
        server.close()
    assert r.requests == 6 and r.incomplete_streams == 6
    assert r.ttft_p50_ms is not None  # the content event was seen before the stream ended short


def test_extra_sections_run_when_present_and_are_skipped_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        extras,
        "SECTIONS",
        [
            ("sample", "tests.bench.sample_section", ("run", "main")),
            ("absent", "tools.no_such_bench_module", ("bench",)),
        ],
    )
    results, notes = extras.run_extras()
    assert results["sample"]["result"]["decisions_per_second"] == 123.0
    assert results["sample"]["result"]["argv"] == ["tests.bench.sample_section"]
    assert "sample section ran" in results["sample"]["output"]
    assert "absent" not in results
    assert any("absent" in n and "skipped" in n for n in notes)


def _bench(tmp_path: Path, *args: str, timeout: float) -> dict[str, object]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--no-extras",
            "--warmup",
            "0",
            *args,
        ],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "p50 ms" in proc.stdout  # the table was printed
    doc = json.loads((out / "latest.json").read_text())
    assert set(doc) >= {"rows", "targets", "settings", "machine", "notes", "extras"}
    assert set(doc["targets"]) == {
        "added_p50_ms_at_c1",
        "janus_cpu_ms_per_buffered_request_at_c1",
        "janus_cpu_ms_per_buffered_request_at_c16",
        "janus_cpu_ms_per_streamed_chunk_at_c16",
        "janus_rps",
        "incomplete_streams_at_c64",
    }
    return doc


@pytest.mark.timeout(90)
def test_bench_direct_path_end_to_end(tmp_path: Path) -> None:
    doc = _bench(
        tmp_path,
        "--targets",
        "direct",
        "--concurrency",
        "1,4",
        "--modes",
        "buffered,stream",
        "--requests",
        "40",
        timeout=80,
    )
    assert doc["chunk_slope"] is None  # no Janus, no slope phases
    rows = doc["rows"]
    assert isinstance(rows, list)
    assert [(r["target"], r["mode"], r["concurrency"]) for r in rows] == [
        ("direct", "buffered", 1),
        ("direct", "buffered", 4),
        ("direct", "stream", 1),
        ("direct", "stream", 4),
    ]
    for r in rows:
        assert r["requests"] == 40 and r["errors"] == 0 and r["incomplete_streams"] == 0
        assert r["p50_ms"] is not None and r["p99_ms"] is not None and r["rps"] > 0
        assert r["janus_cpu_ms_per_request"] is None  # no Janus process ran in a direct phase
        assert r["upstream_cpu_ms_per_request"] is not None


@pytest.mark.timeout(150)
def test_bench_through_janus_end_to_end(tmp_path: Path) -> None:
    from tools.bench.janus import CHAT_MODEL
    from tools.bench.load import build_request

    doc = _bench(
        tmp_path,
        "--concurrency",
        "2",
        "--modes",
        "buffered,stream",
        "--requests",
        "30",
        "--chunks",
        "4",
        "--long-chunks",
        "12",
        timeout=140,
    )
    assert doc["notes"] == [], doc["notes"]
    janus = [r for r in doc["rows"] if r["target"] == "janus"]  # type: ignore[attr-defined,index]
    assert [(r["mode"], r["concurrency"]) for r in janus] == [("buffered", 2), ("stream", 2)]
    for r in janus:
        assert r["requests"] == 30 and r["errors"] == 0 and r["incomplete_streams"] == 0, r["first_error"]
        assert r["overhead_p50_ms"] is not None
        assert r["janus_cpu_ms_per_request"] is not None
        assert set(r["janus_cpu_ms_by_process"]) == {"nats-server", "metering", "router", "worker", "gateway"}
        assert r["stages"], "no stage histograms were scraped from the services"
        # nats-server's own counters: a request crosses the bus several times, each way. Its work and
        # Done are inside its window; its settlement's messages (bundled for 20 ms, then metering's
        # linger) may land after a window this short has closed, so only those two are certain
        assert r["bus_in_per_request"] >= 2 and r["bus_out_per_request"] >= 2, r
        # and their bytes: the work message alone carries the client's body to the worker
        _, _, raw = build_request("http://127.0.0.1:1/v1", r["mode"], CHAT_MODEL, "")
        body = raw.split(b"\r\n\r\n", 1)[1]
        assert r["bus_in_bytes_per_request"] > len(body), r
        assert r["bus_out_bytes_per_request"] > len(body), r

    # the bare pipeline ran right after the buffered phase only, through processes of its own
    bare = [r for r in doc["rows"] if r["target"] == "bare"]  # type: ignore[attr-defined,index]
    assert [(r["mode"], r["concurrency"]) for r in bare] == [("buffered", 2)]
    assert bare[0]["requests"] == 30 and bare[0]["errors"] == 0, bare[0]["first_error"]
    # (30 requests last tens of milliseconds: a process's CPU, counted in 10 ms ticks, may read 0)
    assert set(bare[0]["janus_cpu_ms_by_process"]) == {"edge", "worker", "nats-server"}
    assert bare[0]["janus_cpu_ms_per_request"] is not None
    assert bare[0]["overhead_p50_ms"] is not None and bare[0]["upstream_cpu_ms_per_request"] is not None
    beside = doc["beside_bare"]["c2"]  # type: ignore[index]
    assert beside["janus_cpu_ms"] == janus[0]["janus_cpu_ms_per_request"]
    assert beside["bare_cpu_ms"] == bare[0]["janus_cpu_ms_per_request"]

    slope = [r for r in doc["rows"] if r["target"] == "slope"]  # type: ignore[attr-defined,index]
    shapes = [(r["mode"], r["concurrency"], r["chunks"]) for r in slope]
    assert shapes == [("stream", 16, 4), ("stream", 16, 12)]
    for r in slope:
        assert r["requests"] == 30 and r["errors"] == 0 and r["incomplete_streams"] == 0, r["first_error"]
    # the longer streams cross the bus no less often, but not once per chunk: the worker puts the
    # deltas of one upstream read into one frame, and this upstream sends them together. Less one
    # message: the settlements of a window's last requests (bundled, then lingered on) may land
    # in the next window, and 30 requests share out what their edges move
    assert slope[1]["bus_in_per_request"] >= slope[0]["bus_in_per_request"] - 1
    assert slope[1]["bus_in_per_request"] < slope[0]["bus_in_per_request"] + 12 - 4
    fit = doc["chunk_slope"]
    assert isinstance(fit, dict) and fit["chunks"] == [4, 12]
    measured = doc["targets"]["janus_cpu_ms_per_streamed_chunk_at_c16"]["measured"]  # type: ignore[index]
    assert fit["cpu_ms_per_chunk"] == measured


@pytest.mark.timeout(120)
def test_the_floor_measures_aiohttp_and_nats_py_without_janus() -> None:
    """Each figure comes from a real process under load: an aiohttp server driven by the bench's load
    generator, an aiohttp client against the fake upstream, nats-py request/reply through a real
    nats-server. A part that served nothing, or answered errors, raises instead of giving a figure."""
    from tools.bench import floor

    out = floor.run((2,), seconds=0.5)
    figures = out["c2"]
    assert {"pipeline_cpu_ms_per_request", "pipeline_p50_ms"} <= figures.keys()
    by_process = figures.pop("pipeline_cpu_ms_by_process")
    assert by_process.keys() == {"edge", "worker", "nats-server"}
    assert all(v >= 0 for v in by_process.values()), by_process
    assert sum(by_process.values()) == pytest.approx(figures["pipeline_cpu_ms_per_request"], abs=1e-3)
    for name, value in figures.items():
        if name != "added_p50_ms":  # a difference of latencies: may be anything small
            assert 0 < value < 50, (name, value)
    # the bare pipeline is an edge, a worker's client and a round trip on the bus: never cheaper
    # than the bare edge alone, measured the same way
    assert figures["pipeline_cpu_ms_per_request"] > figures["edge_cpu_ms_per_request"]


def _row(target: str, c: int, cpu: float, mode: str = "buffered", **more: Any) -> Any:
    """A report row of 100 requests, as the bench makes one, with the figures a report test sets."""
    from tools.bench import report

    return report.Row(target, mode, c, 100, 0, 0, 1.0, 1.0, 2.0, None, janus_cpu_ms_per_request=cpu, **more)


def test_the_floor_under_a_target_is_edge_plus_client_plus_janus_messages_times_one_message() -> None:
    from tools.bench import report

    def row(c: int, cpu: float, msgs: float) -> report.Row:
        return _row("janus", c, cpu, bus_in_per_request=msgs)

    parts = {"edge_cpu_ms_per_request": 0.1, "client_cpu_ms_per_request": 0.2, "hop_cpu_ms_per_message": 0.05}
    under = report.floor_under_targets([row(1, 3.0, 5.0), row(16, 1.5, 4.0)], {"c1": parts, "c16": parts})
    assert under["c1"] == {
        "floor_cpu_ms": 0.55,
        "bus_in_per_request": 5.0,
        "janus_cpu_ms": 3.0,
        "target": 1.2,
    }
    assert under["c16"]["floor_cpu_ms"] == 0.5 and under["c16"]["target"] == 0.5
    assert "c1: floor 0.550 (5 messages), Janus 3.000, target 1.2" in report.floor_text(under)
    assert report.floor_under_targets([row(1, 3.0, 5.0)], {}) == {}  # no floor section: nothing
    assert "bare pipeline" not in report.floor_text(under)  # a floor section without one


def test_the_bare_pipeline_is_reported_beside_janus_with_its_added_p50_at_c1() -> None:
    from tools.bench import report

    def row(c: int, cpu: float, added: float) -> report.Row:
        return _row("janus", c, cpu, overhead_p50_ms=added, bus_in_per_request=2.4)

    parts = {
        "edge_cpu_ms_per_request": 0.1,
        "client_cpu_ms_per_request": 0.2,
        "hop_cpu_ms_per_message": 0.05,
        "pipeline_cpu_ms_per_request": 0.9,
    }
    under = report.floor_under_targets(
        [row(1, 1.6, 1.1), row(16, 0.9, 9.0)],
        {
            "c1": {**parts, "pipeline_added_p50_ms": 0.93},
            "c16": {
                **parts,
                "pipeline_cpu_ms_per_request": 0.53,
                "pipeline_cpu_ms_by_process": {"edge": 0.15, "worker": 0.2, "nats-server": 0.18},
            },
        },
    )
    assert under["c1"]["pipeline_cpu_ms"] == 0.9 and under["c16"]["pipeline_cpu_ms"] == 0.53
    assert under["c1"]["pipeline_added_p50_ms"] == 0.93 and under["c1"]["janus_added_p50_ms"] == 1.1
    assert "pipeline_added_p50_ms" not in under["c16"]  # latencies above c=1 are queueing
    text = report.floor_text(under)
    assert "c1: CPU ms 0.900/req, Janus 1.600, target 1.2; added p50 0.930 ms, Janus 1.100, target 1" in text
    assert (
        "c16: CPU ms 0.530/req, Janus 0.900, target 0.5 (edge 0.150, worker 0.200, nats-server 0.180)" in text
    )
    assert "c1: CPU ms 0.900/req, Janus 1.600, target 1.2;" in text  # no split given: none printed


def test_janus_beside_the_bare_pipeline_pairs_phases_of_the_same_concurrency() -> None:
    from tools.bench import report

    def row(target: str, c: int, cpu: float, added: float, mode: str = "buffered") -> report.Row:
        split = {"edge": cpu / 2, "worker": cpu / 2} if target == "bare" else {"gateway": cpu}
        return _row(target, c, cpu, mode, overhead_p50_ms=added, janus_cpu_ms_by_process=split)

    rows = [
        row("janus", 1, 1.8, 1.2),
        row("bare", 1, 1.2, 0.9),
        row("janus", 16, 0.9, 9.0),
        row("bare", 16, 0.4, 5.0),
        row("janus", 64, 0.85, 40.0),  # no bare phase beside it: not paired
        row("janus", 16, 1.5, 9.0, mode="stream"),  # streams have no bare phase
    ]
    beside = report.beside_bare(rows)
    assert set(beside) == {"c1", "c16"}
    assert beside["c16"] == {
        "janus_cpu_ms": 0.9,
        "bare_cpu_ms": 0.4,
        "bare_cpu_ms_by_process": {"edge": 0.2, "worker": 0.2},
        "janus_minus_bare_cpu_ms": 0.5,
        "janus_over_bare": 2.25,
    }
    # a bare phase too short to read any CPU (10 ms ticks) is still paired, with no ratio
    assert (
        report.beside_bare([row("janus", 2, 0.9, 1.0), row("bare", 2, 0.0, 0.5)])["c2"]["janus_over_bare"]
        is None
    )
    assert beside["c1"]["janus_added_p50_ms"] == 1.2 and beside["c1"]["bare_added_p50_ms"] == 0.9
    text = report.beside_bare_text(beside)
    assert (
        "c16: CPU ms/req Janus 0.900, bare 0.400 (edge 0.200, worker 0.200); Janus adds 0.500 (2.25x)" in text
    )
    assert (
        "c1: CPU ms/req Janus 1.800, bare 1.200 (edge 0.600, worker 0.600); Janus adds 0.600 (1.5x); " in text
    )
    assert "added p50 ms Janus 1.200, bare 0.900" in text
    # the Janus table by process leaves the bare rows out: their processes are not Janus's
    table = report.breakdown(rows)
    assert "janus  buffered" in table and "bare" not in table and "edge" not in table
    assert report.beside_bare_text({}) == ""


@pytest.mark.timeout(420)
def test_instructions_are_counted_per_request_in_the_measured_window(tmp_path: Path) -> None:
    """``make bench-instructions`` end to end with tiny numbers: each process ran under callgrind and
    its counters covered the counted requests only. Starting Python with aiohttp and nats-py under
    callgrind runs to hundreds of millions of instructions, so a count that took in the start, or
    the warm-up, would show as millions per request here."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench.instructions",
            "--processes",
            "gateway,edge",
            "--requests",
            "40",
            "--warmup",
            "10",
            "--out",
            str(out),
        ],
        cwd=str(ROOT),
        capture_output=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-2000:]
    doc = json.loads((out / "instructions.json").read_text())
    per = doc["instructions_per_request"]
    assert set(per) == {"gateway", "edge"}
    for name, n in per.items():
        assert 50_000 < n < 5_000_000, (name, n)
    assert doc["janus_over_bare"] == {"gateway": round(per["gateway"] / per["edge"], 2)}
    assert doc["settings"] == {
        "requests": 40,
        "warmup": 10,
        "concurrency": 1,
        "log_level": "WARNING",
        "janus": {"JANUS_SETTLE_BUNDLE_MS": "1000"},
    }


def test_bytecodes_are_counted_per_request_by_function(tmp_path: Path) -> None:
    """``make bench-bytecodes`` end to end with tiny numbers: the gateway and the bare edge each ran
    under the tracer, counting only the requests sent after it was told to (starting the services
    alone runs millions of bytecodes, which would show as tens of thousands a request here), and the
    gateway's own functions are named in its list."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.bench.bytecodes",
            "--processes",
            "gateway,edge",
            "--requests",
            "30",
            "--warmup",
            "10",
            "--lines",
            "services/gateway/app.py",
            "--out",
            str(out),
        ],
        cwd=str(ROOT),
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout.decode()[-2000:] + proc.stderr.decode()[-2000:]
    doc = json.loads((out / "bytecodes.json").read_text())
    gateway, edge = doc["processes"]["gateway"], doc["processes"]["edge"]
    for p in (gateway, edge):
        assert 1_000 < p["bytecodes_per_request"] < 30_000, p["bytecodes_per_request"]
    assert gateway["bytecodes_per_request"] > edge["bytecodes_per_request"]  # the edge does less
    functions = [f["function"] for f in gateway["top_functions"]]
    assert any(f.startswith("services/gateway/") for f in functions), functions
    assert not any(f.startswith("services/") for f in (g["function"] for g in edge["top_functions"]))
    assert gateway["lines"] and all(
        r["line"].startswith("services/gateway/app.py:") for r in gateway["lines"]
    )
    assert doc["janus_over_bare"] == {
        "gateway": round(gateway["bytecodes_per_request"] / edge["bytecodes_per_request"], 2)
    }
