"""SIGTERM drains a real gateway process: what runs may finish within ``gateway.shutdown.graceMs``.

Each test starts ``python -m openclaw_http_compat gateway`` (or ``--workers 2``) on 127.0.0.1
over the mock upstream, which streams ten words 0.2 s apart (about 2.4 s for the whole reply).
The signal comes 0.5 s into the stream. With an 8 s grace the stream ends normally, every word,
``finish_reason: "stop"`` and ``[DONE]``, while ``/readyz`` answers 503 and a new request 503
``shutting_down`` with ``Retry-After``; with a 0.5 s grace it ends with the ``shutting_down``
error frame and ``[DONE]``. A WebSocket ``agent`` run is drained the same way. Every process
exits 0.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
from typing import Any, Final

import aiohttp
import pytest

from openclaw_http_compat import ConfigError
from openclaw_http_compat.reference.config import load_gateway_config

from .mock_upstream import MockUpstream, StreamReply
from .test_faults import TOKEN, sse_frames
from .test_shutdown import (
    SHUTTING_DOWN,
    GatewayProcess,
    assert_stream_ended_by_shutdown,
    open_request,
    request_body,
    write_gateway_config,
)
from .test_workers import Fleet, _alive

WORDS: Final = tuple(f"w{i} " for i in range(10))
#: How long into the stream the signal comes.
SIGNAL_AFTER_S: Final = 0.5
#: Bound on the whole drain in these tests (the longest grace is 8 s).
WAIT_S: Final = 15.0


def slow_reply() -> StreamReply:
    """Ten words, 0.2 s apart: a stream that needs about 2 s."""
    return StreamReply(deltas=WORDS, delay_s=0.2)


def assert_stream_ended_normally(text: str) -> None:
    frames = sse_frames(text)
    assert frames[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    assert [f["choices"] for f in frames[1:-2]] == [
        [{"index": 0, "delta": {"content": word}, "finish_reason": None}] for word in WORDS
    ]
    assert frames[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert frames[-1] == "[DONE]"
    assert not any(isinstance(f, dict) and "error" in f for f in frames)


async def draining_answers(session: aiohttp.ClientSession, base: str) -> tuple[Any, ...]:
    """``/readyz`` once the drain has begun, ``/healthz``, and a new chat request, as (status, body[, Retry-After])."""
    async with asyncio.timeout(5):
        while True:
            async with session.get(f"{base}/readyz") as resp:
                ready = (resp.status, await resp.json())
            if ready[0] == 503:
                break
            await asyncio.sleep(0.02)
    async with session.get(f"{base}/healthz") as resp:
        live = (resp.status, await resp.json())
    async with session.post(
        f"{base}/v1/chat/completions",
        json=request_body(stream=True, user=""),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        refused = (resp.status, await resp.json(), resp.headers.get("Retry-After"))
    return ready, live, refused


def config_with_grace(tmp_path: pathlib.Path, upstream: MockUpstream, grace_ms: int) -> pathlib.Path:
    return write_gateway_config(
        tmp_path / "openclaw.json", tmp_path / "state", upstream.url, gateway={"shutdown": {"graceMs": grace_ms}}
    )


async def test_sigterm_lets_a_running_stream_finish_within_grace(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """graceMs 8000, SIGTERM 0.5 s into a 2 s stream and a 2 s JSON request: both end normally (every word,
    "stop", [DONE]); meanwhile /readyz is 503, /healthz 200 and a new request 503 shutting_down; exit 0."""
    mock_upstream.default = slow_reply()
    config = config_with_grace(tmp_path, mock_upstream, 8000)
    async with GatewayProcess(config, tmp_path / "state") as gateway, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{gateway.port}"
        async with session.get(f"{base}/readyz") as resp:
            assert (resp.status, await resp.json()) == (200, {"ok": True})
        opened = await open_request(session, gateway.url, stream=True, user="")
        json_request = asyncio.ensure_future(open_request(session, gateway.url, stream=False, user=""))
        await mock_upstream.wait_for_requests(2)
        await asyncio.sleep(SIGNAL_AFTER_S)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            ready, live, refused = await draining_answers(session, base)
            text = await opened.read_rest()
            json_answer = (await json_request).resp
            json_body = (json_answer.status, await json_answer.json())
            returncode = await gateway.proc.wait()
    assert ready == (503, {"ok": False, "reason": "draining"})
    assert live == (200, {"ok": True})
    assert refused == (503, SHUTTING_DOWN, "1")
    assert_stream_ended_normally(text)
    assert json_body[0] == 200
    assert json_body[1]["choices"][0]["message"]["content"] == "".join(WORDS)
    assert json_body[1]["choices"][0]["finish_reason"] == "stop"
    assert returncode == 0
    assert len(mock_upstream.requests) == 2  # the refused request never reached the upstream


async def test_sigterm_ends_a_stream_longer_than_grace_with_the_error_frame(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """graceMs 500, SIGTERM 0.5 s into a 2 s stream: the words so far, the shutting_down frame, [DONE]; exit 0."""
    mock_upstream.default = slow_reply()
    config = config_with_grace(tmp_path, mock_upstream, 500)
    async with GatewayProcess(config, tmp_path / "state") as gateway, aiohttp.ClientSession() as session:
        opened = await open_request(session, gateway.url, stream=True, user="")
        await asyncio.sleep(SIGNAL_AFTER_S)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            text = await opened.read_rest()
            returncode = await gateway.proc.wait()
    relayed = [f["choices"][0]["delta"]["content"] for f in sse_frames(text)[1:-2]]
    assert 0 < len(relayed) < len(WORDS)
    assert_stream_ended_by_shutdown(text, relayed=tuple(relayed))
    assert returncode == 0


async def test_sigint_during_the_drain_cuts_it_short(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """A 60 s grace: a repeated SIGTERM changes nothing, a SIGINT (Ctrl-C twice) ends the stalled
    stream with the error frame at once; exit 0."""
    mock_upstream.default = StreamReply(deltas=("partial",), stall=True)
    config = config_with_grace(tmp_path, mock_upstream, 60_000)
    async with GatewayProcess(config, tmp_path / "state") as gateway, aiohttp.ClientSession() as session:
        opened = await open_request(session, gateway.url, stream=True, user="")
        await opened.read_frame()
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        base = f"http://127.0.0.1:{gateway.port}"
        async with asyncio.timeout(5):
            await draining_answers(session, base)
            gateway.proc.send_signal(signal.SIGTERM)
            # Still draining: the probe says so and the stream is still open.
            ready, _, _ = await draining_answers(session, base)
            assert gateway.proc.returncode is None
            gateway.proc.send_signal(signal.SIGINT)
            text = await opened.read_rest()
            returncode = await gateway.proc.wait()
    assert ready == (503, {"ok": False, "reason": "draining"})
    assert_stream_ended_by_shutdown(text, relayed=("partial",))
    assert returncode == 0


async def test_sigterm_lets_a_websocket_run_finish(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """graceMs 8000, SIGTERM 0.5 s into a 2 s WebSocket agent run: it sends every word and its result,
    a new `agent` request meanwhile is refused shutting_down, then the socket closes 1001; exit 0."""
    mock_upstream.default = slow_reply()
    config = config_with_grace(tmp_path, mock_upstream, 8000)
    async with GatewayProcess(config, tmp_path / "state") as gateway, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{gateway.port}"
        sock = await session.ws_connect(f"{base}/")
        await sock.send_json({"type": "req", "id": "c", "method": "connect", "params": {"auth": {"token": TOKEN}}})
        assert (await sock.receive_json())["ok"] is True
        await sock.send_json({"type": "req", "id": "run", "method": "agent", "params": {"message": "hi"}})
        await mock_upstream.wait_for_requests(1)
        await asyncio.sleep(SIGNAL_AFTER_S)
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGTERM)
        frames: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT_S):
            await draining_answers(session, base)
            await sock.send_json({"type": "req", "id": "late", "method": "agent", "params": {"message": "again"}})
            while (msg := await sock.receive()).type is aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(msg.data))
            returncode = await gateway.proc.wait()
    deltas = [f["payload"]["data"]["delta"] for f in frames if f["type"] == "event"]
    answers = {f["id"]: f for f in frames if f["type"] == "res"}
    assert deltas == list(WORDS)
    assert answers["run"]["ok"] is True
    assert answers["run"]["payload"]["text"] == "".join(WORDS)
    assert answers["run"]["payload"]["stopReason"] == "stop"
    assert answers["late"] == {
        "type": "res",
        "id": "late",
        "ok": False,
        "error": {"code": "shutting_down", "message": "The gateway is shutting down.", "retryAfterMs": 1000},
    }
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert sock.close_code == 1001
    assert returncode == 0
    assert len(mock_upstream.requests) == 1  # neither refused request reached the upstream


async def test_workers_drain_a_running_stream(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """--workers 2, graceMs 8000, SIGTERM to the supervisor 0.5 s into a 2 s stream: it ends normally; all exit 0."""
    mock_upstream.default = slow_reply()
    config = config_with_grace(tmp_path, mock_upstream, 8000)
    async with Fleet(config, tmp_path / "state") as fleet, aiohttp.ClientSession() as session:
        opened = await open_request(session, f"{fleet.base}/v1/chat/completions", stream=True, user="")
        await asyncio.sleep(SIGNAL_AFTER_S)
        workers = set(fleet.worker_pids().values())
        assert fleet.proc is not None
        fleet.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            ready, _, refused = await draining_answers(session, fleet.base)
            text = await opened.read_rest()
            returncode = await fleet.proc.wait()
        for pid in workers:
            await fleet.wait_for_log(rf"worker pid {pid} stopped \(exit status 0\)")
    assert ready == (503, {"ok": False, "reason": "draining"})
    assert refused == (503, SHUTTING_DOWN, "1")
    assert_stream_ended_normally(text)
    assert returncode == 0
    assert not any(_alive(pid) for pid in workers)


@pytest.mark.parametrize("grace_ms", [0, 1])
def test_config_grace_is_read(tmp_path: pathlib.Path, grace_ms: int) -> None:
    """gateway.shutdown.graceMs is read from the file (0 is allowed: end runs at once)."""
    path = write_gateway_config(tmp_path / "c.json", tmp_path, "http://127.0.0.1:9/v1", gateway={"shutdown": {"graceMs": grace_ms}})
    assert load_gateway_config(path, env={}).shutdown.grace_ms == grace_ms


def test_negative_grace_is_refused(tmp_path: pathlib.Path) -> None:
    """A negative gateway.shutdown.graceMs stops start-up naming the key."""
    path = write_gateway_config(tmp_path / "c.json", tmp_path, "http://127.0.0.1:9/v1", gateway={"shutdown": {"graceMs": -1}})
    with pytest.raises(ConfigError) as error:
        load_gateway_config(path, env={})
    assert str(error.value) == "gateway.shutdown.graceMs: must be at least 0, got -1"
