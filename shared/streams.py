"""The JetStream streams Janus keeps, declared in one place: what every writer relies on.

A gateway publishes settlements de-duplicated by request id (a bundle of them by the bundle's id),
metering appends ledger entries the same way (a bundle's entries as one message, by the bundle's
id and stream sequence) and dead-letters what it gave up on; the duplicate windows below are what
makes a retry or a redelivery count once, so they are part of the contract, not metering's private
choice. Metering declares the streams at start-up, ``janus restore`` before the services start;
both get the same configuration from here.
"""

from __future__ import annotations

from shared import subjects
from shared.bus import Bus

# Settlements are de-duplicated by request id for this long: far longer than any gateway retry.
SETTLE_DUPLICATE_WINDOW = 20 * 60.0
# A ledger message is re-published when its settlement message is redelivered after a crash
# between the ledger write and the ack; the window must outlast any plausible metering outage.
LEDGER_DUPLICATE_WINDOW = 2 * 3600.0
# Dead letters wait for an operator this long: the alert fires at once, a month is for holidays.
DEAD_LETTER_MAX_AGE = 30 * 86400.0


async def ensure_settlement_stream(bus: Bus, replicas: int = 1) -> None:
    # work-queue retention: an acknowledged settlement is gone; its record lives on in the ledger
    await bus.ensure_stream(
        subjects.SETTLE_STREAM,
        [subjects.SETTLE],
        duplicate_window=SETTLE_DUPLICATE_WINDOW,
        replicas=replicas,
        work_queue=True,
    )


async def ensure_ledger_stream(
    bus: Bus, replicas: int = 1, *, max_age: float = 0.0, max_bytes: int = 0
) -> None:
    """The ledger keeps entries for ``max_age`` seconds and at most ``max_bytes`` (0: no limit), the
    oldest dropped first, so it can never fill JetStream's store; an operator who set tighter limits
    on the stream keeps them (``Bus.ensure_stream``). Archive it before entries age out."""
    await bus.ensure_stream(
        subjects.LEDGER_STREAM,
        [subjects.LEDGER],
        duplicate_window=LEDGER_DUPLICATE_WINDOW,
        replicas=replicas,
        max_age=max_age or None,
        max_bytes=max_bytes or None,
        allow_direct=True,  # metering's daily history reads it in ranges (read_ledger)
    )


async def ensure_dead_letter_stream(bus: Bus, replicas: int = 1) -> None:
    await bus.ensure_stream(
        subjects.SETTLE_DEAD_STREAM,
        [subjects.SETTLE_DEAD],
        duplicate_window=LEDGER_DUPLICATE_WINDOW,
        replicas=replicas,
        max_age=DEAD_LETTER_MAX_AGE,
    )
