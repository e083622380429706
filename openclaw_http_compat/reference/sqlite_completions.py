"""Stored completions in the SQLite session database: the reference gateway's
:class:`~openclaw_http_compat.CompletionStore` when its sessions are in SQLite.

The table (``stored_completions``) is part of the session schema (:mod:`.store`, version 3),
so :class:`~.store.SQLiteStore` must have opened, and migrated, the file first. This store
opens a connection of its own to that file and uses it from one thread of its own: every
call runs there, never on the event loop, one at a time. Writes are short transactions that
take SQLite's write lock for a moment, next to the session writer's (``busy_timeout`` covers
the wait); other gateway processes on the same file see each commit at once (WAL).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import pathlib
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from openclaw_http_compat import (
    CompletionPage,
    CompletionQuery,
    CompletionStoreUnavailable,
    StoredCompletion,
    UnknownCursor,
)

from .completions import json_text, record_of

__all__ = ("SQLiteCompletionStore",)

_BUSY_TIMEOUT_MS: Final = 5000
# A purge deletes this many rows per transaction, so the write lock is never held long.
_PURGE_BATCH: Final = 500
_COLUMNS: Final = "id, owner, created, model, metadata, completion"
_T = TypeVar("_T")
_NOT_OPEN: Final = "SQLiteCompletionStore.open() must be awaited before using the store."


class SQLiteCompletionStore:
    """Stored completions in the session database at ``path`` (see the module docs).

    Call :meth:`open` after the session store opened the file, and :meth:`close` before it
    closes it.

    Args:
        path: the session database file.
        fsync: sync every commit (``synchronous=FULL``), as the session store does.
    """

    def __init__(self, path: pathlib.Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._conn: sqlite3.Connection | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Open the connection, in the store's own thread. Opening twice is a no-op."""
        if self._thread is not None:
            return
        thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="stored-completions")
        try:
            self._conn = await asyncio.get_running_loop().run_in_executor(thread, self._connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self._thread = thread

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so transactions are exactly the ones we BEGIN.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=FULL" if self.fsync else "PRAGMA synchronous=NORMAL")
        return conn

    async def close(self) -> None:
        """Wait for the call under way, then close the connection."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        await asyncio.to_thread(thread.shutdown)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        thread, conn = self._thread, self._conn
        if thread is None or conn is None:
            raise RuntimeError(_NOT_OPEN)
        try:
            return await asyncio.get_running_loop().run_in_executor(thread, fn, conn)
        except sqlite3.OperationalError as exc:
            # Locked past busy_timeout, disk full, I/O errors: the caller may retry later.
            raise CompletionStoreUnavailable(f"the stored completions database failed: {exc}") from exc

    @staticmethod
    def _write(conn: sqlite3.Connection, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            changed = 0
            for sql, params in statements:
                changed += conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return changed

    async def save(self, record: StoredCompletion, messages: Sequence[Mapping[str, Any]]) -> None:
        """Keep ``record`` and its messages, committed when this returns."""
        row = (
            record.id, record.owner, record.created, record.model, json_text(dict(record.metadata)),
            json_text(dict(record.completion)), json_text([dict(m) for m in messages]),
        )
        sql = (
            "INSERT OR REPLACE INTO stored_completions (id, owner, created, model, metadata, completion, messages)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        await self._run(functools.partial(self._write, statements=[(sql, row)]))

    async def get(self, owner: str, completion_id: str, *, not_before: int) -> StoredCompletion | None:
        """The record, or ``None``."""

        def get(conn: sqlite3.Connection) -> StoredCompletion | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM stored_completions WHERE id = ? AND owner = ? AND created >= ?",
                (completion_id, owner, not_before),
            ).fetchone()
            return record_of(row) if row is not None else None

        return await self._run(get)

    async def messages(
        self, owner: str, completion_id: str, *, not_before: int
    ) -> Sequence[Mapping[str, Any]] | None:
        """The record's request messages, or ``None``."""

        def messages(conn: sqlite3.Connection) -> list[dict[str, Any]] | None:
            row = conn.execute(
                "SELECT messages FROM stored_completions WHERE id = ? AND owner = ? AND created >= ?",
                (completion_id, owner, not_before),
            ).fetchone()
            return json.loads(row[0]) if row is not None else None

        return await self._run(messages)

    async def list(self, owner: str, query: CompletionQuery) -> CompletionPage:
        """One page of the owner's records, by ``created`` then by when they were stored."""

        def page(conn: sqlite3.Connection) -> CompletionPage:
            where = ["owner = ?", "created >= ?"]
            params: list[Any] = [owner, query.not_before]
            if query.model is not None:
                where.append("model = ?")
                params.append(query.model)
            for key, value in query.metadata.items():
                # json_each names every key as sent, whatever characters it holds.
                where.append("EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND value = ?)")
                params += [key, value]
            if query.after is not None:
                cursor = conn.execute(
                    "SELECT created, seq FROM stored_completions WHERE id = ? AND owner = ? AND created >= ?",
                    (query.after, owner, query.not_before),
                ).fetchone()
                if cursor is None:
                    raise UnknownCursor(query.after)
                where.append("(created, seq) > (?, ?)" if query.order == "asc" else "(created, seq) < (?, ?)")
                params += list(cursor)
            direction = "ASC" if query.order == "asc" else "DESC"
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM stored_completions WHERE {' AND '.join(where)}"
                f" ORDER BY created {direction}, seq {direction} LIMIT ?",
                (*params, query.limit + 1),
            ).fetchall()
            return CompletionPage(data=tuple(record_of(r) for r in rows[: query.limit]), has_more=len(rows) > query.limit)

        return await self._run(page)

    async def update_metadata(
        self, owner: str, completion_id: str, metadata: Mapping[str, str], *, not_before: int
    ) -> StoredCompletion | None:
        """Replace the record's metadata; the updated record, or ``None``."""
        sql = "UPDATE stored_completions SET metadata = ? WHERE id = ? AND owner = ? AND created >= ?"
        changed = await self._run(
            functools.partial(self._write, statements=[(sql, (json_text(dict(metadata)), completion_id, owner, not_before))])
        )
        if not changed:
            return None
        return await self.get(owner, completion_id, not_before=not_before)

    async def delete(self, owner: str, completion_id: str, *, not_before: int) -> bool:
        """Remove the record; whether there was one."""
        sql = "DELETE FROM stored_completions WHERE id = ? AND owner = ? AND created >= ?"
        return bool(await self._run(functools.partial(self._write, statements=[(sql, (completion_id, owner, not_before))])))

    async def purge(self, created_before: int) -> int:
        """Remove every owner's records created before ``created_before``, a batch per transaction."""
        sql = (
            "DELETE FROM stored_completions WHERE seq IN"
            " (SELECT seq FROM stored_completions WHERE created < ? LIMIT ?)"
        )
        removed = 0
        while True:
            batch = await self._run(functools.partial(self._write, statements=[(sql, (created_before, _PURGE_BATCH))]))
            removed += batch
            if batch < _PURGE_BATCH:
                return removed
