"""The SSE response for streamed completions, built on aiohttp-sse.

When its head goes out is :mod:`.held`'s business: after the run's first event, or
``streamHoldMs`` at most.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from aiohttp_sse import EventSourceResponse

from .wire import DONE_FRAME, KEEPALIVE_FRAME

__all__ = ("ChatEventStream",)

# aiohttp-sse requires a positive ping interval; "never" is a day.
_NEVER: Final = 86_400.0


class ChatEventStream(EventSourceResponse):
    """An ``EventSourceResponse`` that writes pre-encoded ``data:`` frames.

    Frames are written as bytes with ``\\n\\n`` separators: the JSON we send never holds a raw
    newline, so aiohttp-sse's line splitting in ``send()`` would only cost time. Keep-alives
    are the comment ``: keepalive``, sent only after ``keepalive_s`` without any write: a
    ``: ping`` line is taken as end-of-stream by Continue's parser, and an empty ``data:``
    makes the openai SDK fail to decode JSON (client contract, section 2.2). aiohttp-sse
    writes ``: ping``, so :meth:`_ping`, a private method of aiohttp-sse, is overridden; the
    comment there says what that relies on.
    """

    def __init__(self, *, keepalive_s: float, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            headers=headers,
            sep="\n",
            allow_all_methods=True,
            ping_interval=keepalive_s if keepalive_s > 0 else _NEVER,
        )
        # aiohttp-sse sets a bare text/event-stream; OpenClaw declares the charset.
        self.headers["Content-Type"] = "text/event-stream; charset=utf-8"
        self._keepalive_s = keepalive_s
        self._last_write = time.monotonic()
        self.finished = False

    async def write_frame(self, frame: bytes) -> None:
        """Write one complete frame (or several, concatenated)."""
        self._last_write = time.monotonic()
        await self.write(frame)

    async def write_done(self) -> None:
        """Write the terminal ``data: [DONE]`` frame; the only place it is written."""
        if not self.finished:
            self.finished = True
            await self.write_frame(DONE_FRAME)

    async def _ping(self) -> None:
        # Overrides a PRIVATE method of aiohttp-sse, written against aiohttp-sse 3.0 (what
        # setup.cfg requires, >=3.0): EventSourceResponse.prepare() starts the keep-alive as
        # asyncio.create_task(self._ping()), and this is the only way to change what it
        # writes. aiohttp-sse's own loop writes ": ping" comments on a fixed timer, and
        # Continue's parser takes ": ping" as the end of the stream (see the class docstring).
        # If a later aiohttp-sse renamed _ping or stopped starting it from prepare(), its own
        # ": ping" loop would run instead, this method would be dead code, and clients would
        # get ": ping" every keepalive_s, busy or not; tests/test_stream.py's
        # test_keepalive_frames_come_from_our_ping_override fails when that happens.
        # Stop rules as aiohttp-sse's: a failed write ends the loop, and so does cancellation
        # (stop_streaming). Unlike its loop this one puts no send_timeout on the write: a
        # stalled peer is left to the TCP_USER_TIMEOUT that prepare() sets (Linux TCP only).
        if self._keepalive_s <= 0:
            await asyncio.sleep(_NEVER)
            return
        while True:
            idle = time.monotonic() - self._last_write
            if idle < self._keepalive_s:
                await asyncio.sleep(self._keepalive_s - idle)
                continue
            try:
                await self.write_frame(KEEPALIVE_FRAME)
            except (ConnectionResetError, RuntimeError):
                break

