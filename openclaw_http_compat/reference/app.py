"""The reference gateway's application: one port for HTTP, the WebSocket and the plugins.

It is built the way any gateway would host ``openclaw_http_compat``: it imports only the
package's public API, installs the package's auth middleware with one authenticator that HTTP,
the WebSocket handshake and the plugins share, and loads its plugins from the
``openclaw.gateway.plugins`` entry-point group. The chat-completions plugin mounts itself
only when ``gateway.http.endpoints.chatCompletions.enabled`` is true.

Routes of the gateway itself:

* ``GET /health``: ``{"ok": true}``, public (for uptime probes);
* ``GET /``: the WebSocket (see :mod:`.ws`), public at the HTTP level because it
  authenticates in its ``connect`` handshake.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, Protocol, cast

from aiohttp import web

from openclaw_http_compat import (
    AgentEvent,
    AgentRunner,
    AgentRunRequest,
    Host,
    HttpCompatConfig,
    SharedSecretAuthenticator,
    auth_middleware,
)
from openclaw_http_compat.client import open_client_session
from openclaw_http_compat.idempotency import MemoryIdempotencyStore

from .config import GatewayConfig
from .records import RECORDS_KEY, StartedRecords, open_records
from .runtime import AgentRuntime
from .storage import select_store
from .ws import SOCKETS_KEY, close_sockets, websocket_handler

__all__ = (
    "PLUGINS_KEY",
    "PLUGIN_GROUP",
    "RUNNER_KEY",
    "GatewayPlugin",
    "build_gateway_app",
    "listening_line",
    "load_plugins",
    "open_runtime",
    "run_gateway",
    "state_dir",
)

#: The entry-point group gateway plugins are published under.
PLUGIN_GROUP: Final = "openclaw.gateway.plugins"

#: The runner agent runs go to: the AgentRuntime opened at startup, or the one passed to
#: build_gateway_app (set on the gateway's root app).
RUNNER_KEY: Final = web.AppKey[AgentRunner]("openclaw_http_compat.reference.runner")

#: Names of the entry points loaded into this app, in load order (root app).
PLUGINS_KEY: Final = web.AppKey[tuple[str, ...]]("openclaw_http_compat.reference.plugins")

_SESSIONS_FILE: Final = "sessions.sqlite"


class GatewayPlugin(Protocol):
    """What an ``openclaw.gateway.plugins`` entry point must be."""

    def __call__(self, app: web.Application, config: HttpCompatConfig, host: Host) -> object:
        """Register the plugin on the gateway's (not yet started) application."""
        ...


class _StartedRunner:
    """The runner handed to plugins and the WebSocket before the runtime exists.

    The runtime is opened in the app's ``cleanup_ctx``, after plugins are loaded; every run
    is delegated to whatever :data:`RUNNER_KEY` holds by then.
    """

    def __init__(self, app: web.Application) -> None:
        # A weak reference: the app holds this object (through the plugin's Host), not the
        # other way round.
        self._app = weakref.ref(app)

    def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        app = self._app()
        runner = app.get(RUNNER_KEY) if app is not None else None
        if runner is None:
            raise RuntimeError("the gateway has not started: no agent runtime yet")
        return runner.run(request)


def state_dir(config: GatewayConfig) -> Path:
    """Where the gateway keeps its state: ``gateway.stateDir`` (or ``OPENCLAW_STATE_DIR``), else ``~/.openclaw``."""
    return config.state_dir if config.state_dir is not None else Path("~/.openclaw").expanduser()


@asynccontextmanager
async def open_runtime(config: GatewayConfig) -> AsyncIterator[AgentRuntime]:
    """Open the session store, the client session for provider calls and the :class:`AgentRuntime` on them.

    Everything is closed again on exit, in reverse order. The gateway's ``cleanup_ctx`` and
    the ``agent`` command both use this, so both run agents the same way.
    """
    directory = state_dir(config)
    # gateway.sessionStore.url picks PostgreSQL; else SQLite in the state directory. Chosen
    # before anything is created, so a URL without asyncpg fails with nothing left behind.
    store = select_store(config.session_store, directory, file_name=_SESSIONS_FILE)
    if config.session_store.url is None:
        # Transcripts are private: a state directory we create is the owner's alone.
        await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    await store.open()
    try:
        # The endpoint already caps runs in flight (maxConcurrentRuns, 0: no cap); a smaller
        # pool would quietly queue runs past its size inside the gateway.
        async with open_client_session(limit=config.plugin.chat_completions.max_concurrent_runs) as session:
            yield AgentRuntime(config, store, session)
    finally:
        await store.close()


def _runtime_context(config: GatewayConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    async def runtime(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(config) as agent_runtime, open_records(config, agent_runtime.store) as records:
            app[RUNNER_KEY] = agent_runtime
            app[RECORDS_KEY] = records
            yield

    return runtime


def load_plugins(app: web.Application, config: HttpCompatConfig, host: Host) -> tuple[str, ...]:
    """Call every ``openclaw.gateway.plugins`` entry point with ``(app, config, host)``.

    Returns:
        The names of the entry points called, in order.
    """
    loaded = []
    for entry_point in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        plugin = cast(GatewayPlugin, entry_point.load())
        plugin(app, config, host)
        loaded.append(entry_point.name)
    return tuple(loaded)


def _resource(route: web.AbstractRoute) -> web.AbstractResource:
    resource = route.resource
    assert resource is not None, "routes added through the router have a resource"
    return resource


async def health(request: web.Request) -> web.Response:
    """``GET /health``: liveness for uptime probes."""
    return web.json_response({"ok": True})


def build_gateway_app(config: GatewayConfig, *, runner: AgentRunner | None = None) -> web.Application:
    """Build the gateway's application: auth, ``/health``, the WebSocket and the plugins.

    Args:
        config: the gateway config.
        runner: runs agents instead of the :class:`AgentRuntime` (tests, embedding). When
            given, no session store or client session is opened.

    Returns:
        The application, not yet started; run it with :func:`run_gateway` or an
        ``aiohttp.web.AppRunner``.
    """
    plugin_config = config.plugin
    authenticator = SharedSecretAuthenticator(plugin_config.auth)
    public: set[web.AbstractResource] = set()

    def is_public(request: web.Request) -> bool:
        return request.match_info.route.resource in public

    app = web.Application(
        middlewares=[
            auth_middleware(
                authenticator,
                trusted_proxies=plugin_config.trusted_proxies,
                allow_real_ip_fallback=plugin_config.allow_real_ip_fallback,
                is_public=is_public,
            )
        ]
    )
    delegate = _StartedRunner(app)
    public.add(_resource(app.router.add_get("/health", health)))
    public.add(_resource(app.router.add_get("/", websocket_handler(plugin_config, authenticator, delegate), allow_head=False)))
    app[SOCKETS_KEY] = weakref.WeakSet()
    app.on_shutdown.append(close_sockets)
    if runner is None:
        app.cleanup_ctx.append(_runtime_context(config))
    else:
        app[RUNNER_KEY] = runner
        # No session store to keep Idempotency-Key records with: this process keeps them.
        app[RECORDS_KEY] = MemoryIdempotencyStore()
    host = Host(
        runner=delegate, authenticator=authenticator, roster=plugin_config.agents, idempotency=StartedRecords(app)
    )
    app[PLUGINS_KEY] = load_plugins(app, plugin_config, host)
    return app


def listening_line(config: GatewayConfig, port: int, *, workers: int = 1) -> str:
    """The line announcing that the gateway is ready on ``port`` (with ``workers`` > 1: how many processes serve it)."""
    host = config.bind_host
    shown_host = f"[{host}]" if ":" in host else host
    endpoint = "enabled" if config.plugin.chat_completions.enabled else "disabled"
    served_by = f", {workers} workers" if workers > 1 else ""
    return (
        f"openclaw gateway listening on http://{shown_host}:{port} "
        f"(WebSocket on /, /v1/chat/completions {endpoint}{served_by})"
    )


def run_gateway(config: GatewayConfig, *, port: int | None = None, reuse_port: bool = False) -> None:
    """Serve the gateway on ``config.bind_host`` and ``port`` (default ``gateway.port``) until SIGINT/SIGTERM.

    Port ``0`` picks a free port; the line announcing where the gateway listens names it.
    ``reuse_port`` binds with ``SO_REUSEPORT`` so that several worker processes (see
    :mod:`.supervisor`) share the port and the kernel spreads connections over them.

    Raises:
        OSError: the address cannot be bound.
    """
    app = build_gateway_app(config)
    host = config.bind_host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bound here rather than by run_app, so that the announced port is the real one.
    sock = socket.create_server(
        (host, config.port if port is None else port), family=family, backlog=128, reuse_port=reuse_port
    )
    line = listening_line(config, sock.getsockname()[1])

    def announce(*_: object) -> None:
        # run_app calls this once the site has started, so the line means "ready".
        print(line, flush=True)

    web.run_app(app, sock=sock, print=announce)
