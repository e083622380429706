"""The session store contract the runtime relies on, and the choice of its engine.

Two engines implement :class:`TranscriptStore`: the embedded SQLite store
(:class:`~.store.SQLiteStore`, the default, in ``gateway.stateDir``) and a PostgreSQL store
(:class:`~.pgstore.PostgresStore`, selected by ``gateway.sessionStore.url``) that several
gateway processes can share. The runtime sees only the contract.

A run takes its turn on a session through :meth:`TranscriptStore.take_turn` and reads and
writes the transcript through the :class:`SessionTurn` it gets. Both engines queue the runs of
one process on an :class:`asyncio.Lock` per key; the PostgreSQL engine then takes a run lease
on the session in the database (:mod:`.pglease`), so runs take turns across processes too, and
its turn refuses appends once the lease is lost (:class:`LeaseLost`). A run that cannot get its
turn within ``gateway.sessionStore.waitMs`` gets :class:`SessionBusy`.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import sqlite3
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Protocol, cast, runtime_checkable

from openclaw_http_compat import ToolCall
from openclaw_http_compat.errors import ConfigError

from .config import SessionStoreConfig
from .transcript import Turn

__all__ = (
    "INSTALL_POSTGRES",
    "STORE_ERRORS",
    "InProcessTurns",
    "LeaseLost",
    "SessionBusy",
    "SessionTurn",
    "StoreError",
    "StoreSchemaError",
    "TranscriptStore",
    "acquire_until",
    "decode_calls",
    "encode_calls",
    "select_store",
    "unshared_turn",
)

#: What to install for a ``postgresql://`` store URL.
INSTALL_POSTGRES: Final = "pip install 'openclaw-http-compat[postgres]'"


class StoreError(RuntimeError):
    """Raised by a store engine other than SQLite when it cannot read or write a transcript
    (the database is unreachable, a statement failed). Nothing of a failed append is stored."""


class StoreSchemaError(StoreError):
    """Raised by :meth:`TranscriptStore.open` when the database's schema is newer than this code."""


class LeaseLost(StoreError):
    """Raised by :meth:`SessionTurn.append` when the run no longer holds its session's lease:
    it expired (the process stalled or lost the database) and another run took the session.
    Nothing of the refused append is stored."""


class SessionBusy(Exception):
    """Raised by :meth:`TranscriptStore.take_turn` when another run kept the session for
    longer than the store's wait (``gateway.sessionStore.waitMs``).

    Args:
        session_key: the session that stayed busy.
        retry_after_s: when the client may try again, in seconds.
    """

    def __init__(self, session_key: str, retry_after_s: float = 1.0) -> None:
        super().__init__(f"session {session_key!r} is busy with another run")
        self.session_key = session_key
        self.retry_after_s = retry_after_s


#: What :meth:`TranscriptStore.load` and :meth:`TranscriptStore.append` raise when the store
#: fails: the SQLite engine raises :class:`sqlite3.Error` (as it always has), other engines
#: :class:`StoreError`.
STORE_ERRORS: Final[tuple[type[Exception], ...]] = (sqlite3.Error, StoreError)


@runtime_checkable
class SessionTurn(Protocol):
    """A run's turn on one session: read the transcript, append to it, while the turn is held."""

    @property
    def session_key(self) -> str:
        """The session this turn is on."""
        ...

    async def load(self, *, limit: int | None = None) -> list[Turn]:
        """The session's newest ``limit`` turns (all when ``None``), oldest first."""
        ...

    async def append(self, turns: Sequence[Turn], *, last: bool = False) -> None:
        """Append ``turns`` to the session in one transaction, committed when this returns.

        ``last``: nothing more is written in this turn, so the store may end the turn with this
        write (the PostgreSQL store releases the run's lease in the same statement).
        """
        ...


@runtime_checkable
class TranscriptStore(Protocol):
    """Session transcripts, and turn-taking between the runs on one session.

    Call :meth:`open` before use and :meth:`close` at shutdown.
    """

    async def open(self) -> None:
        """Connect, and create or migrate the schema; refuse a schema newer than this code."""
        ...

    async def close(self) -> None:
        """Wait for appends already called, then release every connection."""
        ...

    async def load(self, session_key: str, *, limit: int | None = None) -> list[Turn]:
        """The session's newest ``limit`` turns (all when ``None``), oldest first: one bounded
        query, whatever the session's age. Empty for a new session."""
        ...

    async def append(self, session_key: str, turns: Sequence[Turn]) -> None:
        """Append ``turns`` in one transaction; concurrent appends never interleave their turns."""
        ...

    def take_turn(self, session_key: str) -> AbstractAsyncContextManager[SessionTurn]:
        """Wait until no other run holds ``session_key``, then hold it until the block exits.

        Raises (on entering):
            SessionBusy: the session stayed held for longer than the store's wait.
            StoreError: an engine taking leases in its database could not reach it.
        """
        ...

    @property
    def lock_count(self) -> int:
        """How many sessions are held or awaited by runs in this process."""
        ...


class _Transcripts(Protocol):
    # What _local_turn needs of a store: its load and append.
    async def load(self, session_key: str, *, limit: int | None = None) -> list[Turn]: ...

    async def append(self, session_key: str, turns: Sequence[Turn]) -> None: ...


class _LocalTurn:
    """A turn held with an in-process lock: reads and writes go straight to the store."""

    def __init__(self, store: _Transcripts, session_key: str) -> None:
        self._store = store
        self._session_key = session_key

    @property
    def session_key(self) -> str:
        """The session this turn is on."""
        return self._session_key

    async def load(self, *, limit: int | None = None) -> list[Turn]:
        """The session's newest ``limit`` turns, oldest first."""
        return await self._store.load(self._session_key, limit=limit)

    async def append(self, turns: Sequence[Turn], *, last: bool = False) -> None:
        """Append ``turns`` to the session in one transaction (``last`` changes nothing here:
        the turn ends when its lock is released)."""
        await self._store.append(self._session_key, turns)


class InProcessTurns:
    """Turn-taking within one process, for a store engine to inherit: an :class:`asyncio.Lock`
    per session key, alive only while held or awaited. The engine provides load and append.

    Args:
        wait_s: how long :meth:`take_turn` waits for the session before :class:`SessionBusy`.
    """

    def __init__(self, *, wait_s: float = 120.0) -> None:
        self.wait_s = wait_s
        # A lock lives as long as someone holds or awaits it (their frames reference it);
        # once the last run on a key finishes, the entry vanishes on its own.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

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

    def take_turn(self, session_key: str) -> AbstractAsyncContextManager[SessionTurn]:
        """Hold :meth:`lock` of ``session_key`` for the block; the turn reads and writes this store."""
        # The engine inheriting this provides load and append (TranscriptStore).
        deadline = asyncio.get_running_loop().time() + self.wait_s
        return _local_turn(cast(_Transcripts, self), self.lock(session_key), session_key, deadline)

    @property
    def lock_count(self) -> int:
        """How many session locks are alive in this process (in use or awaited)."""
        return len(self._locks)


async def acquire_until(lock: asyncio.Lock, session_key: str, deadline: float) -> None:
    """Acquire ``lock`` by the loop time ``deadline``, else raise :class:`SessionBusy`."""
    try:
        async with asyncio.timeout_at(deadline):
            await lock.acquire()
    except TimeoutError:
        raise SessionBusy(session_key) from None


@asynccontextmanager
async def _local_turn(
    store: _Transcripts, lock: asyncio.Lock, session_key: str, deadline: float
) -> AsyncIterator[SessionTurn]:
    # This frame keeps the lock referenced until the block exits.
    await acquire_until(lock, session_key, deadline)
    try:
        yield _LocalTurn(store, session_key)
    finally:
        lock.release()


@asynccontextmanager
async def unshared_turn(store: TranscriptStore, session_key: str) -> AsyncIterator[SessionTurn]:
    """A turn on a session key minted for one request, which no other run can name: nothing to
    wait for or to lease (on a shared store, two round trips saved per stateless request)."""
    yield _LocalTurn(store, session_key)


def encode_calls(calls: tuple[ToolCall, ...]) -> str | None:
    """A turn's tool calls as the JSON both engines store; ``None`` for none."""
    if not calls:
        return None
    return json.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls], ensure_ascii=False)


def decode_calls(text: str | None) -> tuple[ToolCall, ...]:
    """The tool calls :func:`encode_calls` stored."""
    if not text:
        return ()
    return tuple(ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in json.loads(text))


def select_store(config: SessionStoreConfig, directory: pathlib.Path, *, file_name: str) -> TranscriptStore:
    """The store ``config`` asks for: PostgreSQL at ``config.url``, else SQLite ``directory / file_name``.

    Raises:
        ConfigError: a PostgreSQL URL is configured but asyncpg is not installed.
    """
    if config.url is None:
        from .store import SQLiteStore

        return SQLiteStore(directory / file_name, fsync=config.fsync, wait_s=config.wait_ms / 1000)
    try:
        from .pgstore import PostgresStore
    except ImportError as exc:
        if exc.name != "asyncpg":
            raise
        raise ConfigError(
            f"gateway.sessionStore.url: a PostgreSQL session store needs asyncpg: {INSTALL_POSTGRES}"
        ) from None
    return PostgresStore(
        config.url, lease_s=config.lease_ms / 1000, wait_s=config.wait_ms / 1000, pool_size=config.pool_size
    )
