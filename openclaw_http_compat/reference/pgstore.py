"""Session transcripts in PostgreSQL, through asyncpg: the :class:`~.storage.TranscriptStore`
engine several gateway processes can share.

Selected by ``gateway.sessionStore.url``; needs the ``postgres`` extra
(``pip install 'openclaw-http-compat[postgres]'``), which this module imports.

* **One pool per process** (:class:`asyncpg.Pool`, opened by :meth:`PostgresStore.open`).
  A connection is acquired for one statement or one transaction, never for a run: an agent
  run lasts minutes, a pool does not.
* **A versioned schema.** ``openclaw_schema`` holds the version this code wrote; start-up
  migrates an older database in one transaction under a transaction-scoped advisory lock
  (``pg_advisory_xact_lock``, safe behind a transaction-mode pooler), so several processes
  starting at once migrate it once. A database newer than this code is refused.
* **Bounded reads.** :meth:`PostgresStore.load` with a limit reads the index's tail
  (``ORDER BY id DESC LIMIT n``), however old the session.
* **Appends** are one transaction each, serialised per session by an advisory lock on the
  session's key, so the turns of concurrent appends never interleave, across processes too.

Runs take turns on a session within this process (an :class:`asyncio.Lock` per key); run
leases across processes are the next step of the fleet work (issue #11).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from .storage import InProcessTurns, StoreError, StoreSchemaError, decode_calls, encode_calls
from .transcript import Turn

__all__ = ("SCHEMA_VERSION", "PostgresStore")

log = logging.getLogger(__name__)

# Each entry migrates the schema from version i to i + 1, in the transaction that records it.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # Version 1: the turns of every session, ordered by their id within a session. A turn's
    # tool calls are the JSON the SQLite engine stores too.
    (
        """
        CREATE TABLE openclaw_turns (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_key text NOT NULL,
            role text NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
            content text NOT NULL,
            tool_calls jsonb,
            tool_call_id text,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        "CREATE INDEX openclaw_turns_by_session ON openclaw_turns (session_key, id)",
    ),
    # Idempotency-Key records (pgidempotency.py): named by the key's digest, never the key;
    # a claim's owner token fences it; expires_at is the lease, then the record's TTL.
    (
        """
        CREATE TABLE openclaw_idempotency (
            key_digest text PRIMARY KEY,
            fingerprint text NOT NULL,
            owner text NOT NULL,
            status integer,
            stream boolean NOT NULL DEFAULT false,
            headers jsonb,
            body bytea,
            expires_at double precision NOT NULL
        )
        """,
        "CREATE INDEX openclaw_idempotency_by_expiry ON openclaw_idempotency (expires_at)",
    ),
)
#: The session schema this code writes (PostgreSQL's own numbering, not SQLite's).
SCHEMA_VERSION: Final = len(_MIGRATIONS)

# One row; the CHECK keeps it one.
_SCHEMA_TABLE: Final = """
CREATE TABLE IF NOT EXISTS openclaw_schema (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
)
"""
_SET_VERSION: Final = """
INSERT INTO openclaw_schema (singleton, version) VALUES (true, $1)
ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version
"""
# The migration lock, one bigint ("openclaw" in ASCII). Session locks use the two-int form,
# whose key space PostgreSQL keeps apart from the bigint one.
_MIGRATION_LOCK: Final = 0x6F70656E636C6177
_SESSION_LOCK_CLASS: Final = 0x4F43
_LOCK_SESSION: Final = "SELECT pg_advisory_xact_lock($1, hashtext($2))"
_INSERT: Final = (
    "INSERT INTO openclaw_turns (session_key, role, content, tool_calls, tool_call_id)"
    " VALUES ($1, $2, $3, $4::jsonb, $5)"
)
# The newest ``$2`` turns, newest first (the caller reverses them); LIMIT NULL is no limit.
_LOAD_TAIL: Final = (
    "SELECT role, content, tool_calls::text, tool_call_id FROM openclaw_turns"
    " WHERE session_key = $1 ORDER BY id DESC LIMIT $2"
)
_NOT_OPEN: Final = "PostgresStore.open() must be awaited before using the store."
# A small pool: a connection is held only for one statement or transaction, so a few serve
# many runs; max_size bounds what one process may take of the server's max_connections.
_POOL_MIN: Final = 1
_POOL_MAX: Final = 10
# What a database that cannot be reached or a statement that fails raises; mapped once, here,
# into StoreError. (Not asyncpg's whole tree: a bug in our SQL is a bug, not an outage.)
_OUTAGES: Final[tuple[type[Exception], ...]] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.DataError,
    OSError,
    TimeoutError,
)


async def _migrate(conn: Any) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction; refuse a newer one."""
    async with conn.transaction():
        # Held until this transaction ends: a process starting meanwhile waits here, then
        # finds the work done.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_SCHEMA_TABLE)
        version = await conn.fetchval("SELECT version FROM openclaw_schema")
        version = 0 if version is None else int(version)
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"the PostgreSQL session store has schema version {version}; this gateway knows"
                f" {SCHEMA_VERSION}: upgrade the gateway."
            )
        if version == SCHEMA_VERSION:
            return
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                await conn.execute(statement)
        await conn.execute(_SET_VERSION, SCHEMA_VERSION)
        log.info("PostgreSQL session schema migrated from version %d to %d", version, SCHEMA_VERSION)


class PostgresStore(InProcessTurns):
    """Session transcripts in a PostgreSQL database, shared by every process that opens it.

    Call :meth:`open` before use and :meth:`close` at shutdown; one store (one pool) per
    process. :meth:`take_turn` works without opening the store.

    Args:
        url: a ``postgresql://`` URL (libpq's URI form, as asyncpg reads it). It may hold a
            password, so this store never shows it (not in ``repr``, not in an error).
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"<PostgresStore {'open' if self._pool is not None else 'closed'}>"

    async def open(self) -> None:
        """Open the pool and create or migrate the schema. Opening twice is a no-op.

        Raises:
            StoreSchemaError: the database's schema is newer than this code.
            StoreError: the database cannot be reached or refused us (the message never
                holds the URL, which may carry a password).
        """
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(self._url, min_size=_POOL_MIN, max_size=_POOL_MAX)
        except (*_OUTAGES, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot open the PostgreSQL session store: {type(exc).__name__}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await _migrate(conn)
        except (*_OUTAGES, asyncpg.PostgresError) as exc:
            await pool.close()
            raise StoreError(f"cannot open the PostgreSQL session store: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool; it waits for the statements under way (appends already called)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def load(self, session_key: str, *, limit: int | None = None) -> list[Turn]:
        """The session's newest ``limit`` turns (all when ``None``), oldest first; empty for a
        new session. One indexed query, however long the session.

        Raises:
            StoreError: the database could not be read.
        """
        pool = self._connection()
        try:
            rows = await pool.fetch(_LOAD_TAIL, session_key, limit)
        except _OUTAGES as exc:
            raise StoreError(f"cannot load a session: {exc}") from exc
        rows.reverse()
        return [
            Turn(row[0], row[1], tool_calls=decode_calls(row[2]), tool_call_id=row[3])
            for row in rows
        ]

    async def append(self, session_key: str, turns: Sequence[Turn]) -> None:
        """Append ``turns`` to the session in one transaction, committed when this returns.

        Concurrent appends to one session, from any process, take turns (an advisory lock on
        the key): each one's turns are stored together, in commit order.

        Raises:
            StoreError: the turns could not be stored; nothing of them was.
        """
        pool = self._connection()
        rows = [
            (session_key, turn.role, turn.content, encode_calls(turn.tool_calls), turn.tool_call_id)
            for turn in turns
        ]
        if not rows:
            return
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK_SESSION, _SESSION_LOCK_CLASS, session_key)
                await conn.executemany(_INSERT, rows)
        except _OUTAGES as exc:
            raise StoreError(f"cannot append to a session: {exc}") from exc

    @property
    def pool(self) -> Any:
        """The open asyncpg pool, for the other records kept in this database.

        Raises:
            RuntimeError: the store is not open.
        """
        return self._connection()

    def _connection(self) -> Any:
        if self._pool is None:
            raise RuntimeError(_NOT_OPEN)
        return self._pool
