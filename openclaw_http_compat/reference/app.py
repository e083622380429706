"""The reference gateway's application: one port for HTTP, the WebSocket and the plugins.

It is built the way any gateway would host ``openclaw_http_compat``: it imports only the
package's public API, installs the package's auth middleware with one authenticator that HTTP,
the WebSocket handshake and the plugins share, and loads its plugins from the
``openclaw.gateway.plugins`` entry-point group. The chat-completions plugin mounts itself
only when ``gateway.http.endpoints.chatCompletions.enabled`` is true.

Routes of the gateway itself:

* ``GET /health``: ``{"ok": true}``, public (for uptime probes);
* ``GET /healthz`` and ``GET /readyz``: liveness and readiness probes, public (see
  :mod:`.lifecycle`);
* ``GET /metrics``: Prometheus metrics, when ``gateway.metrics.enabled`` (see :mod:`.metrics`);
* ``GET /``: the WebSocket (see :mod:`.ws`), public at the HTTP level because it
  authenticates in its ``connect`` handshake.

Every response carries ``x-request-id`` and is written to the access log (see
:mod:`.accesslog`). :func:`run_gateway` serves until SIGTERM or SIGINT, then drains (see
:func:`serve`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, cast

from aiohttp import web

from openclaw_http_compat import (
    AgentEvent,
    AgentRunner,
    AgentRunRequest,
    NO_METRICS,
    Host,
    HttpCompatConfig,
    SharedSecretAuthenticator,
    auth_middleware,
    instrumentation_middleware,
)
from openclaw_http_compat.client import open_client_session
from openclaw_http_compat.idempotency import MemoryIdempotencyStore

from .accesslog import access_logger_class, stamp_response
from .completions import COMPLETIONS_KEY, StartedCompletionStore, open_completion_store
from .config import GatewayConfig
from .lifecycle import (
    MOUNTED_KEY,
    STATE_KEY,
    GatewayState,
    close_while_draining,
    drain,
    healthz,
    readyz,
)
from .metrics import PrometheusMetrics, metrics_handler, prometheus_metrics
from .records import RECORDS_KEY, StartedRecords, open_records
from .runtime import AgentRuntime
from .storage import select_store
from .timed_store import ENGINE_POSTGRESQL, ENGINE_SQLITE, timed_store
from .ws import SOCKETS_KEY, WebSockets, close_sockets, websocket_handler

if TYPE_CHECKING:
    from .pgauthstate import PostgresAuthState

__all__ = (
    "METRICS_KEY",
    "PLUGINS_KEY",
    "PLUGIN_GROUP",
    "RUNNER_KEY",
    "GatewayPlugin",
    "build_gateway_app",
    "listening_line",
    "load_plugins",
    "open_runtime",
    "run_gateway",
    "serve",
    "state_dir",
)

log = logging.getLogger(__name__)

#: The entry-point group gateway plugins are published under.
PLUGIN_GROUP: Final = "openclaw.gateway.plugins"

#: The runner agent runs go to: the AgentRuntime opened at startup, or the one passed to
#: build_gateway_app (set on the gateway's root app).
RUNNER_KEY: Final = web.AppKey[AgentRunner]("openclaw_http_compat.reference.runner")

#: Names of the entry points loaded into this app, in load order (root app).
PLUGINS_KEY: Final = web.AppKey[tuple[str, ...]]("openclaw_http_compat.reference.plugins")

#: The failed-auth limiter's state shared through PostgreSQL, when the gateway has one (root app).
LIMITER_STATE_KEY: Final = web.AppKey["PostgresAuthState"]("openclaw_http_compat.reference.limiter_state")
#: The gateway's metrics, when ``gateway.metrics.enabled`` (root app).
METRICS_KEY: Final = web.AppKey[PrometheusMetrics]("openclaw_http_compat.reference.metrics")

_SESSIONS_FILE: Final = "sessions.sqlite"
#: How long, once the drain is over, the runner waits for handlers still running after the
#: endpoint ended its runs (a WebSocket closing): the process must exit soon after graceMs.
_END_TIMEOUT_S: Final = 1.0


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
async def open_runtime(
    config: GatewayConfig, *, metrics: PrometheusMetrics | None = None
) -> AsyncIterator[AgentRuntime]:
    """Open the session store, the client session for provider calls and the :class:`AgentRuntime` on them.

    Everything is closed again on exit, in reverse order. The gateway's ``cleanup_ctx`` and
    the ``agent`` command both use this, so both run agents the same way. With ``metrics``,
    store operations and upstream calls are measured.
    """
    directory = state_dir(config)
    # gateway.sessionStore.url picks PostgreSQL; else SQLite in the state directory. Chosen
    # before anything is created, so a URL without asyncpg fails with nothing left behind.
    store = select_store(config.session_store, directory, file_name=_SESSIONS_FILE)
    if metrics is not None:
        engine = ENGINE_SQLITE if config.session_store.url is None else ENGINE_POSTGRESQL
        store = timed_store(store, metrics, engine=engine)
    if config.session_store.url is None:
        # Transcripts are private: a state directory we create is the owner's alone.
        await asyncio.to_thread(directory.mkdir, mode=0o700, parents=True, exist_ok=True)
    await store.open()
    try:
        # The endpoint already caps runs in flight (maxConcurrentRuns, 0: no cap); a smaller
        # pool would quietly queue runs past its size inside the gateway.
        async with open_client_session(limit=config.plugin.chat_completions.max_concurrent_runs) as session:
            yield AgentRuntime(config, store, session, upstream_metrics=metrics)
    finally:
        await store.close()


def _runtime_context(
    config: GatewayConfig, limiter_state: PostgresAuthState | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def runtime(app: web.Application) -> AsyncIterator[None]:
        async with (
            open_runtime(config, metrics=app.get(METRICS_KEY)) as agent_runtime,
            open_completion_store(agent_runtime.store) as completions,
            open_records(config, agent_runtime.store) as records,
        ):
            app[RUNNER_KEY] = agent_runtime
            app[COMPLETIONS_KEY] = completions
            app[RECORDS_KEY] = records
            app[STATE_KEY].store = agent_runtime.store
            if limiter_state is None:
                yield
                return
            async with limiter_state.running(agent_runtime.store):
                yield

    return runtime


def _fleet_limiter_state(config: GatewayConfig) -> PostgresAuthState | None:
    """The failed-auth limiter's state in PostgreSQL when the sessions are there, so every
    process on the database counts together; ``None`` (the authenticator's in-memory default)
    with SQLite, whose gateway is one process."""
    if config.session_store.url is None or config.plugin.auth.rate_limit is None:
        return None
    try:
        from .pgauthstate import PostgresAuthState
    except ImportError:
        # No asyncpg: open_runtime refuses this config at start-up, before any request.
        return None
    return PostgresAuthState(config.plugin.auth.rate_limit)


def load_plugins(app: web.Application, config: HttpCompatConfig, host: Host) -> tuple[str, ...]:
    """Call every ``openclaw.gateway.plugins`` entry point with ``(app, config, host)``.

    The sub-applications they return are kept under :data:`~.lifecycle.MOUNTED_KEY`, for
    the drain.

    Returns:
        The names of the entry points called, in order.
    """
    loaded = []
    mounted = []
    for entry_point in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        plugin = cast(GatewayPlugin, entry_point.load())
        result = plugin(app, config, host)
        if isinstance(result, web.Application):
            mounted.append(result)
        loaded.append(entry_point.name)
    app[MOUNTED_KEY] = tuple(mounted)
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

    Raises:
        ConfigError: ``gateway.metrics.enabled`` without ``prometheus-client`` installed.
    """
    plugin_config = config.plugin
    limiter_state = _fleet_limiter_state(config) if runner is None else None
    authenticator = SharedSecretAuthenticator(plugin_config.auth, limiter_state=limiter_state)
    public: set[web.AbstractResource] = set()
    metrics = prometheus_metrics(config.metrics)

    def is_public(request: web.Request) -> bool:
        return request.match_info.route.resource in public

    app = web.Application(
        middlewares=[
            # First: it counts and traces every route, the auth middleware's refusals included.
            instrumentation_middleware(metrics or NO_METRICS),
            auth_middleware(
                authenticator,
                trusted_proxies=plugin_config.trusted_proxies,
                allow_real_ip_fallback=plugin_config.allow_real_ip_fallback,
                is_public=is_public,
                metrics=metrics or NO_METRICS,
            ),
        ]
    )
    delegate = _StartedRunner(app)
    public.add(_resource(app.router.add_get("/health", health)))
    public.add(_resource(app.router.add_get("/healthz", healthz)))
    public.add(_resource(app.router.add_get("/readyz", readyz)))
    app[STATE_KEY] = GatewayState()
    app.on_response_prepare.append(stamp_response)
    app.on_response_prepare.append(close_while_draining)
    public.add(
        _resource(
            app.router.add_get(
                "/",
                websocket_handler(plugin_config, authenticator, delegate),
                allow_head=False,
            )
        )
    )
    if metrics is not None:
        app[METRICS_KEY] = metrics
        route = app.router.add_get("/metrics", metrics_handler(metrics), allow_head=False)
        if not config.metrics.auth:
            public.add(_resource(route))
    app[SOCKETS_KEY] = WebSockets()
    app.on_shutdown.append(close_sockets)
    if runner is None:
        app.cleanup_ctx.append(_runtime_context(config, limiter_state))
        if limiter_state is not None:
            app[LIMITER_STATE_KEY] = limiter_state
    else:
        app[RUNNER_KEY] = runner
        # No session store to keep Idempotency-Key records with: this process keeps them.
        app[RECORDS_KEY] = MemoryIdempotencyStore()
    app[PLUGINS_KEY] = load_plugins(
        app,
        plugin_config,
        Host(
            runner=delegate,
            authenticator=authenticator,
            roster=plugin_config.agents,
            completions=StartedCompletionStore(app),
            metrics=metrics or NO_METRICS,
            idempotency=StartedRecords(app),
        ),
    )
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
    Returns once the gateway has drained and stopped (see :func:`serve`).

    Raises:
        OSError: the address cannot be bound.
    """
    app = build_gateway_app(config)
    host = config.bind_host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Bound here, so that the announced port is the real one.
    sock = socket.create_server(
        (host, config.port if port is None else port),
        family=family,
        backlog=128,
        reuse_port=reuse_port,
    )
    line = listening_line(config, sock.getsockname()[1])
    asyncio.run(serve(app, config, sock, announce=lambda: print(line, flush=True)))


async def serve(
    app: web.Application,
    config: GatewayConfig,
    sock: socket.socket,
    *,
    announce: Callable[[], None],
) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGTERM or SIGINT, then drain and stop.

    The signal starts a drain (:func:`~.lifecycle.drain`): ``/readyz`` answers 503, new chat
    requests 503 ``shutting_down``, and what is already going has ``gateway.shutdown.graceMs``
    to end on its own. A SIGINT during the drain cuts the wait short. Then the runner shuts down,
    which ends whatever still runs (error frame and ``[DONE]``, or 503), and this returns.

    Args:
        announce: called once the site listens (the gateway is ready).
    """
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(
        app,
        access_log_class=access_logger_class(config.plugin, config.logging.format),
        shutdown_timeout=_END_TIMEOUT_S,
    )
    stop = asyncio.Event()
    cut_short = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            # Ctrl-C twice ends the drain; a repeated SIGTERM does not, because it is what
            # systemd's default KillMode sends every process of the unit, and a supervisor
            # forwards the one it got as well.
            if signum is signal.SIGINT:
                log.info("SIGINT received again: ending the drain now")
                cut_short.set()
            return
        log.info(
            "%s received: draining for up to %g s",
            signum.name,
            config.shutdown.grace_ms / 1000,
        )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            announce()
            await stop.wait()
            drained = await drain(app, config.shutdown.grace_ms / 1000, cut_short=cut_short)
            if not drained:
                log.warning("drain grace period over: ending the runs still going")
        finally:
            await runner.cleanup()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
