"""Stored completions in the PostgreSQL session database: the reference gateway's
:class:`~openclaw_http_compat.CompletionStore` when its sessions are in PostgreSQL.

The table (``openclaw_stored_completions``) is part of the session schema (:mod:`.pgstore`,
version 2), created by :class:`~.pgstore.PostgresStore` at start-up; this store uses that
store's pool, one statement per call. Every process of a fleet on the same database sees every
completion: one stored through one process is read, listed, updated or deleted through any.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

import asyncpg

from openclaw_http_compat import (
    CompletionPage,
    CompletionQuery,
    CompletionStoreUnavailable,
    StoredCompletion,
    UnknownCursor,
)

from .completions import json_text, record_of
from .pglisten import OUTAGES

__all__ = ("PostgresCompletionStore",)

_COLUMNS: Final = "id, owner, created, model, metadata::text, completion::text"
_VISIBLE: Final = "id = $1 AND owner = $2 AND created >= $3"
# The session store's outages (as it maps them), but for DataError: here that is a value a
# client sent, not a database that cannot be reached.
_OUTAGES: Final = tuple(kind for kind in OUTAGES if kind is not asyncpg.DataError)


class PostgresCompletionStore:
    """Stored completions on an open :class:`asyncpg.Pool` (see the module docs).

    Args:
        pool: the session store's pool (:attr:`.pgstore.PostgresStore.pool`); its owner closes it.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *args))
        except _OUTAGES as exc:
            raise CompletionStoreUnavailable(f"the stored completions database failed: {type(exc).__name__}") from exc

    async def _execute(self, sql: str, *args: Any) -> int:
        try:
            status = await self._pool.execute(sql, *args)
        except _OUTAGES as exc:
            raise CompletionStoreUnavailable(f"the stored completions database failed: {type(exc).__name__}") from exc
        # "INSERT 0 1", "UPDATE 1", "DELETE 3": the last word counts the rows.
        return int(str(status).rsplit(" ", 1)[-1])

    async def save(self, record: StoredCompletion, messages: Sequence[Mapping[str, Any]]) -> None:
        """Keep ``record`` and its messages, committed when this returns."""
        await self._execute(
            "INSERT INTO openclaw_stored_completions (id, owner, created, model, metadata, completion, messages)"
            " VALUES ($1, $2, $3, $4, $5::json, $6::json, $7::json)"
            " ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, created = EXCLUDED.created,"
            " model = EXCLUDED.model, metadata = EXCLUDED.metadata, completion = EXCLUDED.completion,"
            " messages = EXCLUDED.messages",
            record.id, record.owner, record.created, record.model, json_text(dict(record.metadata)),
            json_text(dict(record.completion)), json_text([dict(m) for m in messages]),
        )

    async def get(self, owner: str, completion_id: str, *, not_before: int) -> StoredCompletion | None:
        """The record, or ``None``."""
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM openclaw_stored_completions WHERE {_VISIBLE}", completion_id, owner, not_before
        )
        return record_of(rows[0]) if rows else None

    async def messages(
        self, owner: str, completion_id: str, *, not_before: int
    ) -> Sequence[Mapping[str, Any]] | None:
        """The record's request messages, or ``None``."""
        rows = await self._fetch(
            f"SELECT messages::text FROM openclaw_stored_completions WHERE {_VISIBLE}", completion_id, owner, not_before
        )
        if not rows:
            return None
        messages: list[Mapping[str, Any]] = json.loads(rows[0][0])
        return messages

    async def list(self, owner: str, query: CompletionQuery) -> CompletionPage:
        """One page of the owner's records, by ``created`` then by when they were stored."""
        params: list[Any] = [owner, query.not_before]
        where = ["owner = $1", "created >= $2"]
        if query.model is not None:
            params.append(query.model)
            where.append(f"model = ${len(params)}")
        if query.metadata:
            params.append(json_text(dict(query.metadata)))
            where.append(f"metadata::jsonb @> ${len(params)}::jsonb")
        if query.after is not None:
            cursor = await self._fetch(
                f"SELECT created, seq FROM openclaw_stored_completions WHERE {_VISIBLE}",
                query.after, owner, query.not_before,
            )
            if not cursor:
                raise UnknownCursor(query.after)
            params += [cursor[0][0], cursor[0][1]]
            comparison = ">" if query.order == "asc" else "<"
            where.append(f"(created, seq) {comparison} (${len(params) - 1}, ${len(params)})")
        direction = "ASC" if query.order == "asc" else "DESC"
        params.append(query.limit + 1)
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM openclaw_stored_completions WHERE {' AND '.join(where)}"
            f" ORDER BY created {direction}, seq {direction} LIMIT ${len(params)}",
            *params,
        )
        return CompletionPage(data=tuple(record_of(r) for r in rows[: query.limit]), has_more=len(rows) > query.limit)

    async def update_metadata(
        self, owner: str, completion_id: str, metadata: Mapping[str, str], *, not_before: int
    ) -> StoredCompletion | None:
        """Replace the record's metadata; the updated record, or ``None``."""
        rows = await self._fetch(
            f"UPDATE openclaw_stored_completions SET metadata = $4::json WHERE {_VISIBLE} RETURNING {_COLUMNS}",
            completion_id, owner, not_before, json_text(dict(metadata)),
        )
        return record_of(rows[0]) if rows else None

    async def delete(self, owner: str, completion_id: str, *, not_before: int) -> bool:
        """Remove the record; whether there was one."""
        return bool(
            await self._execute(
                f"DELETE FROM openclaw_stored_completions WHERE {_VISIBLE}", completion_id, owner, not_before
            )
        )

    async def purge(self, created_before: int) -> int:
        """Remove every owner's records created before ``created_before``."""
        return await self._execute("DELETE FROM openclaw_stored_completions WHERE created < $1", created_before)
