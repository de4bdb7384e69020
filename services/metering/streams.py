"""The JetStream streams metering reads and writes, declared in one place.

The gateway may call ``ensure_settlement_stream`` at startup too (so its first settlement never
meets a missing stream); both sides then declare the same configuration.
"""

from __future__ import annotations

from shared import subjects
from shared.bus import Bus

# Settlements are de-duplicated by request id for this long: far longer than any gateway retry.
SETTLE_DUPLICATE_WINDOW = 20 * 60.0
# A ledger entry is re-published when a settlement is redelivered after a crash between the
# ledger write and the ack; the window must outlast any plausible metering outage.
LEDGER_DUPLICATE_WINDOW = 2 * 3600.0
SETTLE_DURABLE = "metering"


async def ensure_settlement_stream(bus: Bus, replicas: int = 1) -> None:
    # work-queue retention: an acknowledged settlement is gone; its record lives on in the ledger
    await bus.ensure_stream(subjects.SETTLE_STREAM, [subjects.SETTLE],
                            duplicate_window=SETTLE_DUPLICATE_WINDOW, replicas=replicas, work_queue=True)


async def ensure_ledger_stream(bus: Bus, replicas: int = 1) -> None:
    await bus.ensure_stream(subjects.LEDGER_STREAM, [subjects.LEDGER],
                            duplicate_window=LEDGER_DUPLICATE_WINDOW, replicas=replicas)
