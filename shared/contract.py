"""The bus contract: every message that crosses NATS, as tagged msgspec Structs.

Rules that keep rolling deploys working:
- every message carries a ``type`` tag that names its version (``route.plan.v1``);
- new fields are added with defaults; unknown fields are never forbidden;
- encoders and decoders are built once, here, at import.

The wire format is MessagePack (binary-safe, and cheaper than JSON on both ends).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.errors import ErrorInfo, JanusError

_tagged = {"tag_field": "type", "omit_defaults": True}


# --------------------------------------------------------------------------------------------- usage
class Usage(msgspec.Struct, omit_defaults=True):
    """Normalised token usage. ``prompt_tokens`` includes ``cached_tokens``; ``completion_tokens``
    includes ``reasoning_tokens`` (OpenAI's convention): the detail fields are never added twice."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# ------------------------------------------------------------------------------------------- routing
class RouteRequest(msgspec.Struct, tag="route.request.v1", **_tagged):
    request_id: str
    model: str  # as the client sent it: "auto", "", an id or an alias
    plan: str
    kind: Literal["chat", "embeddings"] = "chat"
    prompt_tokens: int = 0  # estimated
    needs_tools: bool = False
    needs_vision: bool = False
    needs_json: bool = False
    text: str = ""  # the prompt text the auto policy scores (only sent for auto)
    budget_fraction: float | None = None  # remaining / limit of the tightest pool, when known


class Target(msgspec.Struct, omit_defaults=True):
    deployment: str  # deployment id in the catalog
    provider: str  # provider id: the worker pool (subject token) that serves it
    upstream_model: str  # the provider's own model name
    model: str = ""  # catalog id this target serves when it differs from RoutePlan.model (a fallback model)


class RoutePlan(msgspec.Struct, tag="route.plan.v1", **_tagged):
    model: str  # catalog id actually chosen
    response_model: str  # what responses name as "model"
    targets: list[Target]  # primary first, then fallbacks in order
    reason: str  # "direct", "tier_default", "rule:code", "complexity", ...
    auto: bool = False
    score: float | None = None
    # > 0: this plan depends only on the request's model, plan, kind and needs (no health, no draw),
    # so a gateway may reuse it for identical requests for this many seconds
    cache_seconds: float = 0.0


# ------------------------------------------------------------------------------------------ metering
class PoolState(msgspec.Struct, omit_defaults=True):
    name: str  # "session" | "weekly"
    limit: int  # credits
    remaining: int  # credits, after every open hold
    reset: float  # unix seconds when the pool resets (or the session would open anew)


class ReserveRequest(msgspec.Struct, tag="meter.reserve.v1", **_tagged):
    request_id: str
    user: str
    plan: str
    model: str  # catalog id (prices are looked up by metering)
    input_tokens: int
    max_output_tokens: int  # every choice's output together (per-choice cap x ``n``)
    bot: str = "default"
    byok: bool = False
    # > 0: when the pools cannot hold ``max_output_tokens``, grant the largest output that they can
    # hold, down to this floor, instead of refusing (answered in ``ReserveReply.max_output_tokens``)
    min_output_tokens: int = 0
    # > 0: besides this request's hold, grant the gateway a lease named ``lease_id`` of up to this
    # many more requests like it (metering may grant fewer, or none near the end of a budget)
    lease_requests: int = 0
    lease_id: str = ""
    # the gateway's previous lease of this user, given back in the same write, before the admission
    lease_return: LeaseReturn | None = None


class LeaseGrant(msgspec.Struct, omit_defaults=True):
    """A slice of every pool reserved for one gateway: it admits requests against it locally until
    it runs out, expires, or is given back. The sums are what the lease holds in the record."""

    lease_id: str
    credits: int
    input_tokens: int
    output_tokens: int
    requests: int  # request-rate allowance already counted in the user's window (0: no rate limit)
    seconds: int  # how long the gateway may admit on it: never past a window it was reserved in


class LeaseReturn(msgspec.Struct, tag="meter.lease_return.v1", **_tagged):
    """A gateway will admit no more on ``lease_id``: its unused part goes back to the pools. What
    requests drew on it stays held until their settlements (which name the lease) arrive. Applied
    once: a lease given back is marked so in the record."""

    user: str
    lease_id: str
    credits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    requests: int = 0
    # the gateway never learned what was granted (its reserve timed out): give back all of it
    whole: bool = False


class RequestRate(msgspec.Struct, omit_defaults=True):
    """The caller's request-rate window, as metering counted it (plans with ``requests_per_minute``)."""

    limit: int  # requests admitted per window
    remaining: int  # after this request
    reset: int  # whole seconds until the window ends and ``limit`` is available again (0: none open)


class ReserveReply(msgspec.Struct, tag="meter.reserve_reply.v1", **_tagged):
    admitted: bool
    pools: list[PoolState]
    hold: int = 0  # credits held for this request
    denied_pool: str | None = None  # a credit pool or quota; "requests" when the rate limit refused it
    message: str = ""
    requests: RequestRate | None = None  # None: the plan sets no request rate
    retry_after: int | None = None  # whole seconds, on a rate-limit refusal
    # the output held, all choices together: ``max_output_tokens`` asked for, or less when the pools
    # could only hold less (0 from a metering replica that predates the field: the amount asked)
    max_output_tokens: int = 0
    lease: LeaseGrant | None = None  # granted when asked for and the pools can spare it


class Settlement(msgspec.Struct, tag="meter.settle.v1", **_tagged):
    """Published to JetStream with ``Nats-Msg-Id`` = request id; applying it twice is a no-op."""

    request_id: str
    user: str
    plan: str
    model: str
    usage: Usage
    bot: str = "default"
    ok: bool = True  # False: the call failed; charge only what ``usage`` says was produced
    byok: bool = False
    at: float = 0.0
    # what earlier attempts on other models produced (a fallback to another model): each is priced
    # at its own model's price; ``model``/``usage`` are the model that served the answer
    other: list[ModelUsage] = []
    # admitted by the gateway on a lease: what it drew from it (the request's own hold). Metering
    # takes that much out of the lease (never more than is left) and charges at most that
    lease: str = ""
    held: LeaseDraw | None = None


class SettlementBundle(msgspec.Struct, tag="meter.settle_bundle.v1", **_tagged):
    """Several settlements in one JetStream message (``Nats-Msg-Id`` = the bundle's id): a gateway
    gathers what finished within a few milliseconds, so the publish and metering's acknowledgement
    are paid once per bundle, not once per request. Each settlement is still applied at most once,
    by its request id (metering's settled ids), whichever bundle or redelivery brings it."""

    bundle_id: str
    settlements: list[Settlement]


# metering applies at most this many settlements from one message; a longer bundle is refused
# whole (dead-lettered), so no publisher can make one delivery an unbounded batch
MAX_BUNDLE = 1024


def settlement_message(data: bytes) -> tuple[list[Settlement], str | None]:
    """The settlements a JANUS_SETTLE message carries, and the bundle's id (None for a settlement
    sent alone). Raises on bad data, and on a bundle over ``MAX_BUNDLE``."""
    got = settlement_message_decoder.decode(data)
    if isinstance(got, Settlement):
        return [got], None
    if len(got.settlements) > MAX_BUNDLE:
        raise msgspec.ValidationError(
            f"a bundle of {len(got.settlements)} settlements, over the {MAX_BUNDLE} one message may carry"
        )
    return got.settlements, got.bundle_id


def settlements_of(data: bytes) -> list[Settlement]:
    """The settlements a JANUS_SETTLE message carries: one, or a bundle's (raises on bad data)."""
    return settlement_message(data)[0]


class LeaseDraw(msgspec.Struct, array_like=True):
    credits: int
    input_tokens: int
    output_tokens: int


class ModelUsage(msgspec.Struct, array_like=True):
    model: str
    usage: Usage


class DeadLetter(msgspec.Struct, tag="meter.dead_letter.v1", **_tagged):
    """A settlement metering gave up on, kept in its own stream for an operator to look at and, once
    understood, apply by hand. ``data`` is the settlement message exactly as it was published."""

    reason: str  # "undecodable" | "unprovable" | "max_deliveries"
    data: bytes
    deliveries: int
    published: float  # when the settlement entered its stream
    at: float  # when metering gave up
    request_id: str = ""
    user: str = ""
    error: str = ""


class HoldRenewal(msgspec.Struct, tag="meter.renew.v1", **_tagged):
    """Sent by the gateway while a request runs longer than the renewal interval: its hold is still
    in use, so the reaper (which frees the holds of gateways that died) must leave it alone."""

    user: str
    request_id: str


class LedgerEntry(msgspec.Struct, tag="meter.ledger.v1", **_tagged):
    """One applied settlement. A settlement that came alone is appended to the ledger stream as
    itself, with ``Nats-Msg-Id`` = request id; those of a bundle go in a ``LedgerBundle``."""

    request_id: str
    user: str
    model: str
    credits: int  # what was charged (0 for BYOK and for failures that produced nothing)
    usage: Usage
    bot: str = "default"
    reserved: int = 0  # the hold it replaced (0 when the hold had been reaped, or for BYOK)
    ok: bool = True
    byok: bool = False
    at: float = 0.0  # when metering applied it


class LedgerBundle(msgspec.Struct, tag="meter.ledger_bundle.v1", **_tagged):
    """The ledger entries of one settlement bundle, appended as one message, so the ledger costs a
    message (and its acknowledgement) per bundle, not per request. ``Nats-Msg-Id`` is the bundle's
    id with its stream sequence in JANUS_SETTLE: a redelivered bundle is the same message, so its
    entries land once; a bundle is appended only when each of its settlements is applied or in the
    dead letters, so what it holds does not depend on which delivery wrote it."""

    entries: list[LedgerEntry]


def ledger_entries_of(data: bytes) -> list[LedgerEntry]:
    """The entries one JANUS_LEDGER message holds: one, or a bundle's (raises on bad data)."""
    got = ledger_message_decoder.decode(data)
    return [got] if isinstance(got, LedgerEntry) else got.entries


class UsageQuery(msgspec.Struct, tag="meter.usage_query.v1", **_tagged):
    user: str
    plan: str
    # the asking gateway's idle lease of this user, given back before the answer is made, so the
    # caller sees no credits parked in it
    lease_return: LeaseReturn | None = None


class PoolUsage(msgspec.Struct, omit_defaults=True):
    """A credit pool for /v1/usage: what is spent and held; the gateway derives what remains."""

    limit: int
    used: int = 0
    reserved: int = 0
    reset: int = 0  # unix seconds


class QuotaUsage(msgspec.Struct, omit_defaults=True):
    limit: int | None = None  # None: the plan sets no such quota
    used: int = 0
    reserved: int = 0


class TallyRow(msgspec.Struct, omit_defaults=True):
    name: str  # a model, or a bot (X-Bot-ID)
    credits: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class UsageReport(msgspec.Struct, omit_defaults=True):
    """A caller's budget as metering keeps it; the gateway renders the /v1/usage document from it."""

    plan: str
    session: PoolUsage
    weekly: PoolUsage
    month_input: QuotaUsage
    month_output: QuotaUsage
    session_active: bool = False
    month_reset: int = 0  # unix seconds
    week_start: int = 0  # unix seconds
    by_model: list[TallyRow] = []  # this week's, by name
    by_bot: list[TallyRow] = []


class DayUsage(msgspec.Struct, omit_defaults=True):
    day: int  # unix seconds // 86400 (UTC)
    by_model: list[TallyRow] = []
    by_bot: list[TallyRow] = []


class DeploymentHealth(msgspec.Struct):
    """One router's view of a deployment, for the operator view."""

    deployment: str
    provider: str
    state: str  # closed, open or half_open
    error_rate: float = 0.0
    latency_seconds: float | None = None
    consecutive_failures: int = 0


class TopSpender(msgspec.Struct):
    user: str
    plan: str
    credits: int  # spent this week
    requests: int


class UsageReply(msgspec.Struct, tag="meter.usage_reply.v1", **_tagged):
    """The answer to a usage query, typed: ``report`` (/v1/usage), ``daily`` (/v1/usage/daily),
    ``deployments`` (a router's health view) or ``top_users`` and ``week_users`` (metering's top
    spenders); the gateway renders each. ``body`` is the JSON document gateways of the previous
    release pass on or parse instead, written beside the typed answer until the next release."""

    body: bytes = b""
    pools: list[PoolState] = []  # with /v1/usage: the credit pools, for a gateway's X-RateLimit-* headers
    report: UsageReport | None = None
    daily: list[DayUsage] | None = None
    deployments: list[DeploymentHealth] | None = None
    top_users: list[TopSpender] | None = None
    week_users: int = 0


class DailyQuery(msgspec.Struct, tag="meter.daily_query.v1", **_tagged):
    user: str
    days: int = 30


class AdminQuery(msgspec.Struct, tag="meter.admin_query.v1", **_tagged):
    top: int = 10  # how many users, by credits spent this week


# -------------------------------------------------------------------------------------------- worker
class WorkRequest(msgspec.Struct, tag="work.request.v1", **_tagged):
    request_id: str
    kind: Literal["chat", "embeddings"]
    deployment: str
    provider: str
    upstream_model: str
    response_model: str  # "model" in what the client sees
    body: bytes  # the client's validated OpenAI request JSON, unchanged
    stream: bool = False
    created: int = 0  # unix seconds for "created" in chunks and responses
    user: str = ""  # for bring-your-own-key lookups; never logged
    byok: bool = False
    # the output cap per choice the gateway held for; every adapter writes it as the provider's own
    # cap (0: embeddings, or a gateway that predates the field: the body's cap stands)
    max_output_tokens: int = 0
    prompt_tokens: int = 0  # the gateway's estimate (``shared.prompt``), the fallback charge
    # the frame set the gateway reads (``FRAMES_*``); a worker never sends a newer one, so either
    # side can roll out first
    frames: int = 1
    # unix seconds after which the gateway no longer waits for the answer (0: a gateway that sends
    # it as the ``Janus-Deadline`` header, which a worker still reads)
    deadline: float = 0.0


# a gateway that predates ``WorkRequest.frames``: one event per Chunk, nothing in ``Done.chunks``
FRAMES_SINGLE = 1
# Chunk.more and Done.chunks: the events of one upstream read travel in one message
FRAMES_BATCHED = 2


class Cancel(msgspec.Struct, tag="work.cancel.v1", **_tagged):
    request_id: str


# frames a worker sends to the gateway's inbox; ``seq`` counts from 0 with no gaps. Any frame may
# be the first: a worker sends Accepted only when nothing else went out soon after it took the work
class Accepted(msgspec.Struct, tag="frame.accepted.v1", **_tagged):
    seq: int
    worker: str = ""


class Heartbeat(msgspec.Struct, tag="frame.heartbeat.v1", **_tagged):
    """Sent while the upstream is silent, so a stall means a dead worker, not a slow model."""

    seq: int


class Chunk(msgspec.Struct, tag="frame.chunk.v1", **_tagged):
    seq: int
    data: bytes  # one OpenAI ``chat.completion.chunk`` JSON, ready to go out as ``data: ...``
    # the chunks that followed ``data`` in the same upstream read, in order (``FRAMES_BATCHED``)
    more: list[bytes] = []


class Done(msgspec.Struct, tag="frame.done.v1", **_tagged):
    """Terminal success. ``body`` is the whole OpenAI response for a buffered call."""

    seq: int
    usage: Usage
    body: bytes = b""
    finish_reason: str | None = None
    upstream_seconds: float = 0.0  # time spent waiting on the provider, for the overhead metric
    deployment: str = ""  # the deployment that served it
    # a stream's last chunks, known only once the provider's stream ended (``FRAMES_BATCHED``)
    chunks: list[bytes] = []


class Failed(msgspec.Struct, tag="frame.failed.v1", **_tagged):
    """Terminal failure. ``produced`` is True once any content reached the gateway; ``usage`` is
    what the provider produced (and must be charged) up to the failure."""

    seq: int
    error: ErrorInfo
    usage: Usage = msgspec.field(default_factory=Usage)
    produced: bool = False
    upstream_seconds: float = 0.0


Frame = Accepted | Heartbeat | Chunk | Done | Failed
TERMINAL = (Done, Failed)


class HealthReport(msgspec.Struct, tag="health.report.v1", **_tagged):
    deployment: str
    provider: str
    ok: bool
    latency_s: float = 0.0
    error: str | None = None
    retryable: bool = True


class KeyRevoked(msgspec.Struct, tag="keys.revoked.v1", **_tagged):
    key_hash: str


class ErrorReply(msgspec.Struct, tag="error.v1", **_tagged):
    error: ErrorInfo

    def exception(self) -> JanusError:
        return JanusError.from_wire(self.error)


def error_reply(exc: JanusError) -> ErrorReply:
    return ErrorReply(exc.to_wire())


# ------------------------------------------------------------------------------ encoders / decoders
encoder = msgspec.msgpack.Encoder()
encode = encoder.encode

route_request_decoder = msgspec.msgpack.Decoder(RouteRequest)
route_reply_decoder = msgspec.msgpack.Decoder(RoutePlan | ErrorReply)
reserve_request_decoder = msgspec.msgpack.Decoder(ReserveRequest)
reserve_reply_decoder = msgspec.msgpack.Decoder(ReserveReply | ErrorReply)
settlement_decoder = msgspec.msgpack.Decoder(Settlement)
# what the gateway publishes on janus.settle: a settlement (all releases), or a bundle of them
settlement_message_decoder = msgspec.msgpack.Decoder(Settlement | SettlementBundle)
# what metering appends to the ledger: an entry (a settlement sent alone), or a bundle's entries
ledger_message_decoder = msgspec.msgpack.Decoder(LedgerEntry | LedgerBundle)
usage_query_decoder = msgspec.msgpack.Decoder(UsageQuery)
hold_renewal_decoder = msgspec.msgpack.Decoder(HoldRenewal)
# janus.meter.renew carries the upkeep of holds: a long request's renewal, a lease given back
upkeep_decoder = msgspec.msgpack.Decoder(HoldRenewal | LeaseReturn)
usage_reply_decoder = msgspec.msgpack.Decoder(UsageReply | ErrorReply)
daily_query_decoder = msgspec.msgpack.Decoder(DailyQuery)
admin_query_decoder = msgspec.msgpack.Decoder(AdminQuery)
work_decoder = msgspec.msgpack.Decoder(WorkRequest)


class WorkId(msgspec.Struct):
    """Only the request id of a work message: read when the whole does not decode, to log it."""

    request_id: str = ""


work_id_decoder = msgspec.msgpack.Decoder(WorkId)
cancel_decoder = msgspec.msgpack.Decoder(Cancel)
frame_decoder = msgspec.msgpack.Decoder(Frame)
health_decoder = msgspec.msgpack.Decoder(HealthReport)
key_revoked_decoder = msgspec.msgpack.Decoder(KeyRevoked)
