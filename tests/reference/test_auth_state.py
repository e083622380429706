"""The failed-auth limiter shared through PostgreSQL (a real server): two stores with their own
pools stand for two gateway processes on one database.

The state is tested on its own (counts, the mirror of lockouts, an outage and the re-read after
it) and through two real gateway applications served by aiohttp (statuses, bodies, headers).
A mirror is fed by notifications, so a test that needs one process to have heard of another's
change waits for it (a bounded wait on the state, never an assertion on time).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat.auth import AuthStateUnavailable
from openclaw_http_compat.config import RateLimitConfig
from openclaw_http_compat.reference import GatewayConfig
from openclaw_http_compat.reference.app import LIMITER_STATE_KEY, build_gateway_app

from ..test_security import RATE_LIMITED, UNAUTHORIZED
from .mock_upstream import MockUpstream
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config
from .test_store_engines import _Relay

pytest.importorskip("asyncpg", reason="PostgreSQL tests need asyncpg: pip install 'openclaw-http-compat[postgres]'")

from openclaw_http_compat.reference.pgauthstate import PostgresAuthState  # noqa: E402
from openclaw_http_compat.reference.pgstore import PostgresStore  # noqa: E402

Client = TestClient[web.Request, web.Application]

TOKEN: Final = "tok-fleet-4d1c"
KEY: Final = "203.0.113.7"
UNAVAILABLE: Final = {
    "error": {
        "message": "authentication temporarily unavailable",
        "type": "api_error",
        "param": None,
        "code": "auth_unavailable",
    }
}
RIGHT: Final = {"Authorization": f"Bearer {TOKEN}"}
WRONG: Final = {"Authorization": "Bearer wrong-guess"}


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``condition`` holds (a notification arrived, a connection was noticed lost)."""
    for _ in range(1000):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def relayed(pg_url: str, relay: _Relay) -> str:
    """``pg_url``'s database, reached through ``relay``."""
    return f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"


@asynccontextmanager
async def running_state(url: str, limit: RateLimitConfig) -> AsyncIterator[PostgresAuthState]:
    """One process's view: its own store (its own pool) and its limiter state on it."""
    store = PostgresStore(url)
    await store.open()
    try:
        state = PostgresAuthState(limit)
        async with state.running(store):
            yield state
    finally:
        await store.close()


async def stored_attempts(pg_url: str, key: str) -> int | None:
    """How many failed attempts of ``key`` the table holds (``None``: no row)."""
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        value = await conn.fetchval(
            "SELECT cardinality(attempts) FROM openclaw_auth_failures WHERE client_key = $1", key
        )
    finally:
        await conn.close()
    return None if value is None else int(value)


# --- the state --------------------------------------------------------------------------------


async def test_two_processes_count_failures_together_and_share_the_lockout(pg_url: str) -> None:
    """Failures recorded by two processes add up; the one reaching maxAttempts locks the key out
    at once in its own mirror, the other hears of it, and a failure racing the lockout is
    refused as locked (not counted)."""
    limit = RateLimitConfig(max_attempts=4, window_ms=60_000, lockout_ms=300_000, exempt_loopback=False)
    async with running_state(pg_url, limit) as a, running_state(pg_url, limit) as b:
        assert (a.live, b.live) == (True, True)
        for state in (a, b, a):
            assert await state.record_failure(KEY) is None
        assert (await a.lockout(KEY), await b.lockout(KEY)) == (None, None)
        assert await stored_attempts(pg_url, KEY) == 3
        assert await b.record_failure(KEY) is None  # the fourth, counted: it locks the key out
        left = await b.lockout(KEY)
        assert left is not None and 299 < left <= 300
        await eventually(lambda: _locked(a), "a hears of b's lockout")
        # A failure that arrives while the lockout is in force is refused with what is left.
        raced = await a.record_failure(KEY)
        assert raced is not None and 299 < raced <= 300
        assert await stored_attempts(pg_url, KEY) == 4
        assert await a.lockout("198.51.100.1") is None  # other clients are unaffected


async def _locked(state: PostgresAuthState) -> bool:
    return await state.lockout(KEY) is not None


async def test_a_success_resets_failures_counted_by_another_process(pg_url: str) -> None:
    """A success resets the key's failures wherever they were counted (once its process has
    heard of them), and never lifts a lockout in force."""
    limit = RateLimitConfig(max_attempts=3, window_ms=60_000, lockout_ms=300_000, exempt_loopback=False)
    async with running_state(pg_url, limit) as a, running_state(pg_url, limit) as b:
        assert await a.record_failure(KEY) is None
        assert await a.record_failure(KEY) is None

        async def reset_by_b() -> bool:
            await b.record_success(KEY)
            return await stored_attempts(pg_url, KEY) is None

        await eventually(reset_by_b, "b's success resets a's failures")
        # Counting starts again: two more failures do not reach the limit of three.
        assert await a.record_failure(KEY) is None
        assert await b.record_failure(KEY) is None
        assert await a.lockout(KEY) is None
        assert await b.record_failure(KEY) is None  # the third: locked out
        await eventually(lambda: _locked(a), "a hears of the lockout")
        await a.record_success(KEY)
        await b.record_success(KEY)
        assert await stored_attempts(pg_url, KEY) == 3
        assert await a.lockout(KEY) is not None


async def test_an_expired_lockout_lets_the_client_try_again(pg_url: str) -> None:
    """Once the lockout has run out (200 ms here) the client may try again and its count starts
    over, in both processes."""
    limit = RateLimitConfig(max_attempts=2, window_ms=60_000, lockout_ms=200, exempt_loopback=False)
    async with running_state(pg_url, limit) as a, running_state(pg_url, limit) as b:
        assert await a.record_failure(KEY) is None
        assert await b.record_failure(KEY) is None
        await eventually(lambda: _locked(a), "a hears of the lockout")
        await asyncio.sleep(0.25)
        assert (await a.lockout(KEY), await b.lockout(KEY)) == (None, None)
        assert await a.record_failure(KEY) is None
        assert await stored_attempts(pg_url, KEY) == 1
        assert await b.lockout(KEY) is None


async def test_unreachable_store_makes_the_state_unavailable_until_it_is_back(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    """With the database cut off, every method raises AuthStateUnavailable (the mirror is not
    trusted); once it is back, the state listens again by itself and reads the lockouts written
    meanwhile by a process that could still reach it."""
    limit = RateLimitConfig(max_attempts=2, window_ms=60_000, lockout_ms=300_000, exempt_loopback=False)
    relay = _Relay(pg_cluster.port)
    await relay.start()
    try:
        async with running_state(relayed(pg_url, relay), limit) as cut, running_state(pg_url, limit) as other:
            assert await cut.record_failure(KEY) is None
            await relay.stop()

            async def not_live() -> bool:
                return not cut.live

            await eventually(not_live, "the cut-off state notices")
            with pytest.raises(AuthStateUnavailable):
                await cut.lockout(KEY)
            with pytest.raises(AuthStateUnavailable):
                await cut.record_failure(KEY)
            # Meanwhile the other process locks a client out; the cut-off one cannot hear of it.
            assert await other.record_failure("198.51.100.9") is None
            assert await other.record_failure("198.51.100.9") is None
            await relay.start()

            async def live() -> bool:
                return cut.live

            await eventually(live, "the state listens again")
            left = await cut.lockout("198.51.100.9")
            assert left is not None and 299 < left <= 300
            assert await cut.lockout(KEY) is None
            # Its earlier failure is still on record: one more locks KEY out.
            assert await cut.record_failure(KEY) is None
            assert await cut.lockout(KEY) is not None
    finally:
        await relay.stop()


async def test_state_outside_running_is_unavailable(pg_url: str) -> None:
    """Before ``running`` (and after it) the state cannot vouch for anything."""
    limit = RateLimitConfig(max_attempts=2, exempt_loopback=False)
    state = PostgresAuthState(limit)
    with pytest.raises(AuthStateUnavailable):
        await state.lockout(KEY)
    with pytest.raises(AuthStateUnavailable):
        await state.record_failure(KEY)
    async with running_state(pg_url, limit) as running:
        assert running.live
    with pytest.raises(AuthStateUnavailable):
        await running.lockout(KEY)


# --- two gateways on one database -------------------------------------------------------------


def fleet_config(
    upstream_url: str, store_url: str, state: pathlib.Path, rate_limit: dict[str, Any], **gateway: Any
) -> GatewayConfig:
    """A gateway on ``store_url`` with token auth and ``rate_limit``."""
    raw = gateway_config(upstream_url)
    raw["gateway"] = {
        **raw["gateway"],
        **gateway,
        "auth": {"mode": "token", "token": TOKEN, "rateLimit": rate_limit},
        "sessionStore": {"url": store_url},
        "stateDir": str(state),
    }
    return GatewayConfig.from_mapping(raw, env={})


GatewayFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def fleet(aiohttp_client: AiohttpClient, mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> GatewayFactory:
    """Start a real gateway application on ``store_url`` and return a client of it."""

    async def start(store_url: str, rate_limit: dict[str, Any], **gateway: Any) -> Client:
        config = fleet_config(mock_upstream.url, store_url, tmp_path / "state", rate_limit, **gateway)
        return await aiohttp_client(build_gateway_app(config))

    return start


async def answer(client: Client, headers: dict[str, str], path: str = "/v1/models") -> tuple[int, Any, str | None]:
    async with client.get(path, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


def state_of(client: Client) -> PostgresAuthState:
    return client.app[LIMITER_STATE_KEY]


LIMIT_4: Final = {"maxAttempts": 4, "windowMs": 60_000, "lockoutMs": 300_000, "exemptLoopback": False}


async def test_failures_split_across_two_gateways_lock_out_after_max_attempts_in_total(
    fleet: GatewayFactory, pg_url: str
) -> None:
    """maxAttempts 4 across two gateways: 2 wrong tokens on each are 401, then the client is
    locked out on both, with the exact 429 and Retry-After, even with the right token."""
    a, b = await fleet(pg_url, LIMIT_4), await fleet(pg_url, LIMIT_4)
    for client in (a, b, a, b):
        assert await answer(client, WRONG) == (401, UNAUTHORIZED, None)
    # The fifth guess, at the other gateway: the database says locked out.
    assert await answer(a, WRONG) == (429, RATE_LIMITED, "300")

    async def both_heard() -> bool:
        return await state_of(a).lockout("127.0.0.1") is not None

    await eventually(both_heard, "gateway a hears of the lockout")
    assert await answer(a, RIGHT) == (429, RATE_LIMITED, "300")
    assert await answer(b, RIGHT) == (429, RATE_LIMITED, "300")
    async with a.post("/v1/chat/completions", json={"model": "openclaw", "messages": []}, headers=RIGHT) as resp:
        assert (resp.status, await resp.json()) == (429, RATE_LIMITED)


async def test_a_success_on_one_gateway_resets_the_fleet_count(fleet: GatewayFactory, pg_url: str) -> None:
    """maxAttempts 3: two failures then a success reset the count, so two more failures (at the
    other gateway) are 401, not a lockout; without the reset the fourth would be 429."""
    limit = {**LIMIT_4, "maxAttempts": 3}
    a, b = await fleet(pg_url, limit), await fleet(pg_url, limit)
    assert await answer(a, WRONG) == (401, UNAUTHORIZED, None)
    assert await answer(a, WRONG) == (401, UNAUTHORIZED, None)
    status, _, _ = await answer(a, RIGHT)
    assert status == 200
    assert await answer(b, WRONG) == (401, UNAUTHORIZED, None)
    assert await answer(b, WRONG) == (401, UNAUTHORIZED, None)
    status, _, _ = await answer(b, RIGHT)
    assert status == 200
    assert await stored_attempts(pg_url, "127.0.0.1") is None


async def test_sqlite_gateway_keeps_the_in_memory_limiter(
    aiohttp_client: AiohttpClient, mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """On SQLite the gateway is one process: no shared state, the limiter counts in memory."""
    raw = gateway_config(mock_upstream.url)
    raw["gateway"] = {**raw["gateway"], "auth": {"mode": "token", "token": TOKEN, "rateLimit": LIMIT_4},
                      "stateDir": str(tmp_path / "state")}
    client = await aiohttp_client(build_gateway_app(GatewayConfig.from_mapping(raw, env={})))
    assert LIMITER_STATE_KEY not in client.app
    for _ in range(4):
        assert await answer(client, WRONG) == (401, UNAUTHORIZED, None)
    assert await answer(client, RIGHT) == (429, RATE_LIMITED, "300")


@asynccontextmanager
async def outage(client: Client, relay: _Relay) -> AsyncIterator[None]:
    """The gateway's database cut off (its limiter state noticed) for the block, then back."""
    state = state_of(client)
    await relay.stop()

    async def noticed() -> bool:
        return not state.live

    await eventually(noticed, "the gateway's limiter state notices the outage")
    yield
    await relay.start()

    async def back() -> bool:
        return state.live

    await eventually(back, "the gateway's limiter state listens again")


async def test_store_down_closed_refuses_with_a_clean_503_then_recovers(
    fleet: GatewayFactory, pg_cluster: PgCluster, pg_url: str
) -> None:
    """onStoreError closed (the default): while the store cannot be reached every attempt the
    limiter must vouch for is 503 auth_unavailable with Retry-After 1 (right, wrong or missing
    credential alike), never a 500, never per-process counting; /health stays up; once the
    store is back, authentication and limiting work again."""
    relay = _Relay(pg_cluster.port)
    await relay.start()
    try:
        client = await fleet(relayed(pg_url, relay), LIMIT_4)
        assert (await answer(client, RIGHT))[0] == 200
        async with outage(client, relay):
            for headers in (RIGHT, WRONG, {}):
                assert await answer(client, headers) == (503, UNAVAILABLE, "1")
            async with client.post("/v1/chat/completions", json={"model": "openclaw"}, headers=RIGHT) as resp:
                assert (resp.status, await resp.json(), resp.headers["Retry-After"]) == (503, UNAVAILABLE, "1")
            async with client.get("/health") as resp:
                assert (resp.status, await resp.json()) == (200, {"ok": True})
        assert (await answer(client, RIGHT))[0] == 200
        for _ in range(4):
            assert await answer(client, WRONG) == (401, UNAUTHORIZED, None)
        assert await answer(client, RIGHT) == (429, RATE_LIMITED, "300")
    finally:
        await relay.stop()


async def test_store_down_closed_still_serves_exempt_loopback_clients(
    fleet: GatewayFactory, pg_cluster: PgCluster, pg_url: str
) -> None:
    """exemptLoopback (the default) behind a trusted proxy: the forwarded client needs the
    limiter and gets 503 while the store is down; the loopback caller never needs it."""
    relay = _Relay(pg_cluster.port)
    await relay.start()
    try:
        limit = {"maxAttempts": 4, "windowMs": 60_000, "lockoutMs": 300_000}
        client = await fleet(relayed(pg_url, relay), limit, trustedProxies=["127.0.0.1"])
        forwarded = {**RIGHT, "X-Forwarded-For": KEY}
        # A loopback client, as the proxy names it (the proxy itself is 127.0.0.1).
        loopback = {"X-Forwarded-For": "::1"}
        async with outage(client, relay):
            assert await answer(client, forwarded) == (503, UNAVAILABLE, "1")
            assert (await answer(client, {**RIGHT, **loopback}))[0] == 200
            assert await answer(client, {**WRONG, **loopback}) == (401, UNAUTHORIZED, None)
        assert (await answer(client, forwarded))[0] == 200
    finally:
        await relay.stop()


async def test_store_down_open_authenticates_without_limiting_and_warns_once(
    fleet: GatewayFactory, pg_cluster: PgCluster, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """onStoreError open: while the store is down the right token gets in and wrong ones stay
    401 however many (no limit, no per-process count), with one warning, not one per request;
    once the store is back, the limit applies again from a fresh count."""
    caplog.set_level(logging.WARNING, logger="openclaw_http_compat")
    relay = _Relay(pg_cluster.port)
    await relay.start()
    try:
        client = await fleet(relayed(pg_url, relay), {**LIMIT_4, "onStoreError": "open"})
        async with outage(client, relay):
            for _ in range(10):
                assert await answer(client, WRONG) == (401, UNAUTHORIZED, None)
            assert (await answer(client, RIGHT))[0] == 200
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "openclaw_http_compat" and r.getMessage().startswith("gateway.auth.rateLimit")
        ]
        assert len(warnings) == 1
        assert warnings[0].startswith(
            "gateway.auth.rateLimit: the limiter's store cannot be reached; authenticating without the"
            " failed-attempt limit until it is back (onStoreError: open): "
        )
        for _ in range(4):
            assert await answer(client, WRONG) == (401, UNAUTHORIZED, None)
        assert await answer(client, RIGHT) == (429, RATE_LIMITED, "300")
    finally:
        await relay.stop()

