"""The reference gateway served on a real socket over a test's state directory, for client-level tests."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from openclaw_http_compat.reference import AgentRuntime, GatewayConfig
from openclaw_http_compat.reference.app import RUNNER_KEY, build_gateway_app
from openclaw_http_compat.reference.storage import TranscriptStore


def gateway_config(
    upstream_url: str, *, models: list[Any] | None = None, agents: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A config whose agent ``main`` runs ``mock/<first model>`` on the upstream, auth off."""
    models = models if models is not None else [{"id": "m"}]
    return {
        "gateway": {"auth": {"mode": "none"}, "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
        "agents": dict(agents) if agents is not None else {"defaults": {"model": f"mock/{models[0]['id']}"}},
        "models": {"providers": {"mock": {"baseUrl": upstream_url, "api": "openai-completions", "models": models}}},
    }


@asynccontextmanager
async def serve_gateway(raw: Mapping[str, Any], state: pathlib.Path) -> AsyncIterator[tuple[str, TranscriptStore]]:
    """Serve the gateway configured by ``raw`` on 127.0.0.1 (an ephemeral port), its state in
    ``state``; yields its ``/v1`` URL and its session store, and shuts it down on exit."""
    config = GatewayConfig.from_mapping({**raw, "gateway": {**raw["gateway"], "stateDir": str(state)}}, env={})
    runner = web.AppRunner(build_gateway_app(config))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runtime = runner.app[RUNNER_KEY]
        assert isinstance(runtime, AgentRuntime)
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1", runtime.store
    finally:
        await runner.cleanup()
