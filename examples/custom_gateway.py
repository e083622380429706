"""A custom gateway hosting the OpenAI-compatible endpoint, in one file.

Its "agent" reverses the user's message, which is enough to see every piece at work: the
gateway's own auth middleware (from ``auth_middleware``), its own ``/health`` route, and
``openclaw_http_compat.setup`` mounting ``/v1/chat/completions`` and ``/v1/models`` on the
gateway's application.

Run it::

    python examples/custom_gateway.py            # listens on 127.0.0.1:18789
    python examples/custom_gateway.py 8080       # another port

and call it::

    curl -sS http://127.0.0.1:18789/v1/chat/completions \\
      -H 'Authorization: Bearer YOUR_TOKEN' \\
      -H 'Content-Type: application/json' \\
      -d '{"model": "openclaw", "messages": [{"role":"user","content":"hello world"}]}'

The reply's content is ``dlrow olleh``; add ``"stream": true`` for server-sent events.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from aiohttp import web

import openclaw_http_compat
from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    HttpCompatConfig,
    Host,
    RunEnd,
    RunUsage,
    SharedSecretAuthenticator,
    TextDelta,
    auth_middleware,
)

TOKEN = "YOUR_TOKEN"

# The config a gateway would read from its json5 file (load_config_file), inline here.
RAW_CONFIG: dict[str, object] = {
    "gateway": {
        "port": 18789,
        "auth": {"mode": "token", "token": TOKEN},
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    },
    "agents": {"list": [{"id": "main", "default": True}, {"id": "mirror"}]},
}


class ReversingRunner:
    """An AgentRunner whose agent answers with the message reversed, a few characters at a time."""

    async def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        """Stream the reversed message, then usage, then the end of the run."""
        reply = request.message[::-1]
        for start in range(0, len(reply), 4):
            # A real runner awaits its model here. The plugin cancels this await when the
            # client goes away; a runner holding resources releases them in ``finally``.
            await asyncio.sleep(0)
            yield TextDelta(reply[start : start + 4])
        words = len(request.message.split())
        yield RunUsage(input=words, output=words)
        yield RunEnd()


async def health(request: web.Request) -> web.Response:
    """``GET /health``: the gateway's own route, next to the plugin's."""
    return web.json_response({"ok": True})


def make_app(config: HttpCompatConfig | None = None) -> web.Application:
    """The gateway's application with the endpoint mounted (built from ``RAW_CONFIG`` by default)."""
    if config is None:
        config = HttpCompatConfig.from_mapping(RAW_CONFIG)
    # One authenticator for the gateway's middleware and the plugin: one source of truth.
    authenticator = SharedSecretAuthenticator(config.auth)
    app = web.Application(
        middlewares=[auth_middleware(authenticator, is_public=lambda request: request.path == "/health")]
    )
    app.router.add_get("/health", health)
    host = Host(runner=ReversingRunner(), authenticator=authenticator, roster=config.agents)
    # Must run before the app starts; mounts nothing when chatCompletions.enabled is false.
    openclaw_http_compat.setup(app, config, host)
    return app


def main(argv: list[str]) -> None:
    """Serve :func:`make_app` on loopback, on the port given (default 18789)."""
    port = int(argv[1]) if len(argv) > 1 else 18789
    web.run_app(make_app(), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main(sys.argv)
