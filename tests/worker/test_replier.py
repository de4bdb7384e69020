"""The Replier keeps frame numbers gapless when the bus refuses a frame as too large, so the small
Failed frame that replaces it takes its number and the gateway sees no hole in the sequence."""

from __future__ import annotations

import pytest

from services.worker.call import Replier
from shared.contract import Chunk, Failed, frame_decoder
from shared.errors import ErrorInfo, PayloadTooLarge

LIMIT = 1000


class SmallBus:
    """Publishes into a list and refuses what nats-py would refuse over ``max_payload``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def publish(self, subject: str, data: bytes) -> None:
        if len(data) > LIMIT:
            raise PayloadTooLarge(f"a message of {len(data)} bytes is too large", code="message_too_large")
        self.sent.append(data)


async def test_a_refused_frame_gives_its_number_back() -> None:
    bus = SmallBus()
    r = Replier(bus, "inbox")  # type: ignore[arg-type]
    await r.send(Chunk(seq=r.next(), data=b"small"))
    with pytest.raises(PayloadTooLarge):
        await r.send(Chunk(seq=r.next(), data=b"x" * (2 * LIMIT)))
    await r.send(Failed(seq=r.next(), error=ErrorInfo(kind="PayloadTooLarge", message="too large")))
    assert [frame_decoder.decode(m).seq for m in bus.sent] == [0, 1]
