"""The SQLite session store: transcripts, durability and per-session locks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pathlib
import sqlite3

import pytest

from openclaw_http_compat import GatewayConfig
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
        conn = store._conn  # the level is per connection: read the store's own
        assert conn is not None
        assert conn.execute("PRAGMA synchronous").fetchone() == (level,)
        await store.append("k", [Turn("user", "u"), Turn("assistant", "a")])
        assert await store.load("k") == [Turn("user", "u"), Turn("assistant", "a")]
    finally:
        await store.close()


def test_session_store_fsync_config_key() -> None:
    """gateway.sessionStore.fsync reads as GatewayConfig.session_fsync, true by default."""
    assert GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}}, env={}).session_fsync is True
    off = GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}, "sessionStore": {"fsync": False}}}, env={})
    assert off.session_fsync is False
