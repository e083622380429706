"""Session transcripts, persisted in SQLite.

A session is the conversation one ``session_key`` names. Its transcript is an ordered list of
:class:`Turn` rows; a completed run appends its user turn and the assistant's reply in one
transaction, so a session never holds half a run.

SQLite is blocking, so every database call runs in a worker thread via
:func:`asyncio.to_thread`. There is one connection, shared by those threads
(``check_same_thread=False``) and serialised by a :class:`threading.Lock`; SQLite connections
must not be used by two threads at once.
"""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import attrs

__all__ = ("ROLES", "SessionStore", "Turn")

ROLES: Final = ("user", "assistant")

_T = TypeVar("_T")

# Version 1: one table of turns, ordered by their rowid within a session.
_SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_key TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_key, id);
"""


@attrs.frozen
class Turn:
    """One persisted transcript entry: a user message or an assistant reply."""

    role: str = attrs.field(validator=attrs.validators.in_(ROLES))
    content: str


class SessionStore:
    """Session transcripts in one SQLite database file, plus a lock per session.

    Call :meth:`open` before use and :meth:`close` at shutdown. :meth:`lock` works without
    opening the database.

    Args:
        path: the database file; missing parent directories are created on :meth:`open`.
    """

    def __init__(self, path: pathlib.Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._conn: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        # A lock lives as long as someone holds or awaits it (their frames reference it);
        # once the last run on a key finishes, the entry vanishes on its own.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def open(self) -> None:
        """Open (or create) the database and its schema. Opening twice is a no-op."""
        if self._conn is not None:
            return
        self._conn = await asyncio.to_thread(self._connect)

    async def close(self) -> None:
        """Close the database; waits for a database call in progress to finish."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._locked, conn.close)

    async def load(self, session_key: str) -> list[Turn]:
        """The session's transcript, oldest first; empty for a new session."""
        conn = self._connection()

        def load() -> list[Turn]:
            rows = conn.execute(
                "SELECT role, content FROM turns WHERE session_key = ? ORDER BY id", (session_key,)
            ).fetchall()
            return [Turn(role, content) for role, content in rows]

        return await asyncio.to_thread(self._locked, load)

    async def append(self, session_key: str, turns: Sequence[Turn]) -> None:
        """Append ``turns`` to the session in one transaction, committed when this returns."""
        conn = self._connection()
        rows = [(session_key, turn.role, turn.content, time.time()) for turn in turns]
        if not rows:
            return

        def append() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO turns (session_key, role, content, created_at) VALUES (?, ?, ?, ?)", rows
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await asyncio.to_thread(self._locked, append)

    def lock(self, session_key: str) -> asyncio.Lock:
        """The lock that serialises runs on ``session_key``; hold it for a whole run.

        Keep a reference while waiting for and holding it: an idle lock nobody references is
        dropped, so the table does not grow with every session ever seen.
        """
        lock = self._locks.get(session_key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_key] = lock
        return lock

    @property
    def lock_count(self) -> int:
        """How many session locks are alive (in use or awaited)."""
        return len(self._locks)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SessionStore.open() must be awaited before using the store.")
        return self._conn

    def _locked(self, fn: Callable[[], _T]) -> _T:
        with self._db_lock:
            return fn()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so transactions are exactly the ones we BEGIN.
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL syncs every commit to disk: a completed run survives power loss. NORMAL
            # (fsync off) syncs at checkpoints only: a commit still survives the process
            # being killed, but the last ones may be lost if the machine loses power.
            conn.execute("PRAGMA synchronous=FULL" if self.fsync else "PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} has session schema version {version}; this gateway knows {_SCHEMA_VERSION}."
                )
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn
