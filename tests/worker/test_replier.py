"""The Replier numbers frames without gaps: a body larger than one bus message goes out as Chunk
slices ahead of the Done, and when the bus refuses a frame as too large, the small Failed frame
that replaces it takes its number, so the gateway sees no hole in the sequence. Chunks sent
together share frames up to one message's size, and Accepted goes out only when nothing else did."""

from __future__ import annotations

import itertools

import pytest

from services.worker.replier import FRAME_MARGIN, Replier
from shared.contract import Accepted, Chunk, Done, Failed, Heartbeat, Usage, frame_decoder
from shared.errors import ErrorInfo, PayloadTooLarge
from tests.eventually import eventually

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
    await r.send(Failed(seq=r.next(), error=ErrorInfo(kind="payload_too_large", message="too large")))
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


@pytest.mark.parametrize("sizes", [[5], [5, 7, 9], [STEP // 2, STEP // 2, STEP // 2], [STEP, 1, STEP, 1]])
async def test_chunks_sent_together_share_frames_up_to_one_message(sizes: list[int]) -> None:
    bus = SmallBus()
    r = Replier(bus, "inbox")  # type: ignore[arg-type]
    chunks = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
    await r.send_chunks(chunks)
    frames = [frame_decoder.decode(m) for m in bus.sent]
    assert all(isinstance(f, Chunk) for f in frames)
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert [c for f in frames for c in (f.data, *f.more)] == chunks
    # as few frames as the size allows: two neighbours never fit in one message together
    for a, b in itertools.pairwise(frames):
        assert sum(map(len, (a.data, *a.more))) + len(b.data) > STEP
    if sum(sizes) <= STEP:
        assert len(frames) == 1


async def test_a_streams_last_chunks_too_large_for_the_done_go_ahead_of_it() -> None:
    bus = SmallBus()
    r = Replier(bus, "inbox")  # type: ignore[arg-type]
    small = [b"s" * 10, b"t" * 10]
    await r.finish(Done(seq=-1, usage=Usage(completion_tokens=2), chunks=list(small)))
    (done,) = [frame_decoder.decode(m) for m in bus.sent]
    assert done.chunks == small
    bus.sent.clear()
    big = [b"x" * (STEP // 2 + 1), b"y" * (STEP // 2 + 1)]
    await r.finish(Done(seq=-1, usage=Usage(completion_tokens=2), chunks=list(big)))
    frames = [frame_decoder.decode(m) for m in bus.sent]
    assert isinstance(frames[-1], Done) and not frames[-1].chunks
    assert [c for f in frames[:-1] for c in (f.data, *f.more)] == big
    assert [f.seq for f in frames] == [1, 2, 3]


async def test_accepted_goes_out_only_when_nothing_else_did() -> None:
    quiet = SmallBus()
    r = Replier(quiet, "inbox")  # type: ignore[arg-type]
    r.start_heartbeats(interval=0.05, accept_within=0.01, worker="w-7")
    await eventually(lambda: len(quiet.sent) >= 2, 10, "an Accepted and a heartbeat")
    await r.stop_heartbeats()
    first, second = (frame_decoder.decode(m) for m in quiet.sent[:2])
    assert isinstance(first, Accepted) and first.seq == 0 and first.worker == "w-7"
    assert isinstance(second, Heartbeat) and second.seq == 1

    busy = SmallBus()
    r = Replier(busy, "inbox")  # type: ignore[arg-type]
    r.start_heartbeats(interval=0.05, accept_within=0.01, worker="w-7")
    await r.send(Chunk(seq=r.next(), data=b"first token"))
    # the first timer frame is the positive marker: it is a heartbeat, never an Accepted after a chunk
    await eventually(lambda: len(busy.sent) >= 2, 10, "a heartbeat after the chunk")
    await r.stop_heartbeats()
    frames = [frame_decoder.decode(m) for m in busy.sent]
    assert isinstance(frames[0], Chunk) and all(isinstance(f, Heartbeat) for f in frames[1:])
