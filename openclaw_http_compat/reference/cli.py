"""The reference gateway's command line: ``gateway`` serves, ``agent`` runs one agent turn.

::

    python -m openclaw_http_compat gateway --config openclaw.json5 [--port N] [--workers N]
    python -m openclaw_http_compat agent --config openclaw.json5 --message TEXT
        [--agent ID] [--session-key KEY] [--json]

``agent`` performs the run in-process through the same :class:`AgentRuntime` the gateway uses
(and so the same session store), then exits. ``gateway --workers N`` (N > 1) serves the port
from N processes under :mod:`.supervisor`; it needs the PostgreSQL session store (runs on one
session take turns through leases in it), and is refused on SQLite unless
``OPENCLAW_STATELESS_WORKERS=1`` says no request uses a session. Exit codes:
0 success, 1 the run (or the server) failed, 2 bad usage or config (``error: <message>`` on
stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Final

from openclaw_http_compat import (
    AgentRunRequest,
    ConfigError,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
    __version__,
)
from openclaw_http_compat.config import normalize_agent_id

from .accesslog import configure_logging
from .app import listening_line, open_runtime, run_gateway
from .config import GatewayConfig, load_gateway_config
from .metrics import worker_metrics
from .storage import StoreError
from .supervisor import WORKER_OPTION, Supervisor, die_with_supervisor, reserve_port, stop_timeout_for

__all__ = ("EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

#: Lets ``--workers`` run above 1 on the SQLite store. SQLite runs take turns on a session
#: with a lock in their own process only: two turns of one session on two workers would run
#: at once and fork its transcript. So this is only for deployments where every request is
#: stateless (no ``user``, no ``x-openclaw-session-key``, no WebSocket chat), and for testing
#: the supervisor itself. With a PostgreSQL store (run leases) it is not needed.
STATELESS_WORKERS_ENV: Final = "OPENCLAW_STATELESS_WORKERS"


class _RunFailed(Exception):
    """The agent run ended with an error."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openclaw-http-compat",
        description="Reference OpenClaw-style gateway with the OpenAI-compatible /v1/chat/completions plugin.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gateway = commands.add_parser("gateway", help="serve HTTP and the WebSocket on one port")
    gateway.add_argument("--config", required=True, metavar="FILE", help="json5 config file")
    gateway.add_argument("--port", type=int, metavar="N", help="listen port (default: gateway.port, 18789)")
    gateway.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve the port from N processes under a supervisor (default 1: one process, no supervisor); "
        "N > 1 needs gateway.sessionStore.url (PostgreSQL)",
    )
    # Internal: the supervisor starts each worker with its own pid here (see .supervisor).
    gateway.add_argument(WORKER_OPTION, type=int, metavar="PID", help=argparse.SUPPRESS)

    agent = commands.add_parser("agent", help="run one agent turn in-process and print the reply")
    agent.add_argument("--config", required=True, metavar="FILE", help="json5 config file")
    agent.add_argument("--message", "-m", required=True, metavar="TEXT", help="the user message")
    agent.add_argument("--agent", metavar="ID", help="agent id (default: the configured default agent)")
    agent.add_argument("--session-key", metavar="KEY", help="session to continue (default: agent:<id>:main)")
    agent.add_argument("--json", action="store_true", help="print a JSON object instead of the text")
    return parser


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


async def _run_agent(config: GatewayConfig, request: AgentRunRequest, *, stream_text: bool) -> dict[str, object]:
    text: list[str] = []
    usage = RunUsage()
    async with open_runtime(config) as runtime:
        events = runtime.run(request)
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                    if stream_text:
                        sys.stdout.write(event.text)
                        sys.stdout.flush()
                elif isinstance(event, RunUsage):
                    usage = event
                elif isinstance(event, RunError):
                    raise _RunFailed(event.message)
                elif isinstance(event, RunEnd):
                    break
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
    return {
        "runId": request.run_id,
        "agentId": request.agent_id,
        "sessionKey": request.session_key,
        "text": "".join(text),
        "usage": {
            "input": usage.input,
            "output": usage.output,
            "cacheRead": usage.cache_read,
            "cacheWrite": usage.cache_write,
            "total": usage.total
            if usage.total is not None
            else usage.input + usage.output + usage.cache_read + usage.cache_write,
        },
    }


def _agent(args: argparse.Namespace) -> int:
    config = load_gateway_config(args.config)
    agents = config.plugin.agents
    agent_id = normalize_agent_id(args.agent) if args.agent else agents.default_agent_id
    if agent_id not in agents.agent_ids:
        raise ConfigError(f"unknown agent {agent_id!r} (configured: {', '.join(agents.agent_ids)})")
    session_key = (args.session_key or "").strip() or f"agent:{agent_id}:main"
    request = AgentRunRequest(
        run_id=str(uuid.uuid4()),
        agent_id=agent_id,
        session_key=session_key,
        message=args.message,
        message_channel="cli",
        stream=not args.json,
    )
    try:
        result = asyncio.run(_run_agent(config, request, stream_text=not args.json))
    except ConfigError:
        raise
    except (_RunFailed, OSError) as exc:
        if not args.json:
            print(flush=True)
        _error(str(exc))
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(flush=True)
    return EXIT_OK


def _gateway(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {args.workers}")
    config = load_gateway_config(args.config)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be between 0 and 65535, got {args.port}")
    stateless = os.environ.get(STATELESS_WORKERS_ENV) == "1"
    if args.workers > 1 and config.session_store.url is None and not stateless:
        raise ConfigError(
            f"--workers {args.workers}: the SQLite session store serves one process; set "
            "gateway.sessionStore.url to a PostgreSQL database to run several workers"
        )
    worker_of = getattr(args, WORKER_OPTION.lstrip("-").replace("-", "_"))
    fleet = worker_of is not None or args.workers > 1
    configure_logging(config.logging.format, fleet=fleet)
    if worker_of is not None:
        die_with_supervisor(worker_of)
    try:
        if args.workers == 1:
            run_gateway(config, port=args.port, reuse_port=worker_of is not None)
            return EXIT_OK
        port_wanted = config.port if args.port is None else args.port
        # Metrics first: its directory must be in the environment the workers inherit.
        with worker_metrics(config.metrics) as on_worker_exit, reserve_port(config.bind_host, port_wanted) as reserved:
            port = reserved.getsockname()[1]
            command = [sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", args.config]
            command += ["--port", str(port), WORKER_OPTION, str(os.getpid())]
            ready = listening_line(config, port, workers=args.workers)
            stop_timeout = stop_timeout_for(config.shutdown.grace_ms)
            return Supervisor(
                command, workers=args.workers, ready_line=ready, stop_timeout=stop_timeout, on_worker_exit=on_worker_exit
            ).run()
    except StoreError as exc:
        # The session store cannot be opened (unreachable, refused, a newer schema).
        _error(str(exc))
        return EXIT_FAILED
    except OSError as exc:
        _error(f"cannot listen: {exc.strerror or exc}")
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "gateway":
            return _gateway(args)
        return _agent(args)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
