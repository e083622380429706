"""The agent runs in flight on one sub-application."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable
from typing import Final

from aiohttp import StreamReader, web

__all__ = ("Outcome", "RunRegistry")

#: How often the clients of runs in flight are checked for having gone away.
DISCONNECT_POLL_S: Final = 0.25


class Outcome(enum.Enum):
    """How a watched run ended."""

    DONE = "done"
    SHUTDOWN = "shutdown"
    CLIENT_GONE = "client_gone"


class RunRegistry:
    """Counts runs in flight against a cap, and watches them for disconnects and shutdown.

    A slot is taken before anything is sent to the client, so the cap is exact: past it a
    request is refused at once (429), never queued.

    aiohttp cancels a handler when its client leaves only if the gateway turned on
    ``handler_cancellation``, and a thinking agent writes nothing that could fail, so the
    clients of watched runs are polled: one timer for all of them, armed only while any run
    is in flight. A run whose client left, or that shutdown ends, has its task cancelled
    with the reason recorded, so the handler can tell our cancellation from anyone else's.
    """

    __slots__ = ("limit", "in_flight", "readers", "_watched", "_reasons", "_timer", "_poll_s")

    def __init__(self, limit: int, *, poll_s: float = DISCONNECT_POLL_S) -> None:
        self.limit = limit
        self.in_flight = 0
        #: Bodies still arriving: shutdown must not wait out their timeout.
        self.readers: set[StreamReader] = set()
        self._watched: dict[asyncio.Task[object], web.BaseRequest | None] = {}
        self._reasons: dict[asyncio.Task[object], Outcome] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._poll_s = poll_s

    @property
    def tasks(self) -> frozenset[asyncio.Task[object]]:
        """The tasks of the runs being watched."""
        return frozenset(self._watched)

    def try_acquire(self) -> bool:
        """Take a slot; false when ``limit`` (if not 0) runs are already in flight."""
        if self.limit and self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1

    async def watch(self, request: web.BaseRequest | None, run: Awaitable[None]) -> Outcome:
        """Await ``run`` in the current task while its client and the gateway are watched.

        ``request`` ``None``: a run in a task of its own (:mod:`.attach`), watched for
        shutdown only; its clients are watched by their own requests' tasks.

        Returns how it ended; a cancellation that is not ours propagates.
        """
        task = asyncio.current_task()
        assert task is not None
        self._watched[task] = request
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._poll_s, self._check)
        try:
            await run
        except asyncio.CancelledError:
            reason = self._forget(task)
            # uncancel() > 0: someone else cancelled the task too (aiohttp, the gateway).
            if reason is None or task.uncancel() > 0:
                raise
            return reason
        except BaseException:
            # A failed run (a runner's exception, a write to a client that left) is no
            # longer watched either; left here, the poll timer would re-arm for it forever.
            if self._forget(task) is not None:
                task.uncancel()
            raise
        if self._forget(task) is not None:
            task.uncancel()  # cancelled, but the run swallowed it and finished anyway
        return Outcome.DONE

    def _forget(self, task: asyncio.Task[object]) -> Outcome | None:
        self._watched.pop(task, None)
        return self._reasons.pop(task, None)

    def _cancel(self, task: asyncio.Task[object], reason: Outcome) -> None:
        if task not in self._reasons:
            self._reasons[task] = reason
            task.cancel()

    def _check(self) -> None:
        self._timer = None
        for task, request in list(self._watched.items()):
            if request is None:
                continue
            transport = request.transport
            if transport is None or transport.is_closing():
                self._cancel(task, Outcome.CLIENT_GONE)
        if self._watched:
            self._timer = asyncio.get_running_loop().call_later(self._poll_s, self._check)

    def end_all(self, body_error: BaseException) -> list[asyncio.Task[object]]:
        """Shutdown: fail bodies still arriving, cancel every run; return the run tasks."""
        for body in list(self.readers):
            body.set_exception(body_error)
        tasks = list(self._watched)
        for task in tasks:
            self._cancel(task, Outcome.SHUTDOWN)
        return tasks
