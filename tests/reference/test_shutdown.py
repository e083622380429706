"""Shutting the gateway down with streams open ends every response properly, in bounded time.

In-process: several streamed and non-streamed requests are open (the upstream is mid-reply and
stalls, one more run waits for its session's lock) when ``AppRunner.cleanup()`` runs. Every
stream must get one ``shutting_down`` error frame then ``data: [DONE]``, every non-streamed
request a 503 with the same envelope, every upstream request must be closed, nothing may be
persisted, and cleanup must finish within the grace period.

As a process: ``python -m openclaw_http_compat gateway --port 0`` with a stream open is sent
SIGTERM (or SIGINT); the stream ends with the error frame and ``[DONE]``, the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import sqlite3
import sys
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import attrs
import pytest
from aiohttp import web

from openclaw_http_compat.reference.app import build_gateway_app

from .mock_upstream import MockUpstream, StreamReply
from .test_disconnects import head
from .test_faults import TOKEN, make_config, sse_frames

#: How long shutdown may take with streams open.
GRACE_S: Final = 2.0
SHUTTING_DOWN: Final = {
    "error": {"message": "The gateway is shutting down.", "type": "api_error", "param": None, "code": "shutting_down"}
}
LISTENING: Final = re.compile(rb"listening on http://127\.0\.0\.1:(\d+) ")
#: A drain grace far shorter than a stalled stream: SIGTERM ends it after 0.3 s.
SHORT_GRACE: Final = {"shutdown": {"graceMs": 300}}


def request_body(*, stream: bool, user: str) -> dict[str, Any]:
    return {"model": "openclaw", "user": user, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


class Open:
    """One request in flight and what its response has delivered so far."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.received = b""

    async def read_frame(self) -> None:
        self.received += await self.resp.content.readuntil(b"\n\n")

    async def read_rest(self) -> str:
        self.received += await self.resp.read()
        return self.received.decode()


async def open_request(session: aiohttp.ClientSession, url: str, *, stream: bool, user: str) -> Open:
    resp = await session.post(url, json=request_body(stream=stream, user=user), headers={"Authorization": f"Bearer {TOKEN}"})
    opened = Open(resp)
    if stream:
        assert resp.status == 200
        await opened.read_frame()  # the role chunk: the stream is open
    return opened


def assert_stream_ended_by_shutdown(text: str, *, relayed: tuple[str, ...]) -> None:
    frames = sse_frames(text)
    assert frames[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    assert [f["choices"] for f in frames[1:-2]] == [
        [{"index": 0, "delta": {"content": t}, "finish_reason": None}] for t in relayed
    ]
    assert frames[-2:] == [SHUTTING_DOWN, "[DONE]"]


@pytest.mark.parametrize("handler_cancellation", [False, True], ids=["run-app-default", "handler-cancellation"])
async def test_cleanup_ends_open_streams_within_grace(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, handler_cancellation: bool
) -> None:
    """runner.cleanup() with 6 streams and 2 JSON requests open: each ends with shutting_down (+[DONE]) within 2 s."""
    config = make_config(tmp_path / "state", mock_upstream.url)
    mock_upstream.default = StreamReply(deltas=("partial",), stall=True)
    # shutdown_timeout only bounds a broken run (run_app waits 60 s); a working one ends far sooner.
    app_runner = web.AppRunner(build_gateway_app(config), handler_cancellation=handler_cancellation, shutdown_timeout=5)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{app_runner.addresses[0][1]}/v1/chat/completions"
    cleaned = False
    try:
        async with aiohttp.ClientSession() as session:
            streams = [await open_request(session, url, stream=True, user=f"s{i}") for i in range(6)]
            for opened in streams:
                await opened.read_frame()  # the "partial" content chunk: mid-reply
            json_requests = [
                asyncio.ensure_future(open_request(session, url, stream=False, user=f"j{i}")) for i in range(2)
            ]
            await mock_upstream.wait_for_requests(8)
            # One more run, queued behind s0's session lock: it has not reached the upstream.
            queued = await open_request(session, url, stream=True, user="s0")
            await asyncio.sleep(0.05)

            loop = asyncio.get_running_loop()
            started = loop.time()
            async with asyncio.timeout(GRACE_S):
                await app_runner.cleanup()
                cleaned = True
                texts = [await opened.read_rest() for opened in streams]
                queued_text = await queued.read_rest()
                answers = [(await request).resp for request in json_requests]
                json_bodies = [(resp.status, await resp.json()) for resp in answers]
            elapsed = loop.time() - started
    finally:
        if not cleaned:
            await app_runner.cleanup()

    for text in texts:
        assert_stream_ended_by_shutdown(text, relayed=("partial",))
    assert_stream_ended_by_shutdown(queued_text, relayed=())
    assert json_bodies == [(503, SHUTTING_DOWN)] * 2
    assert elapsed < GRACE_S
    assert len(mock_upstream.requests) == 8
    async with asyncio.timeout(1):
        while mock_upstream.disconnects < 8:
            await asyncio.sleep(0.01)
    with sqlite3.connect(tmp_path / "state" / "sessions.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM turns").fetchone() == (0,)


async def test_cleanup_does_not_wait_for_a_half_sent_body(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """runner.cleanup() with a request body half sent finishes within 2 s; the client gets 503 shutting_down or a close."""
    raw = make_config(tmp_path / "state", mock_upstream.url)
    # bodyTimeoutMs 3 s instead of the default 30 s, so that the bug costs the suite 3 s, not 30.
    chat = attrs.evolve(raw.plugin.chat_completions, body_timeout_ms=3000)
    config = attrs.evolve(raw, plugin=attrs.evolve(raw.plugin, chat_completions=chat))
    app_runner = web.AppRunner(build_gateway_app(config), shutdown_timeout=10)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    port = app_runner.addresses[0][1]
    data = json.dumps(request_body(stream=True, user="slow")).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(port, len(data)) + data[:20])
        await writer.drain()
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await app_runner.cleanup()
        elapsed = loop.time() - started
        answer = await reader.read()
    finally:
        writer.close()
        await app_runner.cleanup()
    assert elapsed < GRACE_S
    if answer:
        head_bytes, _, body_bytes = answer.partition(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 503 "), answer
        assert json.loads(body_bytes) == SHUTTING_DOWN


def gateway_env(state: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    env["OPENCLAW_STATE_DIR"] = str(state)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_gateway_config(
    path: pathlib.Path, state: pathlib.Path, upstream_url: str, *, gateway: Mapping[str, Any] | None = None
) -> pathlib.Path:
    """The config file of a gateway on ``upstream_url``; ``gateway`` adds keys to its ``gateway`` section."""
    path.write_text(
        json.dumps(
            {
                "gateway": {
                    "auth": {"mode": "token", "token": TOKEN},
                    "stateDir": str(state),
                    "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
                    **(gateway or {}),
                },
                "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
                "models": {"providers": {"mock": {"baseUrl": upstream_url, "api": "openai-completions"}}},
            }
        ),
        encoding="utf-8",
    )
    return path


class GatewayProcess:
    """``python -m openclaw_http_compat gateway --port 0`` as an async context manager; always killed on exit."""

    def __init__(self, config: pathlib.Path, state: pathlib.Path) -> None:
        self.config = config
        self.state = state
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", str(self.config), "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=gateway_env(self.state),
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            line = await self.proc.stdout.readline()
        match = LISTENING.search(line)
        assert match is not None, line
        self.port = int(match.group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_ends_open_stream_and_exits(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, signum: signal.Signals
) -> None:
    """A gateway process sent SIGTERM/SIGINT ends its open stream with shutting_down + [DONE] once its
    0.3 s drain grace is over (the stream would never end), and exits 0 within 3 s."""
    state = tmp_path / "state"
    config = write_gateway_config(tmp_path / "openclaw.json", state, mock_upstream.url, gateway=SHORT_GRACE)
    mock_upstream.default = StreamReply(deltas=("partial",), stall=True)
    async with GatewayProcess(config, state) as gateway, aiohttp.ClientSession() as session:
        opened = await open_request(session, gateway.url, stream=True, user="u")
        await opened.read_frame()
        assert gateway.proc is not None
        gateway.proc.send_signal(signum)
        async with asyncio.timeout(3):
            text = await opened.read_rest()
            returncode = await gateway.proc.wait()
    assert_stream_ended_by_shutdown(text, relayed=("partial",))
    assert returncode == 0
    assert mock_upstream.disconnects == 1
