"""Metering fixtures: a plans file with a tiny budget, a metering service in this process, and the
helpers a test uses to talk to it exactly as the gateway does (bus requests and JetStream
settlements)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.metering.record import SCHEMA, Record, user_key
from services.metering.service import MeteringService
from services.metering.settings import MeteringSettings
from services.metering.store import BudgetStore
from shared import contract, subjects
from shared.bus import Bus
from shared.contract import ReserveReply, Settlement, Usage
from tests.eventually import eventually
from tools.localnats import NatsServer

# gpt-5-nano: 0.05 credits per input token, 0.40 per output token.
# A request of 1000 input + 1000 max output tokens holds 50 + 400 = 450 credits: ten fit in 4500.
MODEL = "gpt-5-nano"
HOLD = 450
TINY_SESSION = 4500

PLANS = f"""
default_plan: tiny
plans:
  tiny:
    session: {{credits: {TINY_SESSION}, hours: 5}}
    weekly: {{credits: 1000000}}
    default_model: gpt-5-nano
  quota:
    session: {{credits: 1000000, hours: 5}}
    weekly: {{credits: 1000000}}
    monthly_tokens: {{input: 5000, output: 3000}}
    default_model: gpt-5-nano
  pro:
    session: {{credits: 100000000, hours: 5}}
    weekly: {{credits: 500000000}}
    default_model: gpt-5-nano
"""


@pytest.fixture
def plans_file(tmp_path: Path) -> Path:
    p = tmp_path / "plans.yaml"
    p.write_text(PLANS)
    return p


def settings(nats_url: str, plans: Path, **kw: object) -> MeteringSettings:
    return MeteringSettings(nats_url=nats_url, plans=str(plans), **kw)  # type: ignore[arg-type]


@pytest.fixture
async def start_metering(
    nats_server: NatsServer, plans_file: Path
) -> AsyncIterator[Callable[..., Awaitable[MeteringService]]]:
    """Start a metering service in this process (its own NATS connection); stopped at teardown."""
    running: list[tuple[MeteringService, Bus]] = []

    async def start(**kw: object) -> MeteringService:
        svc = MeteringService(settings(nats_server.url, plans_file, **kw))
        b = await Bus.connect(nats_server.url, "metering")
        await svc.start(b)
        running.append((svc, b))
        return svc

    yield start
    for svc, b in running:
        svc.stopping = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(svc.stop(), 10)
        with contextlib.suppress(Exception):
            await b.drain()


async def reserve(
    bus: Bus,
    user: str,
    rid: str,
    *,
    plan: str = "tiny",
    model: str = MODEL,
    input_tokens: int = 1000,
    max_output_tokens: int = 1000,
    bot: str = "default",
    byok: bool = False,
) -> ReserveReply:
    req = contract.ReserveRequest(rid, user, plan, model, input_tokens, max_output_tokens, bot=bot, byok=byok)
    reply = contract.reserve_reply_decoder.decode(
        await bus.request(subjects.METER_RESERVE, contract.encode(req), timeout=10)
    )
    if isinstance(reply, contract.ErrorReply):
        raise reply.exception()
    return reply


async def settle(
    bus: Bus,
    user: str,
    rid: str,
    *,
    prompt: int = 1000,
    completion: int = 1000,
    plan: str = "tiny",
    model: str = MODEL,
    ok: bool = True,
    bot: str = "default",
    byok: bool = False,
    msg_id: str = "",
) -> None:
    """Publish a settlement as the gateway does (``msg_id`` other than the request id: as a
    re-publish after the stream's de-duplication window would arrive)."""
    s = Settlement(
        rid, user, plan, model, Usage(prompt, completion), bot=bot, ok=ok, byok=byok, at=time.time()
    )
    await bus.js_publish(subjects.SETTLE, contract.encode(s), msg_id=msg_id or rid)


async def usage(bus: Bus, user: str, plan: str = "tiny") -> dict[str, object]:
    import json

    reply = contract.usage_reply_decoder.decode(
        await bus.request(subjects.METER_USAGE, contract.encode(contract.UsageQuery(user, plan)), timeout=10)
    )
    if isinstance(reply, contract.ErrorReply):
        raise reply.exception()
    doc: dict[str, object] = json.loads(reply.body)
    return doc


async def record(bus: Bus, user: str) -> Record:
    return await BudgetStore(await bus.kv(subjects.BUDGET_BUCKET)).read_user(user)


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "") -> None:
    await eventually(check, timeout, what, every=0.1)


async def ledger(bus: Bus) -> list[contract.LedgerEntry]:
    """Every entry of the ledger stream, read by a throw-away consumer."""
    sub = await bus.js.pull_subscribe(subjects.LEDGER, stream=subjects.LEDGER_STREAM)
    out: list[contract.LedgerEntry] = []
    try:
        while True:
            msgs = await Bus.fetch(sub, 500, 1.0)
            if not msgs:
                return out
            for m in msgs:
                out.extend(contract.ledger_entries_of(m.data))
                await m.ack()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def ledger_count(bus: Bus) -> int:
    info = await bus.js.stream_info(subjects.LEDGER_STREAM)
    return int(info.state.messages)


async def stream_empty(bus: Bus, stream: str = subjects.SETTLE_STREAM) -> bool:
    return int((await bus.js.stream_info(stream)).state.messages) == 0


async def dead_letters(bus: Bus) -> list[contract.DeadLetter]:
    """Every settlement metering gave up on, read without acknowledging."""
    decoder = msgspec.msgpack.Decoder(contract.DeadLetter)
    sub: Any = await bus.js.pull_subscribe(subjects.SETTLE_DEAD, stream=subjects.SETTLE_DEAD_STREAM)
    try:
        return [decoder.decode(m.data) for m in await Bus.fetch(sub, 100, 1.0)]
    finally:
        await sub.unsubscribe()


async def newer_record(bus: Bus, user: str) -> bytes:
    """Store ``user``'s record as a newer metering would write it: this replica refuses to overwrite
    it, every time, so each of the user's settlements fails. Returns the stored bytes."""
    kv = await bus.kv(subjects.BUDGET_BUCKET)
    newer = msgspec.msgpack.encode({**msgspec.to_builtins(Record(user=user)), "schema": SCHEMA + 1})
    await kv.put(user_key(user), newer)
    return newer
