"""Where the reference gateway keeps stored completions: next to its sessions.

:func:`open_completion_store` picks the engine of the session store (SQLite:
:class:`~.sqlite_completions.SQLiteCompletionStore`; PostgreSQL:
:class:`~.pg_completions.PostgresCompletionStore`). The gateway hands the plugin a
:class:`StartedCompletionStore` before that store exists (plugins load before start-up); it
forwards every call to the store opened at start-up.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from aiohttp import web

from openclaw_http_compat import (
    CompletionPage,
    CompletionQuery,
    CompletionStore,
    InMemoryCompletionStore,
    StoredCompletion,
)

from .storage import TranscriptStore
from .store import SQLiteStore

__all__ = ("COMPLETIONS_KEY", "StartedCompletionStore", "json_text", "open_completion_store", "record_of")

#: The completion store opened at start-up with the session store (the gateway's root app).
COMPLETIONS_KEY: Final = web.AppKey[CompletionStore]("openclaw_http_compat.reference.completions")



def record_of(row: Sequence[Any]) -> StoredCompletion:
    """A stored completion from a row of ``id, owner, created, model, metadata, completion``
    (the last two JSON text), as both engines read them."""
    return StoredCompletion(
        id=row[0], owner=row[1], created=row[2], model=row[3], metadata=json.loads(row[4]),
        completion=json.loads(row[5]),
    )


def json_text(value: object) -> str:
    """``value`` as the compact JSON text both engines store."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@asynccontextmanager
async def open_completion_store(transcripts: TranscriptStore) -> AsyncIterator[CompletionStore]:
    """The completion store on the same database as ``transcripts`` (opened), closed on exit.

    A session store of another engine keeps completions in memory.
    """
    if isinstance(transcripts, SQLiteStore):
        from .sqlite_completions import SQLiteCompletionStore

        store = SQLiteCompletionStore(transcripts.path, fsync=transcripts.fsync)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
        return
    try:
        from .pgstore import PostgresStore
    except ImportError:  # no asyncpg: the session store cannot be PostgreSQL
        PostgresStore = None  # type: ignore[assignment,misc]  # noqa: N806
    if PostgresStore is not None and isinstance(transcripts, PostgresStore):
        from .pg_completions import PostgresCompletionStore

        yield PostgresCompletionStore(transcripts.pool)
        return
    yield InMemoryCompletionStore()


class StartedCompletionStore:
    """The completion store handed to the plugin before start-up: it forwards every call to
    the store :data:`COMPLETIONS_KEY` holds once the gateway started, else to one in memory
    (a gateway built with its own runner opens no session store)."""

    def __init__(self, app: web.Application) -> None:
        # A weak reference: the app holds this object (through the plugin's Host).
        self._app = weakref.ref(app)
        self._fallback = InMemoryCompletionStore()

    def _store(self) -> CompletionStore:
        app = self._app()
        store = app.get(COMPLETIONS_KEY) if app is not None else None
        return store if store is not None else self._fallback

    async def save(self, record: StoredCompletion, messages: Sequence[Mapping[str, Any]]) -> None:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        await self._store().save(record, messages)

    async def get(self, owner: str, completion_id: str, *, not_before: int) -> StoredCompletion | None:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        return await self._store().get(owner, completion_id, not_before=not_before)

    async def messages(
        self, owner: str, completion_id: str, *, not_before: int
    ) -> Sequence[Mapping[str, Any]] | None:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        return await self._store().messages(owner, completion_id, not_before=not_before)

    async def list(self, owner: str, query: CompletionQuery) -> CompletionPage:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        return await self._store().list(owner, query)

    async def update_metadata(
        self, owner: str, completion_id: str, metadata: Mapping[str, str], *, not_before: int
    ) -> StoredCompletion | None:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        return await self._store().update_metadata(owner, completion_id, metadata, not_before=not_before)

    async def delete(self, owner: str, completion_id: str, *, not_before: int) -> bool:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        return await self._store().delete(owner, completion_id, not_before=not_before)

    async def purge(self, created_before: int) -> int:
        """See :class:`~openclaw_http_compat.CompletionStore`."""
        return await self._store().purge(created_before)
