"""One agent run feeding one response: its events, read in the request's task, added up.

The plugin reads a run's events with a plain ``async for`` in one task, from the first event
to the last, whether the answer is streamed or not: the task of the request that asked for
it, or, for a run that may outlive its client (:mod:`.attach`), a task of its own started
from that request with a copy of its context. So a runner may set a ``contextvars.ContextVar``
or enter ``asyncio.timeout()`` before its first ``yield`` and rely on either after it (see
:class:`~.host.AgentRunner`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol

from .errors import ApiError, UpstreamError, map_run_error
from .host import (
    AgentEvent,
    AgentRunner,
    AgentRunRequest,
    RunEnd,
    RunError,
    RunUsage,
    StopReason,
    TextDelta,
    ToolCall,
)
from .metrics import RunOutcome
from .request import ChatRequest
from .wire import ChunkEncoder

__all__ = ("NO_RESPONSE", "FrameWriter", "Run", "StreamOut")

NO_RESPONSE: Final = "No response from OpenClaw."
_TOOL_ARGS_CHUNK: Final = 256


class FrameWriter(Protocol):
    """Where a streamed run's frames go once its head is out."""

    async def write_frame(self, frame: bytes) -> None:
        """Write one or more complete frames."""
        ...


class StreamOut(Protocol):
    """A streamed answer whose head goes out at the run's first event (:class:`~.held.HeldStream`)."""

    async def open(self) -> FrameWriter:
        """Send the head, if not sent yet; the writer for the frames."""
        ...


@asynccontextmanager
async def _events(runner: AgentRunner, request: AgentRunRequest) -> AsyncIterator[AsyncIterator[AgentEvent]]:
    # The runner's own iterator, nothing of ours wrapped around each event. Leaving the
    # block for any reason (the end, an exception, a cancellation) closes it, which is how
    # a runner still suspended at a yield learns that the run is over.
    events = runner.run(request)
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _unsatisfied_tool_choice(chat: ChatRequest, calls: list[ToolCall]) -> ApiError | None:
    choice = chat.tool_choice
    if choice.mode == "required" and not calls:
        return UpstreamError("tool_choice=required was not satisfied by the agent response", status=502)
    if choice.mode == "function" and not any(c.name == choice.name for c in calls):
        return UpstreamError(
            f"tool_choice required a {choice.name} tool call, but the agent did not produce one", status=502
        )
    return None


def _split_arguments(arguments: str) -> list[str]:
    # Fragments of at most 256 UTF-16 code units, never splitting a surrogate pair.
    if not arguments:
        return [""]
    pieces: list[str] = []
    current: list[str] = []
    units = 0
    for char in arguments:
        width = 2 if ord(char) > 0xFFFF else 1
        if units + width > _TOOL_ARGS_CHUNK:
            pieces.append("".join(current))
            current, units = [], 0
        current.append(char)
        units += width
    pieces.append("".join(current))
    return pieces


class Run:
    """One agent run feeding one response, and what its events added up to.

    :meth:`collect` (a JSON answer) or :meth:`stream` (an SSE answer) reads the events; the
    caller awaits it in the request's own task, under the run registry's watch. Either leaves
    a failure in :attr:`error` for the caller to answer.
    """

    __slots__ = ("request", "chat", "text", "calls", "usage", "stop_reason", "error", "outcome", "first_token_at", "_runner")

    def __init__(self, runner: AgentRunner, request: AgentRunRequest, chat: ChatRequest) -> None:
        self.request = request
        self.chat = chat
        self.text: list[str] = []
        self.calls: list[ToolCall] = []
        self.usage: RunUsage | None = None
        self.stop_reason: StopReason = "stop"
        #: Why the run cannot be answered as a completion; set by :meth:`collect` and :meth:`stream`.
        self.error: ApiError | None = None
        #: How the run ended, when the handler knows better than :attr:`error` (see :func:`.observe.observe_run`).
        self.outcome: RunOutcome | None = None
        #: ``time.perf_counter()`` at the first content or tool call.
        self.first_token_at: float | None = None
        self._runner = runner

    @property
    def finish_reason(self) -> StopReason:
        """The completion's ``finish_reason``: ``tool_calls`` whenever the agent called one."""
        return "tool_calls" if self.calls else self.stop_reason

    @property
    def content(self) -> str:
        """The JSON answer's message content: the text, or a stand-in when there is nothing at all."""
        content = "".join(self.text)
        if not content and not self.calls:
            return NO_RESPONSE
        return content

    def _add(self, event: TextDelta | ToolCall | RunUsage | RunEnd) -> bool:
        # What both answers keep of an event; true at the run's end.
        if isinstance(event, TextDelta):
            if event.text:
                self.text.append(event.text)
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
        elif isinstance(event, ToolCall):
            self.calls.append(event)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        elif isinstance(event, RunUsage):
            self.usage = event
        else:
            self.stop_reason = event.stop_reason
            return True
        return False

    async def collect(self) -> None:
        """Read the whole run; a failure (a ``RunError``, an unmet tool choice) lands in :attr:`error`."""
        async with _events(self._runner, self.request) as events:
            async for event in events:
                if isinstance(event, RunError):
                    self.error = map_run_error(event)
                    return
                if self._add(event):
                    break
        self.error = _unsatisfied_tool_choice(self.chat, self.calls)

    async def stream(self, out: StreamOut, encoder: ChunkEncoder) -> None:
        """Write the run to ``out`` as it happens, up to its finish (not ``[DONE]``).

        The run's first event opens ``out`` (its head goes out then, unless the hold timer
        sent it already), and that event is written right after the head. A run that ends
        at its first event has its outcome known before anything went out: its answer is
        then written in one go, or, when it failed, nothing is. A failure (a ``RunError``,
        an unmet tool choice) is never written here: it lands in :attr:`error`, and the
        caller answers it in-band or, while ``out`` is not committed, as an HTTP error.
        """
        chat = self.chat
        # Forced tool choice: everything is held back until the required call shows up, so
        # prose (or a wrong tool call) is never sent when the choice ends up unsatisfied.
        hold = chat.tool_choice.mode in ("required", "function")
        held: list[bytes] = []
        sent_any = False
        stream: FrameWriter | None = None
        async with _events(self._runner, self.request) as events:
            async for event in events:
                if isinstance(event, RunError):
                    self.error = map_run_error(event)
                    return
                if self._add(event):
                    break
                if stream is None:
                    # Any event but a failure or the end means the run is answering: the
                    # head goes out now, if the hold timer has not sent it already.
                    stream = await out.open()
                if isinstance(event, TextDelta) and event.text:
                    frame = encoder.content(event.text)
                elif isinstance(event, ToolCall):
                    index = len(self.calls) - 1
                    frame = encoder.tool_call_start(index, event) + b"".join(
                        encoder.tool_call_arguments(index, f) for f in _split_arguments(event.arguments)
                    )
                    if hold and _unsatisfied_tool_choice(chat, self.calls) is None:
                        hold = False
                        held.append(frame)
                        frame = b"".join(held)
                        held.clear()
                else:
                    continue
                if hold:
                    held.append(frame)
                else:
                    sent_any = True
                    await stream.write_frame(frame)
        self.error = _unsatisfied_tool_choice(chat, self.calls)
        if self.error is not None:
            return
        tail = []
        if not sent_any:
            tail.append(encoder.content(NO_RESPONSE))
        tail.append(encoder.finish(self.finish_reason))
        if chat.include_usage:
            tail.append(encoder.usage(self.usage))
        if stream is None:
            stream = await out.open()
        await stream.write_frame(b"".join(tail))
