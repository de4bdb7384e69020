"""Every NATS subject and queue group Janus uses, built in one place.

Tokens run from general to specific with identifiers last; no ``$`` prefix and no version token
(versions live in the message type tag). Variable tokens are validated so that a provider or user id
can never inject a wildcard or an extra token.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "janus"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def token(value: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


# request/reply, served by queue groups
ROUTE = f"{PREFIX}.route.plan"
ROUTE_HEALTH = f"{PREFIX}.route.health"  # one router's view of every deployment (operator view)
METER_RESERVE = f"{PREFIX}.meter.reserve"
METER_USAGE = f"{PREFIX}.meter.usage"
METER_DAILY = f"{PREFIX}.meter.daily"
METER_RENEW = f"{PREFIX}.meter.renew"  # fire and forget: a lost renewal is followed by the next
METER_ADMIN = f"{PREFIX}.meter.admin"

# JetStream: settlements (de-duplicated by request id) and the usage ledger
SETTLE_STREAM = "JANUS_SETTLE"
SETTLE = f"{PREFIX}.meter.settle"
# metering's durable consumer of it (one, shared by every replica: the work queue admits no second)
SETTLE_DURABLE = "metering"
# settlements metering gave up on (kept for an operator, never applied automatically)
SETTLE_DEAD_STREAM = "JANUS_SETTLE_DEAD"
SETTLE_DEAD = f"{PREFIX}.meter.dead"
LEDGER_STREAM = "JANUS_LEDGER"
LEDGER = f"{PREFIX}.ledger.entry"

# provider work, one queue group per provider so each pool scales on its own
WORK_PREFIX = f"{PREFIX}.work"


def work(provider: str) -> str:
    if provider in RESERVED_PROVIDER_IDS:
        raise ValueError(f"{provider!r} names a subject of its own, not a provider pool")
    return f"{WORK_PREFIX}.{token(provider)}"


def provider_id_problem(provider: str) -> str:
    """Why ``provider`` cannot name a worker pool ('' when it can)."""
    if provider in RESERVED_PROVIDER_IDS:
        return f"{provider!r} is reserved: {WORK_PREFIX}.{provider} is not a provider pool's subject"
    if not _TOKEN.match(provider):
        return f"{provider!r} is not a subject token (letters, digits, '-' and '_', at most 128)"
    return ""


def work_queue(provider: str) -> str:
    # queue-group names carry no dots
    return f"worker_{token(provider)}"


# broadcast (no queue group): every worker hears a cancel and checks whether it owns the request.
# It shares the work namespace, so a provider may not be called "cancel": its pool's work would go
# to every worker as a cancel, and its cancels would be taken for work. Moving cancel out of the
# namespace would need a release in which workers hear both subjects and a change to both roles'
# NATS permissions; refusing the id in the catalog costs nothing.
WORK_CANCEL = f"{PREFIX}.work.cancel"
RESERVED_PROVIDER_IDS = frozenset({WORK_CANCEL.rpartition(".")[2]})
# workers report deployment health; every router consumes it
HEALTH = f"{PREFIX}.health.report"
# key revocations, broadcast to every gateway
KEYS_REVOKED = f"{PREFIX}.keys.revoked"

ROUTER_QUEUE = "router"
METERING_QUEUE = "metering"

# KV buckets
BUDGET_BUCKET = "janus_budget"
KEYS_BUCKET = "janus_keys"
BYOK_BUCKET = "janus_byok"

# Replies (request/reply, streamed frames, JetStream acknowledgements) arrive under the identity's own
# inbox prefix; the server lets only that identity subscribe there (config/nats-permissions.yaml)
INBOX_ROOT = "_INBOX"


def inbox_prefix(identity: str) -> str:
    return f"{INBOX_ROOT}.{token(identity)}"


# NATS headers a gateway of an earlier release put on a work message; the work now carries both as
# fields (``WorkRequest.request_id``, ``.deadline``), so a worker parses no headers. Still read.
H_REQUEST_ID = "Janus-Request-Id"
H_DEADLINE = "Janus-Deadline"


# KV keys allow [-/_=.a-zA-Z0-9]; '.' and '/' are left out of the literal form so a user id can never
# look like a hashed one or add a token to the key.
_PLAIN = re.compile(r"^[-_=a-zA-Z0-9]{1,96}$")


def kv_key(kind: str, ident: str) -> str:
    """A KV key for ``ident``: readable when it is made of safe characters, hashed when not.

    The two forms carry different markers (``u.`` and ``h.``), so a literal id can never collide
    with the hash of another one.
    """
    if _PLAIN.match(ident):
        return f"{kind}.u.{ident}"
    return f"{kind}.h.{hashlib.sha256(ident.encode()).hexdigest()}"
