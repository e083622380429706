"""Shared fixtures: a stand-in gateway app hosting the plugin, and a scripted agent runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    GatewayConfig,
    Host,
    RunEnd,
    SharedSecretAuthenticator,
    TextDelta,
    auth_middleware,
    setup,
)

pytest_plugins = ("pytest_aiohttp",)

TOKEN = "test-token"

Script = Callable[[AgentRunRequest], AsyncIterator[AgentEvent]]


class ScriptedRunner:
    """An AgentRunner whose runs follow a script; records every request and abort."""

    def __init__(self, script: Script | None = None) -> None:
        self.requests: list[AgentRunRequest] = []
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.script: Script = script or echo_script

    async def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        self.requests.append(request)
        completed = False
        try:
            async for event in self.script(request):
                yield event
            completed = True
        finally:
            (self.finished if completed else self.aborted).append(request.run_id)


async def echo_script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
    yield TextDelta(f"echo: {request.message}")
    yield RunEnd()


def events_script(*events: AgentEvent, delay: float = 0) -> Script:
    """A script that yields ``events`` in order (sleeping ``delay`` before each)."""

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        for event in events:
            if delay:
                await asyncio.sleep(delay)
            yield event

    return script


def make_config(
    *,
    enabled: bool = True,
    auth: Mapping[str, Any] | None = None,
    agents: Sequence[Mapping[str, Any]] = ({"id": "main", "default": True}, {"id": "beta"}, {"id": "alpha"}),
    endpoint: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    raw: dict[str, Any] = {
        "gateway": {
            "auth": dict(auth) if auth is not None else {"mode": "token", "token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": enabled, **(endpoint or {})}}},
        },
        "agents": {"list": list(agents)},
    }
    return GatewayConfig.from_mapping(raw, env={})


def make_gateway(config: GatewayConfig, runner: ScriptedRunner) -> web.Application:
    """A root app like a gateway's: its own auth middleware, /health and a WebSocket at /."""
    authenticator = SharedSecretAuthenticator(config.auth)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data)
        return sock

    public = {"/health", "/"}
    app = web.Application(
        middlewares=[auth_middleware(authenticator, is_public=lambda r: r.path in public)]
    )
    app.router.add_get("/health", health)
    app.router.add_get("/", ws)
    setup(app, config, Host(runner=runner, authenticator=authenticator, roster=config.agents))
    return app


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


ClientFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def gateway_client(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> Callable[..., Awaitable[Any]]:
    """Build a gateway with the plugin from ``make_config`` kwargs and return a test client."""

    async def build(**kwargs: Any) -> Any:
        return await aiohttp_client(make_gateway(make_config(**kwargs), runner))

    return build
