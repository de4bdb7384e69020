"""The Replier numbers frames without gaps: a body larger than one bus message goes out as Chunk
slices ahead of the Done, and when the bus refuses a frame as too large, the small Failed frame
that replaces it takes its number, so the gateway sees no hole in the sequence."""

from __future__ import annotations

import pytest

from services.worker.call import FRAME_MARGIN, Replier
from shared.contract import Chunk, Done, Failed, Usage, frame_decoder
from shared.errors import ErrorInfo, PayloadTooLarge

LIMIT = 3 * FRAME_MARGIN
STEP = LIMIT - FRAME_MARGIN  # the largest slice of a body one message carries


class SmallBus:
    """Publishes into a list and refuses what nats-py would refuse over ``max_payload``."""

    max_payload = LIMIT

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


@pytest.mark.parametrize("size", [0, STEP - 1, STEP, STEP + 1, 2 * STEP, 2 * STEP + 500, 5 * STEP + 3])
async def test_a_body_over_one_message_goes_in_slices_ahead_of_the_done(size: int) -> None:
    bus = SmallBus()
    r = Replier(bus, "inbox")  # type: ignore[arg-type]
    await r.send(Chunk(seq=r.next(), data=b"before"))
    body = bytes(i % 251 for i in range(size))
    await r.finish(Done(seq=-1, usage=Usage(prompt_tokens=7), body=body))
    frames = [frame_decoder.decode(m) for m in bus.sent]
    assert [f.seq for f in frames] == list(range(len(frames)))
    *slices, done = frames[1:]
    assert isinstance(done, Done) and done.usage.prompt_tokens == 7
    assert all(isinstance(f, Chunk) and 0 < len(f.data) <= STEP for f in slices)
    assert len(slices) == max(0, (size - 1) // STEP)  # only what does not fit in the Done
    assert b"".join(f.data for f in slices) + done.body == body
