"""The three ``IdempotencyStore`` engines hold one contract: a claim is exclusive until its lease
or TTL runs out, only its owner renews, completes or releases it (a fencing token), and an
answer comes back as stored. Time is each store's injected clock."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from openclaw_http_compat.idempotency import Answer, IdempotencyRecord, IdempotencyStore, MemoryIdempotencyStore

from .pg import pg_cluster as pg_cluster, pg_url as pg_url

ANSWER = Answer(status=200, body=b"data: x\n\ndata: [DONE]\n\n", stream=True, headers=(("x-request-id", "chatcmpl_1"),))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The engine's name, and for PostgreSQL a new database's URL."""
    url: str | None = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    return str(request.param), url


@pytest.fixture
async def engine(kind: tuple[str, str | None], tmp_path: pathlib.Path) -> AsyncIterator[tuple[IdempotencyStore, Clock]]:
    clock = Clock()
    name, url = kind
    if name == "memory":
        yield MemoryIdempotencyStore(clock=clock), clock
        return
    if name == "sqlite":
        from openclaw_http_compat.reference.sqlite_records import SQLiteIdempotencyStore
        from openclaw_http_compat.reference.store import SQLiteStore

        sessions = SQLiteStore(tmp_path / "sessions.sqlite")
        await sessions.open()
        records = SQLiteIdempotencyStore(sessions.path, clock=clock)
        try:
            yield records, clock
        finally:
            await records.close()
            await sessions.close()
        return
    from openclaw_http_compat.reference.pgidempotency import PostgresIdempotencyStore
    from openclaw_http_compat.reference.pgstore import PostgresStore

    assert url is not None
    store = PostgresStore(url)
    await store.open()
    pg_records = PostgresIdempotencyStore(lambda: store.pool, clock=clock)
    try:
        yield pg_records, clock
    finally:
        await pg_records.close()
        await store.close()


async def test_claim_complete_replay_expire(engine: tuple[Any, Clock]) -> None:
    store, clock = engine
    assert await store.get("k") is None
    assert await store.claim("k", "fp", "owner-a", lease_s=30)
    assert not await store.claim("k", "fp", "owner-b", lease_s=30)
    assert await store.get("k") == IdempotencyRecord(fingerprint="fp", answer=None, expires_at=clock.now + 30)
    clock.now += 20
    assert await store.renew("k", "owner-a", lease_s=30)
    assert not await store.renew("k", "owner-b", lease_s=30)
    clock.now += 20  # within the renewed lease
    assert not await store.claim("k", "fp", "owner-b", lease_s=30)
    assert await store.complete("k", "owner-a", ANSWER, ttl_s=60)
    assert not await store.renew("k", "owner-a", lease_s=30)  # finished: nothing to renew
    assert await store.get("k") == IdempotencyRecord(fingerprint="fp", answer=ANSWER, expires_at=clock.now + 60)
    clock.now += 61
    assert await store.get("k") is None
    assert await store.claim("k", "fp2", "owner-b", lease_s=30)


async def test_a_lapsed_lease_is_taken_over_and_fences_its_old_owner(engine: tuple[Any, Clock]) -> None:
    store, clock = engine
    assert await store.claim("k", "fp", "owner-a", lease_s=30)
    clock.now += 31  # owner-a's process died: nobody renewed
    assert await store.claim("k", "fp", "owner-b", lease_s=30)
    assert not await store.complete("k", "owner-a", ANSWER, ttl_s=60)
    await store.release("k", "owner-a")  # not its claim any more: nothing happens
    record = await store.get("k")
    assert record is not None and record.answer is None
    await store.release("k", "owner-b")
    assert await store.get("k") is None
