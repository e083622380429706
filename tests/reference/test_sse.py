"""The SSE decoder (``reference/sse.py``): pure, on bytes alone."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from openclaw_http_compat.reference.sse import MAX_SSE_LINE_CHARS, SSEDecoder, ServerSentEvent


def _decode_all(pieces: Sequence[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.end())
    return events


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"], ids=("LF", "CR", "CR+LF"))
@pytest.mark.parametrize("split", [False, True], ids=("whole", "byte-by-byte"))
def test_sse_line_endings_and_splits(newline: str, split: bool) -> None:
    """Every SSE line ending parses the same, whether the body arrives whole or one byte at a time."""
    body = newline.join(["data: {\"a\":1}", "", "data: ünï ✓", "", "data: [DONE]", "", ""]).encode()
    pieces = _bytewise(body) if split else [body]
    assert _decode_all(pieces) == [
        ServerSentEvent('{"a":1}'),
        ServerSentEvent("ünï ✓"),
        ServerSentEvent("[DONE]"),
    ]


def test_sse_fields() -> None:
    """Comments are skipped, data lines join with LF, one leading space is dropped, event/id/retry are handled."""
    body = (
        b"\xef\xbb\xbf: a comment\n"
        b"event: error\n"
        b"id: 7\n"
        b"retry: 100\n"
        b"data:first\n"
        b"data:  second\n"
        b"data\n"
        b"\n"
        b"\n"
        b": only a comment\n"
        b"\n"
        b"data: after\n"
        b"\n"
    )
    assert _decode_all([body]) == [
        ServerSentEvent("first\n second\n", event="error"),
        ServerSentEvent("after"),
    ]


def test_sse_unterminated_last_event_is_returned_by_end() -> None:
    """end() returns an event the stream left without its closing blank line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: [DONE]") == [ServerSentEvent("x")]
    assert decoder.end() == [ServerSentEvent("[DONE]")]


def test_sse_overlong_line_is_refused() -> None:
    """A line longer than the limit raises ValueError instead of growing the buffer forever."""
    decoder = SSEDecoder()
    with pytest.raises(ValueError, match="too long"):
        decoder.feed(b"data: " + b"x" * MAX_SSE_LINE_CHARS)
