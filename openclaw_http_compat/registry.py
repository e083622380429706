"""The agent runs in flight on one sub-application."""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader

__all__ = ("RunRegistry",)


class RunRegistry:
    """Counts runs in flight against a cap, and holds their tasks (and body reads) for shutdown.

    A slot is taken before anything is sent to the client, so the cap is exact: past it a
    request is refused at once (429), never queued.
    """

    __slots__ = ("limit", "in_flight", "tasks", "readers")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        #: Requests whose body is still arriving: shutdown must not wait out their timeout.
        self.readers: set[StreamReader] = set()

    def try_acquire(self) -> bool:
        """Take a slot; false when ``limit`` (if not 0) runs are already in flight."""
        if self.limit and self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1
