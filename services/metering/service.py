"""The metering service: admission (reserve), settlement, the hold reaper and usage answers.

    janus.meter.reserve  (queue "metering")  ReserveRequest  -> ReserveReply | ErrorReply
    janus.meter.usage    (queue "metering")  UsageQuery      -> UsageReply   | ErrorReply
    janus.meter.renew    (queue "metering")  HoldRenewal     -> (no reply: the hold is marked in use)
                                             LeaseReturn     -> (no reply: a gateway's lease given back)
    JANUS_SETTLE stream, durable pull consumer "metering" shared by every replica; a message is
    one Settlement or a gateway's SettlementBundle of them:
        a fetched batch -> one CAS write per user (group commit) -> ledger entries -> one ack a message;
        a batch that did not fill is followed by a short linger, so low traffic batches too (longer
        after large budget writes, so a busy user's record is rewritten a few times a second)
        last delivery still failing, or too old to prove new -> that settlement to JANUS_SETTLE_DEAD
        unreadable -> the message to JANUS_SETTLE_DEAD, term

All state is in JetStream (the ``janus_budget`` KV bucket and the streams), so any number of
replicas serve the same users and a SIGKILL loses nothing: a settlement is acknowledged only after
its KV write, and applying it again is a no-op (the record remembers the request ids settled within
the idempotency horizon).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Container
from typing import Any, ClassVar

import msgspec

from services.metering import budget
from services.metering import windows as w
from services.metering.daily import DailyHistory
from services.metering.leases import LeaseTerms, give_back
from services.metering.record import Bounds
from services.metering.settings import MeteringSettings
from services.metering.store import BudgetStore
from services.metering.streams import dead_letter, publish_ledger
from shared import contract, metrics, subjects
from shared.bus import Bus, Msg, map_exception
from shared.catalog import ConfigError, load_catalog, load_plans
from shared.errors import InvalidRequest, JanusError, ModelNotFound, PermissionDenied
from shared.logging import get_logger
from shared.money import PriceUnits
from shared.service import Service
from shared.streams import ensure_dead_letter_stream, ensure_ledger_stream, ensure_settlement_stream

log = get_logger("metering")

_json = msgspec.json.Encoder()

# label children resolved once: .labels() is a dict lookup under a lock on every call
_RESERVE_SECONDS = metrics.METER_OP_SECONDS.labels("reserve")
_SETTLE_SECONDS = metrics.METER_OP_SECONDS.labels("settle")
_ADMITTED = metrics.BUDGET_DECISIONS.labels("admitted", "none")
_BYOK = metrics.BUDGET_DECISIONS.labels("byok", "none")
# its own decision, not "denied": the budget alerts watch refusals of credit pools
_RATE_LIMITED = metrics.BUDGET_DECISIONS.labels("rate_limited", "requests")
_LEASE_GRANTED = metrics.LEASES.labels("granted")
_LEASE_RETURNED = metrics.LEASES.labels("returned")
# a lease given back is sent once: a return whose write fails in an election is retried here for
# this long (a return is applied at most once, so a retry is safe), not left to the reaper's TTL
RETURN_RETRY_SECONDS = 60.0


_TOP_CACHE_SECONDS = 5.0


_SETTLED = metrics.children(metrics.SETTLEMENTS)
_CHARGED = metrics.children(metrics.CREDITS_CHARGED)
_OVER_HOLD = metrics.children(metrics.USAGE_OVER_HOLD)


def _count_settlement(
    s: contract.Settlement, outcome: budget.Outcome, plans: Container[str], models: Container[str]
) -> None:
    _SETTLED(outcome.result).inc()
    # a plan or model label only ever names a configured one (bounded, and never a user), whatever
    # model a gateway's settlement names
    model = s.model if s.model in models else metrics.OTHER
    if outcome.result != "duplicate" and outcome.entry.credits:
        plan = s.plan if s.plan in plans else metrics.OTHER
        _CHARGED(model, plan).inc(outcome.entry.credits)
    if outcome.over_hold:
        _OVER_HOLD(model).inc()
        log.warning(
            "usage_over_hold",
            request_id=s.request_id,
            model=s.model,
            held=outcome.entry.credits,
            reported=outcome.reported,
            prompt_tokens=s.usage.prompt_tokens,
            completion_tokens=s.usage.completion_tokens,
        )


def _settle_failed(s: contract.Settlement, exc: BaseException) -> None:
    # not acked: JetStream redelivers it after ack_wait, to this replica or another
    log.warning("settle_failed", request_id=s.request_id, error=map_exception(exc).message)
    metrics.SETTLEMENTS.labels("retry").inc()


class _Held:
    """A settlement message of a batch: acknowledged once its settlements are handled (applied with
    their ledger entries, or in the dead letters), unless one of them must come ``again``.
    ``ledger_id`` is a bundle's: its entries go to the ledger as one message under that id; a
    settlement that came alone ("") has its entry appended alone, under its request id."""

    __slots__ = ("again", "final", "ledger_id", "msg")

    def __init__(self, msg: Msg, ledger_id: str, final: bool) -> None:
        self.msg = msg
        self.ledger_id = ledger_id
        self.final = final
        self.again = False


MAX_LINGER_MS = 5000


def settle_linger(base: float, most: float, written: int, rate: int) -> float:
    """Seconds to wait after a batch that did not fill: ``base``, or what the ``written`` bytes of
    its budget writes take at ``rate`` bytes a second when that is longer, never above ``most``.
    Large writes are a busy user's record rewritten whole: the longer wait lets the next batch
    carry more of its settlements into one write."""
    if rate <= 0:
        return base
    return max(base, min(most, written / rate))


class MeteringService(Service[MeteringSettings]):
    name: ClassVar[str] = "metering"
    default_ops_port: ClassVar[int] = 9103
    settings_cls = MeteringSettings

    def __init__(self, settings: MeteringSettings) -> None:
        super().__init__(settings)
        catalog = load_catalog(settings.catalog or None)
        plans = load_plans(settings.plans or None, catalog)
        self.default_plan = plans.default_plan
        window = settings.rate_window_seconds
        self.rules = {name: budget.PlanRules.of(name, p, window) for name, p in plans.plans.items()}
        # priced once per model and alias, so a request costs one dict lookup
        self.prices: dict[str, PriceUnits] = {
            name: PriceUnits.of(m.price) for name, m in catalog.model_by_name.items()
        }
        self.bounds = Bounds(
            settings.settled_horizon_seconds, settings.settled_ceiling, settings.bots_per_week
        )
        if settings.settled_horizon_seconds <= settings.settle_max_deliver * settings.settle_ack_wait_seconds:
            raise ConfigError(
                f"bad setting: JANUS_SETTLED_HORIZON_SECONDS ({settings.settled_horizon_seconds}) must be "
                f"above JANUS_SETTLE_MAX_DELIVER ({settings.settle_max_deliver}) x "
                f"JANUS_SETTLE_ACK_WAIT_SECONDS ({settings.settle_ack_wait_seconds:g}), or a redelivery "
                "could outlive its settled id"
            )
        if not 0 <= settings.settle_linger_max_ms <= MAX_LINGER_MS:
            raise ConfigError(
                f"bad setting: JANUS_SETTLE_LINGER_MAX_MS ({settings.settle_linger_max_ms:g}) must be within "
                f"0..{MAX_LINGER_MS}: settlements wait that long before they replace their holds"
            )
        if not 0 <= settings.lease_fraction <= 0.5:
            raise ConfigError(
                f"bad setting: JANUS_LEASE_FRACTION ({settings.lease_fraction:g}) must be within 0..0.5, so "
                "a second gateway of the user can still be granted a lease"
            )
        if settings.lease_ttl_seconds <= max(settings.lease_seconds, 0):
            raise ConfigError(
                f"bad setting: JANUS_LEASE_TTL_SECONDS ({settings.lease_ttl_seconds:g}) must be above "
                f"JANUS_LEASE_SECONDS ({settings.lease_seconds:g})"
            )
        self.lease_terms = LeaseTerms(settings.lease_fraction, settings.lease_seconds)
        self.store: BudgetStore | None = None
        self.daily = DailyHistory(settings.daily_batch, settings.daily_interval_seconds)
        self._top_cache: tuple[int, float, contract.UsageReply] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._returns: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._consuming = False
        self._sub: Any = None

    # ------------------------------------------------------------------------------- lifecycle
    async def start(self, bus: Bus) -> None:
        await super().start(bus)
        replicas = self.settings.nats_replicas
        kv = await bus.kv(subjects.BUDGET_BUCKET, replicas=replicas)
        # the buckets the gateways and workers read are made here: the bus lets them use, not make,
        # them (config/nats-permissions.yaml)
        for bucket in (subjects.KEYS_BUCKET, subjects.BYOK_BUCKET):
            await bus.kv(bucket, replicas=replicas)
        self.store = BudgetStore(kv)
        # the write-failure series exist at 0 from the start, so rate() and the alert see the first one
        for store in (subjects.BUDGET_BUCKET, subjects.LEDGER_STREAM):
            for reason in ("full", "unavailable"):
                metrics.JETSTREAM_WRITE_ERRORS.labels(store, reason)
        for reason in ("undecodable", "max_deliveries", "unprovable"):
            metrics.SETTLEMENTS_DEAD.labels(reason)
        for model in self.prices:  # the catalog's models: a bounded label set
            metrics.USAGE_OVER_HOLD.labels(model)
        await ensure_settlement_stream(bus, replicas)
        await ensure_ledger_stream(
            bus,
            replicas,
            max_age=self.settings.ledger_max_age_seconds,
            max_bytes=self.settings.ledger_max_bytes,
        )
        await ensure_dead_letter_stream(bus, replicas)
        sub = self._sub = await bus.pull_consumer(
            subjects.SETTLE_STREAM,
            subjects.SETTLE_DURABLE,
            subjects.SETTLE,
            ack_wait=self.settings.settle_ack_wait_seconds,
            max_deliver=self.settings.settle_max_deliver,
        )
        n = self.settings.concurrency
        q = subjects.METERING_QUEUE
        await bus.serve(subjects.METER_RESERVE, self._on_reserve, queue=q, concurrency=n)
        await bus.serve(subjects.METER_USAGE, self._on_usage, queue=q, concurrency=n)
        await bus.serve(subjects.METER_ADMIN, self._on_admin, queue=q, concurrency=4)
        await self.daily.start(bus, replicas)
        await bus.serve(subjects.METER_RENEW, self._on_renew, queue=q, concurrency=n)
        await bus.flush()  # subscriptions are registered at the server before we report ready
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._settle_loop(sub)), loop.create_task(self._reap_loop())]

    async def stop(self) -> None:
        self._closing.set()
        settle, reaper = self._tasks or (None, None)
        if reaper is not None:
            reaper.cancel()
        for task in list(self._returns):
            task.cancel()  # an unreturned lease is the reaper's, as if this replica had died
        await self.daily.stop(self.settings.shutdown_grace_seconds)
        if settle is not None:
            # the settle loop finishes the batch in hand; what it has not acked is redelivered
            with contextlib.suppress(Exception):
                await asyncio.wait_for(settle, self.settings.drain_grace())
        if self._sub is not None:
            # a pull subscription left behind after a timed-out fetch stalls the connection's
            # drain for its whole timeout
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def ready(self) -> bool:
        return self._consuming and not self._closing.is_set()

    def ready_detail(self) -> dict[str, bool]:
        return {"settlements": self._consuming}

    # --------------------------------------------------------------------------------- helpers
    def _plan(self, name: str, *, strict: bool) -> budget.PlanRules:
        rules = self.rules.get(name)
        if rules is None:
            if strict:
                raise PermissionDenied(f"unknown plan {name!r}", code="unknown_plan")
            # a settlement must still be charged; the default plan's windows are the best guess
            rules = self.rules[self.default_plan]
        return rules

    @staticmethod
    async def _respond(msg: Msg, data: bytes) -> None:
        if msg.reply:
            await msg.respond(data)

    # --------------------------------------------------------------------------------- reserve
    async def reserve(self, req: contract.ReserveRequest) -> contract.ReserveReply:
        assert self.store is not None
        rules = self._plan(req.plan, strict=True)
        price = self.prices.get(req.model)
        if price is None:
            raise ModelNotFound(f"the model {req.model!r} does not exist", param="model")
        now = w.now_s(time.time())
        reply: contract.ReserveReply = await self.store.update(
            req.user, lambda rec: budget.reserve(rec, req, rules, price, now, self.lease_terms)
        )
        if reply.lease is not None:
            _LEASE_GRANTED.inc()
        if reply.denied_pool == "requests":
            _RATE_LIMITED.inc()
        elif req.byok:
            _BYOK.inc()
        elif reply.admitted:
            _ADMITTED.inc()
        else:
            metrics.BUDGET_DECISIONS.labels("denied", reply.denied_pool or "unknown").inc()
        return reply

    async def _on_reserve(self, msg: Msg) -> None:
        t0 = time.perf_counter()
        try:
            req = contract.reserve_request_decoder.decode(msg.data)
            out = contract.encode(await self.reserve(req))
        except Exception as exc:
            out = self._error(exc, "reserve")
        await self._respond(msg, out)
        _RESERVE_SECONDS.observe(time.perf_counter() - t0)

    @staticmethod
    def _error(exc: Exception, op: str) -> bytes:
        if isinstance(exc, msgspec.DecodeError | msgspec.ValidationError):
            err: JanusError = InvalidRequest(f"malformed {op} message: {exc}")
        else:
            err = map_exception(exc)
            if not isinstance(exc, JanusError):
                log.exception(f"{op}_failed")
        return contract.encode(contract.error_reply(err))

    # ----------------------------------------------------------------------------------- usage
    async def usage(self, q: contract.UsageQuery) -> contract.UsageReply:
        assert self.store is not None
        rules = self._plan(q.plan, strict=True)
        ret = q.lease_return
        if ret is not None and ret.user == q.user:
            await self.give_back(ret)
        rec = await self.store.read_user(q.user)
        now = w.now_s(time.time())
        budget.roll(rec, rules, now)  # a view only: nothing is written
        pools = budget.pool_states(budget.figures(rec, rules, now), rules.plan)
        return contract.UsageReply(
            _json.encode(budget.usage_document(rec, rules, now)),
            pools,
            report=budget.usage_report(rec, rules, now),
        )

    async def _on_usage(self, msg: Msg) -> None:
        t0 = time.perf_counter()
        try:
            q = contract.usage_query_decoder.decode(msg.data)
            out = contract.encode(await self.usage(q))
        except Exception as exc:
            out = self._error(exc, "usage")
        await self._respond(msg, out)
        metrics.METER_OP_SECONDS.labels("usage").observe(time.perf_counter() - t0)

    # ----------------------------------------------------------------------------------- admin
    async def top_spenders(self, q: contract.AdminQuery) -> contract.UsageReply:
        """This week's biggest spenders, for the operator view: a scan of the budget records,
        which is why only operators may ask, at most 100 are answered, and an answer is reused for
        a few seconds (a dashboard left open must not turn into a scan a second)."""
        assert self.store is not None
        cached = self._top_cache
        if cached is not None and cached[0] == q.top and time.monotonic() - cached[1] < _TOP_CACHE_SECONDS:
            return cached[2]
        now = w.now_s(time.time())
        rows: list[tuple[int, str, str, int]] = []
        for key in await self.store.keys():
            rec, _ = await self.store.read(key)
            if rec is None:
                continue
            rules = self._plan(rec.plan, strict=False)
            if rec.week_start < rules.week_start(now):
                continue  # last week's spend: nothing this week yet
            requests = sum(t.requests for t in rec.week_by_model.values())
            rows.append((rec.week_used, rec.user, rules.name, requests))
        rows.sort(reverse=True)
        top = [contract.TopSpender(u, p, c, r) for c, u, p, r in rows[: max(1, min(q.top, 100))]]
        # the document beside the rows is for gateways of the previous release
        legacy = _json.encode({"object": "usage.top_users", "week_users": len(rows), "data": top})
        reply = contract.UsageReply(legacy, top_users=top, week_users=len(rows))
        self._top_cache = (q.top, time.monotonic(), reply)
        return reply

    async def _on_admin(self, msg: Msg) -> None:
        try:
            q = contract.admin_query_decoder.decode(msg.data)
            out = contract.encode(await self.top_spenders(q))
        except Exception as exc:
            out = self._error(exc, "admin")
        await self._respond(msg, out)

    # ---------------------------------------------------------------------------------- renewal
    async def renew(self, r: contract.HoldRenewal) -> bool:
        assert self.store is not None
        now = w.now_s(time.time())
        found: bool = await self.store.update(r.user, lambda rec: budget.renew(rec, r.request_id, now))
        return found

    async def give_back(self, ret: contract.LeaseReturn) -> bool:
        assert self.store is not None

        now = w.now_s(time.time())

        def change(rec: Any) -> tuple[bool, bool]:
            changed = give_back(rec, ret, now, self.bounds)
            return changed, changed

        returned: bool = await self.store.update(ret.user, change)
        if returned:
            _LEASE_RETURNED.inc()
        return returned

    async def _on_renew(self, msg: Msg) -> None:
        try:
            upkeep = contract.upkeep_decoder.decode(msg.data)
            if isinstance(upkeep, contract.LeaseReturn):
                try:
                    await self.give_back(upkeep)
                except Exception as exc:
                    if not map_exception(exc).retryable:
                        raise
                    task = asyncio.get_running_loop().create_task(self._give_back_later(upkeep))
                    self._returns.add(task)
                    task.add_done_callback(self._returns.discard)
            else:
                await self.renew(upkeep)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("renew_undecodable", error=str(exc))
        except Exception as exc:
            # the next renewal comes well before the hold could be reaped
            log.warning("renew_failed", error=map_exception(exc).message)

    async def _give_back_later(self, ret: contract.LeaseReturn) -> None:
        """Retry a lease return whose write failed (a JetStream election), with capped, jittered
        backoff, until it is written or ``RETURN_RETRY_SECONDS`` have passed."""
        deadline = time.monotonic() + RETURN_RETRY_SECONDS
        attempt = 0
        while True:
            await asyncio.sleep(random.uniform(0.0, min(2.0, 0.1 * 2.0**attempt)))
            attempt += 1
            try:
                await self.give_back(ret)
                return
            except Exception as exc:
                error = map_exception(exc)
                if not error.retryable or time.monotonic() >= deadline:
                    log.warning(
                        "lease_return_failed", lease=ret.lease_id, attempts=attempt, error=error.message
                    )
                    return

    # ------------------------------------------------------------------------------ settlement
    def _submit_settlement(
        self, s: contract.Settlement, delivery: budget.Delivery
    ) -> asyncio.Future[budget.Outcome]:
        """Queue one settlement's KV change; the store commits it with the user's other changes."""
        assert self.store is not None
        rules = self._plan(s.plan, strict=False)
        price = self.prices.get(s.model)
        if price is None:
            log.warning("settle_unknown_model", model=s.model)
        now = w.now_s(time.time())
        bounds, prices = self.bounds, self.prices
        return self.store.submit(
            s.user, lambda rec: budget.settle(rec, s, rules, price, now, bounds, delivery, prices)
        )

    async def _dead_letter(
        self, m: Msg, reason: str, s: contract.Settlement | None, error: str, *, part: int = -1
    ) -> bool:
        """Keep a settlement metering gives up on in the dead-letter stream, and count it, so it is
        neither lost without trace nor applied twice; False when it could not be stored. ``part``
        names one settlement of a bundle (kept alone); -1 keeps the whole message."""
        assert self.bus is not None
        deliveries, published = Bus.delivery(m)
        letter = contract.DeadLetter(
            reason,
            m.data if part < 0 or s is None else contract.encode(s),
            deliveries,
            published,
            time.time(),
            request_id=s.request_id if s else "",
            user=s.user if s else "",
            error=error,
        )
        try:
            await dead_letter(self.bus, letter, Bus.sequence(m), part)
        except Exception as exc:
            # not stored: leave it unacked, so JetStream's own bound (max_deliver) still keeps it
            log.error("dead_letter_failed", request_id=letter.request_id, error=map_exception(exc).message)
            return False
        log.error(
            "settlement_dead_lettered",
            reason=reason,
            request_id=letter.request_id,
            deliveries=deliveries,
            error=error,
        )
        metrics.SETTLEMENTS.labels("dead_lettered").inc()
        metrics.SETTLEMENTS_DEAD.labels(reason).inc()
        return True

    async def settle_batch(self, msgs: list[Msg]) -> None:
        """Apply a fetched batch of messages, each one settlement or a gateway's bundle of them: KV
        changes grouped per user (one write each), then every ledger message published at once (a
        bundle's entries in one, when ``ledger_bundles``), then one ack per message. A message is
        acknowledged only when each of its settlements has both its KV write and its ledger entry
        stored, or is in the dead letters; anything short of that is redelivered after
        ``ack_wait``, and applying a settlement again is a no-op. A settlement whose last delivery
        (``settle_max_deliver``) fails, or redelivered too old for the record to vouch for, goes to
        the dead letters alone; a message nobody can read goes there whole."""
        assert self.bus is not None
        t0 = time.perf_counter()
        last = self.settings.settle_max_deliver
        bundled = self.settings.ledger_bundles
        held: list[_Held] = []
        batch: list[tuple[_Held, int, contract.Settlement, budget.Delivery]] = []
        for m in msgs:
            try:
                got, bundle_id = contract.settlement_message(m.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                # redelivering a message nobody can read would loop for ever
                metrics.SETTLEMENTS.labels("invalid").inc()
                if await self._dead_letter(m, "undecodable", None, str(exc)):
                    with contextlib.suppress(JanusError):
                        await Bus.ack(m, term=True)
                continue
            deliveries, stored = Bus.delivery(m)
            delivery = budget.Delivery(int(stored), deliveries > 1)
            # the stream's sequence makes the id one no publisher can reuse for another message
            ledger_id = f"{bundle_id}.{Bus.sequence(m)}" if bundle_id is not None and bundled else ""
            entry = _Held(m, ledger_id, deliveries >= last)
            held.append(entry)
            for i, s in enumerate(got):
                # a bundle's settlement given up goes to the dead letters alone
                batch.append((entry, i if bundle_id is not None else -1, s, delivery))
        futures: list[asyncio.Future[budget.Outcome]] = []
        for _, _, s, delivery in batch:
            try:
                futures.append(self._submit_settlement(s, delivery))
            except Exception as exc:
                failed: asyncio.Future[budget.Outcome] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                futures.append(failed)
        applied = await asyncio.gather(*futures, return_exceptions=True)

        async def give_up(entry: _Held, part: int, s: contract.Settlement, reason: str, error: str) -> None:
            if not await self._dead_letter(entry.msg, reason, s, error, part=part):
                entry.again = True

        # what each ledger message holds: (message, {request id: (its part, settlement, entry)})
        ledger: dict[int, tuple[_Held, dict[str, tuple[int, contract.Settlement, contract.LedgerEntry]]]] = {}
        settled = 0
        for (entry, part, s, delivery), out in zip(batch, applied, strict=True):
            if isinstance(out, BaseException):
                if entry.final:
                    await give_up(entry, part, s, "max_deliveries", map_exception(out).message)
                else:
                    _settle_failed(s, out)
                    entry.again = True
                continue
            if out.result == budget.UNPROVABLE:
                await give_up(
                    entry, part, s, "unprovable", "redelivered after the record stopped remembering its time"
                )
                continue
            _count_settlement(s, out, self.rules, self.prices)
            settled += 1
            if entry.ledger_id and out.result == "duplicate" and not delivery.redelivered:
                # applied by another message, whose ledger entry it is: a bundle's first delivery
                # cannot have applied it itself
                continue
            key = id(entry) if entry.ledger_id else id(s)
            # once per message, however often a (forged) bundle repeats it
            ledger.setdefault(key, (entry, {}))[1].setdefault(s.request_id, (part, s, out.entry))
        # a bundle with a settlement still to come again is appended on that delivery, whole (its
        # applied settlements are duplicates then, with the same entries); on its last delivery it
        # is appended as it stands, since nothing comes after
        sends = [
            (entry, list(parts.values()))
            for entry, parts in ledger.values()
            if not (entry.ledger_id and entry.again and not entry.final)
        ]
        # after the KV writes: a crash here redelivers the settlements, which re-publish these entries
        published = await publish_ledger(
            self.bus,
            [
                (contract.LedgerBundle([e for _, _, e in parts]), entry.ledger_id)
                if entry.ledger_id
                else (parts[0][2], parts[0][2].request_id)
                for entry, parts in sends
            ],
        )
        for (entry, parts), err in zip(sends, published, strict=True):
            if err is None:
                continue
            for part, s, _ in parts:
                if entry.final:
                    # charged, but its ledger entry is missing: the dead letter says which
                    await give_up(entry, part, s, "max_deliveries", f"ledger: {err}")
                else:
                    _settle_failed(s, err)
                    entry.again = True
        for entry in held:
            if entry.again:
                continue  # redelivered after ack_wait; what it carries that was applied is a no-op then
            try:
                await Bus.ack(entry.msg)
            except JanusError as exc:
                log.warning("settle_ack_failed", sequence=Bus.sequence(entry.msg), error=exc.message)
        took = time.perf_counter() - t0
        for _ in range(settled):
            _SETTLE_SECONDS.observe(took)

    async def _settle_loop(self, sub: Any) -> None:
        assert self.store is not None
        self._consuming = True
        s = self.settings
        linger = s.settle_linger_ms / 1000.0
        size = s.settle_batch
        try:
            while not self._closing.is_set():
                try:
                    msgs = await Bus.fetch(sub, size, 1.0)
                except Exception as exc:
                    log.warning("settle_fetch_failed", error=map_exception(exc).message)
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    continue
                taken = time.monotonic()
                written = self.store.bytes_written
                try:
                    await self.settle_batch(msgs)
                except Exception:
                    # nothing unacked is lost: JetStream redelivers it
                    log.exception("settle_batch_failed")
                if len(msgs) < size and linger > 0:
                    # the linger runs from when this batch was taken: what arrived meanwhile
                    # is the next batch, fetched in one pull however many it holds
                    wrote = self.store.bytes_written - written  # a reserve's meanwhile included
                    pause = settle_linger(
                        linger, s.settle_linger_max_ms / 1000.0, wrote, s.settle_write_bytes_per_second
                    )
                    wait = pause - (time.monotonic() - taken)
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._closing.wait(), wait)
        finally:
            self._consuming = False

    # ---------------------------------------------------------------------------------- reaper
    async def reap_once(self) -> int:
        """Release every hold older than ``hold_ttl_seconds``, in every record; returns how many."""
        assert self.store is not None
        ttl, lease_ttl = self.settings.hold_ttl_seconds, self.settings.lease_ttl_seconds
        reaped = still_open = 0
        for key in await self.store.keys():
            rec, _ = await self.store.read(key)
            if rec is None or not rec.holds:
                continue
            now = w.now_s(time.time())
            if budget.stale(rec, now, ttl, lease_ttl):

                def drop(r: Any, now: int = now) -> tuple[list[str], bool]:
                    ids = budget.reap(r, now, ttl, lease_ttl)
                    return ids, bool(ids)

                ids = await self.store.update(rec.user, drop, key=key)
                reaped += len(ids)
                still_open += len(rec.holds) - len(ids)
                if ids:
                    log.info("holds_reaped", count=len(ids))
            else:
                still_open += len(rec.holds)
        metrics.HOLDS_REAPED.inc(reaped)
        metrics.HOLDS_OPEN.set(still_open)
        return reaped

    async def _reap_loop(self) -> None:
        interval = self.settings.reap_interval_seconds
        while not self._closing.is_set():
            # jitter keeps replicas from scanning in lock-step
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            t0 = time.perf_counter()
            try:
                await self.reap_once()
            except Exception as exc:
                log.warning("reap_failed", error=map_exception(exc).message)
            metrics.METER_OP_SECONDS.labels("reap").observe(time.perf_counter() - t0)
