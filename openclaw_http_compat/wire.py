"""The exact JSON this package puts on the wire: completions, chunks, usage and errors."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web

from .errors import ApiError
from .host import RunUsage, StopReason, ToolCall

__all__ = (
    "ChunkEncoder",
    "completion_body",
    "dumps",
    "json_error_response",
    "json_response",
    "usage_body",
)

_encoder: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_encode = _encoder.encode

DONE_FRAME: Final = b"data: [DONE]\n\n"
KEEPALIVE_FRAME: Final = b": keepalive\n\n"


_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _utf8(json_text: str) -> bytes:
    """JSON text as UTF-8 bytes.

    A JSON ``"\\ud800"`` in a request decodes to a lone surrogate, which UTF-8 cannot hold;
    wherever such text is echoed, it goes out escaped again (still valid JSON).
    """
    try:
        return json_text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub(_escape_surrogate, json_text).encode("utf-8")


def dumps(value: object) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept as is)."""
    return _utf8(_encode(value))


def _count(value: float | None) -> int:
    # Runners report what providers send; non-finite or negative counts count as 0.
    if value is None or not math.isfinite(value):
        return 0
    return max(0, int(value))


def usage_body(usage: RunUsage | None) -> dict[str, Any] | None:
    """OpenAI ``usage`` from a run's usage; ``None`` (JSON ``null``) when the run reported none.

    Zeros would be invented: billing and metering would count a real reply as free.
    ``prompt_tokens`` counts input plus cache reads (cache writes only show in the total);
    ``total_tokens`` is the larger of the sum and the reported total.
    """
    if usage is None:
        return None
    cache_read = _count(usage.cache_read)
    prompt = _count(usage.input) + cache_read
    completion = _count(usage.output)
    total = prompt + completion
    if usage.total is not None:
        total = max(total, _count(usage.total))
    body: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    if cache_read > 0:
        body["prompt_tokens_details"] = {"cached_tokens": cache_read}
    if usage.reasoning is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": _count(usage.reasoning)}
    return body


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: StopReason,
    tool_calls: Sequence[ToolCall] = (),
    usage: RunUsage | None,
) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage_body(usage),
    }


class ChunkEncoder:
    """Encodes the ``data:`` frames of one stream.

    Every chunk of a stream shares ``id``, ``created`` and ``model``, so their JSON prefix is
    encoded once; a content frame then costs one string encode.
    """

    __slots__ = ("_head", "_model", "_id", "_created")

    def __init__(self, *, completion_id: str, created: int, model: str) -> None:
        self._id = completion_id
        self._created = created
        self._model = model
        head = _encode({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model})
        # The prefix up to and including `"choices":`; head ends in "}" which we reopen.
        self._head = _utf8("data: " + head[:-1] + ',"choices":')

    def _frame(self, choices_json: str, tail: str = "") -> bytes:
        return self._head + _utf8(choices_json + tail + "}\n\n")

    def role(self) -> bytes:
        """The first chunk: ``delta: {role: "assistant"}``."""
        return self._frame('[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]')

    def content(self, text: str) -> bytes:
        """A content chunk."""
        return self._frame('[{"index":0,"delta":{"content":' + _encode(text) + '},"finish_reason":null}]')

    def tool_call_start(self, index: int, call: ToolCall) -> bytes:
        """The identity chunk of a streamed tool call."""
        delta = {"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                 "function": {"name": call.name, "arguments": ""}}]}
        return self._frame('[{"index":0,"delta":' + _encode(delta) + ',"finish_reason":null}]')

    def tool_call_arguments(self, index: int, fragment: str) -> bytes:
        """An argument fragment of a streamed tool call."""
        delta = {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
        return self._frame('[{"index":0,"delta":' + _encode(delta) + ',"finish_reason":null}]')

    def finish(self, reason: StopReason) -> bytes:
        """The one chunk with an empty delta and the finish reason."""
        return self._frame('[{"index":0,"delta":{},"finish_reason":' + _encode(reason) + "}]")

    def usage(self, usage: RunUsage | None) -> bytes:
        """The usage chunk (``choices: []``), sent only with ``include_usage``."""
        return self._frame("[]", ',"usage":' + _encode(usage_body(usage)))

    @staticmethod
    def error(exc: ApiError) -> bytes:
        """An in-band error frame: ``data: {"error": {...}}``."""
        return b"data: " + dumps(exc.body()) + b"\n\n"


def json_response(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with ``application/json; charset=utf-8``."""
    return web.Response(
        body=dumps(body), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )


class _ErrorResponse(web.HTTPError):
    """An HTTP error with any status whose body is the OpenAI error envelope."""

    def __init__(self, exc: ApiError) -> None:
        self.status_code = exc.status
        super().__init__(
            text=dumps(exc.body()).decode("utf-8"), content_type="application/json", headers=exc.headers
        )


def json_error_response(exc: ApiError) -> web.HTTPError:
    """The error as a raisable aiohttp ``HTTPError`` with the OpenAI envelope body."""
    return _ErrorResponse(exc)
