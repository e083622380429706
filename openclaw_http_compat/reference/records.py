"""Where the reference gateway keeps ``Idempotency-Key`` records: with its sessions.

On PostgreSQL (``gateway.sessionStore.url``) in the same database (:mod:`.pgidempotency`),
otherwise in the SQLite session file (:mod:`.sqlite_records`); either way every process of the
gateway (``--workers``, or a fleet on one database) shares them.
The plugin gets :class:`StartedRecords`, which forwards to whatever :data:`RECORDS_KEY` holds
once the session store is open.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, cast

from aiohttp import web

from openclaw_http_compat.idempotency import Answer, IdempotencyRecord, IdempotencyStore, MemoryIdempotencyStore

from .config import GatewayConfig
from .storage import TranscriptStore

__all__ = ("RECORDS_KEY", "StartedRecords", "open_records")

#: The records store opened with the session store (the gateway's root app).
RECORDS_KEY: Final = web.AppKey[IdempotencyStore]("openclaw_http_compat.reference.records")


@asynccontextmanager
async def open_records(config: GatewayConfig, store: TranscriptStore | None) -> AsyncIterator[IdempotencyStore]:
    """The records store that goes with the open session ``store``, closed on exit (``None``:
    the gateway runs agents with its caller's runner and has no session store; in memory)."""
    if store is None:
        yield MemoryIdempotencyStore()
        return
    if config.session_store.url is None:
        from .sqlite_records import SQLiteIdempotencyStore
        from .store import SQLiteStore

        sqlite = SQLiteIdempotencyStore(cast(SQLiteStore, store).path)
        try:
            yield sqlite
        finally:
            await sqlite.close()
        return
    from .pgidempotency import PostgresIdempotencyStore
    from .pgstore import PostgresStore

    postgres = cast(PostgresStore, store)
    records = PostgresIdempotencyStore(lambda: postgres.pool)
    try:
        yield records
    finally:
        await records.close()


class StartedRecords:
    """The records store handed to the plugin before the session store is open."""

    def __init__(self, app: web.Application) -> None:
        self._app = weakref.ref(app)

    def _store(self) -> IdempotencyStore:
        app = self._app()
        store = app.get(RECORDS_KEY) if app is not None else None
        if store is None:
            raise RuntimeError("the gateway has not started: no records store yet")
        return store

    async def get(self, key: str) -> IdempotencyRecord | None:
        """See :class:`~openclaw_http_compat.idempotency.IdempotencyStore`."""
        return await self._store().get(key)

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease_s: float) -> bool:
        """See :class:`~openclaw_http_compat.idempotency.IdempotencyStore`."""
        return await self._store().claim(key, fingerprint, owner, lease_s=lease_s)

    async def renew(self, key: str, owner: str, *, lease_s: float) -> bool:
        """See :class:`~openclaw_http_compat.idempotency.IdempotencyStore`."""
        return await self._store().renew(key, owner, lease_s=lease_s)

    async def complete(self, key: str, owner: str, answer: Answer, *, ttl_s: float) -> bool:
        """See :class:`~openclaw_http_compat.idempotency.IdempotencyStore`."""
        return await self._store().complete(key, owner, answer, ttl_s=ttl_s)

    async def release(self, key: str, owner: str) -> None:
        """See :class:`~openclaw_http_compat.idempotency.IdempotencyStore`."""
        await self._store().release(key, owner)
