"""``Idempotency-Key`` records in the SQLite session file: the
:class:`~openclaw_http_compat.idempotency.IdempotencyStore` of gateways on the default store,
shared by the worker processes of ``--workers`` (SQLite locks the file between them).

The ``idempotency`` table is created by the session store's migration (:mod:`.store`, schema
version 3). This module has a connection of its own, used by one worker thread at a time
(:func:`asyncio.to_thread` under a lock), so no statement runs on the event loop. Claiming is
one ``INSERT … ON CONFLICT … WHERE`` statement, atomic across processes. Expired rows are
purged in the background, a bounded batch at a time, at most once a minute.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from openclaw_http_compat.idempotency import Answer, IdempotencyRecord

__all__ = ("SQLiteIdempotencyStore",)

log = logging.getLogger(__name__)

_GET: Final = (
    "SELECT fingerprint, status, stream, headers, body, expires_at FROM idempotency"
    " WHERE key_digest = ? AND expires_at > ?"
)
_CLAIM: Final = """
INSERT INTO idempotency (key_digest, fingerprint, owner, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (key_digest) DO UPDATE
SET fingerprint = excluded.fingerprint, owner = excluded.owner, expires_at = excluded.expires_at,
    status = NULL, stream = 0, headers = NULL, body = NULL
WHERE idempotency.expires_at <= ?
"""
_RENEW: Final = "UPDATE idempotency SET expires_at = ? WHERE key_digest = ? AND owner = ? AND status IS NULL"
_COMPLETE: Final = (
    "UPDATE idempotency SET status = ?, stream = ?, headers = ?, body = ?, expires_at = ?"
    " WHERE key_digest = ? AND owner = ?"
)
_RELEASE: Final = "DELETE FROM idempotency WHERE key_digest = ? AND owner = ?"
_PURGE: Final = (
    "DELETE FROM idempotency WHERE key_digest IN"
    " (SELECT key_digest FROM idempotency WHERE expires_at <= ? LIMIT ?)"
)
_PURGE_EVERY_S: Final = 60.0
_PURGE_BATCH: Final = 1000
_BUSY_TIMEOUT_MS: Final = 5000


class SQLiteIdempotencyStore:
    """Records of keyed runs in the session store's SQLite file (see the module docs).

    Args:
        path: the session store's file, already created (and migrated) by it.
        clock: seconds since the epoch.
    """

    def __init__(self, path: pathlib.Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._next_purge = 0.0
        self._purging: asyncio.Task[Any] | None = None

    def _execute(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        # Blocking: runs in a worker thread, one statement at a time on our connection.
        with self._lock:
            if self._closed:
                raise RuntimeError("the Idempotency-Key records are closed")
            if self._conn is None:
                # isolation_level=None: each statement is its own transaction.
                self._conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
                self._conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            return self._conn.execute(sql, params)

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return self._execute(sql, params).fetchall()

    def _change(self, sql: str, params: tuple[Any, ...]) -> int:
        return self._execute(sql, params).rowcount

    async def _changed(self, sql: str, *params: Any) -> bool:
        """Whether the statement changed a row."""
        return await asyncio.to_thread(self._change, sql, params) > 0

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The key's live record."""
        rows = await asyncio.to_thread(self._fetch, _GET, (key, self._clock()))
        if not rows:
            return None
        fingerprint, status, stream, headers, body, expires_at = rows[0]
        answer = None
        if status is not None:
            pairs = tuple((str(k), str(v)) for k, v in json.loads(headers or "[]"))
            answer = Answer(status=status, body=bytes(body), stream=bool(stream), headers=pairs)
        return IdempotencyRecord(fingerprint=fingerprint, answer=answer, expires_at=expires_at)

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease_s: float) -> bool:
        """Claim ``key`` unless a live record holds it (one statement: never two owners)."""
        now = self._clock()
        self._purge_soon(now)
        return await self._changed(_CLAIM, key, fingerprint, owner, now + lease_s, now)

    async def renew(self, key: str, owner: str, *, lease_s: float) -> bool:
        """Extend the owner's running claim."""
        return await self._changed(_RENEW, self._clock() + lease_s, key, owner)

    async def complete(self, key: str, owner: str, answer: Answer, *, ttl_s: float) -> bool:
        """Store the owner's answer for ``ttl_s``."""
        headers = json.dumps([list(pair) for pair in answer.headers])
        return await self._changed(
            _COMPLETE, answer.status, int(answer.stream), headers, answer.body, self._clock() + ttl_s, key, owner
        )

    async def release(self, key: str, owner: str) -> None:
        """Drop the owner's claim."""
        await self._changed(_RELEASE, key, owner)

    def _purge_soon(self, now: float) -> None:
        if now < self._next_purge or (self._purging is not None and not self._purging.done()):
            return
        self._next_purge = now + _PURGE_EVERY_S
        self._purging = asyncio.get_running_loop().create_task(self._purge(now))

    async def _purge(self, now: float) -> None:
        try:
            await self._changed(_PURGE, now, _PURGE_BATCH)
        except sqlite3.Error:
            log.warning("purging expired Idempotency-Key records failed", exc_info=True)

    async def close(self) -> None:
        """Wait for a purge under way, then close the connection."""
        if self._purging is not None:
            await asyncio.wait([self._purging])
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
