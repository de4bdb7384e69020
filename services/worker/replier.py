"""Frames to one gateway inbox: numbered, sized to the bus, and the timer that sends ``Accepted``
and heartbeats only when nothing else went out.

    [Accepted]  [Heartbeat | Chunk]*  Done | Failed

Any frame may be the first: ``Accepted`` (the news that a worker took the work, which the gateway's
first-frame timeout waits for) goes out only if nothing else did within the accept delay, so a quick
answer is one frame. Chunks sent together share frames up to one bus message each; a body or a
stream's last chunks too large for the terminal frame go ahead of it in Chunk frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from shared.bus import Bus
from shared.contract import Accepted, Chunk, Done, Failed, Frame, Heartbeat, encode
from shared.errors import PayloadTooLarge

# room left in a bus message around a slice of a body: the frame's other fields and the headers
FRAME_MARGIN = 8192


class Replier:
    """Frames to one inbox, numbered from 0 with no gaps.

    ``next()`` and the publish that follows run without a suspension point in between (nats-py
    queues the bytes synchronously), so frames leave in ``seq`` order even with a heartbeat sent
    alongside the call.

    Heartbeats are a loop timer, not a task per call: the timer only checks the time of the last
    frame, and a task is started just for a frame that is actually due. The first one due, when
    nothing has gone out yet, is the ``Accepted`` that tells the gateway a worker took the work.
    """

    __slots__ = ("_beat", "_bus", "_interval", "_subject", "_timer", "_worker", "last_sent", "seq")

    def __init__(self, bus: Bus, subject: str) -> None:
        self._bus = bus
        self._subject = subject
        self.seq = 0
        self.last_sent = time.monotonic()
        self._interval = 0.0
        self._worker = ""
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None

    def next(self) -> int:
        s = self.seq
        self.seq = s + 1
        return s

    @property
    def step(self) -> int:
        """The most payload one frame carries, leaving room for its other fields and the headers."""
        limit = self._bus.max_payload
        return max(limit - FRAME_MARGIN, limit // 2)

    async def send(self, frame: Frame) -> None:
        self.last_sent = time.monotonic()
        try:
            await self._bus.publish(self._subject, encode(frame))
        except PayloadTooLarge:
            # the frame never left: give its number back so the next frame (the small Failed that
            # replaces it) keeps the sequence gapless
            if frame.seq == self.seq - 1:
                self.seq = frame.seq
            raise

    async def send_chunks(self, chunks: list[bytes]) -> None:
        """``chunks`` (at least one) in as few frames as one bus message each allows, in order."""
        if len(chunks) == 1:
            await self.send(Chunk(seq=self.next(), data=chunks[0]))
            return
        step, start, size = self.step, 0, 0
        for i, data in enumerate(chunks):
            if i > start and size + len(data) > step:
                await self.send(Chunk(seq=self.next(), data=chunks[start], more=chunks[start + 1 : i]))
                start, size = i, 0
            size += len(data)
        await self.send(Chunk(seq=self.next(), data=chunks[start], more=chunks[start + 1 :]))

    async def finish(self, terminal: Done | Failed) -> None:
        """Number and send the terminal frame. A buffered body larger than one bus message (a big
        embeddings batch) goes ahead of it in Chunk frames, consecutive slices the gateway joins in
        order; the Done carries the last slice. A stream's last chunks too large to ride in the
        Done go ahead of it the same way."""
        step = self.step
        if isinstance(terminal, Done):
            if terminal.chunks and sum(map(len, terminal.chunks)) > step:
                await self.send_chunks(terminal.chunks)
                terminal.chunks = []
            if len(terminal.body) > step:
                body = terminal.body
                last = (len(body) - 1) // step * step
                for at in range(0, last, step):
                    await self.send(Chunk(seq=self.next(), data=body[at : at + step]))
                terminal.body = body[last:]
        terminal.seq = self.next()
        await self.send(terminal)

    def start_heartbeats(self, interval: float, accept_within: float = 0.0, worker: str = "") -> None:
        """An ``Accepted`` once nothing was sent for ``accept_within`` since the work arrived, then a
        Heartbeat whenever nothing was sent for ``interval``, until ``stop_heartbeats``."""
        self._interval = interval
        self._worker = worker
        first = min(accept_within, interval) if accept_within > 0 else interval
        self._timer = asyncio.get_running_loop().call_later(first, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.last_sent + self._interval - time.monotonic()
        if (wait <= 0 or not self.seq) and (self._beat is None or self._beat.done()):
            self._beat = loop.create_task(self._heartbeat())
            wait = self._interval
        self._timer = loop.call_later(max(wait, 0.001), self._tick)

    async def _heartbeat(self) -> None:
        if self.seq and time.monotonic() - self.last_sent < self._interval:
            return  # a frame went out since the timer fired: the gateway has heard from us
        frame = Heartbeat(seq=self.next()) if self.seq else Accepted(seq=self.next(), worker=self._worker)
        # a bus that cannot take a heartbeat fails the terminal frame too, and that one is reported
        with contextlib.suppress(Exception):
            await self.send(frame)

    async def stop_heartbeats(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        beat, self._beat = self._beat, None
        if beat is not None and not beat.done():
            beat.cancel()
        if beat is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
