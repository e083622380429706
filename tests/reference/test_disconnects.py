"""Client disconnects at every stage abort the run and its upstream request, and leave nothing behind.

The client is a raw socket, so that it can go away exactly where wanted: with the body half
sent, before the first chunk, in the middle of a stream, or while the upstream is sending a
tool call. Both ways of serving are covered: ``handler_cancellation`` off (``web.run_app``'s
default: the plugin must notice the disconnect itself) and on.

"Nothing behind" means, within one second of the client closing its socket: the upstream saw
its request dropped, the plugin's run registry is empty, the runtime's HTTP client holds no
connection, no session lock is alive, every asyncio task created since the request started has
ended, and the session store holds no turn of the aborted run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from collections.abc import AsyncIterator
from typing import Final

import attrs
import pytest

from openclaw_http_compat.keys import RUNS_KEY

from .mock_upstream import MockUpstream, StallReply, StreamReply
from .test_faults import SESSION_KEY, TOKEN, USER, Gateway, make_config, plugin_app, serve

#: How long after the client closes its socket everything must be gone.
ABORT_WITHIN_S: Final = 1.0

TOOL_FRAGMENTS: Final = (
    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}},
    {"index": 0, "function": {"arguments": 'ty": "Tai'}},
)


@pytest.fixture(params=[False, True], ids=["run-app-default", "handler-cancellation"])
async def gateway(
    request: pytest.FixtureRequest, mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> AsyncIterator[Gateway]:
    """The reference gateway in front of the mock upstream, served both ways.

    A stream's head is held 100 ms at most (not the default 2 s): a stalled run still gets its
    head, so the stages "headers only" and "before the first chunk" are reached quickly.
    """
    raw = make_config(tmp_path / "state", mock_upstream.url)
    chat = attrs.evolve(raw.plugin.chat_completions, stream_hold_ms=100)
    config = attrs.evolve(raw, plugin=attrs.evolve(raw.plugin, chat_completions=chat))
    async with serve(config, handler_cancellation=request.param) as served:
        yield served


def body(*, stream: bool, user: str = USER) -> bytes:
    return json.dumps(
        {"model": "openclaw", "user": user, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()


def head(port: int, length: int) -> bytes:
    """The request head of a chat completion with a body of ``length`` bytes."""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


class RawClient:
    """One HTTP/1.1 connection to the gateway, closed whenever the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()

    @classmethod
    async def connect(cls, gateway: Gateway) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_until(self, marker: bytes) -> None:
        """Read until ``marker`` has arrived (fails on EOF or after 5 s)."""
        async with asyncio.timeout(5):
            while marker not in self.received:
                piece = await self.reader.read(65536)
                assert piece, f"connection closed before {marker!r}: {bytes(self.received)!r}"
                self.received += piece

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def assert_nothing_left(
    gateway: Gateway, upstream: MockUpstream, tasks_before: set[asyncio.Task[object]], *, upstream_called: bool
) -> None:
    """Within ABORT_WITHIN_S: upstream request dropped, no run, connection, lock or new task; nothing stored."""
    current = asyncio.current_task()

    def leftovers() -> list[str]:
        left = [repr(t) for t in asyncio.all_tasks() - tasks_before if t is not current]
        left += [f"{name}: {count}" for name, count in gateway.leftovers().items()]
        if upstream_called and not upstream.disconnected.is_set():
            left.append("the upstream request is still open")
        return left

    loop = asyncio.get_running_loop()
    deadline = loop.time() + ABORT_WITHIN_S
    while (left := leftovers()) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert left == []
    assert upstream.disconnects == (1 if upstream_called else 0)
    assert len(upstream.requests) == (1 if upstream_called else 0)
    assert gateway.stored_turns(SESSION_KEY) == []


def assert_no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A client going away is no server error: nothing was logged at ERROR or above."""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def assert_session_still_works(gateway: Gateway, upstream: MockUpstream) -> None:
    """The next request on the aborted run's session is answered in full, without the aborted message."""
    upstream.reply(StreamReply(deltas=("fine",)))
    client = await RawClient.connect(gateway)
    try:
        data = body(stream=True)
        await client.send(head(gateway.port, len(data)) + data)
        await client.read_until(b"data: [DONE]\n\n")
    finally:
        await client.close()
    assert b'"content":"fine"' in client.received
    assert upstream.requests[-1].json["messages"] == [{"role": "user", "content": "hi"}]
    assert gateway.stored_turns(SESSION_KEY) == [("user", "hi"), ("assistant", "fine")]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_disconnect_before_body_is_read(gateway: Gateway, mock_upstream: MockUpstream, stream: bool) -> None:
    """Headers and half the body, then the client closes: the handler ends at once, no run starts, nothing is left."""
    tasks_before = asyncio.all_tasks()
    data = body(stream=stream)
    client = await RawClient.connect(gateway)
    await client.send(head(gateway.port, len(data)) + data[: len(data) // 2])
    await asyncio.sleep(0.1)  # the handler is now waiting for the rest of the body
    await client.close()
    await assert_nothing_left(gateway, mock_upstream, tasks_before, upstream_called=False)
    await assert_session_still_works(gateway, mock_upstream)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream_state", ["no-headers", "headers-only"])
async def test_disconnect_before_first_chunk(
    gateway: Gateway,
    mock_upstream: MockUpstream,
    stream: bool,
    upstream_state: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The upstream has sent nothing (or only its headers and role chunk) when the client closes: all is aborted in 1 s."""
    hold = asyncio.Event()
    mock_upstream.reply(StallReply() if upstream_state == "no-headers" else StreamReply(deltas=(), hold=hold))
    tasks_before = asyncio.all_tasks()
    data = body(stream=stream)
    client = await RawClient.connect(gateway)
    try:
        await client.send(head(gateway.port, len(data)) + data)
        await mock_upstream.wait_for_requests(1)
        if stream:
            await client.read_until(b'"delta":{"role":"assistant"}')
        await asyncio.sleep(0.05)
    finally:
        await client.close()
    await assert_nothing_left(gateway, mock_upstream, tasks_before, upstream_called=True)
    assert b'"content"' not in client.received
    await assert_session_still_works(gateway, mock_upstream)
    assert_no_error_logged(caplog)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_disconnect_mid_stream(
    gateway: Gateway, mock_upstream: MockUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Content is flowing (the client has read some) when the client closes: all is aborted in 1 s."""
    mock_upstream.reply(StreamReply(deltas=("one", "two"), stall=True))
    tasks_before = asyncio.all_tasks()
    data = body(stream=stream)
    client = await RawClient.connect(gateway)
    try:
        await client.send(head(gateway.port, len(data)) + data)
        await mock_upstream.wait_for_requests(1)
        if stream:
            await client.read_until(b'"delta":{"content":"two"}')
        else:
            await asyncio.sleep(0.1)  # the upstream has sent both deltas and stalls
    finally:
        await client.close()
    await assert_nothing_left(gateway, mock_upstream, tasks_before, upstream_called=True)
    assert b"finish_reason\":\"" not in client.received and b"[DONE]" not in client.received
    await assert_session_still_works(gateway, mock_upstream)
    assert_no_error_logged(caplog)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_disconnect_during_tool_call(
    gateway: Gateway, mock_upstream: MockUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The upstream has sent half a tool call and stalls when the client closes: all is aborted in 1 s."""
    mock_upstream.reply(StreamReply(deltas=(), tool_calls=TOOL_FRAGMENTS, stall=True))
    tasks_before = asyncio.all_tasks()
    data = body(stream=stream)
    client = await RawClient.connect(gateway)
    try:
        await client.send(head(gateway.port, len(data)) + data)
        await mock_upstream.wait_for_requests(1)
        if stream:
            await client.read_until(b'"delta":{"role":"assistant"}')
        await asyncio.sleep(0.1)  # both fragments are out; the upstream stalls
    finally:
        await client.close()
    await assert_nothing_left(gateway, mock_upstream, tasks_before, upstream_called=True)
    assert b"tool_calls" not in client.received
    await assert_session_still_works(gateway, mock_upstream)
    assert_no_error_logged(caplog)


async def test_many_disconnects_at_once(
    gateway: Gateway, mock_upstream: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty streams cut together, at different stages, leave nothing behind within a second."""
    count = 20
    mock_upstream.default = StreamReply(deltas=("one", "two"), stall=True)
    tasks_before = asyncio.all_tasks()
    clients: list[RawClient] = []
    try:
        for index in range(count):
            client = await RawClient.connect(gateway)
            clients.append(client)
            data = body(stream=index % 2 == 0, user=f"user-{index}")
            await client.send(head(gateway.port, len(data)) + data)
        await mock_upstream.wait_for_requests(count)
        await asyncio.sleep(0.1)
    finally:
        for client in clients:
            await client.close()
    async with asyncio.timeout(ABORT_WITHIN_S):
        while (
            mock_upstream.disconnects < count
            or gateway.leftovers()
            or asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
        ):
            await asyncio.sleep(0.01)
    assert mock_upstream.disconnects == count
    assert [gateway.stored_turns(f"agent:main:openai-user:user-{index}") for index in range(count)] == [[]] * count
    assert_no_error_logged(caplog)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_disconnect_while_queued_on_the_session(
    gateway: Gateway, mock_upstream: MockUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A run waiting for its session's lock is dropped within 1 s of its client leaving and never reaches the upstream."""
    hold = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("first",), hold=hold))
    first = await RawClient.connect(gateway)
    queued = await RawClient.connect(gateway)
    registry = plugin_app(gateway.app)[RUNS_KEY]
    try:
        data = body(stream=True)
        await first.send(head(gateway.port, len(data)) + data)
        await first.read_until(b'"delta":{"content":"first"}')
        data = body(stream=stream)
        await queued.send(head(gateway.port, len(data)) + data)
        async with asyncio.timeout(1):
            while registry.in_flight < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await queued.close()
        async with asyncio.timeout(ABORT_WITHIN_S):
            while registry.in_flight != 1 or len(registry.tasks) != 1:
                await asyncio.sleep(0.01)
        hold.set()
        await first.read_until(b"data: [DONE]\n\n")
    finally:
        await first.close()
        await queued.close()
    assert len(mock_upstream.requests) == 1
    assert gateway.stored_turns(SESSION_KEY) == [("user", "hi"), ("assistant", "first")]
    await gateway.assert_clean()
    assert_no_error_logged(caplog)


async def test_client_leaving_mid_body_logs_no_error(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends half its body and leaves is not logged as a server error (nothing at ERROR)."""
    config = make_config(tmp_path / "state", mock_upstream.url)
    async with serve(config) as gateway:
        data = body(stream=True)
        client = await RawClient.connect(gateway)
        await client.send(head(gateway.port, len(data)) + data[:10])
        await asyncio.sleep(0.1)
        await client.close()
        await gateway.assert_clean()
        await asyncio.sleep(0.1)
    assert_no_error_logged(caplog)
