"""The reference gateway's application: plugin loading, routes next to /v1, auth, persistence."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import json
import pathlib
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

import openclaw_http_compat
import openclaw_http_compat.plugin
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.app import (
    PLUGIN_GROUP,
    PLUGINS_KEY,
    RUNNER_KEY,
    build_gateway_app,
    state_dir,
)
from openclaw_http_compat.reference.runtime import AgentRuntime
from openclaw_http_compat.reference.store import SessionStore

from ..conftest import ScriptedRunner
from .mock_upstream import MockUpstream, StreamReply

TOKEN = "app-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED_HEADERS = {**AUTH, "Content-Type": "application/json", "x-openclaw-agent-id": "main"}
SEED_BODY = '{\n    "model": "openclaw",\n    "messages": [{"role":"user","content":"hi"}]\n  }'
SEED_STREAM_BODY = '{\n    "model": "openclaw",\n    "stream": true,\n    "messages": [{"role":"user","content":"hi"}]\n  }'
UNAUTHORIZED = {"error": {"message": "Unauthorized", "type": "unauthorized", "param": None, "code": None}}


def make_config(
    state: pathlib.Path,
    *,
    enabled: bool = True,
    providers: dict[str, Any] | None = None,
    model: str | None = None,
    endpoint: dict[str, Any] | None = None,
) -> GatewayConfig:
    main: dict[str, Any] = {"id": "main", "default": True}
    if model is not None:
        main["model"] = model
    return GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(state),
                "http": {"endpoints": {"chatCompletions": {"enabled": enabled, **(endpoint or {})}}},
            },
            "agents": {"list": [main, {"id": "beta", "systemPrompt": "You are beta."}]},
            "models": {"providers": providers or {}},
        },
        env={},
    )


def sse_payloads(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, in order (``[DONE]`` kept as a string)."""
    frames = [f for f in text.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), frames
    return [f[len("data: ") :] if f == "data: [DONE]" else json.loads(f[len("data: ") :]) for f in frames]


Client = TestClient[web.Request, web.Application]


def test_entry_point_is_registered() -> None:
    """The package publishes gateway_plugin under the openclaw.gateway.plugins entry-point group."""
    points = {e.name: e for e in importlib.metadata.entry_points(group=PLUGIN_GROUP)}
    assert points["chat-completions"].value == "openclaw_http_compat.plugin:gateway_plugin"
    assert points["chat-completions"].load() is openclaw_http_compat.plugin.gateway_plugin


async def test_plugin_loaded_through_entry_point(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """build_gateway_app calls the entry point, which mounts /v1 when the endpoint is enabled."""
    app = build_gateway_app(make_config(tmp_path))
    assert "chat-completions" in app[PLUGINS_KEY]
    client = await aiohttp_client(app)
    resp = await client.get("/v1/models", headers=AUTH)
    assert resp.status == 200
    assert [m["id"] for m in (await resp.json())["data"]] == ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"]


async def test_endpoint_disabled(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """With chatCompletions disabled the plugin mounts nothing: /v1 is 404 while /health works."""
    app = build_gateway_app(make_config(tmp_path, enabled=False))
    assert "chat-completions" in app[PLUGINS_KEY]
    client = await aiohttp_client(app)
    resp = await client.post("/v1/chat/completions", data=SEED_BODY, headers=SEED_HEADERS)
    assert resp.status == 404
    assert (await client.get("/v1/models", headers=AUTH)).status == 404
    health = await client.get("/health")
    assert health.status == 200
    assert await health.json() == {"ok": True}


async def test_seed_non_streaming_with_echo(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """The seed's non-streaming request is answered by the echo runtime as a chat.completion."""
    client = await aiohttp_client(build_gateway_app(make_config(tmp_path)))
    resp = await client.post("/v1/chat/completions", data=SEED_BODY, headers=SEED_HEADERS)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["id"].startswith("chatcmpl_")
    assert resp.headers["x-request-id"] == body["id"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "openclaw"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "echo: hi"}, "finish_reason": "stop"}
    ]


async def test_seed_streaming_with_echo(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """The seed's streaming request gets SSE chunks spelling the echo, a stop chunk and [DONE]."""
    client = await aiohttp_client(build_gateway_app(make_config(tmp_path)))
    resp = await client.post("/v1/chat/completions", data=SEED_STREAM_BODY, headers=SEED_HEADERS)
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    payloads = sse_payloads(await resp.text())
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "echo: hi"


async def test_gateway_routes_next_to_v1(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """With /v1 mounted, the gateway's own /health and WebSocket at / still resolve."""
    client = await aiohttp_client(build_gateway_app(make_config(tmp_path)))
    health = await client.get("/health")
    assert (health.status, await health.json()) == (200, {"ok": True})
    sock = await client.ws_connect("/")
    await sock.send_json({"type": "req", "id": "1", "method": "connect", "params": {"auth": {"token": TOKEN}}})
    assert await sock.receive_json(timeout=5) == {"type": "res", "id": "1", "ok": True, "payload": {"protocol": 1}}
    await sock.send_json({"type": "req", "id": "2", "method": "agent", "params": {"message": "ping"}})
    events = [await sock.receive_json(timeout=5) for _ in range(3)]
    assert "".join(e["payload"]["data"]["delta"] for e in events[:2]) == "echo: ping"
    assert events[2]["payload"]["text"] == "echo: ping"
    await sock.close()


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer wrong"}, {}, {"Authorization": f"Basic {TOKEN}"}],
    ids=("wrong-token", "no-header", "wrong-scheme"),
)
async def test_unauthorized(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, headers: dict[str, str]) -> None:
    """A wrong or missing bearer token is answered 401 with the OpenAI error envelope."""
    client = await aiohttp_client(build_gateway_app(make_config(tmp_path)))
    resp = await client.post("/v1/chat/completions", data=SEED_BODY, headers={**SEED_HEADERS, **headers} if headers else {})
    assert resp.status == 401
    assert await resp.json() == UNAUTHORIZED


async def test_unknown_route_is_404_before_auth(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """An unknown gateway path answers 404 without asking for credentials."""
    client = await aiohttp_client(build_gateway_app(make_config(tmp_path)))
    assert (await client.get("/nope")).status == 404


@pytest.mark.parametrize("max_runs", [None, 3, 0], ids=["default", "three", "no-cap"])
async def test_runtime_opened_and_closed(tmp_path: pathlib.Path, max_runs: int | None) -> None:
    """Startup opens the AgentRuntime on <stateDir>/sessions.sqlite and a client session whose pool
    holds as many connections as runs may be in flight (0: no cap); cleanup closes both."""
    state = tmp_path / "nested" / "state"
    app = build_gateway_app(make_config(state, endpoint={} if max_runs is None else {"maxConcurrentRuns": max_runs}))
    assert RUNNER_KEY not in app
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        runtime = app[RUNNER_KEY]
        assert isinstance(runtime, AgentRuntime)
        assert isinstance(runtime.store, SessionStore)  # no sessionStore.url: the SQLite engine
        assert runtime.store.path == state / "sessions.sqlite"
        assert runtime.session.connector is not None
        assert runtime.session.connector.limit == (256 if max_runs is None else max_runs)
    finally:
        await client.close()
    assert runtime.session.closed
    assert (state / "sessions.sqlite").is_file()


async def test_runner_override(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path) -> None:
    """A runner passed to build_gateway_app serves the runs; no session store is opened."""
    runner = ScriptedRunner()
    client = await aiohttp_client(build_gateway_app(make_config(tmp_path), runner=runner))
    resp = await client.post("/v1/chat/completions", data=SEED_BODY, headers=SEED_HEADERS)
    assert resp.status == 200
    assert [r.message for r in runner.requests] == ["hi"]
    assert not (tmp_path / "sessions.sqlite").exists()


def test_state_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    """Without gateway.stateDir (or OPENCLAW_STATE_DIR) the state lives in ~/.openclaw."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}}, env={})
    assert state_dir(config) == tmp_path / ".openclaw"
    assert state_dir(make_config(tmp_path / "s")) == tmp_path / "s"


async def test_user_session_survives_restart(tmp_path: pathlib.Path, mock_upstream: MockUpstream) -> None:
    """A `user`-keyed conversation continues after the gateway is torn down and rebuilt on its state dir."""
    config = make_config(tmp_path, providers={"up": {"baseUrl": mock_upstream.url}}, model="up/gpt-test")
    mock_upstream.reply(StreamReply(deltas=("Hello", " Alice")), StreamReply(deltas=("Again",)))
    for message, answer in (("first", "Hello Alice"), ("second", "Again")):
        client = TestClient(TestServer(build_gateway_app(config)))
        await client.start_server()
        try:
            body = {"model": "openclaw", "user": "Alice", "messages": [{"role": "user", "content": message}]}
            resp = await client.post("/v1/chat/completions", json=body, headers=AUTH)
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == answer
        finally:
            await client.close()
    assert [r.json["messages"] for r in mock_upstream.requests] == [
        [{"role": "user", "content": "first"}],
        [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "Hello Alice"},
            {"role": "user", "content": "second"},
        ],
    ]
    store = SessionStore(tmp_path / "sessions.sqlite")
    await store.open()
    try:
        assert len(await store.load("agent:main:openai-user:alice")) == 4
    finally:
        await store.close()


async def test_requests_without_user_are_stateless(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """Without `user` each request is a new session: the upstream sees no earlier turns."""
    config = make_config(tmp_path, providers={"up": {"baseUrl": mock_upstream.url}}, model="up/gpt-test")
    client = await aiohttp_client(build_gateway_app(config))
    for message in ("one", "two"):
        body = {"model": "openclaw", "messages": [{"role": "user", "content": message}]}
        assert (await client.post("/v1/chat/completions", json=body, headers=AUTH)).status == 200
    assert [r.json["messages"] for r in mock_upstream.requests] == [
        [{"role": "user", "content": "one"}],
        [{"role": "user", "content": "two"}],
    ]


def test_reference_uses_only_the_public_api() -> None:
    """Every reference module imports the plugin only by public names: the package's ``__all__``,
    or the ``__all__`` of a public module of it (helpers stay in their modules)."""
    package = pathlib.Path(openclaw_http_compat.__file__).parent
    for path in sorted((package / "reference").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("openclaw_http_compat") for a in node.names), path.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("openclaw_http_compat"):
                module = node.module or ""
                parts = module.split(".")
                assert len(parts) <= 2 and not any(p.startswith("_") for p in parts), f"{path.name} imports {module}"
                assert parts[-1] != "reference", f"{path.name} imports {module}"
                public = set(importlib.import_module(module).__all__)
                assert {a.name for a in node.names} <= public, f"{path.name}: {module}"
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                pytest.fail(f"{path.name} imports from a parent package")
