"""The SQLite session store: transcripts, durability and per-session locks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pathlib
import sqlite3
import threading
from collections.abc import AsyncIterator

import pytest

from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference import SessionStore, Turn


def _raw_rows(path: pathlib.Path) -> list[tuple[str, str, str]]:
    # A second, independent connection: sees only what was committed.
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT session_key, role, content FROM turns ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_new_session_is_empty(store: SessionStore) -> None:
    """A session nobody wrote to loads as an empty transcript."""
    assert await store.load("agent:main:openai:new") == []


async def test_append_then_load_keeps_order(store: SessionStore) -> None:
    """Appended turns load back oldest first, across several appends."""
    await store.append("s", [Turn("user", "one"), Turn("assistant", "two")])
    await store.append("s", [Turn("user", "three"), Turn("assistant", "four")])
    assert await store.load("s") == [
        Turn("user", "one"),
        Turn("assistant", "two"),
        Turn("user", "three"),
        Turn("assistant", "four"),
    ]


async def test_sessions_are_separate(store: SessionStore) -> None:
    """Turns appended to one session key never show up in another."""
    await store.append("a", [Turn("user", "for a")])
    await store.append("b", [Turn("user", "for b")])
    assert await store.load("a") == [Turn("user", "for a")]
    assert await store.load("b") == [Turn("user", "for b")]


async def test_transcript_survives_close_and_reopen(db_path: pathlib.Path) -> None:
    """A transcript written before close() loads from a new store on the same file."""
    first = SessionStore(db_path)
    await first.open()
    await first.append("s", [Turn("user", "hi"), Turn("assistant", "héllo ✓")])
    await first.close()
    second = SessionStore(db_path)
    await second.open()
    try:
        assert await second.load("s") == [Turn("user", "hi"), Turn("assistant", "héllo ✓")]
    finally:
        await second.close()


async def test_append_is_committed_when_it_returns(store: SessionStore, db_path: pathlib.Path) -> None:
    """Once append() returns, another connection already sees the turns."""
    await store.append("s", [Turn("user", "q"), Turn("assistant", "a")])
    rows = await asyncio.to_thread(_raw_rows, db_path)
    assert rows == [("s", "user", "q"), ("s", "assistant", "a")]


async def test_append_nothing_writes_nothing(store: SessionStore, db_path: pathlib.Path) -> None:
    """Appending an empty sequence leaves the database unchanged."""
    await store.append("s", [])
    assert await asyncio.to_thread(_raw_rows, db_path) == []


async def test_open_creates_parent_directories_and_uses_wal(store: SessionStore, db_path: pathlib.Path) -> None:
    """open() creates missing parent directories and puts the database in WAL mode."""
    assert db_path.is_file()

    def journal_mode() -> str:
        conn = sqlite3.connect(db_path)
        try:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        finally:
            conn.close()

    assert await asyncio.to_thread(journal_mode) == "wal"


async def test_open_twice_is_harmless(store: SessionStore) -> None:
    """A second open() keeps the store usable."""
    await store.open()
    await store.append("s", [Turn("user", "x")])
    assert await store.load("s") == [Turn("user", "x")]


async def test_newer_schema_is_refused(db_path: pathlib.Path) -> None:
    """A database written by a newer schema version is not opened."""

    def make_newer() -> None:
        db_path.parent.mkdir(parents=True)
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA user_version=99")
        conn.close()

    await asyncio.to_thread(make_newer)
    session_store = SessionStore(db_path)
    with pytest.raises(RuntimeError, match="schema version 99"):
        await session_store.open()


async def test_use_before_open_raises(db_path: pathlib.Path) -> None:
    """load() and append() before open() raise a RuntimeError saying what to do."""
    session_store = SessionStore(db_path)
    with pytest.raises(RuntimeError, match=r"SessionStore.open\(\) must be awaited"):
        await session_store.load("s")
    with pytest.raises(RuntimeError, match=r"SessionStore.open\(\) must be awaited"):
        await session_store.append("s", [Turn("user", "x")])


def test_turn_rejects_unknown_role() -> None:
    """A Turn's role is 'user' or 'assistant'."""
    with pytest.raises(ValueError, match="'role' must be in"):
        Turn("system", "nope")


async def test_lock_is_shared_per_key(store: SessionStore) -> None:
    """The same key gives the same lock while it is referenced; another key gives another."""
    lock = store.lock("a")
    assert store.lock("a") is lock
    assert store.lock("b") is not lock


async def test_idle_locks_are_dropped(store: SessionStore) -> None:
    """Once no run holds or awaits a session lock, the store forgets it."""
    async with store.lock("a"):
        assert store.lock_count == 1
    lock = store.lock("b")
    async with lock:
        pass
    del lock
    gc.collect()
    assert store.lock_count == 0


async def test_lock_serializes_runs_on_one_key(store: SessionStore) -> None:
    """A second holder of a key's lock starts only after the first releases it; other keys run freely."""
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def first() -> None:
        async with store.lock("s"):
            order.append("first start")
            first_in.set()
            await release_first.wait()
            order.append("first end")

    async def second() -> None:
        async with store.lock("s"):
            order.append("second start")

    async def other_key() -> None:
        async with store.lock("t"):
            order.append("other key")

    task1 = asyncio.create_task(first())
    await first_in.wait()
    task2 = asyncio.create_task(second())
    await asyncio.wait_for(other_key(), 1)
    await asyncio.sleep(0.05)
    assert order == ["first start", "other key"]
    release_first.set()
    await asyncio.wait_for(asyncio.gather(task1, task2), 1)
    assert order == ["first start", "other key", "first end", "second start"]


async def test_database_work_runs_off_the_event_loop(store: SessionStore) -> None:
    """While SQLite is busy in a worker thread, the event loop keeps running other tasks."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        await store.append("s", [Turn("user", "x" * 1_000_000)] * 20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert ticks > 1


@pytest.mark.parametrize(("fsync", "level"), [(True, 2), (False, 1)], ids=["full", "normal"])
async def test_fsync_setting_picks_the_sync_level(db_path: pathlib.Path, fsync: bool, level: int) -> None:
    """fsync=True syncs every commit (synchronous=FULL, 2); False syncs at checkpoints (NORMAL, 1)."""
    store = SessionStore(db_path, fsync=fsync)
    await store.open()
    try:
        conn = store._connection().write_conn  # the level is per connection: read the writer's
        assert conn.execute("PRAGMA synchronous").fetchone() == (level,)
        await store.append("k", [Turn("user", "u"), Turn("assistant", "a")])
        assert await store.load("k") == [Turn("user", "u"), Turn("assistant", "a")]
    finally:
        await store.close()


def test_session_store_fsync_config_key() -> None:
    """gateway.sessionStore.fsync reads as GatewayConfig.session_store.fsync, false by default."""
    off = GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}}, env={})
    assert off.session_store.fsync is False
    on = GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}, "sessionStore": {"fsync": True}}}, env={})
    assert on.session_store.fsync is True


# --- the writer thread, group commit and checkpoints ----------------------------------------


def _wal_commits(db_path: pathlib.Path) -> int:
    """How many transactions the WAL file records: its frames that end a commit.

    A WAL frame's header holds, in bytes 4-8, the database size after the commit it ends, or 0
    for a frame in the middle of one; bytes 8-16 repeat the WAL header's salts while the frame
    belongs to the current WAL (see https://sqlite.org/fileformat.html#the_write_ahead_log).
    """
    data = db_path.with_name(db_path.name + "-wal").read_bytes()
    page_size = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    commits = 0
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        header = data[offset : offset + 24]
        if header[8:16] != salts:
            break
        if int.from_bytes(header[4:8], "big"):
            commits += 1
    return commits


@contextlib.asynccontextmanager
async def _write_lock_held(db_path: pathlib.Path) -> AsyncIterator[None]:
    """Hold the database's write lock from another connection: the store's writer waits at BEGIN.

    Appends called meanwhile queue up behind the writer; they are committed once this exits.
    """
    conn = await asyncio.to_thread(sqlite3.connect, db_path, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(conn.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            await asyncio.to_thread(conn.execute, "ROLLBACK")
    finally:
        await asyncio.to_thread(conn.close)


def _exchange(index: int) -> list[Turn]:
    return [Turn("user", f"q{index}"), Turn("assistant", f"a{index}")]


def _bad_turn() -> Turn:
    # Turn's validator refuses this role; the CHECK constraint on the table must too.
    turn = Turn("user", "not stored")
    object.__setattr__(turn, "role", "system")
    return turn


async def test_concurrent_appends_share_one_commit(store: SessionStore, db_path: pathlib.Path) -> None:
    """64 appends queued while the writer is busy commit in at most two transactions, not 64.

    Each session still gets all its turns, in the order its appends were called.
    """
    before = await asyncio.to_thread(_wal_commits, db_path)
    async with _write_lock_held(db_path):
        tasks = [asyncio.create_task(store.append(f"s{index % 8}", _exchange(index))) for index in range(64)]
        await asyncio.sleep(0)  # each task runs up to awaiting its commit: all 64 are queued
        assert not any(task.done() for task in tasks)
    await asyncio.gather(*tasks)
    # The writer may have taken the first append alone before it found the lock held; all the
    # others queued behind that one and share the next transaction.
    assert 1 <= await asyncio.to_thread(_wal_commits, db_path) - before <= 2
    for session in range(8):
        expected = [turn for index in range(session, 64, 8) for turn in _exchange(index)]
        assert await store.load(f"s{session}") == expected


async def test_bad_append_fails_alone(store: SessionStore, db_path: pathlib.Path) -> None:
    """An append the database refuses raises for its caller only; the appends batched with it are stored."""
    async with _write_lock_held(db_path):
        tasks = [
            asyncio.create_task(store.append("s", _exchange(1))),
            asyncio.create_task(store.append("bad", [Turn("user", "half a run"), _bad_turn()])),
            asyncio.create_task(store.append("s", _exchange(2))),
            asyncio.create_task(store.append("t", _exchange(3))),
        ]
        # All four are queued; at most the first went ahead alone, so the bad one shares a batch.
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert await store.load("s") == _exchange(1) + _exchange(2)
    assert await store.load("bad") == []  # not even the valid first turn: never half a run
    assert await store.load("t") == _exchange(3)
    await store.append("s", _exchange(4))  # the writer carries on
    assert (await store.load("s"))[-2:] == _exchange(4)


async def test_cancelled_append_is_still_committed(store: SessionStore, db_path: pathlib.Path) -> None:
    """Cancelling an append's caller drops only the answer: the turns are committed, the writer goes on."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with _write_lock_held(db_path):
            cancelled = asyncio.create_task(store.append("s", _exchange(1)))
            batched = asyncio.create_task(store.append("t", _exchange(2)))
            await asyncio.sleep(0)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        await batched
        await store.append("s", _exchange(3))
    finally:
        loop.set_exception_handler(None)
    assert await store.load("s") == _exchange(1) + _exchange(3)
    assert await store.load("t") == _exchange(2)
    assert errors == []  # e.g. no InvalidStateError from answering the cancelled append


async def test_close_commits_and_answers_pending_appends(db_path: pathlib.Path) -> None:
    """close() returns only after every append called before it is committed and answered."""
    session_store = SessionStore(db_path)
    await session_store.open()
    async with _write_lock_held(db_path):
        tasks = [asyncio.create_task(session_store.append(f"s{index}", _exchange(index))) for index in range(10)]
        await asyncio.sleep(0)
        closing = asyncio.create_task(session_store.close())
        await asyncio.sleep(0)
        assert not closing.done()
    await closing
    assert all(task.done() and task.result() is None for task in tasks)
    rows = await asyncio.to_thread(_raw_rows, db_path)
    assert sorted(rows) == sorted((f"s{i}", turn.role, turn.content) for i in range(10) for turn in _exchange(i))


async def test_store_is_unusable_after_close(db_path: pathlib.Path) -> None:
    """After close(), append() and load() raise the RuntimeError of a store never opened; close() again is harmless."""
    session_store = SessionStore(db_path)
    await session_store.open()
    await session_store.close()
    with pytest.raises(RuntimeError, match=r"SessionStore.open\(\) must be awaited"):
        await session_store.append("s", _exchange(1))
    with pytest.raises(RuntimeError, match=r"SessionStore.open\(\) must be awaited"):
        await session_store.load("s")
    await session_store.close()


async def test_threads_end_with_close(db_path: pathlib.Path) -> None:
    """The store's threads exist while it is open and are gone once close() returns."""
    before = set(threading.enumerate())
    session_store = SessionStore(db_path)
    await session_store.open()
    # The writer and the checkpointer (asyncio.to_thread's workers belong to the loop).
    started = {thread for thread in set(threading.enumerate()) - before if thread.name.startswith("session-")}
    assert len(started) == 2 and all(thread.daemon for thread in started)
    await session_store.append("s", _exchange(1))
    await session_store.close()
    assert not any(thread.is_alive() for thread in started)


async def test_wal_stays_bounded_and_is_emptied_at_close(db_path: pathlib.Path) -> None:
    """After 3,000 appends the WAL is a fraction of what they wrote (checkpoints reuse it); close() empties it."""
    session_store = SessionStore(db_path)
    await session_store.open()
    wal = db_path.with_name(db_path.name + "-wal")
    content = "x" * 3000
    try:
        for wave in range(300):
            await asyncio.gather(
                *(session_store.append(f"s{index}", [Turn("user", content), Turn("assistant", content)])
                  for index in range(wave * 10, wave * 10 + 10))
            )
        # Without checkpoints the WAL would hold every page written: over 3,000 x 6,000 bytes.
        size = (await asyncio.to_thread(wal.stat)).st_size
        assert size < 16 * 2**20
    finally:
        await session_store.close()
    assert not await asyncio.to_thread(wal.exists) or (await asyncio.to_thread(wal.stat)).st_size == 0
