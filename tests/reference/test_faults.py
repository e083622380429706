"""Upstream faults through the reference gateway: each becomes the mapped OpenAI error, in time.

The reference gateway is served on a real ``web.AppRunner`` (``handler_cancellation`` off, as
``web.run_app`` serves it) in front of the mock upstream. Every fault is injected streaming and
non-streaming and must give, within a deadline: the mapped status and error envelope (also when
streaming, if the fault came before any content: the stream's head is held, #10 F7), or (when
streaming after content) the role chunk, the content relayed before the fault, exactly one in-band
``data: {"error": ...}`` frame and ``data: [DONE]``, with no finish chunk. The failed run must
persist nothing, leave no run, task or upstream connection behind, and the next request on the
same session must work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import aiohttp
import attrs
import pytest
from aiohttp import web

from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.client import open_client_session
from openclaw_http_compat.keys import RUNS_KEY
from openclaw_http_compat.reference.app import RUNNER_KEY, build_gateway_app
from openclaw_http_compat.reference.runtime import AgentRuntime
from openclaw_http_compat.reference.store import SessionStore

from ..test_client import RawServer
from .mock_upstream import (
    EmptyReply,
    ErrorReply,
    JsonReply,
    LiteLLMErrorReply,
    MockUpstream,
    RawReply,
    Reply,
    ServerReply,
    StallReply,
    StreamReply,
    openai_error,
)

TOKEN: Final = "faults-token"
USER: Final = "fault-user"
SESSION_KEY: Final = f"agent:main:openai-user:{USER}"
#: Provider timeoutMs of the "slow" provider (the whole upstream call).
SLOW_TIMEOUT_MS: Final = 300
#: The runtime's idle timeout in the idle-stall tests. The gateway config cannot set it (open_runtime
#: always builds AgentRuntime with providers.IDLE_TIMEOUT_S, 120 s), so those tests pass
#: build_gateway_app a runtime built with this.
SMALL_IDLE_TIMEOUT_S: Final = 0.3
#: How long a fault may take to come back to the client, beyond the timeout it trips (if any).
DEADLINE_S: Final = 1.0
#: How long any other request may take.
REQUEST_DEADLINE_S: Final = 3.0
#: The logger of upstream failures.
PROVIDERS_LOGGER: Final = "openclaw_http_compat.reference.providers"


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_config(state: pathlib.Path, upstream_url: str) -> GatewayConfig:
    """Agent ``main`` on ``mock/m``; ``slow`` is the same upstream with a short timeoutMs, ``dead`` refuses."""
    return GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(state),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
            "models": {
                "providers": {
                    "mock": {"baseUrl": upstream_url, "api": "openai-completions", "models": [{"id": "m"}]},
                    "slow": {"baseUrl": upstream_url, "api": "openai-completions", "timeoutMs": SLOW_TIMEOUT_MS},
                    "dead": {"baseUrl": f"http://127.0.0.1:{closed_port()}/v1", "api": "openai-completions"},
                }
            },
        },
        env={},
    )


def connections_in_use(session: aiohttp.ClientSession) -> int:
    """How many of the session's pooled connections a call holds (acquired, not yet released or closed).

    aiohttp 3.14 has no public count of these, so this reads the connector's ``_acquired`` set,
    here only; a renamed attribute fails this helper loudly, not a test quietly.
    """
    connector = session.connector
    assert connector is not None
    return len(connector._acquired)


def plugin_app(app: web.Application) -> web.Application:
    """The plugin's sub-app mounted on the gateway's app (found through the public router API)."""
    for resource in app.router.resources():
        sub = resource.get_info().get("app")
        if sub is not None and RUNS_KEY in sub:
            return sub
    raise AssertionError("the chat-completions plugin is not mounted")


@attrs.define
class Gateway:
    url: str
    app: web.Application
    state: pathlib.Path

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])

    @property
    def runtime(self) -> AgentRuntime:
        runtime = self.app[RUNNER_KEY]
        assert isinstance(runtime, AgentRuntime)
        return runtime

    def stored_turns(self, session_key: str = SESSION_KEY) -> list[tuple[str, str]]:
        """The session's turns, read from the SQLite file with a connection of our own."""
        with sqlite3.connect(self.state / "sessions.sqlite") as conn:
            rows = conn.execute(
                "SELECT role, content FROM turns WHERE session_key = ? ORDER BY id", (session_key,)
            ).fetchall()
        return [(str(role), str(content)) for role, content in rows]

    def leftovers(self) -> dict[str, int]:
        """What the gateway still holds: runs in flight, run tasks, upstream connections, session locks."""
        registry = plugin_app(self.app)[RUNS_KEY]
        held = {
            "runs in flight": registry.in_flight,
            "run tasks": len(registry.tasks),
            "upstream connections in use": connections_in_use(self.runtime.session),
            "session locks": self.runtime.store.lock_count,
        }
        return {name: count for name, count in held.items() if count}

    async def assert_clean(self, within_s: float = 1.0) -> None:
        """Nothing is left within ``within_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.leftovers() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert self.leftovers() == {}


@asynccontextmanager
async def serve(
    config: GatewayConfig, *, idle_timeout_s: float | None = None, handler_cancellation: bool = False
) -> AsyncIterator[Gateway]:
    """The reference gateway on a real AppRunner; with ``idle_timeout_s``, on a runtime built with it.

    ``handler_cancellation`` is off by default, as ``web.run_app`` serves (aiohttp's test server
    always turns it on).
    """
    assert config.state_dir is not None
    async with AsyncExitStack() as stack:
        runner: AgentRuntime | None = None
        if idle_timeout_s is not None:
            store = SessionStore(config.state_dir / "sessions.sqlite")
            await store.open()
            stack.push_async_callback(store.close)
            session = await stack.enter_async_context(open_client_session())
            runner = AgentRuntime(config, store, session, idle_timeout_s=idle_timeout_s)
        app = build_gateway_app(config, runner=runner)
        app_runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
        await app_runner.setup()
        stack.push_async_callback(app_runner.cleanup)
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        port = app_runner.addresses[0][1]
        yield Gateway(f"http://127.0.0.1:{port}/v1/chat/completions", app, config.state_dir)


@attrs.frozen
class Answer:
    status: int
    content_type: str
    text: str


def sse_frames(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, decoded (``"[DONE]"`` as is); keep-alives dropped."""
    frames: list[Any] = []
    for block in text.split("\n\n"):
        if not block or block.startswith(":"):
            continue
        assert block.startswith("data: ") and "\n" not in block, block
        data = block.removeprefix("data: ")
        frames.append(data if data == "[DONE]" else json.loads(data))
    assert text.endswith("\n\n")
    return frames


async def ask(
    gateway: Gateway, *, stream: bool, message: str = "hi", model: str | None = None,
    deadline_s: float = REQUEST_DEADLINE_S,
) -> Answer:
    """One request with ``user`` set (a stable session); the whole answer must arrive by ``deadline_s``."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if model is not None:
        headers["x-openclaw-model"] = model
    body = {"model": "openclaw", "user": USER, "stream": stream, "messages": [{"role": "user", "content": message}]}
    async with asyncio.timeout(deadline_s):
        async with aiohttp.ClientSession() as session:
            async with session.post(gateway.url, json=body, headers=headers) as resp:
                return Answer(resp.status, resp.content_type, await resp.text())


@attrs.frozen
class Fault:
    """A fault: what the upstream does and what the client must get."""

    reply: Callable[[], Reply] | None  # None: the "dead" provider refuses the connection
    status: int
    type: str
    message: str
    code: str | None = None
    #: The content relayed to a streaming client before the fault.
    relayed: tuple[str, ...] = ()
    model: str | None = None
    idle_timeout_s: float | None = None
    #: The timeout that ends the run (it must not end sooner), if a timeout does.
    timeout_s: float = 0.0
    #: Only a streaming run meets this fault (a whole-completion call has no idle limit; a
    #: server that answers a whole completion when asked for one has no stream to cut).
    stream_only: bool = False


FAULTS: Final = {
    # Not an upstream's 500: nothing reached a model (F9).
    "connection-refused": Fault(None, 502, "api_error", "upstream unreachable", model="dead/m"),
    "http-429": Fault(
        lambda: ErrorReply(status=429, body=openai_error("Slow down.", type="rate_limit_error", code="rate_limit_exceeded")),
        429, "rate_limit_error", "Slow down.", "rate_limit_exceeded",
    ),
    "http-500": Fault(
        lambda: ErrorReply(status=500, body=openai_error("secret stack trace", type="server_error")),
        502, "api_error", "upstream provider error",
    ),
    "http-500-text": Fault(lambda: ErrorReply(status=500, body="<html>oops</html>"), 502, "api_error", "upstream provider error"),
    "http-502": Fault(lambda: ErrorReply(status=502, body="Bad Gateway"), 502, "api_error", "upstream provider error"),
    "http-503": Fault(
        lambda: ErrorReply(status=503, body=openai_error("overloaded", type="server_error")),
        503, "api_error", "upstream provider overloaded",
    ),
    "http-504": Fault(lambda: ErrorReply(status=504, body="Gateway Timeout"), 502, "api_error", "upstream provider error"),
    # LiteLLM's Anthropic-style overload: answered 503, a status OpenAI clients know (F9).
    "litellm-529": Fault(
        lambda: LiteLLMErrorReply(status=529, message="litellm.InternalServerError: AnthropicException - Overloaded"),
        503, "api_error", "upstream provider overloaded", "529",
    ),
    "litellm-429": Fault(
        lambda: LiteLLMErrorReply(status=429, message="litellm.RateLimitError: slow down", retry_after="7"),
        429, "rate_limit_error", "litellm.RateLimitError: slow down", "429",
    ),
    "timeout-before-first-byte": Fault(
        StallReply, 504, "api_error", "upstream provider timeout", model="slow/m", timeout_s=SLOW_TIMEOUT_MS / 1000
    ),
    "cut-eof": Fault(
        lambda: StreamReply(deltas=("par", "tial"), cut="eof"), 502, "api_error", "upstream provider error",
        relayed=("par", "tial"),
    ),
    "cut-abort": Fault(
        # Nothing before the abort: a reset may discard bytes the gateway has not read yet.
        lambda: StreamReply(deltas=(), cut="abort"), 502, "api_error", "upstream provider error",
    ),
    "malformed-json": Fault(
        lambda: RawReply(pieces=(b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}}]}\n\n', b"data: {not json\n\n")),
        502, "api_error", "upstream provider error", relayed=("ok",),
    ),
    "malformed-not-object": Fault(
        lambda: RawReply(pieces=(b"data: [1, 2, 3]\n\n",)), 502, "api_error", "upstream provider error"
    ),
    "malformed-garbage": Fault(
        # Lines that are no SSE field at all, binary junk, then the body ends without [DONE].
        lambda: RawReply(pieces=(b"HTTP/1.1 200 OK\r\n", b"\x00\xff\xfe garbage \x80\n\n", b"<html>\n\n")),
        502, "api_error", "upstream provider error",
    ),
    "http-200-not-sse": Fault(lambda: ErrorReply(status=200, body="I am not a stream"), 502, "api_error",
                              "upstream provider error"),
    "empty-body": Fault(lambda: RawReply(pieces=()), 502, "api_error", "upstream provider error"),
    # llama.cpp's answer to a streamed request overflowing its context (F3).
    "empty-200": Fault(EmptyReply, 502, "api_error", "upstream provider error"),
    # llama.cpp interrupting a stream for another request: [DONE], and no chunk carried a finish_reason (F3).
    "interrupted": Fault(
        lambda: ServerReply(content=("par", "tial"), interrupted=True), 502, "api_error", "upstream provider error",
        relayed=("par", "tial"), stream_only=True,
    ),
    # The same from a server streaming though asked for a whole completion: a null finish_reason is none.
    "done-without-finish-reason": Fault(
        lambda: StreamReply(deltas=("par", "tial"), finish_reason=None), 502, "api_error", "upstream provider error",
        relayed=("par", "tial"),
    ),
    "in-band-error": Fault(
        lambda: StreamReply(deltas=("a",), error={"message": "model crashed", "code": "crash"}),
        502, "api_error", "upstream provider error", "crash", relayed=("a",),
    ),
    "idle-stall-before-headers": Fault(
        StallReply, 504, "api_error", "upstream provider timeout", idle_timeout_s=SMALL_IDLE_TIMEOUT_S,
        timeout_s=SMALL_IDLE_TIMEOUT_S, stream_only=True,
    ),
    "idle-stall-between-chunks": Fault(
        lambda: StreamReply(deltas=("slow",), stall=True), 504, "api_error", "upstream provider timeout",
        relayed=("slow",), idle_timeout_s=SMALL_IDLE_TIMEOUT_S, timeout_s=SMALL_IDLE_TIMEOUT_S,
    ),
}


@pytest.mark.parametrize(
    ("fault_id", "stream"),
    [
        pytest.param(fault_id, stream, id=f"{fault_id}-{'stream' if stream else 'json'}")
        for fault_id, fault in FAULTS.items()
        for stream in (False, True)
        if stream or not fault.stream_only
    ],
)
async def test_fault_is_mapped_in_time_and_leaves_nothing(
    fault_id: str, stream: bool, mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each upstream fault gives the mapped error in time, logged once; nothing is kept or left over; the session works."""
    fault = FAULTS[fault_id]
    config = make_config(tmp_path / "state", mock_upstream.url)
    async with serve(config, idle_timeout_s=fault.idle_timeout_s) as gateway:
        if fault.reply is not None:
            mock_upstream.reply(fault.reply())
        expected_error = {"message": fault.message, "type": fault.type, "param": None, "code": fault.code}

        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await ask(gateway, stream=stream, model=fault.model, deadline_s=fault.timeout_s + DEADLINE_S)
        assert loop.time() - started >= fault.timeout_s * 0.9

        if stream and fault.relayed:
            # Content went out before the fault: the error is in-band.
            assert (answer.status, answer.content_type) == (200, "text/event-stream")
            frames = sse_frames(answer.text)
            assert frames[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
            assert [f["choices"] for f in frames[1:-2]] == [
                [{"index": 0, "delta": {"content": text}, "finish_reason": None}] for text in fault.relayed
            ]
            assert frames[-2:] == [{"error": expected_error}, "[DONE]"]
        else:
            # Not streamed, or streamed but failed before its first event (the head was held,
            # #10 F7): the real status and the JSON envelope.
            assert (answer.status, answer.content_type) == (fault.status, "application/json")
            assert json.loads(answer.text) == {"error": expected_error}
        assert len(mock_upstream.requests) == (0 if fault.reply is None else 1)
        # Exactly one warning, naming the provider and model (F9).
        (logged,) = [r for r in caplog.records if r.name == PROVIDERS_LOGGER]
        assert logged.levelno == logging.WARNING
        provider = (fault.model or "mock/m").split("/")[0]
        assert logged.getMessage().startswith(f"provider {provider} failed: model=m run=chatcmpl_")
        await gateway.assert_clean()
        assert gateway.stored_turns() == []

        # The same session carries on, and its context holds nothing of the failed run.
        mock_upstream.reply(StreamReply(deltas=("back", " again")))
        answer = await ask(gateway, stream=stream, message="retry")
        assert answer.status == 200
        if stream:
            frames = sse_frames(answer.text)
            assert "".join(f["choices"][0]["delta"].get("content", "") for f in frames[:-1] if f["choices"]) == "back again"
            assert frames[-2]["choices"][0]["finish_reason"] == "stop" and frames[-1] == "[DONE]"
        else:
            assert json.loads(answer.text)["choices"][0]["message"]["content"] == "back again"
        assert mock_upstream.requests[-1].json["messages"] == [{"role": "user", "content": "retry"}]
        assert gateway.stored_turns() == [("user", "retry"), ("assistant", "back again")]
        await gateway.assert_clean()


async def test_whole_completion_call_has_no_idle_limit(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """A non-streaming client's run asks upstream for the whole completion, which may take longer than the idle limit."""
    config = make_config(tmp_path / "state", mock_upstream.url)
    async with serve(config, idle_timeout_s=SMALL_IDLE_TIMEOUT_S) as gateway:
        completion = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "took a while"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        }
        mock_upstream.reply(JsonReply(body=completion, delay_s=SMALL_IDLE_TIMEOUT_S * 2))
        answer = await ask(gateway, stream=False, deadline_s=SMALL_IDLE_TIMEOUT_S * 2 + DEADLINE_S)
        assert (answer.status, answer.content_type) == (200, "application/json")
        body = json.loads(answer.text)
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "took a while"}
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        sent = mock_upstream.requests[-1]
        assert (sent.json["stream"], "stream_options" in sent.json) == (False, False)
        assert sent.headers["Accept"] == "application/json"
        assert gateway.stored_turns() == [("user", "hi"), ("assistant", "took a while")]
        await gateway.assert_clean()


async def test_provider_timeout_bounds_a_slow_stream(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """A stream trickling past the provider's timeoutMs (no single gap over the idle timeout) ends with 504 in time."""
    config = make_config(tmp_path / "state", mock_upstream.url)
    async with serve(config) as gateway:
        mock_upstream.reply(StreamReply(deltas=("x",) * 50, delay_s=0.05))
        answer = await ask(gateway, stream=True, model="slow/m", deadline_s=SLOW_TIMEOUT_MS / 1000 + DEADLINE_S)
        frames = sse_frames(answer.text)
        assert frames[-2:] == [
            {"error": {"message": "upstream provider timeout", "type": "api_error", "param": None, "code": None}},
            "[DONE]",
        ]
        assert all(f["choices"][0]["finish_reason"] is None for f in frames[:-2])
        assert 1 <= len(frames) - 3 < 50
        await gateway.assert_clean()
        assert gateway.stored_turns() == []


class LoopLag:
    """The longest the event loop (gateway and test share it) was blocked, measured by a 5 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def test_oversized_sse_line_is_refused_without_stalling(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """An upstream SSE line growing past 8 MiB in 128 KiB pieces is refused (502) in 3 s, the loop never blocked 50 ms."""
    config = make_config(tmp_path / "state", mock_upstream.url)
    async with serve(config) as gateway:
        piece = b"x" * (128 * 1024)
        mock_upstream.reply(RawReply(pieces=(b"data: ", *(piece for _ in range(8 * 8 + 1)))))
        with LoopLag() as lag:
            answer = await ask(gateway, stream=False, deadline_s=3.0)
        assert (answer.status, json.loads(answer.text)) == (
            502,
            {"error": {"message": "upstream provider error", "type": "api_error", "param": None, "code": None}},
        )
        assert lag.worst < 0.05
        await gateway.assert_clean()


class KeepAliveDropper(RawServer):
    """A raw HTTP/1.1 upstream that answers the first request of each connection and keeps it alive,
    then closes the connection, unanswered, when a second request arrives on it.

    That is the keep-alive race every pooled client meets: the server's idle timer closes a
    connection just as the client sends a request on it (uvicorn's default idle timeout is 5 s,
    aiohttp's client pool keeps connections 15 s). Nothing of the request was processed.
    """

    def __init__(self) -> None:
        super().__init__(self._answer_once)
        self.answered = 0
        self.dropped = 0

    async def _answer_once(
        self, _: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if not await self.next_request(number, reader):
            return
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "pooled"}, "finish_reason": "stop"}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        self.answered += 1
        if await self.next_request(number, reader):
            self.dropped += 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_stale_pooled_upstream_connection_is_retried(tmp_path: pathlib.Path, stream: bool) -> None:
    """When the upstream closes a reused keep-alive connection without answering, the run retries on a new one."""
    async with KeepAliveDropper() as upstream:
        config = make_config(tmp_path / "state", f"http://127.0.0.1:{upstream.port}/v1")
        async with serve(config) as gateway:
            first = await ask(gateway, stream=stream, message="one")
            assert (first.status, upstream.connections, upstream.answered) == (200, 1, 1)
            second = await ask(gateway, stream=stream, message="two")
            assert upstream.dropped == 1  # the race did happen: the pooled connection was reused and closed
            if stream:
                frames = sse_frames(second.text)
                assert frames[-2]["choices"][0]["finish_reason"] == "stop", frames
            else:
                assert second.status == 200, second.text
                assert json.loads(second.text)["choices"][0]["message"]["content"] == "pooled"
            assert (upstream.connections, upstream.answered) == (2, 2)
            assert gateway.stored_turns() == [("user", "one"), ("assistant", "pooled"), ("user", "two"),
                                              ("assistant", "pooled")]
