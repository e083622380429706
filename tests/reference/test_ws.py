"""The reference gateway's WebSocket protocol at ``/``, over a real socket."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    RunEnd,
    RunError,
    RunUsage,
    SharedSecretAuthenticator,
    TextDelta,
)
from openclaw_http_compat.auth import AuthStateUnavailable
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference import ws
from openclaw_http_compat.reference.app import build_gateway_app

from ..conftest import ScriptedRunner, events_script
from .mock_upstream import MockUpstream, StreamReply

TOKEN = "ws-token"
UNAUTHORIZED = {"code": "unauthorized", "message": "Unauthorized"}


def make_config(state_dir: pathlib.Path, *, auth: dict[str, Any] | None = None) -> GatewayConfig:
    return GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": auth or {"mode": "token", "token": TOKEN},
                "stateDir": str(state_dir),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True}, {"id": "beta"}]},
        },
        env={},
    )


async def request(sock: aiohttp.ClientWebSocketResponse, req_id: str, method: str, params: Any = None) -> Any:
    frame: dict[str, Any] = {"type": "req", "id": req_id, "method": method}
    if params is not None:
        frame["params"] = params
    await sock.send_str(json.dumps(frame))
    return await sock.receive_json(timeout=5)


async def connected(client: TestClient[web.Request, web.Application]) -> aiohttp.ClientWebSocketResponse:
    sock = await client.ws_connect("/")
    assert await request(sock, "c", "connect", {"auth": {"token": TOKEN}}) == {
        "type": "res",
        "id": "c",
        "ok": True,
        "payload": {"protocol": 1},
    }
    return sock


async def assert_closed(sock: aiohttp.ClientWebSocketResponse, code: int) -> None:
    msg = await sock.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE
    assert sock.close_code == code


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
async def client(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, runner: ScriptedRunner
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(build_gateway_app(make_config(tmp_path), runner=runner))


async def test_connect_with_token(client: TestClient[web.Request, web.Application]) -> None:
    """A connect request with the gateway token is answered with the protocol version."""
    sock = await connected(client)
    await sock.close()


async def test_connect_with_password(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """In password mode the connect request's auth.password is checked."""
    config = make_config(tmp_path, auth={"mode": "password", "password": "s3cret"})
    client = await aiohttp_client(build_gateway_app(config, runner=ScriptedRunner()))
    sock = await client.ws_connect("/")
    reply = await request(sock, "1", "connect", {"auth": {"password": "s3cret"}})
    assert reply == {"type": "res", "id": "1", "ok": True, "payload": {"protocol": 1}}
    await sock.close()


@pytest.mark.parametrize(
    "params",
    [{"auth": {"token": "wrong"}}, {"auth": {}}, {}, {"auth": "ws-token"}],
    ids=("wrong-token", "empty-auth", "no-auth", "auth-not-object"),
)
async def test_connect_refused(client: TestClient[web.Request, web.Application], params: dict[str, Any]) -> None:
    """A connect without the right secret is refused as unauthorized and the socket closed (1008)."""
    sock = await client.ws_connect("/")
    reply = await request(sock, "1", "connect", params)
    assert reply == {"type": "res", "id": "1", "ok": False, "error": UNAUTHORIZED}
    await assert_closed(sock, WSCloseCode.POLICY_VIOLATION)


@pytest.mark.parametrize("method", ["health", "agent", "nope"])
async def test_request_before_connect_refused(
    client: TestClient[web.Request, web.Application], runner: ScriptedRunner, method: str
) -> None:
    """Any request before a successful connect is refused as unauthorized and the socket closed."""
    sock = await client.ws_connect("/")
    reply = await request(sock, "7", method, {"message": "hi"})
    assert reply == {"type": "res", "id": "7", "ok": False, "error": UNAUTHORIZED}
    await assert_closed(sock, WSCloseCode.POLICY_VIOLATION)
    assert runner.requests == []


async def test_rate_limited_connect(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """Wrong connect secrets count towards the shared auth limiter; a locked-out client gets rate_limited."""
    config = make_config(
        tmp_path,
        auth={"mode": "token", "token": TOKEN, "rateLimit": {"maxAttempts": 1, "exemptLoopback": False}},
    )
    client = await aiohttp_client(build_gateway_app(config, runner=ScriptedRunner()))
    sock = await client.ws_connect("/")
    assert (await request(sock, "1", "connect", {"auth": {"token": "wrong"}}))["error"] == UNAUTHORIZED
    await sock.close()
    sock = await client.ws_connect("/")
    reply = await request(sock, "2", "connect", {"auth": {"token": TOKEN}})
    assert reply == {
        "type": "res",
        "id": "2",
        "ok": False,
        "error": {
            "code": "rate_limited",
            "message": "Too many failed authentication attempts. Please try again later.",
            "retryAfterMs": 300_000,
        },
    }
    await assert_closed(sock, WSCloseCode.POLICY_VIOLATION)
    # The same limiter guards HTTP: the bearer is refused there too.
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 429


class _UnreachableState:
    """An auth limiter state whose shared store cannot be reached, as a fleet's during an outage."""

    async def lockout(self, key: str) -> float | None:
        raise AuthStateUnavailable("the shared store is down")

    async def record_failure(self, key: str) -> float | None:
        raise AuthStateUnavailable("the shared store is down")

    async def record_success(self, key: str) -> None:
        raise AuthStateUnavailable("the shared store is down")


async def test_connect_while_the_limiter_store_is_down(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """onStoreError "closed": a connect is answered ``unavailable`` with retryAfterMs, and the
    socket closes with 1013 (try again later), not as unauthorized."""
    config = make_config(
        tmp_path, auth={"mode": "token", "token": TOKEN, "rateLimit": {"maxAttempts": 1, "exemptLoopback": False}}
    )
    authenticator = SharedSecretAuthenticator(config.plugin.auth, limiter_state=_UnreachableState())
    app = web.Application()
    app[ws.SOCKETS_KEY] = ws.WebSockets()
    app.router.add_get("/", ws.websocket_handler(config.plugin, authenticator, ScriptedRunner()))
    client = await aiohttp_client(app)
    sock = await client.ws_connect("/")
    assert await request(sock, "1", "connect", {"auth": {"token": TOKEN}}) == {
        "type": "res",
        "id": "1",
        "ok": False,
        "error": {"code": "unavailable", "message": "authentication temporarily unavailable", "retryAfterMs": 1000},
    }
    await assert_closed(sock, WSCloseCode.TRY_AGAIN_LATER)


async def test_health(client: TestClient[web.Request, web.Application]) -> None:
    """After connect, health answers ok with the configured agents."""
    sock = await connected(client)
    assert await request(sock, "h", "health") == {
        "type": "res",
        "id": "h",
        "ok": True,
        "payload": {"ok": True, "agents": ["main", "beta"], "defaultAgentId": "main"},
    }
    await sock.close()


async def test_agent_streams_events_then_result(
    client: TestClient[web.Request, web.Application], runner: ScriptedRunner
) -> None:
    """An agent request streams assistant deltas as events, then answers with text and usage."""
    runner.script = events_script(
        TextDelta("Hello"), TextDelta(""), TextDelta(", world"), RunUsage(input=3, output=2), RunEnd()
    )
    sock = await connected(client)
    await sock.send_json({"type": "req", "id": "a1", "method": "agent", "params": {"message": "hi"}})
    frames = [await sock.receive_json(timeout=5) for _ in range(3)]
    run_id = runner.requests[0].run_id
    assert frames == [
        {"type": "event", "event": "agent", "payload": {"runId": run_id, "stream": "assistant", "data": {"delta": "Hello"}}},
        {"type": "event", "event": "agent", "payload": {"runId": run_id, "stream": "assistant", "data": {"delta": ", world"}}},
        {
            "type": "res",
            "id": "a1",
            "ok": True,
            "payload": {
                "runId": run_id,
                "agentId": "main",
                "sessionKey": "agent:main:main",
                "text": "Hello, world",
                "stopReason": "stop",
                "usage": {"input": 3, "output": 2, "cacheRead": 0, "cacheWrite": 0, "total": 5},
            },
        },
    ]
    await sock.close()


async def test_agent_request_fields(client: TestClient[web.Request, web.Application], runner: ScriptedRunner) -> None:
    """agentId, sessionKey and extraSystemPrompt reach the run; the agent id is normalised."""
    sock = await connected(client)
    params = {"message": "yo", "agentId": "BETA", "sessionKey": "agent:beta:ops", "extraSystemPrompt": "Be terse."}
    await sock.send_json({"type": "req", "id": 2, "method": "agent", "params": params})
    await sock.receive_json(timeout=5)  # the echo delta
    result = await sock.receive_json(timeout=5)
    assert result["id"] == 2
    assert result["ok"] is True
    assert result["payload"]["text"] == "echo: yo"
    run = runner.requests[0]
    assert (run.agent_id, run.session_key, run.message, run.extra_system_prompt) == (
        "beta",
        "agent:beta:ops",
        "yo",
        "Be terse.",
    )
    assert run.run_id == result["payload"]["runId"]
    await sock.close()


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, {"code": "invalid_params", "message": "`message` must be a non-empty string"}),
        ({"message": "  "}, {"code": "invalid_params", "message": "`message` must be a non-empty string"}),
        ({"message": "hi", "agentId": 5}, {"code": "invalid_params", "message": "`agentId` must be a string"}),
        ({"message": "hi", "agentId": "ghost"}, {"code": "unknown_agent", "message": "Unknown agent 'ghost'"}),
    ],
    ids=("no-message", "blank-message", "agent-id-not-string", "unknown-agent"),
)
async def test_agent_bad_params(
    client: TestClient[web.Request, web.Application],
    runner: ScriptedRunner,
    params: dict[str, Any],
    error: dict[str, str],
) -> None:
    """A bad agent request is refused without a run, and the socket stays usable."""
    sock = await connected(client)
    assert await request(sock, "x", "agent", params) == {"type": "res", "id": "x", "ok": False, "error": error}
    assert (await request(sock, "h", "health"))["ok"] is True
    assert runner.requests == []
    await sock.close()


async def test_agent_run_error(client: TestClient[web.Request, web.Application], runner: ScriptedRunner) -> None:
    """A run that fails answers ok:false with the failure's reason and message."""
    runner.script = events_script(TextDelta("par"), RunError(message="provider said no", reason="rate_limit"))
    sock = await connected(client)
    await sock.send_json({"type": "req", "id": "e", "method": "agent", "params": {"message": "hi"}})
    assert (await sock.receive_json(timeout=5))["type"] == "event"
    assert await sock.receive_json(timeout=5) == {
        "type": "res",
        "id": "e",
        "ok": False,
        "error": {"code": "rate_limit", "message": "provider said no"},
    }
    await sock.close()


async def test_agent_runner_exception(client: TestClient[web.Request, web.Application], runner: ScriptedRunner) -> None:
    """An exception escaping the runner is answered as internal_error, without its text."""

    async def boom(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        if request.message:
            raise ValueError("secret detail")
        yield RunEnd()  # pragma: no cover - never reached

    runner.script = boom
    sock = await connected(client)
    assert await request(sock, "b", "agent", {"message": "hi"}) == {
        "type": "res",
        "id": "b",
        "ok": False,
        "error": {"code": "internal_error", "message": "internal error"},
    }
    await sock.close()


async def test_unknown_method(client: TestClient[web.Request, web.Application]) -> None:
    """An unknown method is refused with unknown_method and the socket stays open."""
    sock = await connected(client)
    assert await request(sock, "u", "reboot") == {
        "type": "res",
        "id": "u",
        "ok": False,
        "error": {"code": "unknown_method", "message": "Unknown method 'reboot'"},
    }
    assert (await request(sock, "h", "health"))["ok"] is True
    await sock.close()


async def test_second_connect_refused(client: TestClient[web.Request, web.Application]) -> None:
    """connect on an authenticated socket is refused with already_connected; the socket stays open."""
    sock = await connected(client)
    reply = await request(sock, "c2", "connect", {"auth": {"token": TOKEN}})
    assert reply["error"]["code"] == "already_connected"
    assert (await request(sock, "h", "health"))["ok"] is True
    await sock.close()


@pytest.mark.parametrize("authenticated", [False, True], ids=("before-connect", "after-connect"))
async def test_malformed_frames(client: TestClient[web.Request, web.Application], authenticated: bool) -> None:
    """Malformed JSON, non-request JSON and binary frames get error frames; the socket stays open."""
    sock = await connected(client) if authenticated else await client.ws_connect("/")
    await sock.send_str("{not json")
    assert await sock.receive_json(timeout=5) == {
        "type": "res",
        "id": None,
        "ok": False,
        "error": {"code": "invalid_json", "message": "Malformed JSON frame"},
    }
    shape = {"code": "invalid_request", "message": 'Expected {"type": "req", "id", "method", "params"?}'}
    await sock.send_str('{"type": "req", "id": "9"}')
    assert await sock.receive_json(timeout=5) == {"type": "res", "id": "9", "ok": False, "error": shape}
    await sock.send_str("[1, 2]")
    assert await sock.receive_json(timeout=5) == {"type": "res", "id": None, "ok": False, "error": shape}
    await sock.send_bytes(b"{}")
    assert await sock.receive_json(timeout=5) == {
        "type": "res",
        "id": None,
        "ok": False,
        "error": {"code": "invalid_request", "message": "Frames must be JSON text messages"},
    }
    if not authenticated:
        await connected_on(sock)
    assert (await request(sock, "h", "health"))["ok"] is True
    await sock.close()


async def connected_on(sock: aiohttp.ClientWebSocketResponse) -> None:
    reply = await request(sock, "c", "connect", {"auth": {"token": TOKEN}})
    assert reply["ok"] is True


async def test_close_mid_run_aborts(client: TestClient[web.Request, web.Application], runner: ScriptedRunner) -> None:
    """Closing the socket during a run aborts it: the runner's iterator is closed, not finished."""
    started = asyncio.Event()

    async def slow(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        yield TextDelta("first")
        started.set()
        await asyncio.sleep(30)
        yield RunEnd()  # pragma: no cover - the run is aborted before

    runner.script = slow
    sock = await connected(client)
    await sock.send_json({"type": "req", "id": "s", "method": "agent", "params": {"message": "hi"}})
    assert (await sock.receive_json(timeout=5))["payload"]["data"] == {"delta": "first"}
    await asyncio.wait_for(started.wait(), 5)
    await sock.close()
    for _ in range(100):
        if runner.aborted:
            break
        await asyncio.sleep(0.02)
    assert runner.aborted == [runner.requests[0].run_id]
    assert runner.finished == []


async def test_concurrent_runs_and_health(
    client: TestClient[web.Request, web.Application], runner: ScriptedRunner
) -> None:
    """A long run does not block other requests on the same socket."""
    release = asyncio.Event()

    async def waits(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        await release.wait()
        yield TextDelta("done")
        yield RunEnd()

    runner.script = waits
    sock = await connected(client)
    await sock.send_json({"type": "req", "id": "long", "method": "agent", "params": {"message": "hi"}})
    assert (await request(sock, "h", "health"))["id"] == "h"
    release.set()
    assert (await sock.receive_json(timeout=5))["type"] == "event"
    assert (await sock.receive_json(timeout=5))["payload"]["text"] == "done"
    await sock.close()


async def test_handshake_timeout(
    client: TestClient[web.Request, web.Application], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that never connects is closed with 1008 after the handshake timeout."""
    monkeypatch.setattr(ws, "HANDSHAKE_TIMEOUT_S", 0.2)
    sock = await client.ws_connect("/")
    await assert_closed(sock, WSCloseCode.POLICY_VIOLATION)


async def test_shutdown_closes_sockets(tmp_path: pathlib.Path) -> None:
    """Shutting the gateway down closes open WebSockets with 1001 instead of waiting for them."""
    app = build_gateway_app(make_config(tmp_path), runner=ScriptedRunner())
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        sock = await connected(client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        closing = asyncio.create_task(client.server.close())
        await assert_closed(sock, WSCloseCode.GOING_AWAY)
        await asyncio.wait_for(closing, 5)
        assert loop.time() - started < 5
    finally:
        await client.close()


async def test_ws_and_http_share_the_runner(
    client: TestClient[web.Request, web.Application], runner: ScriptedRunner
) -> None:
    """A WebSocket run and a /v1/chat/completions run go to the same runner, on the same session key."""
    sock = await connected(client)
    reply = await request(sock, "w", "agent", {"message": "over ws", "sessionKey": "agent:main:shared"})
    assert reply["type"] == "event"
    assert (await sock.receive_json(timeout=5))["ok"] is True
    await sock.close()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "messages": [{"role": "user", "content": "over http"}]},
        headers={"Authorization": f"Bearer {TOKEN}", "x-openclaw-session-key": "agent:main:shared"},
    )
    assert resp.status == 200
    assert [(r.session_key, r.message) for r in runner.requests] == [
        ("agent:main:shared", "over ws"),
        ("agent:main:shared", "over http"),
    ]


async def test_ws_and_http_share_the_transcript(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """With the real runtime, an HTTP run on a WebSocket run's session key continues its transcript."""
    raw_config = {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN},
            "stateDir": str(tmp_path),
            "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
        },
        "agents": {"list": [{"id": "main", "model": "up/gpt-test", "systemPrompt": "Be kind."}]},
        "models": {"providers": {"up": {"baseUrl": mock_upstream.url}}},
    }
    client = await aiohttp_client(build_gateway_app(GatewayConfig.from_mapping(raw_config, env={})))
    mock_upstream.reply(StreamReply(deltas=("from", " ws")), StreamReply(deltas=("from http",)))
    sock = await connected(client)
    await sock.send_json({"type": "req", "id": "w", "method": "agent", "params": {"message": "hello over ws"}})
    frames = [await sock.receive_json(timeout=5) for _ in range(3)]
    assert frames[2]["payload"]["text"] == "from ws"
    assert frames[2]["payload"]["sessionKey"] == "agent:main:main"
    await sock.close()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "messages": [{"role": "user", "content": "hello over http"}]},
        headers={"Authorization": f"Bearer {TOKEN}", "x-openclaw-session-key": "agent:main:main"},
    )
    assert (await resp.json())["choices"][0]["message"]["content"] == "from http"
    assert mock_upstream.requests[1].json["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hello over ws"},
        {"role": "assistant", "content": "from ws"},
        {"role": "user", "content": "hello over http"},
    ]
