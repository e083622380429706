"""``/healthz`` and ``/readyz`` of the reference gateway, on a real socket.

Both are public (no credentials needed under token auth) and never cached. ``/readyz`` is 503
while the gateway drains, and while its session store does not answer: PostgreSQL behind a
relay that is stopped, then started again (readiness comes back by itself).
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp
from aiohttp import web

from openclaw_http_compat.reference.app import build_gateway_app
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.lifecycle import drain

from .mock_upstream import MockUpstream
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config
from .test_faults import make_config
from .test_store_engines import _Relay

READY: Final = (200, {"ok": True}, "no-store")


@asynccontextmanager
async def serving(config: GatewayConfig) -> AsyncIterator[tuple[web.Application, str]]:
    """The gateway of ``config`` on 127.0.0.1 (ephemeral port); yields its app and base URL."""
    app = build_gateway_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield app, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, Any, str | None]:
    async with session.get(url) as resp:
        return resp.status, await resp.json(), resp.headers.get("Cache-Control")


async def test_probes_are_public_and_ready(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """Under token auth, /healthz and /readyz answer 200 {"ok": true} without credentials, not cacheable."""
    async with serving(make_config(tmp_path / "state", mock_upstream.url)) as (_, base):
        async with aiohttp.ClientSession() as session:
            assert await probe(session, f"{base}/healthz") == READY
            assert await probe(session, f"{base}/readyz") == READY
            async with session.get(f"{base}/v1/models") as resp:
                assert resp.status == 401  # the rest still needs the token


async def test_readyz_is_503_draining_from_the_start_of_a_drain(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """Once a drain starts, /readyz answers 503 {"ok": false, "reason": "draining"}; /healthz stays 200."""
    async with serving(make_config(tmp_path / "state", mock_upstream.url)) as (app, base):
        async with aiohttp.ClientSession() as session:
            assert await probe(session, f"{base}/readyz") == READY
            assert await drain(app, 0.1) is True  # nothing was running
            assert await probe(session, f"{base}/readyz") == (503, {"ok": False, "reason": "draining"}, "no-store")
            assert await probe(session, f"{base}/healthz") == READY


async def test_readyz_follows_the_postgresql_store(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """PostgreSQL unreachable: /readyz 503 store_unavailable (/healthz still 200); back: 200 again."""
    relay = _Relay(pg_cluster.port)
    await relay.start()
    raw = gateway_config(mock_upstream.url)
    relayed_url = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    raw = {**raw, "gateway": {**raw["gateway"], "sessionStore": {"url": relayed_url}, "stateDir": str(tmp_path)}}
    try:
        async with serving(GatewayConfig.from_mapping(raw, env={})) as (_, base):
            async with aiohttp.ClientSession() as session:
                assert await probe(session, f"{base}/readyz") == READY
                await relay.stop()
                down = await probe(session, f"{base}/readyz")
                live = await probe(session, f"{base}/healthz")
                await relay.start()
                async with asyncio.timeout(10):
                    while (back := await probe(session, f"{base}/readyz"))[0] != 200:
                        await asyncio.sleep(0.05)
        assert down == (503, {"ok": False, "reason": "store_unavailable"}, "no-store")
        assert live == READY
        assert back == READY
    finally:
        await relay.stop()
