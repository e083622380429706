"""The agent runs in flight on one sub-application, and its drain."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable
from typing import Final

from aiohttp import StreamReader, web

__all__ = ("OUTCOME_KEY", "Outcome", "RunRegistry")

#: How often the clients of runs in flight are checked for having gone away.
DISCONNECT_POLL_S: Final = 0.25


class Outcome(enum.Enum):
    """How a watched run ended."""

    DONE = "done"
    SHUTDOWN = "shutdown"
    CLIENT_GONE = "client_gone"


#: How the run of a request ended, recorded by :meth:`RunRegistry.watch` on the request
#: (read by access logs through :func:`~openclaw_http_compat.facts.run_facts`).
OUTCOME_KEY: Final = web.RequestKey("openclaw_http_compat.run_outcome", Outcome)


class RunRegistry:
    """Counts runs in flight against a cap, and watches them for disconnects and shutdown.

    A slot is taken before anything is sent to the client, so the cap is exact: past it a
    request is refused at once (429), never queued.

    aiohttp cancels a handler when its client leaves only if the gateway turned on
    ``handler_cancellation``, and a thinking agent writes nothing that could fail, so the
    clients of watched runs are polled: one timer for all of them, armed only while any run
    is in flight. A run whose client left, or that shutdown ends, has its task cancelled
    with the reason recorded, so the handler can tell our cancellation from anyone else's.

    While draining (:meth:`start_draining`), new requests are refused by the sub-app and
    :meth:`wait_idle` tells when the requests and runs already going have all ended.
    """

    __slots__ = (
        "limit",
        "in_flight",
        "readers",
        "draining",
        "_requests",
        "_idle",
        "_watched",
        "_reasons",
        "_timer",
        "_poll_s",
    )

    def __init__(self, limit: int, *, poll_s: float = DISCONNECT_POLL_S) -> None:
        self.limit = limit
        self.in_flight = 0
        #: Bodies still arriving: shutdown must not wait out their timeout.
        self.readers: set[StreamReader] = set()
        #: True once the host started a drain: new work is refused from then on.
        self.draining = False
        self._requests = 0
        # Set whenever no request and no run is in flight; created lazily, in the loop.
        self._idle: asyncio.Event | None = None
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
        self._maybe_idle()

    def request_started(self) -> None:
        """Count a request of the sub-app as going (its handler has been entered)."""
        self._requests += 1

    def request_ended(self) -> None:
        """Count a request of the sub-app as ended."""
        self._requests -= 1
        self._maybe_idle()

    def start_draining(self) -> None:
        """From now on new work is refused; what is going may finish (see :meth:`wait_idle`)."""
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no request and no run is in flight; true if so."""
        if self._busy():
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._idle.wait()
            except TimeoutError:
                return not self._busy()
        return True

    def _busy(self) -> bool:
        return self._requests > 0 or self.in_flight > 0

    def _maybe_idle(self) -> None:
        if self._idle is not None and not self._busy():
            self._idle.set()

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
            if request is not None:
                request[OUTCOME_KEY] = reason
            return reason
        except BaseException:
            # A failed run (a runner's exception, a write to a client that left) is no
            # longer watched either; left here, the poll timer would re-arm for it forever.
            if self._forget(task) is not None:
                task.uncancel()
            raise
        if self._forget(task) is not None:
            task.uncancel()  # cancelled, but the run swallowed it and finished anyway
        if request is not None:
            request[OUTCOME_KEY] = Outcome.DONE
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
