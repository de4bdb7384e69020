"""The only module that imports ``nats``: connection, request/reply, queue-group services,
streamed replies into a multiplexed inbox, and the JetStream handles the services use.

Foreign exceptions are mapped to the Janus error tree in this module, method by method (each
catches the NATS errors its call can raise), and by ``map_exception`` for a caller holding a raw one.
``kv``, ``kv_put``, ``kv_delete``, ``kv_keys`` and ``ensure_stream`` let NATS errors through unmapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from shared import metrics, subjects
from shared.errors import JanusError, PayloadTooLarge, ServiceUnavailable, UpstreamTimeout
from shared.logging import get_logger

log = get_logger("bus")

__all__ = [
    "OVERFLOW",
    "Bus",
    "CasConflict",
    "KeyNotFound",
    "KeyValue",
    "Msg",
    "redact_url",
]

NO_RESPONDERS = "503"

# Errors that mean "the bus or JetStream cannot answer right now": a caller sees 503 and may retry.
_UNAVAILABLE = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,  # nats.errors.TimeoutError is a subclass
)

# JetStream's "insufficient resources" (10023) and "insufficient storage" (10047): the server's
# store cap, or a stream's, is reached; nothing written until an operator frees or grows it
_STORE_FULL = frozenset({10023, 10047})

Handler = Callable[[Msg], Awaitable[None]]


# queued in an Inbox in place of the frames it dropped when its reader fell too far behind
OVERFLOW = object()


def write_refused(store: str, exc: BaseException) -> ServiceUnavailable:
    """A JetStream write that failed, counted by store and reason, as the 503 a caller sees."""
    if isinstance(exc, nats.js.errors.APIError) and getattr(exc, "err_code", None) in _STORE_FULL:
        metrics.JETSTREAM_WRITE_ERRORS.labels(store, "full").inc()
        return ServiceUnavailable("Janus cannot record usage right now: its storage is full. Retry later.",
                                  code="storage_full")
    metrics.JETSTREAM_WRITE_ERRORS.labels(store, "unavailable").inc()
    return ServiceUnavailable(f"JetStream did not acknowledge a write to {store}: {type(exc).__name__}")


class KeyNotFound(Exception):
    pass


class CasConflict(Exception):
    """A compare-and-set write lost to another writer: re-read and try again."""


class Inbox:
    """Frames for one streamed reply. Created before the request is published.

    Bounded: at most ``max_bytes`` of frames wait unread. A sender that outruns its reader (a worker
    streaming to a client that stopped reading, or one that misbehaves) overflows it: the frames
    queued are dropped, ``OVERFLOW`` is queued in their place and nothing more is taken, so one
    reply can never take more of the gateway's memory than that."""

    __slots__ = ("_bus", "max_bytes", "overflowed", "pending", "queue", "subject", "token")

    def __init__(self, bus: Bus, token: str, max_bytes: int = 0) -> None:
        self._bus = bus
        self.token = token
        self.subject = f"{bus._inbox_prefix}.{token}"
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.max_bytes = max_bytes  # 0: unbounded
        self.pending = 0  # bytes queued and not yet read
        self.overflowed = False

    def put(self, msg: Msg) -> None:
        if self.overflowed:
            return
        size = len(msg.data)
        if self.max_bytes and self.pending + size > self.max_bytes:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.pending = 0
            self.queue.put_nowait(OVERFLOW)  # type: ignore[arg-type]
            return
        self.pending += size
        self.queue.put_nowait(msg)

    def _taken(self, msg: Msg) -> Msg:
        if msg is not OVERFLOW and isinstance(msg, Msg):
            self.pending -= len(msg.data)
        return msg

    def ready(self) -> bool:
        """A message has arrived and ``next`` would not wait."""
        return not self.queue.empty()

    async def next(self, timeout: float) -> Msg:
        queue = self.queue
        if not queue.empty():
            return self._taken(queue.get_nowait())  # messages that arrived together: no wait
        try:
            # the timeout wraps the get in this task (asyncio.wait_for would start a task per message)
            async with asyncio.timeout(timeout):
                return self._taken(await queue.get())
        except TimeoutError:
            raise UpstreamTimeout("no frame from the worker in time", code="stall_timeout") from None

    def close(self) -> None:
        self._bus._inboxes.pop(self.token, None)

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    def __init__(self, nc: Client, service: str) -> None:
        self.nc = nc
        self.service = service
        self._js: JetStreamContext | None = None
        self._inboxes: dict[str, Inbox] = {}
        self._inbox_prefix = ""
        self._inbox_sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Subscription] = []

    # ------------------------------------------------------------------------------ connection
    @classmethod
    async def connect(
        cls,
        url: str,
        service: str,
        *,
        connect_timeout: float = 5.0,
        identity: str = "",
        nkey_file: str = "",
        ca_file: str = "",
    ) -> Bus:
        """Connect as ``identity`` (default: ``service``), signing the server's nonce with the NKey
        seed in ``nkey_file`` when given; ``ca_file`` (or a ``tls://`` URL) makes the connection
        TLS, verifying the server against that CA (else the system's). Replies arrive under the
        identity's own inbox prefix, the only one the server lets it read."""
        bus_ref: list[Bus] = []

        async def disconnected() -> None:
            metrics.NATS_CONNECTED.set(0)
            log.warning("nats_disconnected")

        async def reconnected() -> None:
            metrics.NATS_CONNECTED.set(1)
            log.info("nats_reconnected")

        refused: list[str] = []
        connecting: list[asyncio.Task[Client]] = []

        async def error_cb(exc: Exception) -> None:
            text = str(exc) or type(exc).__name__
            if not bus_ref and _is_auth_error(exc, text):
                # the server will never take these credentials: fail now instead of retrying forever
                refused.append(text)
                for task in connecting:
                    task.cancel()
                return
            log.warning("nats_error", error=text)

        async def closed() -> None:
            metrics.NATS_CONNECTED.set(0)

        servers = [s.strip() for s in url.split(",") if s.strip()]
        options: dict[str, Any] = {}
        if nkey_file:
            options["nkeys_seed"] = nkey_file
        if ca_file or any(s.startswith("tls://") for s in servers):
            options["tls"] = ssl.create_default_context(cafile=ca_file or None)
        nc = Client()

        async def connect() -> Client:
            await nc.connect(
                servers=servers,
                inbox_prefix=subjects.inbox_prefix(identity or service),
                **options,
                name=f"janus-{service}",
                # nats-py annotates these as int but waits with them as seconds: any float works
                connect_timeout=connect_timeout,  # type: ignore[arg-type]
                reconnect_time_wait=0.25,  # type: ignore[arg-type]
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error_cb,
                closed_cb=closed,
                pending_size=64 * 1024 * 1024,
            )
            return nc

        connecting.append(asyncio.get_running_loop().create_task(connect()))
        try:
            await connecting[0]
        except asyncio.CancelledError:
            if not refused:
                connecting[0].cancel()
                raise
            with contextlib.suppress(Exception):
                await nc.close()
            raise ServiceUnavailable(
                f"NATS at {redact_url(url)} refused the identity {identity or service!r}: {refused[0]}",
                code="nats_unauthorized",
            ) from None
        except (nats.errors.NoServersError, OSError, TimeoutError, ssl.SSLError) as exc:
            raise ServiceUnavailable(f"cannot connect to NATS at {redact_url(url)}: {exc}") from None
        except nats.errors.Error as exc:
            # an authorization violation: the identity is unknown to the server or the seed is wrong
            raise ServiceUnavailable(
                f"NATS at {redact_url(url)} refused the connection: {type(exc).__name__}"
            ) from None
        metrics.NATS_CONNECTED.set(1)
        bus = cls(nc, service)
        bus_ref.append(bus)  # connected: an auth error from now on is a reconnect's, not a refusal
        await bus._start_inbox()
        return bus

    async def _start_inbox(self) -> None:
        self._inbox_prefix = self.nc.new_inbox()
        self._inbox_sub = await self.nc.subscribe(f"{self._inbox_prefix}.*", cb=self._on_frame)

    async def _on_frame(self, msg: Msg) -> None:
        box = self._inboxes.get(msg.subject[len(self._inbox_prefix) + 1 :])
        if box is not None:
            box.put(msg)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def drain(self) -> None:
        """Stop taking new messages, let in-flight handlers finish, flush, close."""
        with contextlib.suppress(Exception):
            for sub in self._subs:
                await sub.unsubscribe()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        with contextlib.suppress(Exception):
            await self.nc.drain()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()

    # ---------------------------------------------------------------------------- core messaging
    async def request(
        self, subject: str, data: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> bytes:
        try:
            msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise ServiceUnavailable(f"no service is listening on {subject}", code="no_responders") from None
        except nats.errors.TimeoutError:
            raise ServiceUnavailable(
                f"{subject} did not answer in {timeout:g}s", code="bus_timeout"
            ) from None
        except nats.errors.MaxPayloadError:
            raise _too_large(subject, data) from None
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"message bus unavailable: {type(exc).__name__}") from None
        return msg.data

    async def publish(
        self, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        try:
            await self.nc.publish(subject, data, reply=reply, headers=headers)
        except nats.errors.MaxPayloadError:
            raise _too_large(subject, data) from None
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"message bus unavailable: {type(exc).__name__}") from None

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its ``max_payload``, 1 MiB unless configured)."""
        return int(self.nc.max_payload)

    def open_inbox(self, token: str, max_bytes: int = 0) -> Inbox:
        box = Inbox(self, token, max_bytes)
        self._inboxes[token] = box
        return box

    @staticmethod
    def is_no_responders(msg: Msg) -> bool:
        return bool(msg.headers) and msg.headers.get("Status") == NO_RESPONDERS and not msg.data  # type: ignore[union-attr]

    async def serve(
        self, subject: str, handler: Handler, *, queue: str = "", concurrency: int = 256
    ) -> Subscription:
        """Run ``handler`` for every message, one task each, at most ``concurrency`` at once.

        A subscription callback runs one message at a time, so the work is moved to a task; the
        semaphore bounds memory when a burst arrives.
        """
        sem = asyncio.Semaphore(concurrency)
        tasks = self._tasks

        async def run(msg: Msg) -> None:
            try:
                await handler(msg)
            except Exception:
                log.exception("handler_failed", subject=subject)
            finally:
                sem.release()

        async def cb(msg: Msg) -> None:
            await sem.acquire()
            t = asyncio.get_running_loop().create_task(run(msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        sub = await self.nc.subscribe(subject, queue=queue, cb=cb, pending_msgs_limit=65536)
        self._subs.append(sub)
        return sub

    async def flush(self, timeout: float = 5.0) -> None:
        """Return once the server has every command sent before (subscriptions included).

        nats-py writes the flush PING straight to the socket, ahead of commands still queued for
        its flusher task; the second round trip leaves after that queue has drained.
        """
        # nats-py annotates the timeout as int but waits with asyncio.wait_for: seconds, any float
        await self.nc.flush(timeout=timeout)  # type: ignore[arg-type]
        await self.nc.flush(timeout=timeout)  # type: ignore[arg-type]

    # --------------------------------------------------------------------------------- JetStream
    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream(timeout=5.0)
        return self._js

    async def kv(
        self,
        bucket: str,
        *,
        history: int = 1,
        replicas: int = 1,
        ttl: float | None = None,
        create: bool = True,
        wait: float = 30.0,
    ) -> KeyValue:
        """The bucket, created when absent. ``create=False`` is for identities the bus does not
        let create it: they wait up to ``wait`` seconds for its owner (metering) to have made it."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                if create:
                    break
            except _UNAVAILABLE as exc:
                if create or time.monotonic() > deadline:
                    raise ServiceUnavailable(f"key-value store unavailable: {type(exc).__name__}") from None
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"the key-value bucket {bucket} does not exist (metering makes it)")
            await asyncio.sleep(0.2)
        try:
            return await self.js.create_key_value(
                KeyValueConfig(
                    bucket=bucket, history=history, replicas=replicas, ttl=ttl, storage=StorageType.FILE
                )
            )
        except nats.js.errors.BadRequestError:
            # another replica created it first
            return await self.js.key_value(bucket)

    async def ensure_stream(
        self,
        name: str,
        subjects: list[str],
        *,
        duplicate_window: float = 600.0,
        replicas: int = 1,
        work_queue: bool = False,
        max_age: float | None = None,
        max_bytes: int | None = None,
        allow_direct: bool = False,
    ) -> None:
        """Create the stream, or bring an existing one to what Janus needs (subjects, de-duplication,
        replicas, direct reads) without widening or resetting the limits an operator set on it: of
        the stream's limit and the one asked for here, the tighter wins."""
        cfg = StreamConfig(
            name=name,
            subjects=subjects,
            retention=RetentionPolicy.WORK_QUEUE if work_queue else RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
            max_age=max_age,
            max_bytes=max_bytes,
            allow_direct=allow_direct or None,
        )
        try:
            await self.js.add_stream(cfg)
            return
        except nats.js.errors.BadRequestError:
            pass
        have = (await self.js.stream_info(name)).config
        want = dataclasses.replace(
            have,
            subjects=subjects,
            duplicate_window=duplicate_window,
            num_replicas=replicas,
            max_age=_tighter(have.max_age, max_age),
            max_bytes=_tighter(have.max_bytes, max_bytes),
            allow_direct=True if allow_direct else have.allow_direct,
        )
        for limit in ("max_age", "max_bytes"):
            if getattr(want, limit) != getattr(cfg, limit) and getattr(cfg, limit):
                log.warning("stream_limit_kept", stream=name, limit=limit, stream_value=getattr(want, limit),
                            setting=getattr(cfg, limit))
        if want != have:
            await self.js.update_stream(want)

    async def stream_messages(self, stream: str) -> AsyncIterator[tuple[str, bytes, dict[str, str]]]:
        """(subject, data, headers) of every message still in ``stream``, by sequence: read without
        a consumer, since a work-queue stream admits no second one. A missing stream has none."""
        try:
            state = (await self.js.stream_info(stream)).state
        except nats.js.errors.NotFoundError:
            return
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                m = await self.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue  # deleted (acknowledged from a work queue) or aged out since
            yield m.subject or "", m.data or b"", dict(m.headers or {})

    async def js_publish(self, subject: str, data: bytes, *, msg_id: str, timeout: float = 5.0) -> bool:
        """Publish to a stream, de-duplicated by ``msg_id``. Returns False for a duplicate."""
        try:
            ack = await self.js.publish(subject, data, timeout=timeout, headers={"Nats-Msg-Id": msg_id})
        except nats.errors.MaxPayloadError:
            raise _too_large(subject, data) from None
        except (*_UNAVAILABLE, nats.js.errors.APIError) as exc:
            # an APIError here is JetStream refusing for now (no leader during an election, 503)
            # or a full store
            raise write_refused(subject, exc) from None
        return not ack.duplicate

    async def pull_consumer(
        self,
        stream: str,
        durable: str,
        subject: str,
        *,
        ack_wait: float = 30.0,
        max_ack_pending: int = 10_000,
        max_deliver: int = -1,
    ) -> Any:
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
            filter_subject=subject,
        )
        # created or updated first: pull_subscribe keeps an existing durable's configuration as it
        # is, so an upgrade would never get a changed ack_wait or max_deliver
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await self.js.add_consumer(stream, config=config)
        sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        # drain() unsubscribes it first: a pull subscription whose fetch timed out otherwise holds
        # the connection's drain open for its whole timeout
        self._subs.append(sub._sub)
        return sub

    @staticmethod
    def delivery(msg: Msg) -> tuple[int, float]:
        """(how many times JetStream has delivered ``msg``, unix seconds when its stream stored it)."""
        md = msg.metadata
        return md.num_delivered, md.timestamp.timestamp()

    @staticmethod
    def sequence(msg: Msg) -> int:
        """``msg``'s sequence number in its stream: unique and stable across redeliveries."""
        return msg.metadata.sequence.stream

    @staticmethod
    async def fetch(sub: Any, batch: int, timeout: float) -> list[Msg]:
        try:
            return list(await sub.fetch(batch, timeout=timeout))
        except TimeoutError:  # nats.errors.TimeoutError included: nothing to fetch
            return []
        except (*_UNAVAILABLE, nats.js.errors.ServiceUnavailableError) as exc:
            # JetStream answering 503 (a clustered stream without a leader for a moment) or the
            # connection being down: the caller waits and fetches again
            raise ServiceUnavailable(f"JetStream cannot deliver right now: {type(exc).__name__}") from None

    @staticmethod
    async def kv_get(kv: KeyValue, key: str) -> tuple[bytes, int]:
        """(value, revision); raises KeyNotFound."""
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise KeyNotFound(key) from None
        except _UNAVAILABLE as exc:
            raise ServiceUnavailable(f"key-value store unavailable: {type(exc).__name__}") from None
        return entry.value or b"", entry.revision or 0

    @staticmethod
    async def kv_cas(kv: KeyValue, key: str, value: bytes, revision: int) -> int:
        """Write ``value`` only if the key is still at ``revision`` (0: only if absent)."""
        try:
            if revision == 0:
                return await kv.create(key, value)
            return await kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise CasConflict(key) from None
        except nats.js.errors.KeyNotFoundError:
            # create() lost to another writer and then could not read that write back (a follower
            # of a clustered stream lagging behind): a conflict like any other, re-read and retry
            raise CasConflict(key) from None
        except nats.js.errors.APIError as exc:
            # create() on an existing key reports "wrong last sequence" as a plain API error (10071)
            if getattr(exc, "err_code", None) == 10071:
                raise CasConflict(key) from None
            raise write_refused(_bucket(kv), exc) from None
        except _UNAVAILABLE as exc:
            raise write_refused(_bucket(kv), exc) from None

    @staticmethod
    async def kv_put(kv: KeyValue, key: str, value: bytes) -> int:
        try:
            return await kv.put(key, value)
        except (*_UNAVAILABLE, nats.js.errors.APIError) as exc:
            raise write_refused(_bucket(kv), exc) from None

    @staticmethod
    async def kv_delete(kv: KeyValue, key: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.delete(key)

    @staticmethod
    async def kv_keys(kv: KeyValue) -> list[str]:
        try:
            return list(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []


def _is_auth_error(exc: Exception, text: str) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower()


def redact_url(url: str) -> str:
    """``url`` (comma-separated servers) without user names, passwords or tokens."""
    out = []
    for server in url.split(","):
        parts = urllib.parse.urlsplit(server.strip())
        host = parts.netloc.rpartition("@")[2]
        out.append(urllib.parse.urlunsplit(parts._replace(netloc=host)))
    return ",".join(out)


def _tighter(have: float | int | None, want: float | int | None) -> Any:
    """The tighter of two JetStream limits, where None, 0 and -1 mean none."""
    limits = [v for v in (have, want) if v is not None and v > 0]
    return min(limits) if limits else have


def _bucket(kv: KeyValue) -> str:
    return str(getattr(kv, "_name", "") or "kv")


def _too_large(subject: str, data: bytes) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a message of {len(data)} bytes is larger than the message bus allows; "
        "send less per request (for embeddings, fewer inputs)",
        code="message_too_large",
    )


def map_exception(exc: BaseException) -> JanusError:
    """Any NATS exception as the Janus error a caller should see."""
    if isinstance(exc, JanusError):
        return exc
    if isinstance(exc, nats.errors.TimeoutError):
        return ServiceUnavailable("the message bus timed out")
    if isinstance(exc, nats.errors.Error):
        return ServiceUnavailable(f"message bus error: {type(exc).__name__}")
    return JanusError("internal error")
