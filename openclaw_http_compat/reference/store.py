"""Session transcripts, persisted in SQLite: the default engine of :class:`~.storage.TranscriptStore`.

A session is the conversation one ``session_key`` names. Its transcript is an ordered list of
:class:`~.transcript.Turn` rows (user messages, assistant replies with the tools they called,
tool results); a completed run appends its new turns and the assistant's reply in one
transaction, so a session never holds half a run. A run with a context budget loads only the
transcript's newest turns (:meth:`SQLiteStore.load` with ``limit``), one indexed query.

The schema is versioned (``PRAGMA user_version``); opening an older database migrates it in
one transaction, and a database newer than this code is refused.

SQLite is blocking, so no database call runs on the event loop. Three connections share the
file, each used by one thread at a time:

* **Writes** go to a dedicated writer thread. :meth:`SQLiteStore.append` queues its rows with
  a future and awaits it; the writer takes everything queued, writes it in one transaction
  (*group commit*: one commit, and with ``fsync`` one sync, for all the runs that finished
  meanwhile) and resolves the futures once it is committed. At concurrency 1 a batch is one
  append and nothing waits for a batch to fill; under load, runs share commits instead of
  queueing for one each (64 concurrent appends: ~20,000/s instead of ~1,800/s with fsync).
* **Checkpoints** copy the WAL back into the database file, in a checkpointer thread with a
  connection of its own. The writer's auto-checkpoint is off: SQLite would run it inside the
  COMMIT that crosses the threshold, adding 10-20 ms to that run. ``PASSIVE`` checkpoints
  neither take nor wait for the write lock, so commits go on meanwhile. The WAL only starts
  over from its beginning when a transaction begins with every frame copied, which steady
  commits rarely allow; so once per cycle the writer itself copies the few frames left,
  between two batches, after answering the last one (see ``_Database._restart_wal``).
* **Reads** use a third connection through :func:`asyncio.to_thread`, serialised by a lock of
  their own: a WAL reader sees the last commit without waiting for the writer. Loads through
  the writer's queue would wait for the batch ahead of them; measured with 64 concurrent
  appenders, a load takes 0.4-0.5 ms (p50) this way, while a batch commit alone takes
  0.8-3.5 ms (p50, fsync off and on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import pathlib
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Final

import attrs

from .storage import InProcessTurns, decode_calls, encode_calls
from .transcript import ROLES, Turn

__all__ = ("ROLES", "SCHEMA_VERSION", "SQLiteStore", "SessionStore", "Turn")

log = logging.getLogger(__name__)

# Each entry migrates the schema from version 2 + i to 3 + i, in the transaction that records
# it (versions 1 and 2 predate this list: see _migrate). Append; never renumber.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # Version 3: chat completions created with `store: true`, per owner (see .sqlite_completions).
    # seq orders completions created in the same second; metadata and messages are JSON text.
    (
        """
        CREATE TABLE stored_completions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            created INTEGER NOT NULL,
            model TEXT NOT NULL,
            metadata TEXT NOT NULL,
            completion TEXT NOT NULL,
            messages TEXT NOT NULL
        )
        """,
        "CREATE INDEX stored_completions_by_owner ON stored_completions (owner, created, seq)",
        "CREATE INDEX stored_completions_by_created ON stored_completions (created)",
    ),
    # Version 4: one row per Idempotency-Key (see .sqlite_records), named by the key's digest
    # (never the key); a claim's owner token fences it; expires_at is the lease, then the TTL.
    (
        """
        CREATE TABLE IF NOT EXISTS idempotency (
            key_digest TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            owner TEXT NOT NULL,
            status INTEGER,
            stream INTEGER NOT NULL DEFAULT 0,
            headers TEXT,
            body BLOB,
            expires_at REAL NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at)",
    ),
)
#: The session schema this code writes. Version 1: user and assistant text turns. Version 2:
#: tool turns, and each turn's tool calls (JSON) and the call it answers. Later versions: one
#: per entry of ``_MIGRATIONS``.
SCHEMA_VERSION: Final = 2 + len(_MIGRATIONS)
# One table of turns, ordered by their id within a session. Statements run one by one (no
# executescript, which would commit the migration's transaction half-way).
_TABLE: Final = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_key TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    content TEXT NOT NULL,
    tool_calls TEXT,
    tool_call_id TEXT,
    created_at REAL NOT NULL
)
"""
_INDEX: Final = "CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_key, id)"
# Version 1 rows are user and assistant text turns: they stay as they are, with no calls.
_COPY_V1: Final = """
INSERT INTO turns_v2 (id, session_key, role, content, created_at)
SELECT id, session_key, role, content, created_at FROM turns ORDER BY id
"""
_INSERT: Final = (
    "INSERT INTO turns (session_key, role, content, tool_calls, tool_call_id, created_at) VALUES (?, ?, ?, ?, ?, ?)"
)
# The newest ``limit`` turns, newest first (the caller reverses them): the index's tail.
_LOAD_TAIL: Final = (
    "SELECT role, content, tool_calls, tool_call_id FROM turns WHERE session_key = ? ORDER BY id DESC LIMIT ?"
)
_NOT_OPEN: Final = "SessionStore.open() must be awaited before using the store."

# The writer wakes the checkpointer about every this many WAL pages: SQLite's own
# wal_autocheckpoint default, so the WAL stays about the size it was (~4 MB).
_CHECKPOINT_PAGES: Final = 1000
# A PASSIVE checkpoint copies the frames committed before it began; those committed during it
# wait for the next round. Each round is shorter than the last, and a pause between commits
# lets one find nothing new; a few rounds leave few frames for the writer's restart.
_CHECKPOINT_ROUNDS: Final = 4
# How long the writer's RESTART checkpoint may wait for readers of old frames: our loads take
# well under 1 ms; a reader in another process may take longer, and then the next cycle
# restarts the WAL instead.
_RESTART_WAIT_MS: Final = 20
_BUSY_TIMEOUT_MS: Final = 5000
# Between two tries to switch a new file to WAL while another process does (_enable_wal).
_WAL_RETRY_S: Final = 0.005

_Row = tuple[str, str, str, str | None, str | None, float]


def _row(session_key: str, turn: Turn, created_at: float) -> _Row:
    return (session_key, turn.role, turn.content, encode_calls(turn.tool_calls), turn.tool_call_id, created_at)


def _migrate(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`, in one transaction; refuse a newer one.

    Another process opening the same file at once waits for the write lock, then finds the
    work done.
    """
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return  # the usual case: no write, no write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} has session schema version {version}; this gateway knows {SCHEMA_VERSION}.")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(turns)")}
        # Version 1 set user_version after creating its table, outside the transaction: a file
        # can hold its table at version 0. The columns tell what the file holds.
        if not columns:
            conn.execute(_TABLE.format(name="turns"))
        elif "tool_calls" not in columns:
            _migrate_v1(conn)
        conn.execute(_INDEX)
        for statements in _MIGRATIONS[max(version, 2) - 2 :]:
            for statement in statements:
                conn.execute(statement)
        if columns:
            log.info("%s: session schema migrated from version %d to %d", path, version, SCHEMA_VERSION)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _migrate_v1(conn: sqlite3.Connection) -> None:
    # SQLite cannot change a CHECK constraint in place: the table is rebuilt (its documented
    # "make other kinds of table schema changes" procedure), keeping every id and the
    # AUTOINCREMENT counter, so ids are never reused.
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'turns'").fetchone()
    conn.execute(_TABLE.format(name="turns_v2"))
    conn.execute(_COPY_V1)
    conn.execute("DROP TABLE turns")
    conn.execute("ALTER TABLE turns_v2 RENAME TO turns")
    if row is not None:
        conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'turns'", (row[0],))


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch ``conn``'s database to WAL, waiting for another process doing the same.

    Switching a new file takes an exclusive lock. When two connections (two processes starting
    at once) both hold the shared lock and both want it, SQLite fails one at once with "database
    is locked", without calling the busy handler (waiting would deadlock): that one tries again
    after the other has switched, for up to the busy timeout. Runs in the opening thread.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(_WAL_RETRY_S)


@attrs.frozen
class _Append:
    """One append() call waiting for the writer: its rows and the future its caller awaits."""

    rows: list[_Row]
    future: asyncio.Future[None]


def _settle(results: list[tuple[asyncio.Future[None], Exception | None]]) -> None:
    # Runs on the event loop. A future is already done when its append was cancelled (the run
    # was aborted): its rows are committed all the same, and nobody waits for the outcome.
    for future, exc in results:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


class _Database:
    """The open database: its three connections and two threads. Blocking; see the module docs."""

    def __init__(self, path: pathlib.Path, *, fsync: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._queue: queue.SimpleQueue[_Append | None] = queue.SimpleQueue()
        self._read_lock = threading.Lock()
        self._checkpoint_due = threading.Event()
        self._stopping = False
        # Set by the checkpointer, cleared by the writer once it has restarted the WAL.
        self._restart_due = False
        self._pages_since_checkpoint = 0
        connections: list[sqlite3.Connection] = []
        try:
            self.write_conn = self._connect(path, fsync, connections)
            _migrate(self.write_conn, path)
            # Checkpoints are the checkpointer's job: see the module docs.
            self.write_conn.execute("PRAGMA wal_autocheckpoint=0")
            self._page_size = int(self.write_conn.execute("PRAGMA page_size").fetchone()[0])
            self.read_conn = self._connect(path, fsync, connections)
            self.read_conn.execute("PRAGMA query_only=1")
            self.checkpoint_conn = self._connect(path, fsync, connections)
        except BaseException:
            for conn in connections:
                conn.close()
            raise
        # Daemon threads, so a store nobody closed cannot keep the interpreter alive; close()
        # joins both, so they never outlive it.
        self._writer = threading.Thread(target=self._write_loop, name=f"session-writer {path.name}", daemon=True)
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name=f"session-checkpointer {path.name}", daemon=True
        )
        self._writer.start()
        self._checkpointer.start()

    @staticmethod
    def _connect(path: pathlib.Path, fsync: bool, connections: list[sqlite3.Connection]) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so transactions are exactly the ones we BEGIN.
        # check_same_thread=False: opened here, used by the writer, checkpointer or a worker.
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        connections.append(conn)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        _enable_wal(conn)
        # FULL syncs every commit to disk: a completed run survives power loss. NORMAL
        # (fsync off) syncs at checkpoints only: a commit still survives the process
        # being killed, but the last ones may be lost if the machine loses power.
        conn.execute("PRAGMA synchronous=FULL" if fsync else "PRAGMA synchronous=NORMAL")
        return conn

    def submit(self, item: _Append) -> None:
        """Queue ``item`` for the writer; its future resolves once the rows are committed."""
        self._queue.put(item)

    def stop(self) -> None:
        """Tell the writer to stop after what is queued now. Call on the loop, before :meth:`close`."""
        self._queue.put(None)

    def close(self) -> None:
        """Wait for the writer to commit what was queued, stop the threads, close the database."""
        self._writer.join()
        self._stopping = True
        self._checkpoint_due.set()
        self._checkpointer.join()
        try:
            # Nothing writes any more: copy the whole WAL back and leave it empty.
            self.checkpoint_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.warning("final checkpoint of %s failed", self._path, exc_info=True)
        finally:
            self.checkpoint_conn.close()
            self.write_conn.close()
            with self._read_lock:  # a load in progress finishes first
                self.read_conn.close()

    def load(self, session_key: str, limit: int | None) -> list[Turn]:
        """The session's newest ``limit`` turns (all when ``None``), oldest first. Blocking:
        call in a worker thread."""
        with self._read_lock:
            # SQLite reads a negative LIMIT as no limit.
            rows = self.read_conn.execute(_LOAD_TAIL, (session_key, -1 if limit is None else limit)).fetchall()
        rows.reverse()
        return [
            Turn(role, content, tool_calls=decode_calls(calls), tool_call_id=call_id)
            for role, content, calls, call_id in rows
        ]

    # --- the writer thread -----------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Whatever queued up while the last batch was being committed goes in this one.
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            items = [item for item in batch if item is not None]
            if items:
                try:
                    self._write_batch(items)
                except Exception as exc:  # noqa: BLE001 - a bug must fail these appends, not the writer
                    log.exception("session writer failed")
                    # Items already answered keep their answer: _settle skips done futures.
                    self._resolve([(item, exc) for item in items])
                if self._restart_due:
                    self._restart_wal()
            # stop() queues None after the last append it lets in, so nothing follows it.
            if len(items) < len(batch):
                return

    def _write_batch(self, items: list[_Append]) -> None:
        conn = self.write_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            # No item was written: all of them would fail alike (e.g. another process held the
            # write lock past busy_timeout), so they do, without a retry each.
            self._resolve([(item, exc) for item in items])
            return
        try:
            for item in items:
                conn.executemany(_INSERT, item.rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if len(items) == 1:
                self._resolve([(items[0], exc)])
                return
            # One bad item must not fail the runs that shared its batch: each on its own, in
            # the order they were queued, so a session's rows stay in call order.
            for item in items:
                self._write_batch([item])
            return
        except BaseException:
            self._rollback()
            raise
        self._count_pages(items)
        self._resolve([(item, None) for item in items])

    def _restart_wal(self) -> None:
        # The WAL only starts over from its beginning (instead of growing) when a transaction
        # begins while every frame is copied. Under a steady stream of commits the
        # checkpointer's rounds rarely manage that (a transaction under way while the last
        # round finds nothing new still appends), so the writer finishes the job between two
        # batches, when nothing is being written: this checkpoint copies every frame left
        # (few: the rounds copied the rest). RESTART, unlike PASSIVE, also waits for loads
        # still reading old frames, so the next transaction surely starts the WAL over; without
        # this, the WAL of a busy store grows without bound. It runs after the last batch was
        # answered: an append waits for it only if it was queued meanwhile.
        conn = self.write_conn
        try:
            conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
            try:
                self._checkpoint(conn, "RESTART")
            finally:
                conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        except sqlite3.Error:
            log.warning("cannot change busy_timeout on %s", self._path, exc_info=True)
        self._pages_since_checkpoint = 0
        # Cleared only now: the checkpointer starts no round while it is set, so the two
        # never checkpoint at once (the loser would find the lock taken and skip its turn).
        self._restart_due = False

    def _rollback(self) -> None:
        # After some errors (a full disk, an I/O error) SQLite has already rolled back.
        if self.write_conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.write_conn.execute("ROLLBACK")

    def _count_pages(self, items: list[_Append]) -> None:
        # A generous estimate of the WAL pages this commit wrote: the content, an index page
        # per item, the table's last page and sqlite_sequence's (one small run: 3 estimated,
        # 3.1 measured; 64 runs whose sessions share index pages: 70 estimated, ~10 written).
        # SQLite cannot tell us (the sqlite3 module has no wal_hook), and the -wal file's size
        # cannot either: a restarted WAL keeps its size and is overwritten from the start.
        # Overcounting only makes checkpoints more frequent; undercounting would let the WAL
        # grow past its ~4 MB.
        size = sum(len(key) + len(content) + len(calls or "") for item in items for key, _, content, calls, _, _ in item.rows)
        self._pages_since_checkpoint += size // self._page_size + len(items) + 2
        if self._pages_since_checkpoint >= _CHECKPOINT_PAGES:
            self._pages_since_checkpoint = 0
            self._checkpoint_due.set()

    def _resolve(self, outcomes: list[tuple[_Append, Exception | None]]) -> None:
        # One wake-up per loop for the whole batch, not one per append.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Exception | None]]]
        by_loop = collections.defaultdict(list)
        for item, exc in outcomes:
            by_loop[item.future.get_loop()].append((item.future, exc))
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is left to tell
                loop.call_soon_threadsafe(_settle, results)

    # --- the checkpointer thread -----------------------------------------------------------

    def _checkpoint_loop(self) -> None:
        while True:
            self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            if self._stopping:
                return
            if not self._restart_due:
                self._checkpoint_rounds()
                self._restart_due = True

    def _checkpoint_rounds(self) -> None:
        """PASSIVE checkpoints, until one finds no frame committed since the one before."""
        previous = -1
        for _ in range(_CHECKPOINT_ROUNDS):
            wal_frames = self._checkpoint(self.checkpoint_conn, "PASSIVE")
            # A round with nothing new to copy is cheap: it neither copies nor syncs.
            if wal_frames is None or wal_frames <= previous:
                return
            previous = wal_frames

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> int | None:
        """A checkpoint; the WAL's length in frames when it began, or None if it could not run."""
        try:
            busy, wal_frames, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            log.warning("checkpoint of %s failed", self._path, exc_info=True)
            return None
        # busy: another connection held a lock it needed. -1: the database is not in WAL mode.
        if busy or wal_frames < 0:
            return None
        return int(wal_frames)


class SQLiteStore(InProcessTurns):
    """Session transcripts in one SQLite database file, plus a lock per session.

    The default :class:`~.storage.TranscriptStore` engine; runs take turns on a session within
    this process. Call :meth:`open` before use and :meth:`close` at shutdown. :meth:`lock` and
    :meth:`take_turn` work without opening the database.

    Args:
        path: the database file; missing parent directories are created on :meth:`open`.
        fsync: sync every commit to disk (``synchronous=FULL``); otherwise only at
            checkpoints (``NORMAL``), which survives a killed process but not a power loss.
        wait_s: how long a run waits for another run on its session before
            :class:`~.storage.SessionBusy` (``gateway.sessionStore.waitMs``).
    """

    def __init__(self, path: pathlib.Path, *, fsync: bool = True, wait_s: float = 120.0) -> None:
        self.path = path
        self.fsync = fsync
        super().__init__(wait_s=wait_s)
        self._db: _Database | None = None
        # Serialises open() and close(), so neither sees the other half done.
        self._lifecycle = asyncio.Lock()

    async def open(self) -> None:
        """Open (or create) the database and its schema. Opening twice is a no-op."""
        async with self._lifecycle:
            if self._db is None:
                self._db = await asyncio.to_thread(_Database, self.path, fsync=self.fsync)

    async def close(self) -> None:
        """Close the database. Appends already called are committed, and answered, first."""
        async with self._lifecycle:
            db, self._db = self._db, None
            if db is None:
                return
            # Queued on the loop, in the same step that stops new appends: nothing can follow it.
            db.stop()
            await asyncio.to_thread(db.close)

    async def load(self, session_key: str, *, limit: int | None = None) -> list[Turn]:
        """The session's transcript, oldest first; empty for a new session.

        Args:
            limit: load only the newest this many turns (a bounded tail: the index's last
                entries, however long the session); ``None``: all of them.
        """
        return await asyncio.to_thread(self._connection().load, session_key, limit)

    async def append(self, session_key: str, turns: Sequence[Turn]) -> None:
        """Append ``turns`` to the session in one transaction, committed when this returns.

        Appends from concurrent runs may share that transaction; a session's turns are stored
        in the order its appends were called.

        Raises:
            sqlite3.Error: the turns could not be stored; nothing of them was.
        """
        db = self._connection()
        now = time.time()
        rows = [_row(session_key, turn, now) for turn in turns]
        if not rows:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        db.submit(_Append(rows, future))
        # If this is cancelled, the rows are committed all the same (as a thread already
        # running a blocking write would): only the answer is dropped.
        await future

    def _connection(self) -> _Database:
        if self._db is None:
            raise RuntimeError(_NOT_OPEN)
        return self._db


#: The SQLite engine's name before the store contract existed; kept for existing users.
SessionStore = SQLiteStore
