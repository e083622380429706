"""The OpenAI Chat Completions API as data: pure mapping, no I/O.

It builds the request body of a run's ``POST /chat/completions`` call and maps what comes
back (a streamed completion's chunks, a whole completion, an error body, its status and its
``Retry-After``) to :data:`~openclaw_http_compat.AgentEvent` values and
:class:`~openclaw_http_compat.RunError`, classified the way OpenClaw classifies provider
failures (``auth``, ``rate_limit``, …). It also estimates the usage of a call whose upstream
reported none (:func:`estimate_usage`, with :mod:`.tokens`).
"""

from __future__ import annotations

import datetime
import email.utils
import json
import math
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
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
    ToolChoice,
)

from .tokens import estimate_json, estimate_messages, estimate_text

__all__ = (
    "EMPTY_ANSWER",
    "MALFORMED_STREAM",
    "NO_FINISH_REASON",
    "STREAM_CUT",
    "Message",
    "StreamedCompletion",
    "build_request_body",
    "error_fields",
    "estimate_usage",
    "http_error",
    "reason_for_status",
    "retry_after_s",
    "tool_choice_value",
    "usage_from_openai",
    "whole_completion",
)

Message: TypeAlias = dict[str, Any]
"""One OpenAI chat message (``{"role": ..., "content": ...}``)."""

#: The stream's bytes are no chunk stream (not SSE, not JSON, a line too long).
MALFORMED_STREAM: Final = RunError(message="upstream sent malformed stream data", reason="server_error")
#: The stream ended without ``[DONE]``: the reply may be cut short, so the run fails.
STREAM_CUT: Final = RunError(message="upstream stream ended before [DONE]", reason="server_error")
#: The stream ended (``[DONE]`` included) before any chunk carried a ``finish_reason``: the
#: upstream stopped generating without saying why (llama.cpp does so to a stream it
#: interrupts for another request), so the reply may be cut short and the run fails.
NO_FINISH_REASON: Final = RunError(message="upstream stream ended without a finish_reason", reason="server_error")
#: A 200 with no body at all (llama.cpp answers a streamed request that overflows its context
#: this way): no completion, so the run fails.
EMPTY_ANSWER: Final = RunError(message="upstream answered 200 with an empty body", reason="server_error")

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
    """OpenClaw's failure reason for an upstream HTTP error status (``None``: unclassified).

    Unlisted statuses fall into their class: any other 4xx is ``format`` (the request was
    refused: the client gets the upstream's status and message), any other 5xx is
    ``server_error``.
    """
    reason = _STATUS_REASONS.get(status)
    if reason is None and 400 <= status <= 499:
        return "format"
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


def tool_choice_value(choice: ToolChoice) -> str | dict[str, Any] | None:
    """The ``tool_choice`` to send upstream for the client's, or ``None`` to leave it out.

    ``auto`` is left out: the run cannot tell a client's ``"auto"`` from no ``tool_choice``
    at all, and with tools an OpenAI-compatible server defaults to ``auto``, so the call is
    what the client's own would have been. ``none`` and ``required`` go as those strings; a
    named function as OpenAI's object.
    """
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    if choice.mode in ("none", "required"):
        return choice.mode
    return None


def build_request_body(model: str, messages: Sequence[Message], request: AgentRunRequest) -> dict[str, Any]:
    """The JSON body of the ``/chat/completions`` call for this run.

    It streams when the run does (``request.stream``), asking for the usage chunk; a run
    nobody watches live asks for the whole completion, which the provider answers in one
    body. Options the client did not give are left out, so the provider's defaults apply.
    The client's tools go as it sent them, with its ``tool_choice`` (see
    :func:`tool_choice_value`): ``none`` keeps the tools and forbids calling them, so the
    model still knows what it was offered.
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
        # Never without tools: OpenAI refuses a tool_choice when no tools are given.
        choice = tool_choice_value(request.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
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
        """The events closing a complete stream: tool calls, usage, then ``RunEnd``.

        A stream in which no chunk carried a ``finish_reason`` is not complete, whatever
        came before: it ends with :data:`NO_FINISH_REASON` alone.
        """
        if self.finish_reason is None:
            return [NO_FINISH_REASON]
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
    # A body that parsed as a whole completion is complete: a missing finish_reason is just
    # a server's omission (a stream without one may be cut short, hence StreamedCompletion.end).
    if state.finish_reason is None:
        state.finish_reason = "stop"
    state.usage = usage_from_openai(payload.get("usage"))
    return events + state.end()


def http_error(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> RunError:
    """The ``RunError`` for an upstream answer with error status ``status`` and (the start of) ``body``.

    The upstream's own message and code are kept when the body is an OpenAI error object;
    otherwise the message names the status. ``retry_after`` comes from the response
    ``headers`` (:func:`retry_after_s`).
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
        retry_after=retry_after_s(headers or {}),
    )


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The seconds an error response asks the caller to wait, or ``None`` when it does not say.

    As the ``openai`` SDK reads them: ``retry-after-ms`` (milliseconds, OpenAI's and
    LiteLLM's) first, then ``Retry-After`` as seconds or as an HTTP date (RFC 9110 10.2.3),
    ``now`` being the current time (``time.time()`` when not given). A date in the past is
    0; a value that is neither, negative or not finite is ignored.
    """
    # Names compare case-insensitively, whatever mapping the headers come in.
    lowered = {name.lower(): value for name, value in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        millis = _finite_non_negative(raw_ms)
        if millis is not None:
            return millis / 1000
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    seconds = _finite_non_negative(raw)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # "-0000" gives a naive time; RFC 5322 says it is UTC all the same.
        when = when.replace(tzinfo=datetime.timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _finite_non_negative(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def estimate_usage(body: Mapping[str, Any], output: Iterable[str]) -> RunUsage:
    """The usage of a call whose upstream reported none, estimated from what went each way.

    With :mod:`.tokens`, the one estimate the gateway uses (the context budget too): input is
    the request's ``messages`` (4 UTF-8 bytes a token, rounded up, plus each message's
    template overhead, a fixed count per image, the reply's priming) and its ``tools`` as
    compact JSON; output is the reply's text and its tool calls' names and arguments. An
    estimate, not a count: it errs on the high side for ordinary text.
    """
    messages = body.get("messages")
    prompt = estimate_messages(m for m in (messages if isinstance(messages, list) else ()) if isinstance(m, Mapping))
    tools = body.get("tools")
    if tools:
        prompt += estimate_json(tools)
    return RunUsage(input=prompt, output=estimate_text("".join(output)))
