"""The OpenAI Chat Completions API as data: pure mapping, no I/O.

It builds the request body of a run's ``POST /chat/completions`` call and maps what comes
back (a streamed completion's chunks, a whole completion, an error body and its status) to
:data:`~openclaw_http_compat.AgentEvent` values and :class:`~openclaw_http_compat.RunError`,
classified the way OpenClaw classifies provider failures (``auth``, ``rate_limit``, …).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    ClientTool,
    RunEnd,
    RunError,
    RunUsage,
    StopReason,
    TextDelta,
    ToolCall,
)

__all__ = (
    "MALFORMED_STREAM",
    "STREAM_CUT",
    "Message",
    "StreamedCompletion",
    "build_request_body",
    "error_fields",
    "http_error",
    "reason_for_status",
    "usage_from_openai",
    "whole_completion",
)

Message: TypeAlias = dict[str, Any]
"""One OpenAI chat message (``{"role": ..., "content": ...}``)."""

#: The stream's bytes are no chunk stream (not SSE, not JSON, a line too long).
MALFORMED_STREAM: Final = RunError(message="upstream sent malformed stream data", reason="server_error")
#: The stream ended without ``[DONE]``: the reply may be cut short, so the run fails.
STREAM_CUT: Final = RunError(message="upstream stream ended before [DONE]", reason="server_error")

_STATUS_REASONS: Final[Mapping[int, str]] = {
    400: "format",
    401: "auth",
    402: "billing",
    403: "auth_permanent",
    404: "model_not_found",
    408: "timeout",
    413: "format",
    422: "format",
    429: "rate_limit",
    503: "overloaded",
    529: "overloaded",
}


def reason_for_status(status: int) -> str | None:
    """OpenClaw's failure reason for an upstream HTTP error status (``None``: unclassified)."""
    reason = _STATUS_REASONS.get(status)
    if reason is None and 500 <= status <= 599:
        return "server_error"
    return reason


def _plain(value: object) -> object:
    """``value`` with every Mapping a dict and every tuple a list, ready for ``json.dumps``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tool_object(tool: ClientTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = _plain(tool.parameters)
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def build_request_body(model: str, messages: Sequence[Message], request: AgentRunRequest) -> dict[str, Any]:
    """The JSON body of the ``/chat/completions`` call for this run.

    It streams when the run does (``request.stream``), asking for the usage chunk; a run
    nobody watches live asks for the whole completion, which the provider answers in one
    body. Options the client did not give are left out, so the provider's defaults apply.
    """
    body: dict[str, Any] = {"model": model, "messages": [_plain(m) for m in messages], "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    options = request.options
    if options is not None:
        given: dict[str, object | None] = {
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "frequency_penalty": options.frequency_penalty,
            "presence_penalty": options.presence_penalty,
            "seed": options.seed,
            "stop": list(options.stop) if options.stop is not None else None,
            "response_format": _plain(options.response_format) if options.response_format is not None else None,
        }
        body.update({name: value for name, value in given.items() if value is not None})
    if request.client_tools:
        body["tools"] = [_tool_object(tool) for tool in request.client_tools]
    return body


def _int(value: object) -> int | None:
    # bool is an int subclass; a flag is not a token count.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def usage_from_openai(usage: object) -> RunUsage | None:
    """Map an OpenAI ``usage`` object to :class:`RunUsage`; cached prompt tokens count as cache reads."""
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("prompt_tokens")) or 0
    completion = _int(usage.get("completion_tokens")) or 0
    prompt_details = usage.get("prompt_tokens_details")
    cached = _int(prompt_details.get("cached_tokens")) if isinstance(prompt_details, Mapping) else None
    completion_details = usage.get("completion_tokens_details")
    reasoning = (
        _int(completion_details.get("reasoning_tokens")) if isinstance(completion_details, Mapping) else None
    )
    cache_read = min(cached or 0, prompt)
    return RunUsage(
        input=prompt - cache_read,
        output=completion,
        cache_read=cache_read,
        total=_int(usage.get("total_tokens")),
        reasoning=reasoning,
    )


def error_fields(payload: object) -> tuple[str | None, str | None]:
    """``(message, code)`` from an OpenAI-style error body, as far as it has them."""
    if not isinstance(payload, Mapping):
        return None, None
    error = payload.get("error", payload)
    if isinstance(error, str):
        return error or None, None
    if not isinstance(error, Mapping):
        return None, None
    message = error.get("message")
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    return (
        message if isinstance(message, str) and message else None,
        code if isinstance(code, str) and code else None,
    )


@attrs.define
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: str = ""


@attrs.define
class StreamedCompletion:
    """What a streamed completion has said so far: feed it each server-sent event's data.

    Text comes back at once, as :class:`TextDelta` events; tool-call fragments and usage
    are kept until ``[DONE]`` (or :meth:`end`) closes the stream. Once :meth:`data` has
    returned a terminal event (``RunEnd`` or ``RunError``, always last), the stream is over.
    """

    calls: dict[int, _ToolCallParts] = attrs.field(factory=dict)
    usage: RunUsage | None = None
    finish_reason: str | None = None

    def data(self, data: str) -> list[AgentEvent]:
        """Take in one event's ``data``: a ``chat.completion.chunk`` as JSON, or ``[DONE]``."""
        if data == "[DONE]":
            return self.end()
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return [MALFORMED_STREAM]
        return self.chunk(payload)

    def chunk(self, payload: Mapping[str, Any]) -> list[AgentEvent]:
        """Take in one ``chat.completion.chunk``; returns its text (or the in-band error)."""
        if payload.get("error") is not None:
            message, code = error_fields(payload)
            return [RunError(message=message or "upstream provider error", reason="server_error", code=code)]
        usage = usage_from_openai(payload.get("usage"))
        if usage is not None:
            self.usage = usage
        choice = _first_choice(payload.get("choices"))
        if choice is None:
            return []
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self.finish_reason = finish
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            return []
        self._tool_call_deltas(delta.get("tool_calls"))
        content = delta.get("content")
        return [TextDelta(content)] if isinstance(content, str) and content else []

    def _tool_call_deltas(self, deltas: object) -> None:
        if not isinstance(deltas, list):
            return
        for item in deltas:
            if not isinstance(item, Mapping):
                continue
            call_id = item.get("id")
            call_id = call_id if isinstance(call_id, str) and call_id else None
            index = _int(item.get("index"))
            if index is None:
                index = self._index_without_index(call_id)
            parts = self.calls.setdefault(index, _ToolCallParts())
            if call_id is not None and not parts.id:
                parts.id = call_id
            function = item.get("function")
            if isinstance(function, Mapping):
                name, arguments = function.get("name"), function.get("arguments")
                # Fragments concatenate, names included, as the openai SDK accumulates them.
                if isinstance(name, str):
                    parts.name += name
                if isinstance(arguments, str):
                    parts.arguments += arguments

    def _index_without_index(self, call_id: str | None) -> int:
        # Some OpenAI-compatible servers leave out ``index``: a new id starts a new call,
        # anything else continues the latest one.
        for index, parts in self.calls.items():
            if call_id is not None and parts.id == call_id:
                return index
        latest = max(self.calls, default=-1)
        if call_id is not None or latest < 0:
            return latest + 1
        return latest

    def end(self) -> list[AgentEvent]:
        """The events closing a complete stream: tool calls, usage, then ``RunEnd``."""
        events: list[AgentEvent] = []
        for _, parts in sorted(self.calls.items()):
            if not parts.name:
                continue
            call_id = parts.id or f"call_{uuid.uuid4().hex[:24]}"
            events.append(ToolCall(id=call_id, name=parts.name, arguments=parts.arguments))
        if self.usage is not None:
            events.append(self.usage)
        stop: StopReason = "stop"
        if any(isinstance(e, ToolCall) for e in events):
            stop = "tool_calls"
        elif self.finish_reason == "length":
            stop = "length"
        events.append(RunEnd(stop))
        return events


def _first_choice(choices: object) -> Mapping[str, Any] | None:
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
            return choice
    return None


def whole_completion(payload: object) -> list[AgentEvent]:
    """Events for a whole ``chat.completion`` (asked for, or from a server that ignores ``stream``)."""
    if not isinstance(payload, Mapping):
        return [RunError(message="upstream sent a malformed response", reason="server_error")]
    state = StreamedCompletion()
    if payload.get("error") is not None:
        return state.chunk(payload)
    events: list[AgentEvent] = []
    choice = _first_choice(payload.get("choices"))
    if choice is not None:
        # A whole message reads the same as one big delta.
        delta = {"delta": choice.get("message"), "finish_reason": choice.get("finish_reason")}
        events = state.chunk({"choices": [delta]})
    state.usage = usage_from_openai(payload.get("usage"))
    return events + state.end()


def http_error(status: int, body: bytes) -> RunError:
    """The ``RunError`` for an upstream answer with error status ``status`` and (the start of) ``body``.

    The upstream's own message and code are kept when the body is an OpenAI error object;
    otherwise the message names the status.
    """
    try:
        payload: object = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        payload = None
    message, code = error_fields(payload)
    return RunError(
        message=message or f"upstream provider returned HTTP {status}",
        reason=reason_for_status(status),
        status=status,
        code=code,
    )
