"""What the fault and scale-out tests share: a stack with its own paced catalog and timeouts, extra
replicas, waiting for the budget to settle, and reading the ledger stream as metering wrote it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nats.errors as nats_errors

from shared import contract, subjects
from shared.bus import Bus
from shared.contract import LedgerEntry
from shared.errors import JanusError
from shared.money import PriceUnits, cost_credits
from tests.eventually import eventually
from tools.localnats import NatsServer, free_port
from tools.localstack import ServiceProc, Stack, start_service, start_stack
from tools.soak import ChatResult, get_usage, write_config

T = TypeVar("T")

# short timeouts so that a fault shows within seconds; workers heartbeat well inside the stall bound
FAST_ENV = {
    "JANUS_FIRST_FRAME_TIMEOUT_SECONDS": "2",
    "JANUS_STALL_TIMEOUT_SECONDS": "2",
    "JANUS_HEARTBEAT_SECONDS": "0.5",
    "JANUS_CANCEL_WAIT_SECONDS": "1",
    "JANUS_SHUTDOWN_GRACE_SECONDS": "3",
    # a settlement metering took but could not finish (its ledger stream was electing a leader, the
    # process was killed) comes back after this; its charge is already in the budget by then
    "JANUS_SETTLE_ACK_WAIT_SECONDS": "5",
    "JANUS_LOG_LEVEL": "WARNING",
}


def launch(
    tmp: Path,
    *,
    latency_ms: int = 0,
    tokens_per_second: int = 0,
    env: dict[str, str] | None = None,
    cluster: list[NatsServer] | None = None,
) -> Stack:
    """The four services with a catalog paced as asked, on a fresh nats-server or on ``cluster``."""
    full = {
        **FAST_ENV,
        **write_config(tmp / "config", latency_ms=latency_ms, tokens_per_second=tokens_per_second),
        **(env or {}),
    }
    return start_stack(tmp, env=full, cluster=cluster)


def add_replica(stack: Stack, name: str, tag: str = "-2", **env: str) -> ServiceProc:
    """Another replica of ``name`` on the same NATS (a gateway gets its own HTTP port)."""
    extra = dict(stack.env)
    extra.pop("JANUS_OPS_PORT", None)
    if name == "gateway":
        extra["JANUS_PORT"] = str(free_port())
    extra.update(env)
    moved = ("JANUS_PORT",) if name == "gateway" and "JANUS_PORT" not in env else ()
    svc = start_service(name, extra, stack.workdir, tag=tag, move_ports=moved)
    stack.services[svc.name] = svc
    return svc


def gateway_url(svc: ServiceProc) -> str:
    return f"http://127.0.0.1:{svc.env['JANUS_PORT']}/v1"


async def wait_until(probe: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll the coroutine function ``probe`` until it returns something truthy; fail after ``timeout``."""

    async def tolerant() -> Any:
        # a service still starting or restarting refuses connections: that is "not yet", not a failure
        try:
            return await probe()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return _NotYet(exc)

    return await eventually(tolerant, timeout, what, every)


class _NotYet:
    """A probe's error, falsy so that waiting goes on, and shown if the deadline passes."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return repr(self.exc)


async def settled_usage(
    session: aiohttp.ClientSession,
    base_url: str,
    token: str,
    timeout: float = 20,
    *,
    nats_url: str = "",
    user: str = "",
) -> dict[str, Any]:
    """The caller's /v1/usage once no hold is open any more (every settlement applied). Given
    ``nats_url`` and ``user``, a failure names the request ids still held, read from the bucket."""

    async def probe() -> dict[str, Any] | None:
        doc = await get_usage(session, base_url, token)
        return doc if doc["session"]["reserved"] == 0 and doc["weekly"]["reserved"] == 0 else None

    try:
        return dict(await wait_until(probe, timeout, "holds released"))
    except AssertionError as exc:
        if not nats_url:
            raise
        raise AssertionError(
            f"{exc}; {user} still holds {await open_holds(nats_url, user, detail=True)}"
        ) from None


async def open_holds(nats_url: str, user: str, *, detail: bool = False) -> dict[str, Any]:
    """request id -> credits of every hold the user's budget record still has (with ``detail``, the
    whole hold: what a failure message needs to tell a lease never given back from one given back
    whose settlements are missing)."""
    from services.metering.record import decode_record, user_key

    bus = await Bus.connect(nats_url, "test-holds")
    try:
        kv = await bus.kv(subjects.BUDGET_BUCKET)
        data, _ = await Bus.kv_get(kv, user_key(user))
        holds = decode_record(data).holds.items()
        return {rid: (h if detail else h.credits) for rid, h in holds}
    finally:
        await bus.close()


async def ledger(nats_url: str, timeout: float = 30) -> list[LedgerEntry]:
    """Every entry of the ledger stream, read with a throw-away durable consumer. Right after a
    JetStream leader change the stream's API may time out for a while: each step is retried until
    ``timeout``, and reading goes on until the count the stream reports has been read."""
    deadline = time.monotonic() + timeout

    async def retried(step: Callable[[], Awaitable[T]], what: str) -> T:
        while True:
            try:
                return await step()
            except (JanusError, nats_errors.Error, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} failed for {timeout}s: {exc!r}") from None
                await asyncio.sleep(0.5)

    bus = await Bus.connect(nats_url, "test-ledger")
    try:
        info = await retried(lambda: bus.js.stream_info(subjects.LEDGER_STREAM), "ledger stream info")
        want = info.state.messages
        durable = f"test_{uuid.uuid4().hex[:12]}"
        sub = await retried(
            lambda: bus.pull_consumer(subjects.LEDGER_STREAM, durable, subjects.LEDGER), "ledger consumer"
        )
        out: list[LedgerEntry] = []
        read = 0  # messages: one entry each, or a bundle's
        while read < want:
            try:
                msgs = await Bus.fetch(sub, 512, 1.0)
            except JanusError:
                # JetStream busy or electing a leader: Bus.fetch says ServiceUnavailable; fetch again
                await asyncio.sleep(0.2)
                msgs = []
            if not msgs and time.monotonic() > deadline:
                raise AssertionError(f"read {read} of the ledger's {want} messages in {timeout}s")
            for m in msgs:
                out.extend(contract.ledger_entries_of(m.data))
                read += 1
                await m.ack()
        return out
    finally:
        await bus.close()


def ledger_by_user(entries: list[LedgerEntry]) -> Counter[str]:
    """Credits per user; a request id that appears twice is a double charge and fails here."""
    ids = Counter(e.request_id for e in entries)
    doubled = [rid for rid, n in ids.items() if n > 1]
    assert not doubled, f"settled twice in the ledger: {doubled[:5]}"
    out: Counter[str] = Counter()
    for e in entries:
        out[e.user] += e.credits
    return out


async def ledger_matches(nats_url: str, expected: dict[str, int], timeout: float = 45) -> None:
    """Wait until the ledger's credits per user equal ``expected``: metering writes the budget record
    first and the ledger entry after it, and an entry whose publish failed is published again when
    its settlement is redelivered (``JANUS_SETTLE_ACK_WAIT_SECONDS`` later)."""
    deadline = time.monotonic() + timeout
    while True:
        by_ledger = ledger_by_user(await ledger(nats_url))
        got = {u: by_ledger[u] for u in expected}
        if got == expected:
            return
        if time.monotonic() > deadline:
            assert got == expected, f"the ledger and the budgets disagree after {timeout}s"
        await asyncio.sleep(1.0)


def tally(results: list[tuple[str, ChatResult]], price: PriceUnits) -> tuple[Counter[str], set[str]]:
    """(credits per user by the usage the clients received, users with a stream broken in-band).

    A refusal must be an OpenAI-style error; a broken stream must end with an error event. A user
    with a broken stream was charged for usage the client never saw, so only their ledger and
    their /v1/usage can be compared with each other."""
    charged: Counter[str] = Counter()
    broken: set[str] = set()
    for user, res in results:
        if res.status != 200:
            err = res.error or {}
            assert res.status >= 500 and {"message", "type"} <= set(err), (res.status, err)
        elif res.in_band:
            assert res.error and {"message", "type"} <= set(res.error) and not res.done, res.error
            broken.add(user)
        else:
            assert res.done and res.usage is not None, f"{res.request_id}: stream ended without [DONE]"
            charged[user] += cost_credits(res.usage, price)
    return charged, broken
