"""The one mock OpenAI-compatible upstream, shared by the tests, the benchmarks and the soak.

``POST /v1/chat/completions`` records what it received and answers with a :class:`Reply`: the
next one queued with :meth:`MockUpstream.reply`, else :attr:`MockUpstream.default`, which may
also be a :data:`Responder` that picks the reply from the request. The replies:

* :class:`StreamReply`, :class:`ErrorReply`, :class:`JsonReply`, :class:`RawReply`,
  :class:`StallReply`: scripted, for the tests (an SSE stream of deltas, tool calls and usage,
  an error status, a whole JSON body, exact bytes, a stall, a stream cut mid-way);
* :class:`CompletionReply`: what a provider does with an ordinary request (a JSON completion,
  or with ``stream: true`` an SSE stream, usage when ``stream_options.include_usage`` asks),
  with no added latency by default, for the benchmarks; with ``delay_s`` and ``repeat_s``, the
  soak's slow and endless replies;
* what real servers were seen doing (``real-upstreams.md``): :class:`ServerReply` (a completion
  whole or streamed as asked, with llama.cpp's quirks as options: no usage in streams, a
  stream interrupted with no ``finish_reason``; LiteLLM's extra usage fields in
  :data:`LITELLM_USAGE`), :class:`EmptyReply` (llama.cpp's empty 200 to a streamed request
  overflowing its context), :class:`LiteLLMErrorReply` (a plain error status with
  ``Retry-After`` before any byte of a stream: 429, 400, 500, 529) and
  :class:`ToolChoiceResponder` (calls the function a named ``tool_choice`` names, as llama.cpp
  does).

:class:`ContextLimit` is a :data:`Responder` acting as llama.cpp's server with a small
``n_ctx``: it refuses a request whose tokens exceed the context (400
``context_length_exceeded``, or an empty 200 body when streaming) and otherwise gives its reply.

A behaviour of real upstreams not covered yet is a new :class:`Reply` subclass with its own
:meth:`Reply.answer` (or a :data:`Responder`): the server needs no change.

:attr:`MockUpstream.stats` counts requests, how they ended and how many were open at once
(:class:`UpstreamStats`); ``GET /_mock/stats`` reports them with the TCP connections open
(``?close_idle=1`` closes idle keep-alive connections first). Serve :attr:`MockUpstream.app`
in-process (the ``mock_upstream`` fixture in ``tests/reference/mock_upstream.py``) or in a
process of its own (``python -m benchmarks.servers upstream``, and the soak's upstream), then
call :meth:`MockUpstream.bind` with the runner.

Why it lives here: ``benchmarks/`` is a top-level package of the repository that the installed
distribution leaves out (``setup.cfg``), so this is no part of the package's API, and every
user imports ``benchmarks.mock_upstream`` with no path hack: ``python -m benchmarks`` and
``python -m benchmarks.soak`` run from the repository root (on ``sys.path``), their child
processes get the root on ``PYTHONPATH`` (:func:`benchmarks.common.child_env`), and pytest puts
the root on ``sys.path`` because ``tests/`` is a package. The dependency runs one way, tests to
benchmarks: this module imports neither pytest nor the tests, so a benchmark process does not
need the test tree or the testing extras.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import attrs
from aiohttp import web

from .common import (
    CHAT_PATH,
    REPLY_PIECES,
    SSE_HEADERS,
    USAGE,
    chunk_body,
    completion_body,
    data_frame,
    dumps,
    usage_chunk_body,
)

__all__ = (
    "MAX_WAIT_S",
    "STATS_PATH",
    "CompletionReply",
    "ContextLimit",
    "ErrorReply",
    "EmptyReply",
    "JsonReply",
    "LITELLM_USAGE",
    "LiteLLMErrorReply",
    "MockUpstream",
    "RawReply",
    "Received",
    "Reply",
    "Responder",
    "ServerReply",
    "StallReply",
    "StreamReply",
    "ToolChoiceResponder",
    "UpstreamStats",
    "openai_error",
)

#: The longest any scripted wait lasts, so a broken test cannot hang the suite.
MAX_WAIT_S: Final = 30.0
#: ``GET`` this path for :attr:`MockUpstream.stats` and the open connections, as JSON.
STATS_PATH: Final = "/_mock/stats"
def openai_error(
    message: str, *, type: str = "invalid_request_error", code: str | None = None  # noqa: A002
) -> dict[str, Any]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


_DONE: Final = data_frame("[DONE]")


async def _open_stream(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    return response


def _new_completion(received: Received) -> tuple[str, str, int]:
    """The model (as asked), a fresh ``id`` and the current ``created`` of an answer, as a provider's are."""
    return str(received.json.get("model") or "m"), f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


# --- replies ----------------------------------------------------------------------------------


@attrs.frozen
class Received:
    """One request the upstream received."""

    json: dict[str, Any]
    headers: dict[str, str]


class Reply(abc.ABC):
    """What the upstream does with one request. A new upstream behaviour is a new subclass."""

    __slots__ = ()

    @property
    def endless(self) -> bool:
        """Whether only the client going away ends the reply (counted in :attr:`UpstreamStats.endless`)."""
        return False

    @abc.abstractmethod
    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """Answer ``request``, whose JSON body and headers are ``received``."""


#: Picks the reply from the request (as :attr:`MockUpstream.default`, or queued).
Responder: TypeAlias = Callable[[Received], Reply]


@attrs.frozen(kw_only=True)
class StreamReply(Reply):
    """Answer with an SSE stream.

    Frames, in order: a role chunk, one chunk per delta, one chunk per tool-call fragment,
    then (unless ``cut``) the ``finish_reason`` chunk, the ``usage`` chunk and ``[DONE]``.

    Attributes:
        deltas: content pieces, one chunk each.
        tool_calls: raw ``delta.tool_calls`` items (with ``index``), one chunk each.
        usage: the OpenAI ``usage`` object, sent in a chunk with ``choices: []``.
        finish_reason: the last choice chunk's ``finish_reason``.
        error: sent as an in-band ``{"error": ...}`` frame after the deltas; the stream ends there.
        cut: after the deltas, end the body without ``[DONE]`` (``"eof"``: a clean end of the
            chunked body; ``"abort"``: the TCP connection is dropped).
        hold: after the deltas, wait for this event before finishing.
        stall: after the deltas, wait until the client goes away.
        newline: the line ending used in frames.
        comment: send a ``: comment`` line before the first frame.
        delay_s: sleep between frames.
    """

    deltas: Sequence[str] = ("Hello", " world")
    tool_calls: Sequence[Mapping[str, Any]] = ()
    usage: Mapping[str, Any] | None = None
    finish_reason: str | None = "stop"
    error: Mapping[str, Any] | None = None
    cut: Literal["eof", "abort"] | None = None
    hold: asyncio.Event | None = None
    stall: bool = False
    newline: str = "\n"
    comment: bool = False
    delay_s: float = 0.0

    @property
    def endless(self) -> bool:
        """A stalled stream ends only when the client goes away."""
        return self.stall

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The frames described in the class docstring."""
        response = await _open_stream(request, {"Content-Type": "text/event-stream"})
        model = str(received.json.get("model"))
        nl = self.newline

        async def send(value: object) -> None:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            await response.write(data_frame(value, nl))

        if self.comment:
            await response.write(f": upstream keep-alive{nl}{nl}".encode())
        await send(chunk_body("chatcmpl-mock", 0, model, {"role": "assistant", "content": ""}))
        for delta in self.deltas:
            await send(chunk_body("chatcmpl-mock", 0, model, {"content": delta}))
        for call in self.tool_calls:
            await send(chunk_body("chatcmpl-mock", 0, model, {"tool_calls": [dict(call)]}))
        if self.error is not None:
            await send({"error": dict(self.error)})
            return response
        if self.hold is not None:
            async with asyncio.timeout(MAX_WAIT_S):
                await self.hold.wait()
        if self.stall:
            await asyncio.sleep(MAX_WAIT_S)
        if self.cut == "eof":
            return response
        if self.cut == "abort":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(MAX_WAIT_S)  # cancelled once the connection is gone
            return response
        await send(chunk_body("chatcmpl-mock", 0, model, {}, self.finish_reason))
        if self.usage is not None:
            await send(usage_chunk_body("chatcmpl-mock", 0, model, dict(self.usage)))
        await send("[DONE]")
        return response


@attrs.frozen(kw_only=True)
class ErrorReply(Reply):
    """Answer with an error status; ``body`` is sent as JSON, or as text when a ``str``."""

    status: int
    body: Mapping[str, Any] | str | None = None

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The status and body, at once."""
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body)
        return web.json_response(self.body, status=self.status)


@attrs.frozen(kw_only=True)
class JsonReply(Reply):
    """Answer 200 with a whole JSON body, after ``delay_s`` (generating, or ignoring ``stream: true``)."""

    body: Mapping[str, Any]
    delay_s: float = 0.0

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The body, after the delay."""
        await asyncio.sleep(self.delay_s)
        return web.json_response(self.body)


@attrs.frozen(kw_only=True)
class RawReply(Reply):
    """Answer 200 ``text/event-stream`` with exactly these byte pieces, written one by one."""

    pieces: Sequence[bytes]

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The pieces, 10 ms apart, so that each reaches the client on its own."""
        response = await _open_stream(request, {"Content-Type": "text/event-stream"})
        for piece in self.pieces:
            await response.write(piece)
            await asyncio.sleep(0.01)
        return response


@attrs.frozen
class StallReply(Reply):
    """Never answer: wait (without sending headers) until the client goes away."""

    @property
    def endless(self) -> bool:
        """Only the client going away ends it."""
        return True

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """Nothing, until :data:`MAX_WAIT_S` has passed (then a 504, should a test still wait)."""
        await asyncio.sleep(MAX_WAIT_S)
        return web.Response(status=504)


@attrs.frozen(kw_only=True)
class CompletionReply(Reply):
    """Answer as a provider answers an ordinary request: the benchmarks' and the soak's reply.

    Without ``stream: true``, a whole completion of the joined ``pieces``. With it, an SSE
    stream as OpenAI sends it: a role chunk, one chunk per piece, the ``stop`` chunk, the usage
    chunk when ``stream_options.include_usage`` asks for it, and ``[DONE]``. Every answer has a
    fresh ``id`` and the current ``created``, as a provider's do.

    Attributes:
        pieces: the content, one chunk each.
        usage: the OpenAI ``usage`` object.
        delay_s: sleep before each piece, as a model generating it does; a whole completion
            comes after as long as streaming the pieces takes.
        repeat_s: stream the pieces over and over for this long: a reply that only the client
            going away ends (a whole completion comes after this long).
    """

    pieces: Sequence[str] = REPLY_PIECES
    usage: Mapping[str, Any] = USAGE
    delay_s: float = 0.0
    repeat_s: float = 0.0

    @property
    def endless(self) -> bool:
        """Whether the pieces repeat until the client goes away."""
        return self.repeat_s > 0

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The completion, whole or streamed as the request asks."""
        body = received.json
        model, completion_id, created = _new_completion(received)
        if not body.get("stream"):
            wait = self.repeat_s or self.delay_s * len(self.pieces)
            if wait:
                await asyncio.sleep(wait)
            completion = completion_body(completion_id, created, model, "".join(self.pieces), self.usage)
            return web.Response(body=dumps(completion).encode(), content_type="application/json")
        response = await _open_stream(request, SSE_HEADERS)
        await response.write(data_frame(chunk_body(completion_id, created, model, {"role": "assistant", "content": ""})))
        if self.delay_s or self.repeat_s:
            await self._slow_pieces(response, completion_id, created, model)
        else:
            # The benchmarks' hot path: no timer, no loop beyond the writes.
            for piece in self.pieces:
                await response.write(data_frame(chunk_body(completion_id, created, model, {"content": piece})))
        await response.write(data_frame(chunk_body(completion_id, created, model, {}, "stop")))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            await response.write(data_frame(usage_chunk_body(completion_id, created, model, self.usage)))
        await response.write(_DONE)
        await response.write_eof()
        return response

    async def _slow_pieces(self, response: web.StreamResponse, completion_id: str, created: int, model: str) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self.repeat_s
        while True:
            for piece in self.pieces:
                await asyncio.sleep(self.delay_s)
                await response.write(data_frame(chunk_body(completion_id, created, model, {"content": piece})))
            if loop.time() >= until:
                return


@attrs.define(kw_only=True)
class ContextLimit:
    """A :data:`Responder` acting as llama.cpp's server (llama-cpp-python) with ``n_ctx`` tokens.

    It counts the request's tokens as a chatml template would read them: each message's role
    markers (:attr:`message_overhead`), its words and punctuation marks as one token each
    (content text, tool-call names and arguments), and the reply's priming; the completion
    takes ``max_tokens`` (0 when not given). Over ``n_ctx``, it refuses as llama.cpp does: 400
    ``invalid_request_error`` with code ``context_length_exceeded`` and llama-cpp-python's
    message, or, when the request streams, 200 with an empty body. Under it, :attr:`reply`
    (a reply, or a responder picking one).

    Attributes:
        n_ctx: the context size.
        reply: what a request that fits gets.
        prompt_tokens: the prompt tokens of every request, in order (refused ones too).
        refused: how many requests were refused.
    """

    n_ctx: int = 256
    reply: Reply | Responder = attrs.field(factory=lambda: CompletionReply(pieces=("OK.",)))
    message_overhead: int = 4
    reply_priming: int = 3
    prompt_tokens: list[int] = attrs.field(factory=list)
    refused: int = 0

    _TOKEN = re.compile(r"\w+|[^\w\s]")

    def _text_tokens(self, value: object) -> int:
        if isinstance(value, str):
            return len(self._TOKEN.findall(value))
        if isinstance(value, list):
            return sum(self._text_tokens(part.get("text")) for part in value if isinstance(part, dict))
        return 0

    def count(self, body: Mapping[str, Any]) -> int:
        """The prompt tokens of a request ``body``."""
        tokens = self.reply_priming
        for message in body.get("messages") or ():
            tokens += self.message_overhead + self._text_tokens(message.get("content"))
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                tokens += self._text_tokens(function.get("name")) + self._text_tokens(function.get("arguments"))
        return tokens

    def __call__(self, received: Received) -> Reply:
        """The refusal when the request does not fit, else :attr:`reply`."""
        body = received.json
        prompt = self.count(body)
        self.prompt_tokens.append(prompt)
        completion = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        if prompt + completion <= self.n_ctx:
            return self.reply if isinstance(self.reply, Reply) else self.reply(received)
        self.refused += 1
        if body.get("stream"):
            return RawReply(pieces=())
        message = (
            f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
            "Please reduce the length of the messages or completion."
        )
        return ErrorReply(status=400, body=openai_error(message, code="context_length_exceeded"))


# --- the server -------------------------------------------------------------------------------


@attrs.define
class UpstreamStats:
    """What the upstream has seen: requests, how they ended, how many were open at once.

    The soak's leak checks read these; a request counts once its body has arrived.
    """

    #: Requests received.
    requests: int = 0
    #: Requests answered to the end.
    completed: int = 0
    #: Requests the client went away from before the end (the handler was cancelled, or a
    #: write met a reset connection).
    aborted: int = 0
    #: Requests given a reply that only the client going away ends (:attr:`Reply.endless`).
    endless: int = 0
    #: Requests in progress now, and the most at once.
    open_requests: int = 0
    max_open_requests: int = 0
    #: The connections (aiohttp's protocol objects) with a request in progress.
    busy: set[object] = attrs.field(factory=set, repr=False, eq=False)

    def counts(self) -> dict[str, int]:
        """The counters by name (not :attr:`busy`)."""
        return attrs.asdict(self, filter=lambda field, _: field.name != "busy")


class MockUpstream:
    """The mock upstream; see the module docstring.

    Args:
        default: the reply when none is queued, or a :data:`Responder` that picks it.
        record: keep every request in :attr:`requests`; off where a long run would pile
            them up (the benchmarks and the soak count them in :attr:`stats` only).
    """

    def __init__(self, default: Reply | Responder | None = None, *, record: bool = True) -> None:
        #: The base URL, ending in ``/v1`` (set by :meth:`bind`).
        self.url = ""
        self.requests: list[Received] = []
        self.default: Reply | Responder = StreamReply() if default is None else default
        self.record = record
        self._queue: collections.deque[Reply | Responder] = collections.deque()
        #: Set at each request (cleared by :meth:`wait_for_requests`).
        self.received = asyncio.Event()
        #: Set when a client goes away mid-reply.
        self.disconnected = asyncio.Event()
        self.stats = UpstreamStats()
        #: The server serving :attr:`app` (set by :meth:`bind`): the stats route counts its connections.
        self.server: web.Server | None = None
        self.app = web.Application()
        self.app.router.add_post(CHAT_PATH, self._handle)
        self.app.router.add_get(STATS_PATH, self._report)

    @property
    def disconnects(self) -> int:
        """How many clients went away mid-reply (:attr:`UpstreamStats.aborted`)."""
        return self.stats.aborted

    def bind(self, runner: web.BaseRunner) -> None:
        """Note the started runner serving :attr:`app`: its server, and :attr:`url` from its address."""
        self.server = runner.server
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"

    def reply(self, *replies: Reply | Responder) -> None:
        """Queue the replies to the next requests (then :attr:`default` again)."""
        self._queue.extend(replies)

    async def wait_for_requests(self, count: int) -> None:
        """Wait until ``count`` requests have been recorded."""
        async with asyncio.timeout(MAX_WAIT_S):
            while len(self.requests) < count:
                self.received.clear()
                await self.received.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = Received(json=await request.json(), headers=dict(request.headers))
        if self.record:
            self.requests.append(received)
        self.received.set()
        stats = self.stats
        stats.requests += 1
        stats.open_requests += 1
        stats.max_open_requests = max(stats.max_open_requests, stats.open_requests)
        stats.busy.add(request.protocol)
        try:
            reply = self._queue.popleft() if self._queue else self.default
            if not isinstance(reply, Reply):
                reply = reply(received)
            stats.endless += reply.endless
            response = await reply.answer(request, received)
            stats.completed += 1
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            # The server cancels a handler whose client went away (handler_cancellation, always
            # on in aiohttp's test server); a write may meet the reset first.
            stats.aborted += 1
            self.disconnected.set()
            raise
        finally:
            stats.open_requests -= 1
            stats.busy.discard(request.protocol)

    async def _report(self, request: web.Request) -> web.Response:
        if self.server is None:
            return web.json_response({**self.stats.counts(), "open_connections": None, "closed_idle": 0})
        server = self.server
        closed_idle = 0
        if request.query.get("close_idle"):
            # Idle keep-alive connections are a client's pool, not leaks: close them, so that every
            # connection still open after this has a request in progress.
            for connection in server.connections:
                if connection is not request.protocol and connection not in self.stats.busy:
                    # force_close: close() only stops the handler and leaves the socket open.
                    connection.force_close()
                    closed_idle += 1
            await asyncio.sleep(0.1)
        connections = [c for c in server.connections if c is not request.protocol]
        return web.json_response({**self.stats.counts(), "open_connections": len(connections),
                                  "closed_idle": closed_idle})


# --- what real servers do (real-upstreams.md) --------------------------------------------------

#: A usage object as LiteLLM's proxy reports it: OpenAI's fields, plus its ``cost`` and the
#: ``text_tokens`` (and null) entries of its details objects.
LITELLM_USAGE: Final = {
    "prompt_tokens": 12,
    "completion_tokens": 9,
    "total_tokens": 21,
    "completion_tokens_details": {"accepted_prediction_tokens": None, "audio_tokens": None, "reasoning_tokens": 0,
                                  "rejected_prediction_tokens": None, "text_tokens": 9},
    "prompt_tokens_details": {"audio_tokens": None, "cached_tokens": 0, "text_tokens": 12, "image_tokens": None},
    "cost": 0.000105,
}


@attrs.frozen(kw_only=True)
class ServerReply(Reply):
    """A completion as a real server answers it, whole or streamed as asked, with its quirks as options.

    Without ``stream: true``, a whole ``chat.completion``. With it, an SSE stream: a role chunk,
    one chunk per piece of ``content``, one chunk per tool call (whole, with its ``index``), the
    ``finish_reason`` chunk, the usage chunk when ``stream_options.include_usage`` asks, and
    ``[DONE]``.

    Attributes:
        content: the text, one chunk per piece.
        tool_calls: the calls as a whole completion's ``message.tool_calls`` lists them
            (``id``, ``type``, ``function``).
        finish_reason: the choice's ``finish_reason``.
        usage: the ``usage`` object (e.g. :data:`LITELLM_USAGE`); ``None``: the server
            reports none, whole or streamed.
        stream_usage: false: a stream carries no usage even when ``include_usage`` asks for it
            (llama.cpp's server); a whole completion still has it.
        interrupted: a stream ends with ``[DONE]`` straight after the content, and no chunk
            carries a ``finish_reason`` (nor usage): llama.cpp ending a running stream when
            another request arrives. A whole completion is unaffected.
    """

    content: Sequence[str] = REPLY_PIECES
    tool_calls: Sequence[Mapping[str, Any]] = ()
    finish_reason: str = "stop"
    usage: Mapping[str, Any] | None = USAGE
    stream_usage: bool = True
    interrupted: bool = False

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The completion, whole or streamed as the request asks."""
        body = received.json
        model, completion_id, created = _new_completion(received)
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
            if self.tool_calls:
                message["tool_calls"] = [dict(call) for call in self.tool_calls]
            completion: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            }
            if self.usage is not None:
                completion["usage"] = dict(self.usage)
            return web.Response(body=dumps(completion).encode(), content_type="application/json")

        response = await _open_stream(request, SSE_HEADERS)

        async def send(delta: Mapping[str, Any], finish_reason: str | None = None) -> None:
            await response.write(data_frame(chunk_body(completion_id, created, model, delta, finish_reason)))

        await send({"role": "assistant", "content": ""})
        for piece in self.content:
            await send({"content": piece})
        for index, call in enumerate(self.tool_calls):
            await send({"tool_calls": [{"index": index, **call}]})
        if not self.interrupted:
            await send({}, self.finish_reason)
            options = body.get("stream_options")
            asked = isinstance(options, dict) and options.get("include_usage") is True
            if self.usage is not None and self.stream_usage and asked:
                await response.write(data_frame(usage_chunk_body(completion_id, created, model, dict(self.usage))))
        await response.write(_DONE)
        await response.write_eof()
        return response


@attrs.frozen
class EmptyReply(Reply):
    """200 ``text/event-stream`` with an empty body: the head, then the end, not one SSE byte.

    llama.cpp's answer to a streamed request that overflows its context (the same request
    unstreamed gets 400 ``context_length_exceeded``).
    """

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The head, then the end of the body."""
        response = await _open_stream(request, {"Content-Type": "text/event-stream"})
        await response.write_eof()
        return response


@attrs.frozen(kw_only=True)
class LiteLLMErrorReply(Reply):
    """LiteLLM's proxy failing a call: the error status itself, before any byte of a stream.

    Even to ``stream: true`` LiteLLM answers a plain HTTP error with its JSON error body (no
    SSE): ``{"error": {"message", "type", "param", "code"}}``, ``code`` being the status as a
    string. It was seen answering 429 ``RateLimitError`` (with ``Retry-After``), 400 for a
    context-window error, 500 for an internal one and 529 for an Anthropic-style overload.

    Attributes:
        status: the HTTP status.
        message: the error message (LiteLLM prefixes its exception's name, e.g.
            ``litellm.RateLimitError: ...``).
        type: the error type; LiteLLM writes the string ``"None"`` when the exception has none.
        retry_after: the ``Retry-After`` header, if any.
        retry_after_ms: the ``retry-after-ms`` header, if any.
    """

    status: int
    message: str
    type: str = "None"
    retry_after: str | None = None
    retry_after_ms: str | None = None

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """The status, headers and body, at once."""
        headers = {"retry-after": self.retry_after, "retry-after-ms": self.retry_after_ms}
        error = {"message": self.message, "type": self.type, "param": None, "code": str(self.status)}
        return web.Response(
            status=self.status,
            body=dumps({"error": error}).encode(),
            content_type="application/json",
            headers={name: value for name, value in headers.items() if value is not None},
        )


@attrs.frozen(kw_only=True)
class ToolChoiceResponder:
    """A :data:`Responder` that honours a named ``tool_choice``, as llama.cpp does (even with random weights).

    A request whose ``tool_choice`` is ``{"type": "function", "function": {"name": N}}`` gets a
    call to ``N`` with ``arguments``, ``finish_reason: "tool_calls"``, whole or streamed as
    asked; when ``N`` is not among its ``tools`` it gets 400. Any other request (no
    ``tool_choice``, ``auto``, ``none``, ``required``) gets ``otherwise``.
    """

    arguments: str = "{}"
    call_id: str = "call_mock_1"
    otherwise: Reply = ServerReply()

    def __call__(self, received: Received) -> Reply:
        """The reply to ``received``."""
        choice = received.json.get("tool_choice")
        function = choice.get("function") if isinstance(choice, dict) else None
        if not isinstance(function, dict):
            return self.otherwise
        name = function.get("name")
        offered = [tool.get("function", {}).get("name") for tool in received.json.get("tools") or ()]
        if name not in offered:
            return ErrorReply(status=400, body=openai_error(f"tool_choice names {name!r}, which is not in tools"))
        call = {"id": self.call_id, "type": "function", "function": {"name": name, "arguments": self.arguments}}
        return ServerReply(content=(), tool_calls=(call,), finish_reason="tool_calls")
