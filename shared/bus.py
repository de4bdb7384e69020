"""The only module that imports ``nats``: connection, request/reply, queue-group services,
streamed replies into a multiplexed inbox, and the JetStream handles the services use.

Foreign exceptions (nats, asyncio's timeouts, OSError) become the Janus error tree in one table,
``map_exception``: every method catches what its call means (a missing key, a lost compare-and-set,
a stream that is not there yet) and sends the rest through that table, so a caller of the bus sees
only ``JanusError``, ``KeyNotFound`` and ``CasConflict``. Two exceptions keep their own words:
``connect`` (an identity the server refuses stops the service at start-up) and an Inbox's stall
(the gateway's own deadline, not a failure of the bus).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
        return ServiceUnavailable(
            "Janus cannot record usage right now: its storage is full. Retry later.", code="storage_full"
        )
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
    reply can never take more of the gateway's memory than that.

    One reader at a time (the request's task): a deque, and a future only while that reader waits,
    whose timeout is a loop timer. ``asyncio.Queue`` and ``asyncio.timeout`` cost several times
    that per frame, for waiters and cancellation scopes an inbox never has more than one of."""

    __slots__ = ("_bus", "_frames", "_waiter", "max_bytes", "overflowed", "pending", "subject", "token")

    def __init__(self, bus: Bus, token: str, max_bytes: int = 0) -> None:
        self._bus = bus
        self.token = token
        self.subject = f"{bus._inbox_prefix}.{token}"
        self._frames: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None  # the reader's, while it waits
        self.max_bytes = max_bytes  # 0: unbounded
        self.pending = 0  # bytes queued and not yet read
        self.overflowed = False

    def _wake(self) -> None:
        if self._waiter is not None:
            _release(self._waiter)

    def put(self, msg: Msg) -> None:
        if self.overflowed:
            return
        size = len(msg.data)
        if self.max_bytes and self.pending + size > self.max_bytes:
            self.overflowed = True
            self._frames.clear()
            self.pending = 0
            self._frames.append(OVERFLOW)
        else:
            self.pending += size
            self._frames.append(msg)
        self._wake()

    def interrupt(self, marker: object) -> None:
        """Queue ``marker`` for the reader (a sentinel it knows), whatever the bound."""
        self._frames.append(marker)
        self._wake()

    def _taken(self) -> Msg:
        msg = self._frames.popleft()
        if isinstance(msg, Msg):
            self.pending -= len(msg.data)
        return msg  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """A message has arrived and ``next`` would not wait."""
        return bool(self._frames)

    async def next(self, timeout: float) -> Msg:
        if self._frames:
            return self._taken()  # messages that arrived together: no wait
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _release, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not self._frames:  # woken by the timer, not by a frame
            raise UpstreamTimeout("no frame from the worker in time", code="stall_timeout")
        return self._taken()

    def close(self) -> None:
        self._bus._inboxes.pop(self.token, None)

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release(waiter: asyncio.Future[None]) -> None:
    """Wake an inbox's reader: a frame came, or its timer ran out (it then finds no frame)."""
    if not waiter.done():
        waiter.set_result(None)


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
        except Exception as exc:
            raise map_exception(exc, subject, size=len(data)) from None
        return msg.data

    async def publish(
        self, subject: str, data: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        try:
            await self.nc.publish(subject, data, reply=reply, headers=headers)
        except Exception as exc:
            raise map_exception(exc, subject, size=len(data)) from None

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

        A subscription callback runs one message at a time, so the work is moved to a task; a count
        of free places bounds memory when a burst arrives. The callback is the only one that waits
        for a place (nats-py calls it for one message at a time), so one future is enough: a
        handler that ends wakes it, and it looks again (a semaphore did the same per message, with
        a lock's worth of bookkeeping).
        """
        free = concurrency
        room: asyncio.Future[None] | None = None  # the callback waiting for a place, if it is
        tasks = self._tasks

        async def run(msg: Msg) -> None:
            nonlocal free
            try:
                await handler(msg)
            except Exception:
                log.exception("handler_failed", subject=subject)
            finally:
                free += 1
                if room is not None and not room.done():
                    room.set_result(None)

        async def cb(msg: Msg) -> None:
            nonlocal free, room
            loop = asyncio.get_running_loop()
            while free <= 0:
                room = loop.create_future()
                await room
            free -= 1
            t = loop.create_task(run(msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        try:
            sub = await self.nc.subscribe(subject, queue=queue, cb=cb, pending_msgs_limit=65536)
        except Exception as exc:
            raise map_exception(exc, subject) from None
        self._subs.append(sub)
        return sub

    async def flush(self, timeout: float = 5.0) -> None:
        """Return once the server has every command sent before (subscriptions included).

        nats-py writes the flush PING straight to the socket, ahead of commands still queued for
        its flusher task; the second round trip leaves after that queue has drained.
        """
        # nats-py annotates the timeout as int but waits with asyncio.wait_for: seconds, any float
        try:
            await self.nc.flush(timeout=timeout)  # type: ignore[arg-type]
            await self.nc.flush(timeout=timeout)  # type: ignore[arg-type]
        except Exception as exc:
            raise map_exception(exc, "the NATS server") from None

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
                    raise map_exception(exc, f"the key-value bucket {bucket}") from None
            except Exception as exc:
                raise map_exception(exc, f"the key-value bucket {bucket}") from None
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"the key-value bucket {bucket} does not exist (metering makes it)")
            await asyncio.sleep(0.2)
        config = KeyValueConfig(
            bucket=bucket, history=history, replicas=replicas, ttl=ttl, storage=StorageType.FILE
        )
        try:
            try:
                return await self.js.create_key_value(config)
            except nats.js.errors.BadRequestError:
                # another replica created it first
                return await self.js.key_value(bucket)
        except Exception as exc:
            raise map_exception(exc, f"the key-value bucket {bucket}") from None

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
            pass  # it exists: brought to what is needed below
        except Exception as exc:
            raise map_exception(exc, f"the stream {name}") from None
        try:
            have = (await self.js.stream_info(name)).config
        except Exception as exc:
            raise map_exception(exc, f"the stream {name}") from None
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
                log.warning(
                    "stream_limit_kept",
                    stream=name,
                    limit=limit,
                    stream_value=getattr(want, limit),
                    setting=getattr(cfg, limit),
                )
        if want != have:
            try:
                await self.js.update_stream(want)
            except Exception as exc:
                raise map_exception(exc, f"the stream {name}") from None

    async def stream_messages(self, stream: str) -> AsyncIterator[tuple[str, bytes, dict[str, str]]]:
        """(subject, data, headers) of every message still in ``stream``, by sequence: read without
        a consumer, since a work-queue stream admits no second one. A missing stream has none."""
        try:
            state = (await self.js.stream_info(stream)).state
        except nats.js.errors.NotFoundError:
            return
        except Exception as exc:
            raise map_exception(exc, f"the stream {stream}") from None
        for seq in range(state.first_seq, state.last_seq + 1):
            try:
                m = await self.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue  # deleted (acknowledged from a work queue) or aged out since
            except Exception as exc:
                raise map_exception(exc, f"the stream {stream}") from None
            yield m.subject or "", m.data or b"", dict(m.headers or {})

    async def js_publish(self, subject: str, data: bytes, *, msg_id: str, timeout: float = 5.0) -> bool:
        """Publish to a stream, de-duplicated by ``msg_id``. Returns False for a duplicate."""
        try:
            ack = await self.js.publish(subject, data, timeout=timeout, headers={"Nats-Msg-Id": msg_id})
        except Exception as exc:
            raise map_exception(exc, subject, store=subject, size=len(data)) from None
        return not ack.duplicate

    async def js_publish_batch(
        self, subject: str, items: Sequence[tuple[bytes, str]], *, store: str, timeout: float = 5.0
    ) -> list[JanusError | None]:
        """Publish every (data, msg_id) to a stream, de-duplicated by id; one outcome each (None:
        stored, a duplicate included), counted as writes to ``store``.

        All of them are sent before any acknowledgement is awaited, so a batch costs one JetStream
        round trip instead of one per message. One whose acknowledgement does not come in
        ``timeout`` counts as failed."""
        js = self.js
        futures: list[asyncio.Future[Any]] = []
        outcomes: list[JanusError | None] = [None] * len(items)
        sent: list[int] = []
        for i, (data, msg_id) in enumerate(items):
            try:
                futures.append(
                    await js.publish_async(subject, data, wait_stall=timeout, headers={"Nats-Msg-Id": msg_id})
                )
                sent.append(i)
            except Exception as exc:
                outcomes[i] = map_exception(exc, subject, store=store, size=len(data))
        if not futures:
            return outcomes
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout)
        except TimeoutError:
            # gather cancelled what was still pending; those are failures, the rest stand
            acks = [TimeoutError() if f.cancelled() else f.exception() for f in futures]
        for i, ack in zip(sent, acks, strict=True):
            if isinstance(ack, BaseException):
                outcomes[i] = map_exception(ack, subject, store=store)
        return outcomes

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
        try:
            # created or updated first: pull_subscribe keeps an existing durable's configuration as
            # it is, so an upgrade would never get a changed ack_wait or max_deliver
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await self.js.add_consumer(stream, config=config)
            sub = await self.js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
        except Exception as exc:
            raise map_exception(exc, f"the consumer {durable} of {stream}") from None
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
    async def ack(msg: Msg, *, term: bool = False) -> None:
        """Acknowledge a JetStream message: done with, never delivered again (``term``: though it was
        not processed)."""
        try:
            await (msg.term() if term else msg.ack())
        except Exception as exc:
            raise map_exception(exc, "an acknowledgement") from None

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
        except Exception as exc:
            # JetStream answering 503 (a clustered stream without a leader for a moment) or the
            # connection being down: the caller waits and fetches again
            raise map_exception(exc, "JetStream's delivery") from None

    @staticmethod
    async def kv_get(kv: KeyValue, key: str) -> tuple[bytes, int]:
        """(value, revision); raises KeyNotFound."""
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            raise KeyNotFound(key) from None
        except Exception as exc:
            raise map_exception(exc, f"the key-value bucket {_bucket(kv)}") from None
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
            raise map_exception(exc, _bucket(kv), store=_bucket(kv)) from None
        except Exception as exc:
            raise map_exception(exc, _bucket(kv), store=_bucket(kv)) from None

    @staticmethod
    async def kv_put(kv: KeyValue, key: str, value: bytes) -> int:
        try:
            return await kv.put(key, value)
        except Exception as exc:
            raise map_exception(exc, _bucket(kv), store=_bucket(kv), size=len(value)) from None

    @staticmethod
    async def kv_delete(kv: KeyValue, key: str) -> None:
        try:
            await kv.delete(key)
        except nats.js.errors.KeyNotFoundError:
            pass  # already gone: what was asked
        except Exception as exc:
            raise map_exception(exc, _bucket(kv), store=_bucket(kv)) from None

    @staticmethod
    async def kv_keys(kv: KeyValue) -> list[str]:
        try:
            return list(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []
        except Exception as exc:
            raise map_exception(exc, f"the key-value bucket {_bucket(kv)}") from None


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


def map_exception(
    exc: BaseException, where: str = "the message bus", *, store: str = "", size: int = 0
) -> JanusError:
    """The one table: a foreign exception from a call to NATS as the Janus error a caller sees.

    ``where`` names what was called (a subject, bucket or stream) for the message; ``store`` marks a
    JetStream write, counted by store and reason; ``size`` is the message's, for a refusal of its
    size. Anything the table does not know is a bug: a 500 that names no internals.

        JanusError                       itself
        NoRespondersError                503 no_responders      nobody serves the subject
        MaxPayloadError                  413 message_too_large  (any call)
        a JetStream write's failure      503 storage_full, or 503 counted as unavailable
        TimeoutError (nats', asyncio's)  503 bus_timeout
        connection and JetStream errors  503 service_unavailable (reconnecting, no leader, ...)
        OSError                          503 service_unavailable
        anything else                    500 internal error
    """
    if isinstance(exc, JanusError):
        return exc
    if isinstance(exc, nats.errors.NoRespondersError):
        return ServiceUnavailable(f"no service is listening on {where}", code="no_responders")
    if isinstance(exc, nats.errors.MaxPayloadError):
        return PayloadTooLarge(
            f"a message of {size} bytes is larger than the message bus allows; "
            "send less per request (for embeddings, fewer inputs)",
            code="message_too_large",
        )
    if store and isinstance(exc, (*_UNAVAILABLE, nats.js.errors.APIError, OSError)):
        # an APIError on a write is JetStream refusing for now (no leader during an election,
        # 503) or a full store
        return write_refused(store, exc)
    if isinstance(exc, TimeoutError):
        return ServiceUnavailable(f"{where} did not answer in time", code="bus_timeout")
    if isinstance(exc, (*_UNAVAILABLE, nats.errors.Error, OSError)):
        return ServiceUnavailable(f"{where} is unavailable: {type(exc).__name__}")
    log.error("bus_call_failed", where=where, error=type(exc).__name__, exc_info=exc)
    return JanusError("internal error")
