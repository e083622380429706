"""A streamed answer whose head waits for the run's first event, or ``streamHoldMs`` at most.

Until the head (status 200, the SSE headers) goes out, a run that fails can still be
answered with its real status and the JSON error envelope, as real OpenAI-compatible servers
do: the ``openai`` SDK then raises ``RateLimitError`` or ``BadRequestError`` and retries or
backs off, instead of an ``APIError`` without a status that it never retries. A run that
stays silent still gets its head (and keep-alives) once the hold is over, so a client's read
timeout or a proxy's idle timeout does not fire while the agent thinks.

The run's events are read in the request's own task (the runner contract); when the hold
expires first, the head goes out from a small task started by a timer, and the request's
task waits for that task before it writes anything, so two writers never meet.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import web

from .stream import ChatEventStream

__all__ = ("HeldStream",)


class HeldStream:
    """An SSE response whose head and first frame are held until :meth:`open`, or ``hold_s``.

    Use it as an async context manager around the answer: entering arms the hold timer
    (``hold_s`` 0 sends the head at once), leaving cancels it and ends what the head started
    (the timer's task, the keep-alives). The head goes out:

    * from the request's task, at the first :meth:`open` (the run's first event), or
    * from a task the timer starts when ``hold_s`` elapses first; :meth:`open` then waits for
      that task to finish before returning the stream to write to.

    ``first_frame`` (the role chunk) is written right after the headers, by whichever sends
    them. Keep-alives start with the head, never before.
    """

    __slots__ = ("response", "_request", "_first_frame", "_hold_s", "_committed", "_timer", "_sending")

    def __init__(
        self,
        request: web.BaseRequest,
        *,
        hold_s: float,
        keepalive_s: float,
        headers: dict[str, str],
        first_frame: bytes,
    ) -> None:
        #: The response; its head is out once ``response.prepared`` is true.
        self.response = ChatEventStream(keepalive_s=keepalive_s, headers=headers)
        self._request = request
        self._first_frame = first_frame
        self._hold_s = hold_s
        self._committed = False
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    @property
    def committed(self) -> bool:
        """The head has gone out or is on its way: the answer is a 200 stream, come what may.

        Until then an error can still be answered as a plain HTTP error.
        """
        return self._committed

    async def __aenter__(self) -> HeldStream:
        if self._hold_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self._hold_s, self._hold_expired)
        else:
            # Committed before the run's first event is read, so that event (a failure
            # included) is answered in the stream, as it was before the hold existed.
            self._hold_expired()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sending = self._sending
        try:
            if sending is not None and not sending.done():
                # Only an abandoned answer gets here (client gone, task cancelled): every
                # other path awaited the head in open() before writing.
                sending.cancel()
                await asyncio.wait([sending])
        finally:
            if sending is not None and sending.done() and not sending.cancelled():
                # A head that failed because the client left is not worth a log line, and
                # an exception left unretrieved would be logged by asyncio.
                sending.exception()
            if self.response.is_connected():
                self.response.stop_streaming()
                await self.response.wait()

    async def open(self) -> ChatEventStream:
        """The stream to write to, its head out: sent now if the hold timer has not sent it.

        Raises what sending the head raised (``ConnectionResetError`` when the client left).
        """
        if not self._committed:
            self._commit()
            await self._send_head()
        elif self._sending is not None:
            # Shielded: a cancellation of the request's task (disconnect polling, shutdown)
            # must not cut the head in half; shutdown still writes its error frame after it.
            await asyncio.shield(self._sending)
        return self.response

    def _commit(self) -> None:
        self._committed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hold_expired(self) -> None:
        self._timer = None
        self._commit()
        self._sending = asyncio.get_running_loop().create_task(self._send_head())

    async def _send_head(self) -> None:
        await self.response.prepare(self._request)
        await self.response.write_frame(self._first_frame)
