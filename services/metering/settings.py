"""Metering's settings, each read from ``JANUS_<NAME>`` (see ``shared.settings``)."""

from __future__ import annotations

from shared.settings import CommonSettings


class MeteringSettings(CommonSettings, kw_only=True):
    reap_interval_seconds: float = 60.0
    settle_ack_wait_seconds: float = 30.0
    # deliveries of one settlement before it is dead-lettered: a settlement that fails this often
    # (a record that cannot be written, a bug) must not loop for ever, and the bound is what makes
    # the idempotency horizon below finite while metering runs
    settle_max_deliver: int = 10
    settle_batch: int = 128
    # after a batch that did not fill, the next fetch waits this long, so that below full batches
    # the settlements of the last 100 ms share one fetch, one budget write per user and one wake-up
    # of metering and JetStream (each batch costs about the same whatever it carries); a settlement
    # (and so its hold) is applied at most this much later. A full batch is followed by the next
    # fetch at once. 0: fetch as soon as a batch is done
    settle_linger_ms: float = 100.0
    # ... and longer after a batch whose budget writes were large: each write stores a user's whole
    # record, settled ids included (tens of KiB for a user settling a few requests a second, up to
    # 625 KiB at the ceiling), so the linger grows to what those bytes take at this rate, up to
    # settle_linger_max_ms, and a busy user's record is rewritten a few times a second instead of
    # at every batch. Settlements wait in the stream meanwhile, their holds still in place.
    # 0: the linger stays settle_linger_ms
    settle_write_bytes_per_second: int = 4 * 1024 * 1024
    settle_linger_max_ms: float = 200.0
    # settled request ids are remembered this long after publication: longer than max_deliver x
    # ack_wait, so every redelivery while metering runs is recognised (by time, not by a count)
    settled_horizon_seconds: int = 900
    settled_ceiling: int = 40_000  # ids per user at most, a guard on the record's size only
    bots_per_week: int = 100  # distinct X-Bot-ID tallies per user per week; the rest fold into "other"
    concurrency: int = 512
    # credit leases (services/metering/leases.py): the most of what each pool has left one lease may
    # take (0: no leases), the longest a gateway may admit on one, and how long a lease with no sign
    # of life (grant, settlement, renewal) stays before the reaper frees it (its gateway died)
    lease_fraction: float = 0.25
    lease_seconds: int = 30
    lease_ttl_seconds: float = 300.0
    rate_window_seconds: int = 60  # the window requests_per_minute counts in (shorter only in tests)
    # the ledger stream's retention: entries older than this, or past this size, are dropped oldest
    # first (0: no limit). max_bytes must fit in the JetStream store (max_file_store) with the
    # budget buckets beside it: each overlay sets it for its volume
    ledger_max_age_seconds: int = 90 * 86400
    ledger_max_bytes: int = 256 * 1024 * 1024
    # the settlements of a gateway's bundle go to the ledger as one message (contract.LedgerBundle),
    # not one each; metering of a release before this cannot read such a message, so while one
    # still runs (a rollout from it, a rollback to it) set this false: README "Upgrade order"
    ledger_bundles: bool = True
    # the daily history reads the ledger this often, this many messages at a time (more at once
    # while it is behind): it lags the ledger by about the interval
    daily_interval_seconds: float = 2.0
    daily_batch: int = 512
