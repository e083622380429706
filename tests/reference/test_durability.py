"""Completed turns are durable: committed before the client hears "done", and they survive SIGKILL.

A run's two turns (user message, reply) must be committed to the SQLite session store before
the client can see the run finish: the streamed finish chunk, or the non-streamed body. They are
read here with a connection of the test's own, so only committed rows count. A gateway process
killed with SIGKILL right after N completed turns (and in the middle of one more) must, once
restarted on the same state directory, still hold every completed turn and nothing of the
interrupted one.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import sqlite3
from typing import Final

import aiohttp
import pytest

from .mock_upstream import MockUpstream, StreamReply
from .test_disconnects import RawClient, head
from .test_faults import SESSION_KEY, TOKEN, USER, make_config, serve
from .test_shutdown import GatewayProcess, write_gateway_config

TURNS: Final = 6


def committed_turns(state: pathlib.Path, session_key: str = SESSION_KEY) -> list[tuple[str, str]]:
    """The session's committed turns, read through a new SQLite connection."""
    with sqlite3.connect(state / "sessions.sqlite") as conn:
        rows = conn.execute(
            "SELECT role, content FROM turns WHERE session_key = ? ORDER BY id", (session_key,)
        ).fetchall()
    return [(str(role), str(content)) for role, content in rows]


def request_bytes(port: int, *, stream: bool, message: str) -> bytes:
    data = json.dumps(
        {"model": "openclaw", "user": USER, "stream": stream, "messages": [{"role": "user", "content": message}]}
    ).encode()
    return head(port, len(data)) + data


async def test_streamed_turn_is_committed_before_the_finish_chunk(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """Mid-reply nothing is stored; when the finish chunk arrives, before [DONE] is read, both turns are committed."""
    state = tmp_path / "state"
    hold = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("stored", " reply"), hold=hold))
    async with serve(make_config(state, mock_upstream.url)) as gateway:
        client = await RawClient.connect(gateway)
        try:
            await client.send(request_bytes(gateway.port, stream=True, message="remember me"))
            await client.read_until(b'"delta":{"content":" reply"}')
            await asyncio.sleep(0.05)
            assert await asyncio.to_thread(committed_turns, state) == []
            hold.set()
            await client.read_until(b'"finish_reason":"stop"')
            # The client has the finish chunk; [DONE] may not even be written yet.
            assert await asyncio.to_thread(committed_turns, state) == [
                ("user", "remember me"),
                ("assistant", "stored reply"),
            ]
            await client.read_until(b"data: [DONE]\n\n")
        finally:
            await client.close()


async def test_json_turn_is_committed_before_the_response(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """A non-streamed turn is committed by the time its first response byte arrives."""
    state = tmp_path / "state"
    mock_upstream.reply(StreamReply(deltas=("json", " reply")))
    async with serve(make_config(state, mock_upstream.url)) as gateway:
        client = await RawClient.connect(gateway)
        try:
            await client.send(request_bytes(gateway.port, stream=False, message="keep this"))
            await client.read_until(b"HTTP/1.1 200")
            assert await asyncio.to_thread(committed_turns, state) == [("user", "keep this"), ("assistant", "json reply")]
        finally:
            await client.close()


async def one_turn(session: aiohttp.ClientSession, url: str, *, index: int) -> None:
    """Turn ``index`` (odd ones streamed); returns once the client knows it completed."""
    stream = index % 2 == 1
    body = {"model": "openclaw", "user": USER, "stream": stream, "messages": [{"role": "user", "content": f"q{index}"}]}
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 200
        if not stream:
            assert (await resp.json())["choices"][0]["message"]["content"] == f"a{index}"
            return
        text = b""
        while b'"finish_reason":"stop"' not in text:
            line = await resp.content.readuntil(b"\n\n")
            assert line, text
            text += line
        # Stop reading at the finish chunk: the turn is complete as far as the client knows.
        assert f'"content":"a{index}"'.encode() in text


def expected_history(count: int) -> list[dict[str, str]]:
    history: list[dict[str, str]] = []
    for index in range(count):
        history += [{"role": "user", "content": f"q{index}"}, {"role": "assistant", "content": f"a{index}"}]
    return history


@pytest.mark.parametrize("interrupted", [False, True], ids=["idle", "mid-run"])
async def test_sigkill_loses_no_completed_turn(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, interrupted: bool
) -> None:
    """SIGKILL right after 6 completed user-keyed turns (or during a 7th): after restart all 6 are there, the 7th is not."""
    state = tmp_path / "state"
    config = write_gateway_config(tmp_path / "openclaw.json", state, mock_upstream.url)
    mock_upstream.reply(*(StreamReply(deltas=(f"a{i}",)) for i in range(TURNS)))
    async with GatewayProcess(config, state) as gateway, aiohttp.ClientSession() as session:
        for index in range(TURNS):
            await one_turn(session, gateway.url, index=index)
        if interrupted:
            mock_upstream.reply(StreamReply(deltas=("half",), stall=True))
            body = {"model": "openclaw", "user": USER, "stream": True, "messages": [{"role": "user", "content": "lost"}]}
            resp = await session.post(gateway.url, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            await resp.content.readuntil(b'"content":"half"')
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGKILL)
        assert await gateway.proc.wait() == -signal.SIGKILL
        if interrupted:
            resp.close()

    mock_upstream.reply(StreamReply(deltas=("after restart",)))
    async with GatewayProcess(config, state) as gateway, aiohttp.ClientSession() as session:
        body = {"model": "openclaw", "user": USER, "messages": [{"role": "user", "content": "still there?"}]}
        async with session.post(gateway.url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert (await resp.json())["choices"][0]["message"]["content"] == "after restart"
    assert mock_upstream.requests[-1].json["messages"] == [
        *expected_history(TURNS),
        {"role": "user", "content": "still there?"},
    ]
    turns = [(t["role"], t["content"]) for t in expected_history(TURNS)]
    assert committed_turns(state) == [*turns, ("user", "still there?"), ("assistant", "after restart")]
