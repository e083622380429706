"""A pure ``text/event-stream`` decoder (WHATWG HTML, "Parsing an event stream").

It turns the bytes of a server-sent event stream, in whatever pieces they arrive, into the
events they carry; it does no I/O, so it is tested on bytes alone.
"""

from __future__ import annotations

import codecs
import re
from typing import Final

import attrs

__all__ = ("MAX_SSE_LINE_CHARS", "SSEDecoder", "ServerSentEvent")

#: An SSE line longer than this is not a chat completion stream.
MAX_SSE_LINE_CHARS: Final = 8 * 1024 * 1024
_EOL: Final = re.compile(r"\r\n|\r|\n")


@attrs.frozen
class ServerSentEvent:
    """One dispatched server-sent event."""

    data: str
    event: str = "message"


class SSEDecoder:
    """An incremental ``text/event-stream`` parser (WHATWG HTML, "Parsing an event stream").

    Feed it the body's bytes as they arrive; it returns the events each piece completes.
    Lines end with CR LF, LF or CR; ``data`` fields join with LF; lines starting with ``:``
    are comments; an event is dispatched at a blank line. Call :meth:`end` at the end of the
    stream.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The unfinished line, kept as pieces: re-joining and rescanning it on every read
        # would make a long line cost quadratic time.
        self._pending: list[str] = []
        self._pending_chars = 0
        self._data: list[str] = []
        self._event = ""
        self._started = False

    def _keep(self, text: str) -> None:
        if text:
            self._pending.append(text)
            self._pending_chars += len(text)
        if self._pending_chars > MAX_SSE_LINE_CHARS:
            raise ValueError("event stream line too long")

    def feed(self, chunk: bytes, *, final: bool = False) -> list[ServerSentEvent]:
        """Parse ``chunk``; ``final`` marks the end of the stream.

        Raises:
            ValueError: a line is longer than :data:`MAX_SSE_LINE_CHARS`.
        """
        text = self._decoder.decode(chunk, final)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        cr_pending = bool(self._pending) and self._pending[-1].endswith("\r")
        if not final and not cr_pending and "\n" not in text and "\r" not in text:
            self._keep(text)
            return []
        buffer = "".join(self._pending) + text
        self._pending, self._pending_chars = [], 0
        events: list[ServerSentEvent] = []
        start = 0
        while (match := _EOL.search(buffer, start)) is not None:
            if match.group() == "\r" and match.end() == len(buffer) and not final:
                break  # the CR may be the first half of a CR LF still on its way
            event = self._line(buffer[start : match.start()])
            if event is not None:
                events.append(event)
            start = match.end()
        self._keep(buffer[start:])
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            data, event = self._data, self._event
            self._data, self._event = [], ""
            if not data:
                return None
            return ServerSentEvent("\n".join(data), event or "message")
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        # ``id`` and ``retry`` only matter to a reconnecting EventSource.
        return None

    def end(self) -> list[ServerSentEvent]:
        """Finish the stream, returning the events still in the buffer.

        Unlike an EventSource, this also returns an event the stream left unterminated
        (no blank line after it): a ``data: [DONE]`` at the very end should still count.
        """
        events = self.feed(b"", final=True)
        for line in ("".join(self._pending), ""):
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._pending, self._pending_chars = [], 0
        return events
