"""Shared fixtures: a stand-in gateway app hosting the plugin, a scripted agent runner, and
helpers that build the exact bytes and bodies the endpoint is expected to send."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AgentEvent,
    AgentRunner,
    AgentRunRequest,
    auth_middleware,
    Host,
    HttpCompatConfig,
    RunEnd,
    RunError,
    setup,
    SharedSecretAuthenticator,
    TextDelta,
)

pytest_plugins = ("pytest_aiohttp",)

TOKEN = "test-token"
COMPLETIONS: Final = "/v1/chat/completions"
DONE: Final = "data: [DONE]\n\n"
KEEPALIVE: Final = ": keepalive\n\n"
#: ``chatcmpl_`` + a canonical lowercase UUID v4 (note the underscore, as OpenClaw does).
COMPLETION_ID: Final = re.compile(r"^chatcmpl_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
UUID4: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"

Script = Callable[[AgentRunRequest], AsyncIterator[AgentEvent]]
GatewayClient = TestClient[web.Request, Any]  # Any: served from an Application or a TestServer


class ScriptedRunner:
    """An AgentRunner whose runs follow a script; records every request and abort.

    A run is *finished* once its script is exhausted or it has handed over its terminal
    ``RunEnd``/``RunError`` (the plugin closes the iterator right after that, as the host
    contract allows); a run closed before that was *aborted*.
    """

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
                completed = isinstance(event, (RunEnd, RunError))
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


def stalled_script(*first: AgentEvent) -> Script:
    """A script that yields ``first`` and then thinks forever (until it is aborted)."""

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        for event in first:
            yield event
        await asyncio.Event().wait()
        yield RunEnd()  # pragma: no cover - never reached

    return script


def failing_script(*first: AgentEvent) -> Script:
    """A script that yields ``first`` and then raises (a runner bug, not a RunError)."""

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        for event in first:
            yield event
        raise RuntimeError("secret internal detail")

    return script


def make_config(
    *,
    enabled: bool = True,
    auth: Mapping[str, Any] | None = None,
    agents: Sequence[Mapping[str, Any]] = ({"id": "main", "default": True}, {"id": "beta"}, {"id": "alpha"}),
    endpoint: Mapping[str, Any] | None = None,
    gateway: Mapping[str, Any] | None = None,
) -> HttpCompatConfig:
    """A config in OpenClaw's own key names; ``gateway`` adds keys under ``gateway``."""
    raw: dict[str, Any] = {
        "gateway": {
            **(gateway or {}),
            "auth": dict(auth) if auth is not None else {"mode": "token", "token": TOKEN},
            "http": {"endpoints": {"chatCompletions": {"enabled": enabled, **(endpoint or {})}}},
        },
        "agents": {"list": list(agents)},
    }
    return HttpCompatConfig.from_mapping(raw, env={})


async def health(request: web.Request) -> web.Response:
    """The gateway's own liveness route."""
    return web.json_response({"ok": True})


async def echo_ws(request: web.Request) -> web.WebSocketResponse:
    """The gateway's own WebSocket at ``/`` (echoes text frames)."""
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        await sock.send_str(msg.data)
    return sock


def make_gateway(config: HttpCompatConfig, runner: AgentRunner, *, gateway_auth: bool = True) -> web.Application:
    """A root app like a gateway's: its own auth middleware, /health and a WebSocket at /.

    With ``gateway_auth=False`` the root has no auth middleware at all.
    """
    authenticator = SharedSecretAuthenticator(config.auth)
    public = {"/health", "/"}
    middlewares = [auth_middleware(authenticator, is_public=lambda r: r.path in public)] if gateway_auth else []
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/health", health)
    app.router.add_get("/", echo_ws)
    setup(app, config, Host(runner=runner, authenticator=authenticator, roster=config.agents))
    return app


class ProductionLikeServer(TestServer):
    """A TestServer without ``handler_cancellation``, like ``web.run_app`` by default.

    aiohttp's TestServer cancels a handler when its client disconnects; a real gateway
    usually does not, so disconnect handling must not depend on it.
    """

    async def _make_runner(self, handler_cancellation: bool = False, **kwargs: Any) -> web.AppRunner:
        return web.AppRunner(self.app, handler_cancellation=False, **kwargs)


@pytest.fixture
def runner() -> ScriptedRunner:
    return ScriptedRunner()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


ClientFactory = Callable[..., Awaitable[GatewayClient]]


@pytest.fixture
def gateway_client(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> ClientFactory:
    """Build a gateway with the plugin from ``make_config`` kwargs and return a test client.

    ``gateway_auth=False`` leaves the root app without an auth middleware;
    ``handler_cancellation=False`` serves it like ``web.run_app`` does by default.
    """

    async def build(*, gateway_auth: bool = True, handler_cancellation: bool = True, **kwargs: Any) -> GatewayClient:
        app = make_gateway(make_config(**kwargs), runner, gateway_auth=gateway_auth)
        return await aiohttp_client(app if handler_cancellation else ProductionLikeServer(app))

    return build


# --- expected bodies and bytes ------------------------------------------------------------


def chat_body(content: object = "hi", **fields: Any) -> dict[str, Any]:
    """A request body with one user message (``model: openclaw`` unless overridden)."""
    return {"model": "openclaw", "messages": [{"role": "user", "content": content}], **fields}


def error_body(message: str, type: str = "invalid_request_error", *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The exact OpenAI error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def compact(value: object) -> str:
    """JSON the way the endpoint writes it: compact, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@attrs.frozen
class Identity:
    """What every chunk of one stream shares."""

    id: str
    created: int
    model: str


def identity_of(text: str) -> Identity:
    """The identity fields of a stream, read from its first frame (the role chunk)."""
    first = text.split("\n\n", 1)[0]
    assert first.startswith("data: "), first
    chunk = json.loads(first.removeprefix("data: "))
    assert COMPLETION_ID.match(chunk["id"]), chunk["id"]
    assert abs(chunk["created"] - time.time()) < 60
    return Identity(chunk["id"], chunk["created"], chunk["model"])


def chunk(ident: Identity, choices: list[Any], **extra: Any) -> str:
    """One ``data:`` frame holding a ``chat.completion.chunk``."""
    body = {"id": ident.id, "object": "chat.completion.chunk", "created": ident.created, "model": ident.model,
            "choices": choices, **extra}
    return f"data: {compact(body)}\n\n"


def role_chunk(ident: Identity) -> str:
    return chunk(ident, [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])


def content_chunk(ident: Identity, text: str) -> str:
    return chunk(ident, [{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def finish_chunk(ident: Identity, reason: str = "stop") -> str:
    return chunk(ident, [{"index": 0, "delta": {}, "finish_reason": reason}])


def usage_chunk(ident: Identity, usage: Mapping[str, Any] | None) -> str:
    """The usage chunk; ``usage=None`` is the run that reported none (``"usage": null``)."""
    return chunk(ident, [], usage=dict(usage) if usage is not None else None)


def tool_start_chunk(ident: Identity, index: int, call_id: str, name: str) -> str:
    call = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    return chunk(ident, [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}])


def tool_args_chunk(ident: Identity, index: int, arguments: str) -> str:
    call = {"index": index, "function": {"arguments": arguments}}
    return chunk(ident, [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}])


def error_frame(message: str, type: str = "api_error", *, param: str | None = None, code: str | None = None) -> str:
    return f"data: {compact(error_body(message, type, param=param, code=code))}\n\n"


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 2.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
