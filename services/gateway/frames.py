"""Reading one worker's reply: frames numbered from 0 with no gaps, a first-frame timeout, a stall
timeout between frames, and the NATS no-responders status when no worker listens.

Every way a reply can go wrong becomes an error of the shared tree here, so the dispatcher only
decides what to do with it (fall back, end the stream, answer the client).
"""

from __future__ import annotations

import msgspec

from shared import contract
from shared.bus import OVERFLOW, Bus, Inbox
from shared.errors import JanusError, ServiceUnavailable, UpstreamError, UpstreamTimeout

# queued in an inbox (``Inbox.interrupt``) to wake its reader when the gateway must end the request now
SHUTDOWN = object()
REPLY_OVERFLOW = "reply_too_large"


class FrameReader:
    __slots__ = ("box", "expect", "first_timeout", "provider", "stall_timeout")

    def __init__(self, box: Inbox, provider: str, first_timeout: float, stall_timeout: float) -> None:
        self.box = box
        self.provider = provider
        self.first_timeout = first_timeout
        self.stall_timeout = stall_timeout
        self.expect = 0  # the next seq; > 0 once a worker has taken the work (any first frame says so)

    def ready(self) -> bool:
        """A frame (or the gateway's stop signal) has arrived and ``next`` would not wait."""
        return self.box.ready()

    async def next(self, within: float | None = None) -> contract.Frame:
        first = self.expect == 0
        wait = within if within is not None else self.first_timeout if first else self.stall_timeout
        try:
            msg = await self.box.next(wait)
        except UpstreamTimeout:
            raise self._timed_out(first) from None
        if msg is SHUTDOWN:
            raise ServiceUnavailable("the gateway is shutting down", code="shutting_down")
        if msg is OVERFLOW:
            # not retryable: another deployment would send the same answer
            raise JanusError(
                f"the reply from the worker for {self.provider!r} outran what the gateway holds for one "
                "request",
                code=REPLY_OVERFLOW,
                status=502,
            )
        if Bus.is_no_responders(msg):
            raise ServiceUnavailable(f"no worker is serving provider {self.provider!r}", code="no_worker")
        try:
            frame = contract.frame_decoder.decode(msg.data)
        except msgspec.DecodeError:
            raise UpstreamError("the worker sent an unreadable frame", code="bad_frame") from None
        if frame.seq != self.expect:
            # a lost frame would silently corrupt the response; treat the reply as broken
            raise UpstreamError(
                f"frames from the worker were lost (expected {self.expect}, got {frame.seq})",
                code="frame_gap",
            )
        self.expect += 1
        return frame

    def _timed_out(self, first: bool) -> UpstreamTimeout:
        if first:
            return UpstreamTimeout(
                f"no worker for {self.provider!r} accepted the request in time", code="first_frame_timeout"
            )
        return UpstreamTimeout(f"the worker for {self.provider!r} stalled", code="stall_timeout")
