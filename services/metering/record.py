"""One user's budget state: a single msgpack record in the ``janus_budget`` KV bucket.

Everything admission and settlement read or write for a user sits in this one record, so a change
that touches several pools (session, week, month, holds, idempotency list) is one compare-and-set
write: atomic across pools and safe with any number of metering replicas.
"""

from __future__ import annotations

import msgspec

from shared.subjects import kv_key


def user_key(user: str) -> str:
    return kv_key("b", user)


class Hold(msgspec.Struct, array_like=True):
    """An open reservation: the worst-case cost held until its settlement (or the reaper)."""

    credits: int
    input_tokens: int
    output_tokens: int
    model: str
    bot: str
    at: int  # unix seconds when it was made: decides which windows its settlement lands in


class Tally(msgspec.Struct, array_like=True):
    credits: int = 0
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, credits: int, input_tokens: int, output_tokens: int) -> None:
        self.credits += credits
        self.requests += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens


class Settled(msgspec.Struct, array_like=True):
    """A settled request id and what it cost, kept so a redelivery re-publishes the same ledger entry."""

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
    settled: list[Settled] = []  # most recent last, bounded

    def settled_cost(self, request_id: str) -> int | None:
        # newest first: a redelivery is almost always of something settled moments ago
        for s in reversed(self.settled):
            if s.request_id == request_id:
                return s.credits
        return None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(rec: Record) -> bytes:
    return _encoder.encode(rec)


def decode_record(data: bytes) -> Record:
    return _decoder.decode(data)
