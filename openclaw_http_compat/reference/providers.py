"""Model providers of the reference gateway: where an agent's reply comes from.

Two kinds exist:

* ``echo``, built in: needs no config, works offline, answers ``echo: <message>`` word by word.
* ``openai-completions``: any ``models.providers.<id>`` with that ``api``; it calls the
  provider's OpenAI-compatible ``POST {baseUrl}/chat/completions`` (through
  :class:`~.http1.HttpClient`), streaming when the run streams.

A provider turns one model call into :data:`~openclaw_http_compat.AgentEvent` values and
reports every failure as a :class:`~openclaw_http_compat.RunError`, classified the way OpenClaw
classifies provider failures (``auth``, ``rate_limit``, ``timeout``, …).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Final, Protocol, TypeAlias

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

from .config import GatewayConfig, ProviderConfig
from .http1 import HttpClient, HttpClientError, Response, Timeouts

__all__ = (
    "CONNECT_TIMEOUT_S",
    "ECHO_PROVIDER_ID",
    "IDLE_TIMEOUT_S",
    "OPENAI_COMPLETIONS_API",
    "EchoProvider",
    "Message",
    "OpenAICompletionsProvider",
    "Provider",
    "SSEDecoder",
    "ServerSentEvent",
    "build_request_body",
    "make_provider",
    "reason_for_status",
    "usage_from_openai",
)

log = logging.getLogger(__name__)

ECHO_PROVIDER_ID: Final = "echo"
OPENAI_COMPLETIONS_API: Final = "openai-completions"
# Longest silence allowed between two pieces of an upstream response (and before its headers).
IDLE_TIMEOUT_S: Final = 120.0
CONNECT_TIMEOUT_S: Final = 30.0
# An SSE line longer than this is not a chat completion stream.
MAX_SSE_LINE_CHARS: Final = 8 * 1024 * 1024
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024

Message: TypeAlias = dict[str, Any]
"""One OpenAI chat message (``{"role": ..., "content": ...}``)."""

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
_WORD: Final = re.compile(r"\S+\s*")
_EOL: Final = re.compile(r"\r\n|\r|\n")


class Provider(Protocol):
    """Answers one model call of a run."""

    def stream(
        self, model: str, messages: Sequence[Message], request: AgentRunRequest
    ) -> AsyncGenerator[AgentEvent, None]:
        """Stream the reply to ``messages``; the last event is ``RunEnd`` or ``RunError``.

        Args:
            model: the model id at this provider (the part after ``provider/``).
            messages: the full conversation to send, system message first.
            request: the run; its options, client tools and message.
        """
        ...


def reason_for_status(status: int) -> str | None:
    """OpenClaw's failure reason for an upstream HTTP error status (``None``: unclassified)."""
    reason = _STATUS_REASONS.get(status)
    if reason is None and 500 <= status <= 599:
        return "server_error"
    return reason


def make_provider(
    config: GatewayConfig,
    provider_id: str,
    http: HttpClient,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> Provider | RunError:
    """The provider ``provider_id`` names, or the ``RunError`` explaining why there is none.

    A configured provider wins over the built-in ``echo``.
    """
    provider = config.provider(provider_id)
    if provider is None:
        if provider_id == ECHO_PROVIDER_ID:
            return EchoProvider()
        return RunError(message=f"Unknown provider '{provider_id}'", reason="model_not_found")
    if provider.api != OPENAI_COMPLETIONS_API:
        return RunError(message=f"Provider '{provider_id}' uses the unsupported api '{provider.api}'")
    if not provider.base_url:
        return RunError(message=f"Provider '{provider_id}' has no baseUrl")
    return OpenAICompletionsProvider(provider, http, idle_timeout_s=idle_timeout_s)


class EchoProvider:
    """The built-in offline provider: replies ``echo: <message>``, one word per delta.

    Each delta is a word with the whitespace that follows it, so the deltas join back to the
    exact reply. Usage counts the message's words as input and the deltas as output.
    """

    async def stream(
        self, model: str, messages: Sequence[Message], request: AgentRunRequest
    ) -> AsyncGenerator[AgentEvent, None]:
        """Stream the echo of ``request.message``."""
        words = _WORD.findall(f"echo: {request.message}")
        for word in words:
            # Yield control between deltas, as a network provider would.
            await asyncio.sleep(0)
            yield TextDelta(word)
        yield RunUsage(input=len(request.message.split()), output=len(words))
        yield RunEnd("stop")


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


def _error_fields(payload: object) -> tuple[str | None, str | None]:
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
class _Completion:
    """What a streamed completion has said so far."""

    calls: dict[int, _ToolCallParts] = attrs.field(factory=dict)
    usage: RunUsage | None = None
    finish_reason: str | None = None

    def chunk(self, payload: Mapping[str, Any]) -> list[AgentEvent]:
        """Take in one ``chat.completion.chunk``; returns its text (or the in-band error)."""
        if payload.get("error") is not None:
            message, code = _error_fields(payload)
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


def _whole_completion(payload: object) -> list[AgentEvent]:
    """Events for a whole ``chat.completion`` (asked for, or from a server that ignores ``stream``)."""
    if not isinstance(payload, Mapping):
        return [RunError(message="upstream sent a malformed response", reason="server_error")]
    state = _Completion()
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


class OpenAICompletionsProvider:
    """A provider speaking the OpenAI Chat Completions API (``api: "openai-completions"``).

    Args:
        config: the provider's config; ``base_url`` must be set (e.g. ``http://host/v1``).
        http: the gateway's HTTP client for provider calls.
        idle_timeout_s: the longest silence allowed before the headers and between body chunks;
            ``config.timeout_ms`` bounds the whole call.
    """

    def __init__(
        self, config: ProviderConfig, http: HttpClient, *, idle_timeout_s: float = IDLE_TIMEOUT_S
    ) -> None:
        if not config.base_url:
            raise ValueError(f"provider {config.id!r} has no base_url")
        self.config = config
        self._http = http
        self._idle_timeout_s = idle_timeout_s
        self.url = f"{config.base_url.rstrip('/')}/chat/completions"
        self._headers = {stream: self._make_headers(stream) for stream in (False, True)}

    def _make_headers(self, stream: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        # Configured headers come last so they can replace ours (e.g. an ``api-key`` scheme).
        headers.update(self.config.headers)
        return headers

    async def stream(
        self, model: str, messages: Sequence[Message], request: AgentRunRequest
    ) -> AsyncGenerator[AgentEvent, None]:
        """Stream the provider's reply; every failure ends the stream with a ``RunError``."""
        total_s = self.config.timeout_ms / 1000
        # A whole completion arrives only once generated: silence until then is no stall,
        # so only a streamed call gets the idle limit.
        timeouts = Timeouts(
            total=total_s,
            connect=min(CONNECT_TIMEOUT_S, total_s),
            idle=self._idle_timeout_s if request.stream else None,
        )
        body = json.dumps(build_request_body(model, messages, request)).encode()
        error: RunError | None = None
        try:
            resp = await self._http.request(
                "POST", self.url, headers=self._headers[request.stream], body=body, timeouts=timeouts
            )
            async with resp:
                if resp.status >= 400:
                    error = await _http_error(resp)
                elif resp.content_type == "application/json":
                    try:
                        payload: object = await resp.json()
                    except ValueError:
                        payload = None
                    for event in _whole_completion(payload):
                        yield event
                else:
                    # A server streaming though asked not to: the idle limit applies again.
                    resp.idle_timeout = self._idle_timeout_s
                    async with contextlib.aclosing(_stream_events(resp)) as events:
                        async for event in events:
                            yield event
        except TimeoutError:
            log.info("provider %s timed out (run %s)", self.config.id, request.run_id)
            error = RunError(message="upstream provider timeout", reason="timeout")
        except (HttpClientError, OSError) as exc:
            log.info("provider %s failed (run %s): %r", self.config.id, request.run_id, exc)
            error = RunError(message="upstream provider connection failed", reason="server_error")
        if error is not None:
            yield error


async def _http_error(resp: Response) -> RunError:
    raw = await resp.read(_MAX_ERROR_BODY_BYTES)
    try:
        payload: object = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        payload = None
    message, code = _error_fields(payload)
    return RunError(
        message=message or f"upstream provider returned HTTP {resp.status}",
        reason=reason_for_status(resp.status),
        status=resp.status,
        code=code,
    )


async def _stream_events(resp: Response) -> AsyncGenerator[AgentEvent, None]:
    """The events of an upstream SSE body; ends at ``[DONE]`` or with a ``RunError``."""
    decoder = SSEDecoder()
    state = _Completion()
    finished = False
    try:
        at_eof = False
        while not at_eof:
            chunk = await resp.readany()
            at_eof = not chunk
            try:
                batch = decoder.end() if at_eof else decoder.feed(chunk)
            except ValueError:
                yield RunError(message="upstream sent malformed stream data", reason="server_error")
                return
            for sse in batch:
                if sse.data == "[DONE]":
                    finished = True
                    for event in state.end():
                        yield event
                    return
                try:
                    payload = json.loads(sse.data)
                except ValueError:
                    payload = None
                if not isinstance(payload, dict):
                    yield RunError(message="upstream sent malformed stream data", reason="server_error")
                    return
                for event in state.chunk(payload):
                    yield event
                    if isinstance(event, RunError):
                        return
        yield RunError(message="upstream stream ended before [DONE]", reason="server_error")
    finally:
        if not finished:
            # Drop the connection rather than hand a half-read one back to the pool.
            resp.close()
