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
* **Appends** are one statement each (one round trip, its own transaction), serialised per
  session by an advisory lock on the session's key, so the turns of concurrent appends never
  interleave, across processes too.

* **Run leases.** Runs on one session take turns across every process sharing the database:
  within a process they queue on an :class:`asyncio.Lock` per key, then the run takes a lease
  on its session with a fencing token (:mod:`.pglease`). Its turn's appends check the token in
  the same statement, so a run that lost its lease cannot write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import asyncpg

from .pglease import CHANNEL as LEASE_CHANNEL
from .pglease import Lease, SessionLeases, check_token
from .pglisten import OUTAGES, Listener
from .storage import (
    InProcessTurns,
    SessionTurn,
    StoreError,
    StoreSchemaError,
    acquire_until,
    decode_calls,
    encode_calls,
)
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
    # Version 2: chat completions created with `store: true`, per owner (see .pg_completions).
    # seq orders completions created in the same second. The completion, its metadata and
    # messages are json, not jsonb: they come back as they were answered, keys in order.
    (
        """
        CREATE TABLE openclaw_stored_completions (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            owner text NOT NULL,
            created bigint NOT NULL,
            model text NOT NULL,
            metadata json NOT NULL,
            completion json NOT NULL,
            messages json NOT NULL
        )
        """,
        "CREATE INDEX openclaw_stored_completions_by_owner ON openclaw_stored_completions (owner, created, seq)",
        "CREATE INDEX openclaw_stored_completions_by_created ON openclaw_stored_completions (created)",
    ),
    # Version 3: the failed-auth limiter's state, shared by the fleet (see pgauthstate): per
    # client key, its failed attempts within the window (oldest first) and its lockout.
    (
        """
        CREATE TABLE openclaw_auth_failures (
            client_key text PRIMARY KEY,
            attempts timestamptz[] NOT NULL,
            locked_until timestamptz,
            last_failed_at timestamptz NOT NULL
        )
        """,
        "CREATE INDEX openclaw_auth_failures_by_age ON openclaw_auth_failures (last_failed_at)",
    ),
    # Version 4: run leases (see .pglease). A row stays after its lease is released, so the
    # session's fencing token keeps growing; wanted_by/at mark a process waiting for it.
    (
        """
        CREATE TABLE openclaw_leases (
            session_key text PRIMARY KEY,
            token bigint NOT NULL,
            expires_at timestamptz NOT NULL,
            wanted_by text,
            wanted_at timestamptz
        )
        """,
    ),
    # Version 5: Idempotency-Key records (see .pgidempotency): named by the key's digest,
    # never the key; a claim's owner token fences it; expires_at is the lease, then the TTL.
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
    # Version 6: a waiter that found another process's mark says so (see .pglease), so that a
    # release nobody waits for can go unannounced.
    ("ALTER TABLE openclaw_leases ADD COLUMN others_waiting boolean NOT NULL DEFAULT false",),
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
# An append is one statement, so one round trip and one transaction. The session's advisory
# lock comes first: the sort reads every row before any is inserted (and the ids, defaults
# evaluated after the sort, follow the turns' order). $1 lock class, $2 session key, $3-$6
# the turns' columns as arrays.
_LOCKED_TURNS: Final = """
WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock($1, hashtext($2)))
INSERT INTO openclaw_turns (session_key, role, content, tool_calls, tool_call_id)
SELECT $2, t.role, t.content, t.calls::jsonb, t.call_id
FROM locked, unnest($3::text[], $4::text[], $5::text[], $6::text[])
     WITH ORDINALITY AS t(role, content, calls, call_id, n)
"""
_APPEND: Final = _LOCKED_TURNS + "ORDER BY t.n\n"
# The same as the holder of a lease ($7, its token): the lease row is locked FOR SHARE until
# the statement commits (it cannot change hands mid-append), the turns go in only if it still
# carries the token, and the token found is answered (NULL: no lease row).
_APPEND_FENCED: Final = f"""
WITH held AS MATERIALIZED (
    SELECT token FROM openclaw_leases WHERE session_key = $2 FOR SHARE
), added AS (
    {_LOCKED_TURNS.strip()}, held WHERE held.token = $7
    ORDER BY t.n
    RETURNING 1
)
SELECT token FROM held
"""
# A run's last append ($7, its token) also releases its lease, in the same statement: the row
# is locked FOR UPDATE, the turns go in and the lease expires only if it still carries the
# token, and the release is announced as pglease's own when another process waits.
_APPEND_RELEASING: Final = f"""
WITH held AS MATERIALIZED (
    SELECT token, wanted_by IS NOT NULL OR others_waiting AS wanted
    FROM openclaw_leases WHERE session_key = $2 FOR UPDATE
), added AS (
    {_LOCKED_TURNS.strip()}, held WHERE held.token = $7
    ORDER BY t.n
    RETURNING 1
), freed AS (
    UPDATE openclaw_leases AS l SET expires_at = 'epoch', others_waiting = false
    FROM held WHERE l.session_key = $2 AND held.token = $7
    RETURNING held.wanted
)
SELECT token, (SELECT pg_notify('{LEASE_CHANNEL}', md5($2)) FROM freed WHERE wanted)::text FROM held
"""
# The newest ``$2`` turns, newest first (the caller reverses them); LIMIT NULL is no limit.
_LOAD_TAIL: Final = (
    "SELECT role, content, tool_calls::text, tool_call_id FROM openclaw_turns"
    " WHERE session_key = $1 ORDER BY id DESC LIMIT $2"
)
_NOT_OPEN: Final = "PostgresStore.open() must be awaited before using the store."
# A small pool: a connection is held only for one statement or transaction, so a few serve
# many runs; max_size bounds what one process may take of the server's max_connections.
_POOL_MIN: Final = 1
# A database that does not answer a connection attempt is down for this long at most.
_CONNECT_TIMEOUT_S: Final = 10.0


async def _keep_session(conn: Any) -> None:
    """How a connection is reset on its way back to the pool: not at all beyond asyncpg's own
    rollback of a transaction left open. This store sets no session state (its advisory locks
    are transaction-scoped; it LISTENs on a connection of its own), and asyncpg's default reset
    (``RESET ALL``, ``UNLISTEN *``, …) is a second round trip after every statement."""


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

    Call :meth:`open` before use and :meth:`close` at shutdown; one store (one pool, one
    listening connection) per process.

    Args:
        url: a ``postgresql://`` URL (libpq's URI form, as asyncpg reads it). It may hold a
            password, so this store never shows it (not in ``repr``, not in an error).
        lease_s: how long a run's lease lasts unless renewed (``gateway.sessionStore.leaseMs``).
        wait_s: how long a run waits for its session (``gateway.sessionStore.waitMs``).
        pool_size: the most connections the pool opens (``gateway.sessionStore.poolSize``).
    """

    def __init__(self, url: str, *, lease_s: float = 30.0, wait_s: float = 120.0, pool_size: int = 10) -> None:
        super().__init__(wait_s=wait_s)
        self._url = url
        self._pool_size = pool_size
        self._pool: Any = None
        #: The process's one listening connection, for the leases and for the auth limiter's
        #: state (:mod:`.pgauthstate`), which share this store's database.
        self.listener = Listener(url)
        self.leases = SessionLeases(self.listener, lease_s=lease_s)

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
            pool = await asyncpg.create_pool(
                self._url, min_size=min(_POOL_MIN, self._pool_size), max_size=self._pool_size,
                timeout=_CONNECT_TIMEOUT_S, reset=_keep_session,
            )  # fmt: skip
        except (*OUTAGES, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot open the PostgreSQL session store: {type(exc).__name__}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await _migrate(conn)
            await self.leases.start()
            await self.listener.start()
        except (*OUTAGES, asyncpg.PostgresError) as exc:
            await pool.close()
            raise StoreError(f"cannot open the PostgreSQL session store: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Stop renewing leases and listening, then close the pool; it waits for the statements
        under way (appends already called)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await self.leases.stop()
            await self.listener.stop()
            await pool.close()

    def take_turn(self, session_key: str) -> AbstractAsyncContextManager[SessionTurn]:
        """Queue behind this process's runs on ``session_key``, then take the session's lease
        in the database: the turn is held against every process until the block exits.

        Raises (on entering):
            SessionBusy: the session stayed held past ``wait_s``.
            StoreError: the database cannot be reached.
            RuntimeError: the store is not open.
        """
        pool = self._connection()
        deadline = asyncio.get_running_loop().time() + self.wait_s
        return self._leased_turn(pool, session_key, deadline)

    @asynccontextmanager
    async def _leased_turn(self, pool: Any, session_key: str, deadline: float) -> AsyncIterator[SessionTurn]:
        # This frame keeps the local lock referenced until the block exits.
        lock = self.lock(session_key)
        await acquire_until(lock, session_key, deadline)
        try:
            async with self.leases.hold(pool, session_key, deadline) as lease:
                yield _LeasedTurn(self, lease)
        finally:
            lock.release()

    async def load(self, session_key: str, *, limit: int | None = None) -> list[Turn]:
        """The session's newest ``limit`` turns (all when ``None``), oldest first; empty for a
        new session. One indexed query, however long the session.

        Raises:
            StoreError: the database could not be read.
        """
        pool = self._connection()
        try:
            rows = await pool.fetch(_LOAD_TAIL, session_key, limit)
        except OUTAGES as exc:
            raise StoreError(f"cannot load a session: {exc}") from exc
        rows.reverse()
        return [
            Turn(row[0], row[1], tool_calls=decode_calls(row[2]), tool_call_id=row[3])
            for row in rows
        ]

    async def append(self, session_key: str, turns: Sequence[Turn]) -> None:
        """Append ``turns`` to the session in one transaction, committed when this returns.

        Concurrent appends to one session, from any process, take turns (an advisory lock on
        the key): each one's turns are stored together, in commit order. This append holds
        no lease; a run appends through its turn (:meth:`take_turn`), which is fenced.

        Raises:
            StoreError: the turns could not be stored; nothing of them was.
        """
        await self._append(session_key, turns, None)

    async def append_fenced(self, lease: Lease, turns: Sequence[Turn], *, last: bool = False) -> None:
        """Append ``turns`` as the holder of ``lease``, in one statement that checks the lease;
        ``last``: release the lease in it too (the run writes nothing more).

        Raises:
            LeaseLost: another run has taken the session; nothing was stored.
            StoreError: the turns could not be stored; nothing of them was.
        """
        if last:
            await self.leases.stop_renewing(lease)
        await self._append(lease.session_key, turns, lease, last=last)

    async def _append(
        self, session_key: str, turns: Sequence[Turn], lease: Lease | None, *, last: bool = False
    ) -> None:
        pool = self._connection()
        if not turns:
            return
        columns = (
            [turn.role for turn in turns],
            [turn.content for turn in turns],
            [encode_calls(turn.tool_calls) for turn in turns],
            [turn.tool_call_id for turn in turns],
        )
        try:
            if lease is None:
                await pool.execute(_APPEND, _SESSION_LOCK_CLASS, session_key, *columns)
                return
            statement = _APPEND_RELEASING if last else _APPEND_FENCED
            token = await pool.fetchval(statement, _SESSION_LOCK_CLASS, session_key, *columns, lease.token)
        except OUTAGES as exc:
            raise StoreError(f"cannot append to a session: {exc}") from exc
        check_token(lease, token)
        lease.released = last

    @property
    def pool(self) -> Any:
        """The open :class:`asyncpg.Pool`, for the gateway's other shared state (stored
        completions, the auth limiter's). Raises :class:`RuntimeError` before :meth:`open`."""
        return self._connection()

    def _connection(self) -> Any:
        if self._pool is None:
            raise RuntimeError(_NOT_OPEN)
        return self._pool


class _LeasedTurn:
    """A run's turn under a lease: reads go straight to the store, appends are fenced."""

    def __init__(self, store: PostgresStore, lease: Lease) -> None:
        self._store = store
        self._lease = lease

    @property
    def session_key(self) -> str:
        """The session this turn is on."""
        return self._lease.session_key

    @property
    def token(self) -> int:
        """The lease's fencing token: greater than that of every earlier turn on the session."""
        return self._lease.token

    async def load(self, *, limit: int | None = None) -> list[Turn]:
        """The session's newest ``limit`` turns, oldest first."""
        return await self._store.load(self._lease.session_key, limit=limit)

    async def append(self, turns: Sequence[Turn], *, last: bool = False) -> None:
        """Append ``turns`` in one statement, if this run still holds the session's lease;
        ``last``: the same statement releases the lease, and the turn can write no more.

        Raises:
            LeaseLost: the lease was lost; nothing was stored.
            StoreError: the turns could not be stored; nothing of them was.
            RuntimeError: the turn's last append was made already.
        """
        if self._lease.released:
            raise RuntimeError("this turn made its last append already; its lease is released")
        await self._store.append_fenced(self._lease, turns, last=last)
