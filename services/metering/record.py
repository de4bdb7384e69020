"""One user's budget state: a single msgpack record in the ``janus_budget`` KV bucket.

Everything admission and settlement read or write for a user sits in this one record, so a change
that touches several pools (session, week, month, request rate, holds, idempotency list) is one
compare-and-set write: atomic across pools and safe with any number of metering replicas.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from shared.errors import ServiceUnavailable
from shared.subjects import kv_key

DIGEST = 8  # bytes of a settled request id's digest
INDEX_AFTER_SCANS = 16  # lookups by scan on one decoded record before its ids are indexed
# The record layout's version, stored in every record written. A replica never overwrites a record
# of a newer layout than its own: decoding drops the fields it does not know, so during a rolling
# upgrade an older replica's write would silently lose what a newer one added (holds, settled ids:
# money). It answers 503 instead, and the retry or the redelivered settlement reaches an upgraded
# replica. Reading such a record is harmless and stays allowed. Raise this with every change of
# the layout that an older replica would get wrong.
# 2: settled ids carry their publish time and the record a floor (idempotency by time)
# 3: a hold may be a gateway's lease (requests drawn on it are settled against it)
SCHEMA = 3


class Bounds(msgspec.Struct, frozen=True):
    """What keeps one user's record small whatever the user sends.

    Settled request ids are remembered ``horizon`` seconds after their publication, which must
    outlast every redelivery JetStream makes while metering runs (``max_deliver`` times
    ``ack_wait``, with room). ``ceiling`` only guards the size against a user settling faster than
    any plan allows; ids it pushes out early raise the floor as the horizon does. ``bots`` distinct
    bot ids are tallied per week; the rest are added up under ``OTHER_BOT``."""

    horizon: int = 600
    ceiling: int = 40_000
    bots: int = 100


OTHER_BOT = "other"
_PLAIN_BOT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def bot_key(bot: str) -> str:
    """Where a bot's tally is kept: its name when made of plain characters, else a short digest
    (``#`` never appears in a plain name, so the two forms cannot collide). The tally keeps the
    name a digest stands for, so /v1/usage shows what the caller sent."""
    if _PLAIN_BOT.match(bot):
        return bot
    return "#" + hashlib.blake2b(bot.encode(), digest_size=12).hexdigest()


def user_key(user: str) -> str:
    return kv_key("b", user)


class Hold(msgspec.Struct, array_like=True, omit_defaults=True):
    """An open reservation: the worst-case cost held until its settlement (or the reaper).

    A lease (``lease``) is a hold a gateway admits many requests against: its sums shrink as their
    settlements draw on it, and go when it has been given back (``returned``) and nothing is left."""

    credits: int
    input_tokens: int
    output_tokens: int
    model: str
    bot: str
    at: int  # unix seconds when it was made: decides which windows its settlement lands in
    seen: int = 0  # unix seconds of its gateway's last renewal: a hold in use is never reaped
    lease: bool = False
    requests: int = 0  # a lease's request-rate allowance, counted in the window at its grant
    rate_start: int = 0  # that window's start: the unused allowance goes back only into it
    returned: bool = False  # its gateway admits no more on it

    def last_sign_of_life(self) -> int:
        return max(self.at, self.seen)


class Tally(msgspec.Struct, array_like=True, omit_defaults=True):
    credits: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    name: str = ""  # the bot's own name when it is kept under a digest (``bot_key``)

    def add(self, credits: int, input_tokens: int, output_tokens: int) -> None:
        self.credits += credits
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


class Settled(msgspec.Struct, array_like=True):
    """The former form of a settled request id: still read from records written before the compact
    set, and moved into it at their next settlement."""

    request_id: str
    credits: int


# dict=True: admission keeps private running sums on a decoded record (never encoded)
class Record(msgspec.Struct, omit_defaults=True, dict=True):
    user: str
    plan: str = ""
    session_start: int = 0  # 0: no open session
    session_used: int = 0
    week_start: int = 0
    week_used: int = 0
    week_by_model: dict[str, Tally] = {}
    week_by_bot: dict[str, Tally] = {}
    month_start: int = 0
    month_input_tokens: int = 0
    month_output_tokens: int = 0
    holds: dict[str, Hold] = {}
    rate_start: int = 0  # the open request-rate window's start (0: none open)
    rate_count: int = 0  # requests admitted in it
    settled: list[Settled] = []  # the former form, only in records not settled since the change
    # The recently settled request ids, oldest first, bounded by time: what makes a settlement idempotent
    # once JetStream has stopped de-duplicating it (a redelivery after a crash between the KV write
    # and the ack is the same stored message, which Nats-Msg-Id does not filter), and what answers a
    # retried reserve of a request already settled. Each id is an 8-byte digest in one bytes field,
    # with its cost at the same index (a redelivery re-publishes the same ledger entry): about
    # 11 bytes an id instead of 35, and one memcpy to decode instead of a string each.
    settled_ids: bytes = b""  # a bytearray once a decoded copy adds to it (the same msgpack bin)
    settled_costs: list[int] = []
    # Idempotency by time: the publish second of each settled id (same index), and the floor at or
    # below which an id may have been forgotten. A redelivered settlement published after the floor
    # is decided by the set; one published at or before it cannot be, and is dead-lettered instead
    # of risking a second charge (a first delivery was never applied, so it is always safe).
    settled_at: list[int] = []
    settled_floor: int = 0
    schema: int = 0  # the SCHEMA of the replica that last wrote it (0: written before it existed)

    def settled_cost(self, request_id: str) -> int | None:
        if self.settled_ids:
            i = self._position(digest(request_id))
            if i >= 0:
                return self.settled_costs[i]
        for s in reversed(self.settled):
            if s.request_id == request_id:
                return s.credits
        return None

    # A busy user's record holds tens of thousands of settled ids, and every settlement looks its own
    # id up and adds it. Both stay O(1) on the decoded copy the store keeps between writes: the
    # lists grow in place, the expired front is cut in slices rather than one id at a time, and
    # after a few lookups by scan an index of the digests is built (a copy decoded for one
    # settlement, after a conflict, never pays for it). Private state in ``__dict__``, never encoded:
    #   _index   digest -> position + _gone;  _gone   ids cut from the front since the index was built;
    #   _scans   lookups answered by a scan of this copy
    def _position(self, d: bytes) -> int:
        state = self.__dict__
        index: dict[bytes, int] | None = state.get("_index")
        if index is None:
            scans = state.get("_scans", 0) + 1
            if scans < INDEX_AFTER_SCANS:
                state["_scans"] = scans
                return _find(self.settled_ids, d)
            raw = bytes(self.settled_ids)
            index = state["_index"] = {raw[i : i + DIGEST]: i // DIGEST for i in range(0, len(raw), DIGEST)}
            state["_gone"] = 0
        at = index.get(d)
        return -1 if at is None else at - state["_gone"]

    def remember_settled(
        self, request_id: str, credits: int, published: int, now: int, memory: Bounds
    ) -> None:
        """Add a settled id; forget the ones published more than ``memory.horizon`` seconds ago.

        Forgetting happens in slices of at least 1/16 of the ids (so a busy record is not moved in
        memory at every settlement): an id may be kept a little past the horizon, never less, and
        ``settled_floor`` rises only over what was actually forgotten. Likewise the ceiling may be
        passed by 1/16 of itself before the oldest go."""
        state = self.__dict__
        if type(self.settled_ids) is not bytearray:
            # once per decoded copy, then in place; encoded as the same msgpack bin as bytes
            self.settled_ids = bytearray(self.settled_ids)  # type: ignore[assignment]
        if self.settled:
            # the former list moves over once; its order (oldest first) is kept
            self.settled_ids += b"".join(digest(s.request_id) for s in self.settled)
            self.settled_costs = [*self.settled_costs, *(s.credits for s in self.settled)]
            self.settled = []
            state.pop("_index", None)
        ids = self.settled_ids
        assert isinstance(ids, bytearray)
        costs, times = self.settled_costs, self.settled_at
        if len(times) < len(costs):
            # ids from a record of layout 1 have no time: they count as published now
            times += [now] * (len(costs) - len(times))
        d = digest(request_id)
        index: dict[bytes, int] | None = state.get("_index")
        if index is not None:
            index[d] = len(costs) + state["_gone"]
        ids += d
        costs.append(credits)
        times.append(published)
        slack = len(times) // 16
        expired = max(self.settled_floor, now - memory.horizon)
        # ids are settled in about the order they were published: the expired prefix is found in
        # O(expired); a straggler left behind is harmless and goes when it reaches the front
        drop = 0
        while drop < len(times) and times[drop] <= expired:
            drop += 1
        over = len(times) - drop - memory.ceiling
        if drop <= slack and over <= memory.ceiling // 16:
            return
        floor = expired if drop else self.settled_floor
        if over > 0:
            floor = max(floor, *times[drop : drop + over])
            drop += over
        if index is not None:
            gone = state["_gone"]
            for k in range(drop):
                old = bytes(ids[k * DIGEST : (k + 1) * DIGEST])
                if index.get(old) == gone + k:
                    del index[old]
            state["_gone"] = gone + drop
        del ids[: drop * DIGEST], costs[:drop], times[:drop]
        self.settled_floor = floor

    @property
    def settled_count(self) -> int:
        return len(self.settled_costs) + len(self.settled)


def digest(request_id: str) -> bytes:
    """A request id as 8 bytes. A different id matches only by a 64-bit collision: with 10,000 ids
    remembered for a user, about one chance in 2e15 per settlement of treating a new one as a
    duplicate."""
    return hashlib.blake2b(request_id.encode(), digest_size=DIGEST).digest()


def _find(ids: bytes, d: bytes) -> int:
    """The index of digest ``d`` in ``ids`` (newest first, as a redelivery is almost always of something
    settled moments ago), or -1. A match must start on a digest boundary."""
    end = len(ids)
    while True:
        at = ids.rfind(d, 0, end)
        if at < 0:
            return -1
        if at % DIGEST == 0:
            return at // DIGEST
        end = at + DIGEST - 1  # a match straddling two digests: look further back


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(rec: Record) -> bytes:
    if rec.schema > SCHEMA:
        raise ServiceUnavailable(
            f"this budget record was written by a newer metering (layout {rec.schema}, this replica "
            f"knows {SCHEMA}); try again",
            code="metering_version",
        )
    rec.schema = SCHEMA
    if not rec.settled_ids:
        rec.settled_ids = b""  # an empty bytearray is not the default: it would be written
    return _encoder.encode(rec)


def decode_record(data: bytes) -> Record:
    return _decoder.decode(data)
