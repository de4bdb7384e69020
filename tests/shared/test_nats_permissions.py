"""The permission matrix, against a real nats-server configured from config/nats-permissions.yaml
(tools/natsauth.py, the same block every deployment carries).

For each identity, what it needs succeeds, and a representative forbidden action of every other
role's business fails. A refused publish or subscription is reported by the server as an error
that arrives before the answer to a later PING, so each check flushes and then reads the errors:
the flush is the positive marker after which an absence means something.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client

from shared import subjects
from shared.bus import Bus, KeyNotFound
from shared.errors import ServiceUnavailable
from tools.localnats import NatsServer, seed_file, start_nats
from tools.natsauth import load_identities, new_seed

PUB, SUB = "publish", "subscribe"
BYOK_GET = "$JS.API.DIRECT.GET.KV_janus_byok.$KV.janus_byok.y.u.alice.openai"
KEYS_GET = "$JS.API.DIRECT.GET.KV_janus_keys.$KV.janus_keys.k.0123"

# identity -> what its role needs (each must be accepted)
ALLOWED: dict[str, list[tuple[str, str]]] = {
    "gateway": [
        (PUB, subjects.ROUTE),
        (PUB, subjects.METER_RESERVE),
        (PUB, subjects.METER_USAGE),
        (PUB, subjects.SETTLE),
        (PUB, subjects.work("fake")),
        (PUB, subjects.WORK_CANCEL),
        (PUB, subjects.ROUTE_HEALTH),
        (PUB, subjects.METER_RENEW),
        (PUB, subjects.METER_DAILY),
        (PUB, subjects.METER_ADMIN),
        (PUB, KEYS_GET),
        (PUB, "$KV.janus_keys.k.0123"),  # a signed-in caller's own key (POST/DELETE /v1/keys)
        (PUB, subjects.KEYS_REVOKED),
        (PUB, BYOK_GET),
        (PUB, "$KV.janus_byok.y.u.alice.openai"),
        (SUB, subjects.KEYS_REVOKED),
        (SUB, "_INBOX.gateway.abc.*"),
    ],
    "router": [
        (SUB, subjects.ROUTE),
        (SUB, subjects.ROUTE_HEALTH),
        (SUB, subjects.HEALTH),
        (SUB, "_INBOX.router.>"),
    ],
    "worker": [
        (SUB, subjects.work("fake")),
        (SUB, subjects.WORK_CANCEL),
        (PUB, subjects.HEALTH),
        (PUB, BYOK_GET),
        (SUB, "_INBOX.worker.>"),
    ],
    "metering": [
        (SUB, subjects.METER_RESERVE),
        (SUB, subjects.METER_USAGE),
        (SUB, subjects.METER_RENEW),
        (SUB, subjects.METER_DAILY),
        (SUB, subjects.METER_ADMIN),
        (PUB, subjects.LEDGER),
        (PUB, subjects.SETTLE_DEAD),
        (PUB, "$JS.API.STREAM.CREATE.JANUS_SETTLE_DEAD"),
        (PUB, "$KV.janus_daily.d.u.alice"),
        (PUB, "$JS.API.DIRECT.GET.JANUS_LEDGER"),  # the daily history reads the ledger in ranges
        (PUB, "$JS.API.CONSUMER.DELETE.JANUS_LEDGER.daily"),
        (PUB, "$KV.janus_budget.b.u.alice"),
        (PUB, "$JS.ACK.JANUS_SETTLE.metering.1.1.1.1.1"),
        (PUB, "$JS.API.CONSUMER.MSG.NEXT.JANUS_SETTLE.metering"),
    ],
    "operator": [
        (PUB, "$KV.janus_keys.k.0123"),
        (PUB, subjects.KEYS_REVOKED),
        (PUB, KEYS_GET),
        (PUB, "$KV.janus_byok.y.u.alice.openai"),
        (PUB, subjects.METER_USAGE),
    ],
}

# one forbidden action for each other role's business, per identity
FORBIDDEN: dict[str, list[tuple[str, str]]] = {
    "gateway": [
        (PUB, "$JS.API.STREAM.CREATE.KV_janus_keys"),  # make or reshape the key bucket
        (PUB, "$JS.API.STREAM.DELETE.KV_janus_keys"),  # drop every key
        (PUB, "$JS.API.CONSUMER.CREATE.KV_janus_keys"),  # list every user's keys
        (PUB, "$KV.janus_budget.b.u.alice"),  # rewrite a budget
        (PUB, "$KV.janus_daily.d.u.alice"),  # rewrite usage history
        (PUB, subjects.SETTLE_DEAD),  # forge a dead letter
        (PUB, subjects.HEALTH),  # report false health
        (PUB, subjects.LEDGER),  # forge the ledger
        (SUB, subjects.work("fake")),  # take a worker's work
        (SUB, subjects.METER_RESERVE),  # answer reserves
        (SUB, "_INBOX.router.>"),  # another identity's replies
        (PUB, "$JS.API.CONSUMER.MSG.NEXT.JANUS_SETTLE.metering"),  # consume settlements
    ],
    "router": [
        (PUB, BYOK_GET),  # read users' provider keys
        (PUB, subjects.work("fake")),
        (PUB, subjects.HEALTH),
        (PUB, subjects.SETTLE),
        (PUB, "$KV.janus_keys.k.0123"),  # mint an API key
        (PUB, subjects.KEYS_REVOKED),
        (PUB, subjects.METER_RENEW),
        (SUB, "_INBOX.gateway.>"),
        (SUB, subjects.work("fake")),
    ],
    "worker": [
        (PUB, subjects.SETTLE),  # publish a settlement
        (PUB, "_INBOX.gateway.abc.def"),  # frames into an inbox it was not given
        (SUB, "_INBOX.gateway.>"),  # read gateways' replies
        (PUB, subjects.work("fake")),  # forge work
        (PUB, "$KV.janus_budget.b.u.alice"),
        (PUB, "$KV.janus_byok.y.u.alice.openai"),  # overwrite a user's provider key
        (PUB, "$KV.janus_keys.k.0123"),  # mint an API key
        (PUB, subjects.KEYS_REVOKED),
        (PUB, subjects.METER_RENEW),  # keep holds from the reaper
        (PUB, "$KV.janus_daily.d.u.alice"),
        (PUB, subjects.ROUTE),
        (SUB, subjects.SETTLE),
        (SUB, subjects.ROUTE),
    ],
    "metering": [
        (PUB, "$KV.janus_keys.k.0123"),  # mint an API key
        (PUB, subjects.KEYS_REVOKED),
        (PUB, BYOK_GET),
        (PUB, subjects.work("fake")),
        (SUB, subjects.work("fake")),
        (SUB, "_INBOX.gateway.>"),
        (PUB, subjects.HEALTH),
    ],
    "operator": [
        (PUB, "$KV.janus_budget.b.u.alice"),
        (PUB, subjects.SETTLE),
        (PUB, subjects.work("fake")),
        (SUB, subjects.work("fake")),
        (SUB, "_INBOX.gateway.>"),
    ],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = start_nats(tmp_path_factory.mktemp("perm"))
    try:
        yield srv
    finally:
        srv.stop()


class Probe:
    """One identity's raw connection, collecting the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = Client()

    async def open(self, srv: NatsServer, identity: str) -> Probe:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        await self.nc.connect(
            srv.client_url,
            nkeys_seed=seed_file(identity),
            inbox_prefix=subjects.inbox_prefix(identity),
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self

    async def refused(self, action: str, subject: str) -> bool:
        self.errors.clear()
        if action == PUB:
            await self.nc.publish(subject, b"{}")
        else:
            sub = await self.nc.subscribe(subject)
        # nats-py writes a PING ahead of commands its flusher still holds: the second leaves after them
        await self.nc.flush(timeout=5)
        await self.nc.flush(timeout=5)
        if action == SUB:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        word = "publish" if action == PUB else "subscription"
        return any(word in e and f'"{subject.lower()}"' in e for e in self.errors)


@contextlib.asynccontextmanager
async def probe(srv: NatsServer, identity: str) -> AsyncIterator[Probe]:
    p = await Probe().open(srv, identity)
    try:
        yield p
    finally:
        await p.nc.close()


def test_every_identity_is_checked() -> None:
    assert set(ALLOWED) == set(FORBIDDEN) == set(load_identities())


@pytest.mark.parametrize("identity", sorted(ALLOWED))
async def test_allowed_actions_pass(server: NatsServer, identity: str) -> None:
    async with probe(server, identity) as p:
        for action, subject in ALLOWED[identity]:
            assert not await p.refused(action, subject), (identity, action, subject, p.errors)


@pytest.mark.parametrize("identity", sorted(FORBIDDEN))
async def test_forbidden_actions_fail(server: NatsServer, identity: str) -> None:
    async with probe(server, identity) as p:
        for action, subject in FORBIDDEN[identity]:
            assert await p.refused(action, subject), (identity, action, subject, "was allowed", p.errors)


async def connect(srv: NatsServer, identity: str, seed: str = "") -> Bus:
    return await Bus.connect(
        srv.client_url, identity, nkey_file=seed or seed_file(identity), connect_timeout=2
    )


async def test_a_worker_answers_only_the_requests_it_received(server: NatsServer) -> None:
    """A streamed answer (many frames) reaches the gateway's inbox; the worker cannot write to it
    before the request arrived."""
    gateway, worker = await connect(server, "gateway"), await connect(server, "worker")
    try:

        async def on_work(msg: nats.aio.msg.Msg) -> None:
            for i in range(3):
                await worker.publish(msg.reply, str(i).encode())

        await worker.serve(subjects.work("fake"), on_work, queue=subjects.work_queue("fake"))
        await worker.flush()
        with gateway.open_inbox("req1") as box:
            assert box.subject.startswith("_INBOX.gateway.")
            await gateway.publish(subjects.work("fake"), b"work", reply=box.subject)
            frames = [(await box.next(5)).data for _ in range(3)]
        assert frames == [b"0", b"1", b"2"]
    finally:
        await gateway.close()
        await worker.close()


async def test_key_records_written_by_the_operator_and_by_gateways(server: NatsServer) -> None:
    """The operator makes the bucket and a key; a gateway reads it and writes a caller's own key
    (self-service keys), which the operator then reads: records only, the bucket is not its to make."""
    operator, gateway = await connect(server, "operator"), await connect(server, "gateway")
    try:
        keys = await operator.kv(subjects.KEYS_BUCKET)
        await Bus.kv_put(keys, "k.0123", b"record")
        seen = await gateway.kv(subjects.KEYS_BUCKET, create=False, wait=5)
        assert (await Bus.kv_get(seen, "k.0123"))[0] == b"record"
        with pytest.raises(KeyNotFound):
            await Bus.kv_get(seen, "k.absent")
        await Bus.kv_put(seen, "k.4567", b"own key")
        assert (await Bus.kv_get(keys, "k.4567"))[0] == b"own key"
    finally:
        await operator.close()
        await gateway.close()


async def test_metering_reads_and_writes_budget_records(server: NatsServer) -> None:
    metering = await connect(server, "metering")
    try:
        kv = await metering.kv(subjects.BUDGET_BUCKET)
        await Bus.kv_put(kv, "b.u.alice", b"1")
        assert (await Bus.kv_get(kv, "b.u.alice"))[0] == b"1"
    finally:
        await metering.close()


async def test_no_credentials_and_unknown_keys_are_refused(server: NatsServer, tmp_path: Path) -> None:
    with pytest.raises(ServiceUnavailable, match="refused"):
        await Bus.connect(server.client_url, "anonymous", connect_timeout=2)
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_seed())
    with pytest.raises(ServiceUnavailable, match="refused"):
        await connect(server, "gateway", str(stranger))


async def test_credentials_in_a_url_never_reach_an_error(server: NatsServer) -> None:
    host = server.client_url.partition("://")[2]
    with pytest.raises(ServiceUnavailable) as refused:
        await Bus.connect(f"nats://harness:not-the-password@{host}", "anonymous", connect_timeout=2)
    assert "not-the-password" not in refused.value.message and host in refused.value.message
