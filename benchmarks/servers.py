"""The servers under test, each run as a process of its own.

``python -m benchmarks.servers KIND [options]`` binds 127.0.0.1 on an ephemeral port, prints
``READY <port>`` on stdout and serves until SIGTERM/SIGINT, until its stdin closes (the
parent went away) or until ``--max-lifetime`` seconds have passed.

Kinds:

* ``plugin``: the plugin mounted on a bare gateway ``web.Application`` (no middlewares of
  its own, so the plugin authenticates), with :class:`BenchRunner`, an in-process agent
  runner that answers at once. ``--metrics`` backs its ``Host.metrics`` with the reference
  gateway's ``prometheus-client`` metrics (off: the default no-op).
* ``raw``: a minimal aiohttp handler that parses the same JSON body and answers with the
  same completion JSON, or the same SSE frames.
* ``upstream``: the mock OpenAI-compatible upstream (:mod:`benchmarks.mock_upstream`) with
  a zero-latency :class:`~benchmarks.mock_upstream.CompletionReply`, streaming and not.
* ``gateway``: the reference gateway (``openclaw_http_compat.reference.app``) with a
  ``models.providers`` entry pointing at ``--upstream-port``. ``--session-fsync on|off``
  sets ``gateway.sessionStore.fsync``; ``default`` (the default) leaves the key out, so the
  gateway runs with the config's own default.
* ``proxy``: the *stack floor*: a minimal aiohttp app that parses the JSON body, forwards
  model, messages and ``stream`` to the mock upstream at ``--upstream-port`` with one shared
  ``aiohttp.ClientSession``, and answers with the upstream's JSON re-serialised, or relays
  its SSE body chunk by chunk. No auth, no agent, no session store: the least any gateway on
  this stack (one aiohttp server, one aiohttp client call) pays per request.

``plugin`` and ``raw`` also serve ``POST /_bench/release`` (wake the runs that idle, "the
agent is thinking") and ``GET /_bench/stats`` (RSS and number of idle runs); ``upstream``
serves the mock's ``GET /_mock/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import attrs
from aiohttp import web

from .common import (
    CHAT_PATH,
    DELTA,
    MSG_IDLE,
    MSG_STREAM_PREFIX,
    RELEASE_PATH,
    REPLY,
    SSE_HEADERS,
    STATS_PATH,
    TOKEN,
    USAGE,
    chunk_body,
    completion_body,
    data_frame,
    dumps,
    raise_nofile_limit,
    rss_bytes,
)

if TYPE_CHECKING:
    from .mock_upstream import Reply, Responder

_BACKLOG: Final = 4096


class IdleGate:
    """Where idle runs wait until ``/_bench/release``; counts who is waiting."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.waiting = 0

    async def wait(self) -> None:
        event = self.event
        self.waiting += 1
        try:
            await event.wait()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        event, self.event = self.event, asyncio.Event()
        event.set()


def _stream_count(message: str) -> int | None:
    if message.startswith(MSG_STREAM_PREFIX):
        return int(message[len(MSG_STREAM_PREFIX):])
    return None


def _control_routes(app: web.Application, gate: IdleGate) -> None:
    async def release(request: web.Request) -> web.Response:
        gate.release()
        return web.json_response({"released": True})

    async def stats(request: web.Request) -> web.Response:
        if request.query.get("gc"):
            gc.collect()
        return web.json_response({"rss": rss_bytes(os.getpid()), "waiting": gate.waiting, "pid": os.getpid(),
                                  "cpu": time.process_time()})

    app.router.add_post(RELEASE_PATH, release)
    app.router.add_get(STATS_PATH, stats)


# --- the plugin on a bare gateway app ---------------------------------------------------------


def plugin_app(metrics: bool = False) -> web.Application:
    from openclaw_http_compat import (
        AgentEvent,
        AgentRunRequest,
        Host,
        HttpCompatConfig,
        RunEnd,
        RunUsage,
        SharedSecretAuthenticator,
        TextDelta,
        setup,
    )

    gate = IdleGate()

    class BenchRunner:
        """An agent runner that answers at once (or idles until released)."""

        async def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
            count = _stream_count(request.message)
            if count is not None:
                delta = TextDelta(DELTA)
                for _ in range(count):
                    yield delta
                yield RunEnd()
                return
            if request.message == MSG_IDLE:
                await gate.wait()
            yield TextDelta(REPLY)
            yield RunUsage(input=12, output=9)
            yield RunEnd()

    config = HttpCompatConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                # No cap on runs in flight: the many-streams scenario holds 1,000 open.
                "http": {"endpoints": {"chatCompletions": {"enabled": True, "maxConcurrentRuns": 100_000}}},
            },
            "agents": {"list": [{"id": "main", "default": True}]},
        },
        env={},
    )
    app = web.Application()
    host = Host(runner=BenchRunner(), authenticator=SharedSecretAuthenticator(config.auth), roster=config.agents)
    if metrics:
        from openclaw_http_compat.reference.metrics import PrometheusMetrics

        host = attrs.evolve(host, metrics=PrometheusMetrics())
    setup(app, config, host)
    _control_routes(app, gate)
    return app


# --- the raw aiohttp baseline -----------------------------------------------------------------


def raw_app() -> web.Application:
    gate = IdleGate()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        message = body["messages"][-1]["content"]
        model = body.get("model") or "openclaw"
        run_id = f"chatcmpl_{uuid.uuid4()}"
        created = int(time.time())
        if not body.get("stream"):
            completion = completion_body(run_id, created, model, REPLY, USAGE)
            return web.Response(body=dumps(completion).encode(), content_type="application/json")
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(data_frame(chunk_body(run_id, created, model, {"role": "assistant"})))
        count = _stream_count(message)
        if count is not None:
            for _ in range(count):
                await resp.write(data_frame(chunk_body(run_id, created, model, {"content": DELTA})))
        else:
            if message == MSG_IDLE:
                await gate.wait()
            await resp.write(data_frame(chunk_body(run_id, created, model, {"content": REPLY})))
        await resp.write(data_frame(chunk_body(run_id, created, model, {}, "stop")))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    _control_routes(app, gate)
    return app


# --- the mock upstream ------------------------------------------------------------------------


async def serve_upstream(default: Reply | Responder, *, max_lifetime: float, **serve_kwargs: Any) -> None:
    """Serve a :class:`MockUpstream` answering ``default`` in this process (``serve_kwargs``: see :func:`serve`).

    Requests are counted, not kept: a long run would pile them up. Handlers are cancelled when
    their client goes away, as in aiohttp's test server, so that the mock counts the aborts.
    """
    # Imported here: the other kinds must not carry the mock's imports (attrs), which would
    # move the raw baseline's RSS per idle stream.
    from .mock_upstream import MockUpstream

    upstream = MockUpstream(default, record=False)
    await serve(lambda: upstream.app, max_lifetime=max_lifetime, on_setup=upstream.bind,
                handler_cancellation=True, **serve_kwargs)


# --- the stack floor: a minimal proxy ---------------------------------------------------------


def proxy_app(upstream_port: int) -> web.Application:
    """A minimal aiohttp proxy to the mock upstream: the stack floor of scenario 2."""
    import aiohttp

    url = f"http://127.0.0.1:{upstream_port}{CHAT_PATH}"
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        # One session (and so one pool of kept-alive connections) for every request, as a
        # gateway would hold it.
        async with aiohttp.ClientSession() as session:
            app[session_key] = session
            yield

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = body.get("stream", False)
        payload = {"model": "m", "messages": body["messages"], "stream": stream}
        async with request.app[session_key].post(url, json=payload) as upstream:
            if not stream:
                return web.Response(body=dumps(await upstream.json()).encode(), status=upstream.status,
                                    content_type="application/json")
            out = web.StreamResponse(status=upstream.status, headers=SSE_HEADERS)
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_post(CHAT_PATH, chat)
    return app


# --- the reference gateway --------------------------------------------------------------------

#: ``--session-fsync`` choices: ``default`` leaves ``gateway.sessionStore.fsync`` unset.
SESSION_FSYNC_CHOICES: Final = ("default", "on", "off")


def gateway_config_mapping(
    upstream_port: int, state_dir: str, session_fsync: str = "default", *, max_concurrent_runs: int | None = None
) -> dict[str, Any]:
    """The reference gateway's config: one agent on the mock upstream's model ``mock/m``.

    ``session_fsync`` is one of :data:`SESSION_FSYNC_CHOICES`; with ``default`` the key is
    left out, so what is measured is whatever the gateway does out of the box. Likewise
    ``max_concurrent_runs`` (the soak raises it above its concurrency).
    """
    endpoint: dict[str, Any] = {"enabled": True}
    if max_concurrent_runs is not None:
        endpoint["maxConcurrentRuns"] = max_concurrent_runs
    gateway: dict[str, Any] = {
        "auth": {"mode": "token", "token": TOKEN},
        "http": {"endpoints": {"chatCompletions": endpoint}},
        "stateDir": state_dir,
    }
    if session_fsync != "default":
        gateway["sessionStore"] = {"fsync": session_fsync == "on"}
    return {
        "gateway": gateway,
        "agents": {"list": [{"id": "main", "model": "mock/m"}]},
        "models": {
            "providers": {
                "mock": {
                    "baseUrl": f"http://127.0.0.1:{upstream_port}/v1",
                    "api": "openai-completions",
                    "apiKey": "sk-bench",
                    "models": [{"id": "m"}],
                }
            }
        },
    }


def gateway_app(upstream_port: int, state_dir: str, session_fsync: str = "default") -> web.Application:
    """The reference gateway on :func:`gateway_config_mapping`."""
    from openclaw_http_compat.reference.app import build_gateway_app
    from openclaw_http_compat.reference.config import GatewayConfig

    config = GatewayConfig.from_mapping(gateway_config_mapping(upstream_port, state_dir, session_fsync), env={})
    return build_gateway_app(config)


# --- process plumbing -------------------------------------------------------------------------


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` at EOF on stdin: the parent holds it open, so EOF means it went away."""
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    # In the loop, not a thread: a daemon thread blocked reading stdin aborts the interpreter at
    # exit (it holds the buffer's lock). Where stdin cannot be polled (a file), nothing watches it.
    with suppress(OSError, ValueError):
        loop.add_reader(fd, readable)


async def serve(
    build: Callable[[], web.Application],
    *,
    max_lifetime: float,
    profiler: Any = None,
    on_setup: Callable[[web.AppRunner], None] | None = None,
    **runner_kwargs: Any,
) -> None:
    """Serve ``build()`` on 127.0.0.1 until SIGTERM/SIGINT, stdin's EOF or ``max_lifetime`` s.

    Prints ``READY <port> <pid>`` once listening. ``on_setup`` gets the started runner;
    ``runner_kwargs`` go to ``web.AppRunner`` (its access log off, shutdown within 2 s, unless
    given).
    """
    raise_nofile_limit()
    app = build()
    runner = web.AppRunner(app, **{"access_log": None, "handle_signals": False, "shutdown_timeout": 2.0,
                                   **runner_kwargs})
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=_BACKLOG, reuse_address=True)
    await site.start()
    if on_setup is not None:
        on_setup(runner)
    port = int(runner.addresses[0][1])
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _watch_stdin(loop, stop)
    if profiler is not None:
        profiler.start()
    print(f"READY {port} {os.getpid()}", flush=True)
    try:
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_lifetime)
    finally:
        if profiler is not None:
            profiler.stop()
        await runner.cleanup()


class _CProfiler:
    def __init__(self, path: str) -> None:
        self.path = path
        self.profile = cProfile.Profile()

    def start(self) -> None:
        self.profile.enable()

    def stop(self) -> None:
        self.profile.disable()
        self.profile.dump_stats(self.path)


class _Pyinstrument:
    def __init__(self, path: str) -> None:
        from pyinstrument import Profiler

        self.path = path
        self.profiler = Profiler(interval=0.0005, async_mode="disabled")

    def start(self) -> None:
        self.profiler.start()

    def stop(self) -> None:
        self.profiler.stop()
        with open(self.path, "w", encoding="utf-8") as out:
            out.write(self.profiler.output_text(unicode=False, color=False, show_all=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("plugin", "raw", "upstream", "gateway", "proxy"))
    parser.add_argument("--upstream-port", type=int, default=0, help="gateway, proxy: the mock upstream's port")
    parser.add_argument("--state-dir", default=None, help="gateway: its state directory (a temp dir by default)")
    parser.add_argument("--session-fsync", choices=SESSION_FSYNC_CHOICES, default="default",
                        help="gateway: gateway.sessionStore.fsync on or off (default: leave the key unset)")
    parser.add_argument("--metrics", action="store_true", help="plugin: count with prometheus-client metrics")
    parser.add_argument("--max-lifetime", type=float, default=900.0, help="exit after this many seconds")
    parser.add_argument("--profile", default=None, help="write a profile of the serving loop to this file")
    parser.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    args = parser.parse_args(argv)

    profiler: Any = None
    if args.profile:
        profiler = _CProfiler(args.profile) if args.profiler == "cprofile" else _Pyinstrument(args.profile)
    if args.kind == "upstream":
        from .mock_upstream import CompletionReply

        asyncio.run(serve_upstream(CompletionReply(), max_lifetime=args.max_lifetime, profiler=profiler))
        return
    build: Callable[[], web.Application]
    if args.kind == "plugin":
        build = functools.partial(plugin_app, args.metrics)
    elif args.kind == "raw":
        build = raw_app
    elif not args.upstream_port:
        parser.error(f"{args.kind} needs --upstream-port")
    elif args.kind == "proxy":
        build = functools.partial(proxy_app, args.upstream_port)
    else:
        state_dir = args.state_dir or tempfile.mkdtemp(prefix="bench-gateway-")
        build = functools.partial(gateway_app, args.upstream_port, state_dir, args.session_fsync)
    asyncio.run(serve(build, max_lifetime=args.max_lifetime, profiler=profiler))


if __name__ == "__main__":
    main()
