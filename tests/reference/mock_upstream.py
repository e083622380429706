"""A scriptable OpenAI-compatible upstream: a real aiohttp server on 127.0.0.1.

``POST /v1/chat/completions`` records what it received and answers with the next queued
reply (or :attr:`MockUpstream.default`): an SSE stream of deltas, tool calls and usage, an
error status with an OpenAI error body, a stream cut mid-way, or a stall.

Use the :func:`mock_upstream` fixture (import it into a ``conftest.py`` to share it)::

    mock_upstream.reply(StreamReply(deltas=("Hi", "!")))
    ... point a provider's baseUrl at mock_upstream.url ...
    assert mock_upstream.requests[0].json["model"] == "gpt-test"
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import attrs
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

__all__ = (
    "ErrorReply",
    "JsonReply",
    "MockUpstream",
    "RawReply",
    "Received",
    "Reply",
    "StallReply",
    "StreamReply",
    "mock_upstream",
    "openai_error",
)

# The longest any scripted wait lasts, so a broken test cannot hang the suite.
MAX_WAIT_S: Final = 30.0


@attrs.frozen
class Received:
    """One request the upstream received."""

    json: dict[str, Any]
    headers: dict[str, str]


@attrs.frozen(kw_only=True)
class StreamReply:
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


@attrs.frozen(kw_only=True)
class ErrorReply:
    """Answer with an error status; ``body`` is sent as JSON, or as text when a ``str``."""

    status: int
    body: Mapping[str, Any] | str | None = None


@attrs.frozen(kw_only=True)
class JsonReply:
    """Answer 200 with a whole JSON body, after ``delay_s`` (generating, or ignoring ``stream: true``)."""

    body: Mapping[str, Any]
    delay_s: float = 0.0


@attrs.frozen(kw_only=True)
class RawReply:
    """Answer 200 ``text/event-stream`` with exactly these byte pieces, written one by one."""

    pieces: Sequence[bytes]


@attrs.frozen
class StallReply:
    """Never answer: wait (without sending headers) until the client goes away."""


Reply: TypeAlias = StreamReply | ErrorReply | JsonReply | RawReply | StallReply


def openai_error(
    message: str, *, type: str = "invalid_request_error", code: str | None = None  # noqa: A002
) -> dict[str, Any]:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


class MockUpstream:
    """The scriptable upstream; see the module docstring."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self.default: Reply = StreamReply()
        self._queue: collections.deque[Reply] = collections.deque()
        self.received = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnects = 0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._handle)

    def reply(self, *replies: Reply) -> None:
        """Queue the replies to the next requests (then :attr:`default` again)."""
        self._queue.extend(replies)

    async def wait_for_requests(self, count: int) -> None:
        """Wait until ``count`` requests have arrived."""
        async with asyncio.timeout(MAX_WAIT_S):
            while len(self.requests) < count:
                self.received.clear()
                await self.received.wait()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Received(json=body, headers=dict(request.headers)))
        self.received.set()
        reply = self._queue.popleft() if self._queue else self.default
        try:
            return await self._answer(request, reply, model=str(body.get("model")))
        except asyncio.CancelledError:
            # The test server cancels a handler whose client went away.
            self.disconnects += 1
            self.disconnected.set()
            raise

    async def _answer(self, request: web.Request, reply: Reply, *, model: str) -> web.StreamResponse:
        if isinstance(reply, ErrorReply):
            if isinstance(reply.body, str):
                return web.Response(status=reply.status, text=reply.body)
            return web.json_response(reply.body, status=reply.status)
        if isinstance(reply, JsonReply):
            await asyncio.sleep(reply.delay_s)
            return web.json_response(reply.body)
        if isinstance(reply, StallReply):
            await asyncio.sleep(MAX_WAIT_S)
            return web.Response(status=504)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if isinstance(reply, RawReply):
            for piece in reply.pieces:
                await response.write(piece)
                await asyncio.sleep(0.01)
            return response
        await self._stream(request, response, reply, model=model)
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, reply: StreamReply, *, model: str
    ) -> None:
        nl = reply.newline

        async def frame(data: str) -> None:
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            await response.write(f"data: {data}{nl}{nl}".encode())

        def chunk(delta: Mapping[str, Any], finish_reason: str | None = None) -> str:
            return json.dumps(
                {
                    "id": "chatcmpl-mock",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish_reason}],
                }
            )

        if reply.comment:
            await response.write(f": upstream keep-alive{nl}{nl}".encode())
        await frame(chunk({"role": "assistant", "content": ""}))
        for delta in reply.deltas:
            await frame(chunk({"content": delta}))
        for call in reply.tool_calls:
            await frame(chunk({"tool_calls": [dict(call)]}))
        if reply.error is not None:
            await frame(json.dumps({"error": dict(reply.error)}))
            return
        if reply.hold is not None:
            async with asyncio.timeout(MAX_WAIT_S):
                await reply.hold.wait()
        if reply.stall:
            await asyncio.sleep(MAX_WAIT_S)
        if reply.cut == "eof":
            return
        if reply.cut == "abort":
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(MAX_WAIT_S)  # cancelled once the connection is gone
            return
        await frame(chunk({}, reply.finish_reason))
        if reply.usage is not None:
            await frame(
                json.dumps(
                    {
                        "id": "chatcmpl-mock",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": model,
                        "choices": [],
                        "usage": dict(reply.usage),
                    }
                )
            )
        await frame("[DONE]")


@pytest.fixture
async def mock_upstream(aiohttp_server: AiohttpServer) -> AsyncIterator[MockUpstream]:
    """A running :class:`MockUpstream`; ``.url`` is its base URL ending in ``/v1``."""
    upstream = MockUpstream()
    server = await aiohttp_server(upstream.app, host="127.0.0.1")
    upstream.url = str(server.make_url("/v1"))
    yield upstream
