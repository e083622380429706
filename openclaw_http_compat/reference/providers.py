"""Model providers of the reference gateway: where an agent's reply comes from.

Two kinds exist:

* ``echo``, built in: needs no config, works offline, answers ``echo: <message>`` word by word.
* ``openai-completions``: any ``models.providers.<id>`` with that ``api``; it calls the
  provider's OpenAI-compatible ``POST {baseUrl}/chat/completions`` through the gateway's
  ``aiohttp.ClientSession``, streaming when the run streams.

This module is the transport: it sends the call, reads the answer as it arrives and ends the
call properly, however the run ends. What goes into the call and what the answer means is
:mod:`.openai_api`'s job, and parsing the event stream :mod:`.sse`'s. Every failure is
reported as a :class:`~openclaw_http_compat.RunError`, never raised, and logged once, at
warning, by this module's logger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Final, Protocol

import aiohttp
import attrs

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
    ToolCall,
    __version__,
)
from openclaw_http_compat.client import env_proxy, send_request, transport_errors
from openclaw_http_compat.errors import TransportError

from .config import GatewayConfig, ProviderConfig
from .metrics import UpstreamMetrics
from .openai_api import (
    EMPTY_ANSWER,
    MALFORMED_STREAM,
    STREAM_CUT,
    Message,
    StreamedCompletion,
    build_request_body,
    estimate_usage,
    http_error,
    whole_completion,
)
from .sse import SSEDecoder
from .upstream_call import UpstreamCall

__all__ = (
    "CONNECT_TIMEOUT_S",
    "ECHO_PROVIDER_ID",
    "IDLE_TIMEOUT_S",
    "OPENAI_COMPLETIONS_API",
    "EchoProvider",
    "OpenAICompletionsProvider",
    "Provider",
    "make_provider",
)

log = logging.getLogger(__name__)

ECHO_PROVIDER_ID: Final = "echo"
OPENAI_COMPLETIONS_API: Final = "openai-completions"
#: Longest silence allowed between two pieces of a streamed upstream response (and before its head).
IDLE_TIMEOUT_S: Final = 120.0
#: Longest wait for a connection to the upstream (or its proxy), capped by the call's total.
CONNECT_TIMEOUT_S: Final = 30.0
_MAX_ERROR_BODY_BYTES: Final = 64 * 1024
#: How much of an upstream's error message a log line keeps.
_LOGGED_MESSAGE_CHARS: Final = 200
_USER_AGENT: Final = f"openclaw-http-compat/{__version__}"
_WORD: Final = re.compile(r"\S+\s*")


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


def make_provider(
    config: GatewayConfig,
    provider_id: str,
    session: aiohttp.ClientSession,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    metrics: UpstreamMetrics | None = None,
) -> Provider | RunError:
    """The provider ``provider_id`` names, or the ``RunError`` explaining why there is none.

    A configured provider wins over the built-in ``echo``. ``metrics`` measures its calls.
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
    return OpenAICompletionsProvider(provider, session, idle_timeout_s=idle_timeout_s, metrics=metrics)


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


def _transport_failure(exc: TransportError) -> RunError:
    """The one mapping of a failed provider call to the run's error.

    A host that cannot be reached (refused, DNS, TLS, proxy) is ``unreachable``, which the
    plugin answers as 502 ``upstream unreachable``: the operator's to fix, and unlike an
    upstream's 500 nothing reached the model.
    """
    if exc.reason == "timeout":
        return RunError(message="upstream provider timeout", reason="timeout")
    if exc.reason == "unreachable":
        return RunError(message="upstream unreachable", reason="unreachable")
    return RunError(message="upstream provider connection failed", reason="server_error")


class OpenAICompletionsProvider:
    """A provider speaking the OpenAI Chat Completions API (``api: "openai-completions"``).

    Calls go through ``session`` to ``{base_url}/chat/completions``, through the provider's
    ``proxy`` when it has one, else through the environment's (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``NO_PROXY``, read once, here).

    **Usage is measured, never invented.** A streamed call asks for the usage chunk
    (``stream_options.include_usage``). When the upstream reports no usage all the same
    (llama.cpp's streams never do) or only zeros, the provider estimates it with
    :func:`~.openai_api.estimate_usage`, with the gateway's one estimator (:mod:`.tokens`,
    which the context budget uses too): a token is 4 UTF-8 bytes, rounded up, of each text
    (content, tool calls), plus 4 tokens a message, 768 an image and 3 for the reply, and the
    tools' JSON, as input; the reply's text and tool calls as output. The estimate is an
    ordinary ``RunUsage``, so a real reply never counts 0 tokens.

    **Failures.** An error status becomes a ``RunError`` with OpenClaw's reason for it
    (``overloaded`` for 503 and 529, ``rate_limit`` with ``retry_after`` from
    ``Retry-After``/``retry-after-ms`` for 429, ``format``, ``auth``, … with the upstream's
    message for other 4xx, ``server_error`` for 5xx); a host that cannot be reached is
    ``unreachable``; a stream that breaks off, ends before any chunk carried a
    ``finish_reason`` or is empty is a ``server_error``. Each failure is logged once at
    warning: provider id, model, run id, HTTP status, the upstream's error code and the first
    200 characters of its message, never the conversation. The API key and configured header
    values are masked (``***``) in the error's message, for the client as for the log.

    Args:
        config: the provider's config; ``base_url`` must be set (e.g. ``http://host/v1``).
        session: the gateway's client session; the caller owns and closes it.
        idle_timeout_s: the longest silence allowed before the head and between body pieces
            of a streamed answer; ``config.timeout_ms`` bounds the whole call.
        metrics: where each call's duration and failure are counted (see :mod:`.upstream_call`
            for its span and ``traceparent``).
    """

    def __init__(
        self,
        config: ProviderConfig,
        session: aiohttp.ClientSession,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        metrics: UpstreamMetrics | None = None,
    ) -> None:
        if not config.base_url:
            raise ValueError(f"provider {config.id!r} has no base_url")
        self.config = config
        self._session = session
        self._idle_timeout_s = idle_timeout_s
        self._metrics = metrics
        self.url = f"{config.base_url.rstrip('/')}/chat/completions"
        self.proxy = config.proxy or env_proxy(self.url)
        self._headers = {stream: self._make_headers(stream) for stream in (False, True)}
        # Credentials never reach a client or a log line, even when an upstream echoes them back.
        # Short header values (an org name) are no credential worth garbling messages for.
        secrets = (config.api_key, *(value for _, value in config.headers))
        self._secrets = tuple(secret for secret in secrets if secret and len(secret) >= 8)
        total_s = config.timeout_ms / 1000
        # A whole completion arrives only once generated: silence until then is no stall,
        # so only a streamed call gets the idle limit (sock_read).
        self._timeouts = {
            stream: aiohttp.ClientTimeout(
                total=total_s,
                sock_connect=min(CONNECT_TIMEOUT_S, total_s),
                sock_read=idle_timeout_s if stream else None,
            )
            for stream in (False, True)
        }

    def _make_headers(self, stream: bool) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": _USER_AGENT,
        }
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        # Configured headers come last so they can replace ours (e.g. an ``api-key`` scheme).
        headers.update(self.config.headers)
        return headers

    async def stream(
        self, model: str, messages: Sequence[Message], request: AgentRunRequest
    ) -> AsyncGenerator[AgentEvent, None]:
        """Stream the provider's reply; every failure ends the stream with a ``RunError``.

        Closing the generator (the run was aborted) closes the upstream response at once, so
        the upstream stops generating.
        """
        call = UpstreamCall(self.config.id, model, self._metrics)
        error: RunError | None = None
        try:
            async with contextlib.aclosing(self._call(model, messages, request, call)) as events:
                async for event in events:
                    if isinstance(event, RunError):
                        error = event
                    elif isinstance(event, RunUsage):
                        call.usage(event)
                    yield event
        finally:
            call.end(error)

    async def _call(
        self, model: str, messages: Sequence[Message], request: AgentRunRequest, call: UpstreamCall
    ) -> AsyncGenerator[AgentEvent, None]:
        body = build_request_body(model, messages, request)
        data = json.dumps(body).encode()
        error: RunError | None = None
        error_detail: str | None = None
        status: int | None = None
        try:
            with transport_errors():
                resp = await send_request(
                    self._session,
                    "POST",
                    self.url,
                    data=data,
                    headers=call.headers(self._headers[request.stream]),
                    timeout=self._timeouts[request.stream],
                    proxy=self.proxy,
                )
                status = resp.status
                try:
                    if resp.status >= 400:
                        raw = await _read_capped(resp, _MAX_ERROR_BODY_BYTES)
                        error = http_error(resp.status, raw, resp.headers)
                    else:
                        # What the reply said, for a usage estimate should the upstream report none.
                        output: list[str] = []
                        measured = False
                        events = _answer_events(resp, None if request.stream else self._idle_timeout_s)
                        async with contextlib.aclosing(events):
                            async for event in events:
                                if isinstance(event, RunError):
                                    error = event
                                    break
                                if isinstance(event, TextDelta):
                                    output.append(event.text)
                                elif isinstance(event, ToolCall):
                                    output += (event.name, event.arguments)
                                elif isinstance(event, RunUsage):
                                    if not (event.input or event.output or event.cache_read or event.total):
                                        continue  # all zeros is no measurement
                                    measured = True
                                elif not measured:  # RunEnd, the last event
                                    yield estimate_usage(body, output)
                                yield event
                finally:
                    # A body read to its end leaves a reusable connection. Anything else (an
                    # abort, a refused or cut stream, [DONE] before the body's end) must not go
                    # back to the pool; closing also tells the upstream to stop generating.
                    if resp.content.is_eof():
                        resp.release()
                    else:
                        resp.close()
        except TransportError as exc:
            error = _transport_failure(exc)
            error_detail = str(exc)
        if error is not None:
            error = self._masked(error)
            self._log_failure(model, request.run_id, status, error, error_detail)
            yield error

    def _masked(self, error: RunError) -> RunError:
        """``error`` with the provider's credentials masked in its message.

        An upstream may echo the key it was sent ("Incorrect API key provided: sk-…"), and a
        4xx message goes on to the client and to the log.
        """
        message = error.message
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return error if message == error.message else attrs.evolve(error, message=message)

    def _log_failure(
        self, model: str, run_id: str, status: int | None, error: RunError, detail: str | None
    ) -> None:
        """The one log line of a failed call: who failed, how, and the start of what it said."""
        log.warning(
            "provider %s failed: model=%s run=%s status=%s reason=%s code=%s message=%r%s",
            self.config.id,
            model,
            run_id,
            status if status is not None else "-",
            error.reason,
            error.code,
            error.message[:_LOGGED_MESSAGE_CHARS],
            f" ({detail})" if detail else "",
        )


async def _answer_events(resp: aiohttp.ClientResponse, idle_s: float | None) -> AsyncGenerator[AgentEvent, None]:
    """The events of a successful answer, whole (JSON) or streamed; ends with ``RunEnd`` or ``RunError``.

    ``idle_s`` bounds each read of a stream that came though a whole completion was asked
    for: such a call's ClientTimeout has no sock_read, and aiohttp cannot change a request's
    timeouts once it is sent, so the idle limit comes back here.
    """
    if resp.content_type == "application/json":
        raw = await resp.read()
        for event in whole_completion(_json_or_none(raw)) if raw else [EMPTY_ANSWER]:
            yield event
        return
    async with contextlib.aclosing(_stream_events(resp, idle_s)) as events:
        async for event in events:
            yield event


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or only its first ``limit`` bytes (the rest is left unread)."""
    pieces: list[bytes] = []
    size = 0
    while size < limit and (piece := await resp.content.read(limit - size)):
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


async def _stream_events(resp: aiohttp.ClientResponse, idle_s: float | None) -> AsyncGenerator[AgentEvent, None]:
    """The events of an upstream SSE body; ends at ``[DONE]`` or with a ``RunError``.

    With ``idle_s``, each read may wait that long at most (the caller says why).
    """
    decoder = SSEDecoder()
    completion = StreamedCompletion()
    received = False
    while True:
        if idle_s is None:
            piece = await resp.content.readany()
        else:
            # Around the read only, never across a yield: the timeout cancels this task.
            async with asyncio.timeout(idle_s):
                piece = await resp.content.readany()
        try:
            batch = decoder.feed(piece) if piece else decoder.end()
        except ValueError:
            yield MALFORMED_STREAM
            return
        for sse in batch:
            events = completion.data(sse.data)
            for event in events:
                yield event
            if events and isinstance(events[-1], (RunEnd, RunError)):
                return
        if not piece:
            yield STREAM_CUT if received else EMPTY_ANSWER
            return
        received = True
