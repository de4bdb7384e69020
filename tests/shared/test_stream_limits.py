"""JetStream limits: a stream's limits are never widened or reset by a service starting, and a full
store is a counted, retryable 503 rather than a crash."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from shared.bus import Bus
from shared.errors import ServiceUnavailable
from tests.kit.metrics import parse_metric
from tools.localnats import start_nats

DAY = 86400.0


async def test_a_new_stream_gets_the_limits_asked_for(bus: Bus) -> None:
    await bus.ensure_stream("LIM", ["lim"], max_age=30 * DAY, max_bytes=1 << 20)
    cfg = (await bus.js.stream_info("LIM")).config
    assert cfg.max_age == 30 * DAY and cfg.max_bytes == 1 << 20


async def test_tighter_limits_an_operator_set_are_kept(bus: Bus) -> None:
    await bus.ensure_stream("LIM", ["lim"], max_age=30 * DAY, max_bytes=1 << 20)
    # the operator tightens the stream by hand (nats stream edit); the next start must keep it
    cfg = (await bus.js.stream_info("LIM")).config
    cfg.max_age, cfg.max_bytes = 7 * DAY, 1 << 19
    await bus.js.update_stream(cfg)
    await bus.ensure_stream("LIM", ["lim"], max_age=30 * DAY, max_bytes=1 << 20)
    cfg = (await bus.js.stream_info("LIM")).config
    assert cfg.max_age == 7 * DAY and cfg.max_bytes == 1 << 19


async def test_a_start_without_limits_does_not_reset_them(bus: Bus) -> None:
    await bus.ensure_stream("LIM", ["lim"], max_age=30 * DAY, max_bytes=1 << 20)
    await bus.ensure_stream("LIM", ["lim"])
    cfg = (await bus.js.stream_info("LIM")).config
    assert cfg.max_age == 30 * DAY and cfg.max_bytes == 1 << 20


async def test_tighter_settings_narrow_an_unlimited_stream(bus: Bus) -> None:
    await bus.ensure_stream("LIM", ["lim"])
    await bus.ensure_stream("LIM", ["lim"], max_age=DAY, max_bytes=1 << 20)
    cfg = (await bus.js.stream_info("LIM")).config
    assert cfg.max_age == DAY and cfg.max_bytes == 1 << 20


async def test_a_full_store_is_a_counted_storage_full_503(tmp_path: Path) -> None:
    srv = start_nats(tmp_path, config="jetstream { max_file_store: 2MB }\n")
    bus = await Bus.connect(srv.url, "test")
    try:
        kv = await bus.kv("full_kv")
        await Bus.kv_cas(kv, "k", b"v", 0)
        await bus.ensure_stream("FILL", ["fill"])
        before = parse_metric(_metrics(), "janus_jetstream_write_errors_total", reason="full")
        refused: ServiceUnavailable | None = None
        for i in range(200):  # 2 MB in 32 KiB messages is 64: the store fills well before 200
            try:
                await bus.js_publish("fill", b"x" * 32768, msg_id=str(i))
            except ServiceUnavailable as exc:
                refused = exc
                break
        assert refused is not None and refused.code == "storage_full"
        try:
            _, rev = await Bus.kv_get(kv, "k")
            await Bus.kv_cas(kv, "k", b"w" * 1024, rev)
            raise AssertionError("a KV write to a full store must be refused")
        except ServiceUnavailable as exc:
            assert exc.code == "storage_full" and exc.headers()["x-should-retry"] == "true"
        assert parse_metric(_metrics(), "janus_jetstream_write_errors_total", reason="full") >= before + 2
        # what was acknowledged before is all still there
        assert (await Bus.kv_get(kv, "k"))[0] == b"v"
    finally:
        await bus.close()
        srv.stop()


def _metrics() -> str:
    return generate_latest().decode()
