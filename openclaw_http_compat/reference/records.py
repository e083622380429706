"""Where the reference gateway keeps ``Idempotency-Key`` records: with its sessions.

On PostgreSQL (``gateway.sessionStore.url``) in the same database, so every process of a fleet
shares them (:mod:`.pgidempotency`); otherwise in the process (the plugin's in-memory store).
The plugin gets :class:`StartedRecords`, which forwards to whatever :data:`RECORDS_KEY` holds
once the session store is open.
"""

from __future__ import annotations

import weakref
from typing import Final, cast

from aiohttp import web

from openclaw_http_compat.idempotency import Answer, IdempotencyRecord, IdempotencyStore, MemoryIdempotencyStore

from .config import GatewayConfig
from .storage import TranscriptStore

__all__ = ("RECORDS_KEY", "StartedRecords", "records_for")

#: The records store opened with the session store (the gateway's root app).
RECORDS_KEY: Final = web.AppKey[IdempotencyStore]("openclaw_http_compat.reference.records")


def records_for(config: GatewayConfig, store: TranscriptStore | None) -> IdempotencyStore:
    """The records store that goes with the open session ``store`` (``None``: the gateway runs
    agents with a runner of its caller's, and has no session store)."""
    if store is None or config.session_store.url is None:
        return MemoryIdempotencyStore()
    from .pgidempotency import PostgresIdempotencyStore
    from .pgstore import PostgresStore

    postgres = cast(PostgresStore, store)
    return PostgresIdempotencyStore(lambda: postgres.pool)


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
