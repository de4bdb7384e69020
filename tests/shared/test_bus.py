from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest

from shared import contract
from shared.bus import OVERFLOW, Bus, CasConflict, KeyNotFound, map_exception
from shared.errors import JanusError, PayloadTooLarge, ServiceUnavailable, UpstreamTimeout
from tests.eventually import eventually


async def test_request_reply_through_a_queue_group(bus: Bus) -> None:
    async def handler(msg) -> None:  # type: ignore[no-untyped-def]
        await msg.respond(msg.data.upper())

    await bus.serve("janus.test.echo", handler, queue="echo")
    assert await bus.request("janus.test.echo", b"hi", timeout=2) == b"HI"


async def test_no_responders_is_service_unavailable(bus: Bus) -> None:
    with pytest.raises(ServiceUnavailable) as ei:
        await bus.request("janus.test.nobody", b"x", timeout=2)
    assert ei.value.code == "no_responders"


async def test_streamed_reply_to_an_inbox_sees_no_responders(bus: Bus) -> None:
    with bus.open_inbox("req1") as box:
        await bus.publish("janus.work.nobody", b"x", reply=box.subject)
        msg = await box.next(2)
        assert Bus.is_no_responders(msg)


async def test_frames_arrive_in_order_in_their_own_inbox(bus: Bus) -> None:
    async def worker(msg) -> None:  # type: ignore[no-untyped-def]
        for i in range(5):
            await bus.publish(msg.reply, contract.encode(contract.Chunk(seq=i, data=b"{}")))

    await bus.serve("janus.work.t", worker, queue="worker_t")
    with bus.open_inbox("a") as a, bus.open_inbox("b") as b:
        await bus.publish("janus.work.t", b"", reply=a.subject)
        await bus.publish("janus.work.t", b"", reply=b.subject)
        for box in (a, b):
            seqs = [contract.frame_decoder.decode((await box.next(2)).data).seq for _ in range(5)]
            assert seqs == list(range(5))


async def test_kv_compare_and_set(bus: Bus) -> None:
    kv = await bus.kv("janus_test")
    with pytest.raises(KeyNotFound):
        await Bus.kv_get(kv, "k")
    rev = await Bus.kv_cas(kv, "k", b"1", 0)
    with pytest.raises(CasConflict):
        await Bus.kv_cas(kv, "k", b"x", 0)
    rev2 = await Bus.kv_cas(kv, "k", b"2", rev)
    with pytest.raises(CasConflict):
        await Bus.kv_cas(kv, "k", b"3", rev)
    assert await Bus.kv_get(kv, "k") == (b"2", rev2)


async def test_stream_publish_deduplicates_by_message_id(bus: Bus) -> None:
    await bus.ensure_stream("JANUS_TEST", ["janus.test.s"])
    assert await bus.js_publish("janus.test.s", b"a", msg_id="r1") is True
    assert await bus.js_publish("janus.test.s", b"a", msg_id="r1") is False
    sub = await bus.pull_consumer("JANUS_TEST", "c1", "janus.test.s")
    msgs = await Bus.fetch(sub, 10, 1)
    assert [m.data for m in msgs] == [b"a"]
    await asyncio.gather(*(m.ack() for m in msgs))


class _RacingKV:
    """A clustered bucket's view right after another replica created the key: the create is refused
    (wrong last sequence), and the read-back that nats-py then makes lands on a follower that has not
    seen the write yet, so create() raises KeyNotFoundError."""

    async def create(self, key: str, value: bytes) -> int:
        raise nats.js.errors.KeyNotFoundError()


async def test_a_create_lost_to_an_unseen_write_is_a_conflict_not_an_outage() -> None:
    # the caller re-reads and retries on CasConflict; ServiceUnavailable would fail the request
    with pytest.raises(CasConflict):
        await Bus.kv_cas(_RacingKV(), "b.new-user", b"record", 0)  # type: ignore[arg-type]


class _LeaderlessPull:
    """A pull subscription on a clustered stream while it has no leader: JetStream answers 503."""

    async def fetch(self, batch: int, timeout: float) -> list[object]:
        raise nats.js.errors.ServiceUnavailableError()


async def test_a_fetch_refused_by_jetstream_is_service_unavailable() -> None:
    # consumers catch it, wait and fetch again; a foreign nats error would escape the error tree
    with pytest.raises(ServiceUnavailable):
        await Bus.fetch(_LeaderlessPull(), 10, 1.0)


async def test_an_inbox_reader_waits_for_its_frame_times_out_alone_and_survives_a_cancel(bus: Bus) -> None:
    with bus.open_inbox("waits") as box:
        # nothing comes: the reader's own deadline, as the gateway's stall error
        with pytest.raises(UpstreamTimeout) as ei:
            await box.next(0.05)
        assert ei.value.code == "stall_timeout"
        # a frame published while the reader waits wakes it, long before its timeout
        reader = asyncio.ensure_future(box.next(30))
        await asyncio.sleep(0)
        assert not reader.done()
        await bus.publish(box.subject, b"first")
        assert (await asyncio.wait_for(reader, 5)).data == b"first"
        # a reader cancelled while it waits (a client that left) leaves the inbox usable
        reader = asyncio.ensure_future(box.next(30))
        await asyncio.sleep(0)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await bus.publish(box.subject, b"second")
        assert (await box.next(5)).data == b"second"
        assert box.pending == 0 and not box.ready()
    with bus.open_inbox("full", max_bytes=10) as full:
        await bus.publish(full.subject, b"z" * 100)
        await bus.publish(full.subject, b"z")
        assert await full.next(5) is OVERFLOW
        # an interrupt reaches the reader past the bound, and wakes one already waiting
        reader = asyncio.ensure_future(full.next(30))
        await asyncio.sleep(0)
        marker = object()
        full.interrupt(marker)
        assert await asyncio.wait_for(reader, 5) is marker


async def test_an_inbox_whose_reader_falls_behind_overflows_instead_of_growing(bus: Bus) -> None:
    with bus.open_inbox("slow", max_bytes=10_000) as box, bus.open_inbox("other") as other:
        for _ in range(5):  # read as they come: never more than 4 KB waiting
            await bus.publish(box.subject, b"x" * 4_000)
            assert (await box.next(2)).data == b"x" * 4_000
        for _ in range(30):  # 120 KB while nobody reads
            await bus.publish(box.subject, b"y" * 4_000)
        await bus.publish(other.subject, b"marker")  # sent after them on the same connection
        assert (await other.next(2)).data == b"marker"
        assert box.overflowed and box.pending == 0
        assert await box.next(2) is OVERFLOW
        assert not box.ready()  # what came before and after the overflow was dropped


async def test_every_jetstream_call_on_a_lost_connection_is_service_unavailable(bus: Bus) -> None:
    # callers catch the Janus tree (and KeyNotFound, CasConflict): a foreign error escaping one
    # call would crash a consumer loop or reach a client as a 500
    await bus.ensure_stream("JANUS_TEST_LOST", ["janus.test.lost"])
    kv = await bus.kv("janus_test_lost")
    await Bus.kv_put(kv, "k", b"v")
    await bus.js_publish("janus.test.lost", b"m", msg_id="m1")
    sub = await bus.pull_consumer("JANUS_TEST_LOST", "lost", "janus.test.lost")
    [msg] = await Bus.fetch(sub, 1, 2)
    await bus.nc.close()
    calls = {
        "kv": bus.kv("janus_test_lost"),
        "kv_get": Bus.kv_get(kv, "k"),
        "kv_put": Bus.kv_put(kv, "k", b"w"),
        "kv_cas": Bus.kv_cas(kv, "k", b"w", 1),
        "kv_delete": Bus.kv_delete(kv, "k"),
        "kv_keys": Bus.kv_keys(kv),
        "ensure_stream": bus.ensure_stream("JANUS_TEST_LOST", ["janus.test.lost"]),
        "js_publish": bus.js_publish("janus.test.lost", b"m", msg_id="m2"),
        "pull_consumer": bus.pull_consumer("JANUS_TEST_LOST", "lost", "janus.test.lost"),
        "ack": Bus.ack(msg),
        "request": bus.request("janus.test.echo", b"", timeout=1),
        "publish": bus.publish("janus.test.echo", b""),
    }
    for name, call in calls.items():
        with pytest.raises(ServiceUnavailable):
            await call
        assert name  # the failing call is named in the report
    [outcome] = await bus.js_publish_batch("janus.test.lost", [(b"m", "m3")], store="JANUS_TEST_LOST")
    assert isinstance(outcome, ServiceUnavailable)
    with pytest.raises(ServiceUnavailable):
        async for _ in bus.stream_messages("JANUS_TEST_LOST"):
            pass


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (nats.errors.NoRespondersError(), ServiceUnavailable, "no_responders"),
        (nats.errors.MaxPayloadError(), PayloadTooLarge, "message_too_large"),
        (nats.errors.TimeoutError(), ServiceUnavailable, "bus_timeout"),
        (TimeoutError(), ServiceUnavailable, "bus_timeout"),
        (nats.errors.ConnectionClosedError(), ServiceUnavailable, "service_unavailable"),
        (nats.js.errors.ServiceUnavailableError(), ServiceUnavailable, "service_unavailable"),
        (ConnectionResetError(), ServiceUnavailable, "service_unavailable"),
        (KeyError("a bug"), JanusError, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_the_table(exc: BaseException, cls: type[JanusError], code: str | None) -> None:
    err = map_exception(exc, "janus.test.x")
    assert type(err) is cls and err.code == code


def test_a_failed_write_counts_against_its_store() -> None:
    full = nats.js.errors.APIError(code=400, err_code=10047, description="insufficient storage")
    assert map_exception(full, store="JANUS_LEDGER").code == "storage_full"
    assert map_exception(nats.errors.TimeoutError(), store="JANUS_LEDGER").code == "service_unavailable"


async def test_serve_runs_at_most_its_concurrency_and_every_message_in_the_end(bus: Bus) -> None:
    """Handlers that hold their place until let go: never more than ``concurrency`` run at once, the
    rest wait in the subscription, and each handler that ends lets the next one in, through a
    handler that fails as well."""
    running, most, done = 0, 0, 0
    go = asyncio.Event()

    async def handler(msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal running, most, done
        running += 1
        most = max(most, running)
        try:
            await go.wait()
            if msg.data == b"3":
                raise RuntimeError("a failing handler still gives its place back")
        finally:
            running -= 1
            done += 1

    await bus.serve("janus.test.bounded", handler, concurrency=2)
    await bus.flush()
    for i in range(7):
        await bus.publish("janus.test.bounded", str(i).encode())
    await bus.flush()
    await eventually(lambda: running == 2, 5, "the first two handlers started")
    # an absence: the other five had the time to start, were they let in (they arrive within ms)
    await asyncio.sleep(0.3)
    assert (running, most, done) == (2, 2, 0)
    go.set()
    await eventually(lambda: done == 7, 5, "every message handled")
    assert (most, running) == (2, 0)
