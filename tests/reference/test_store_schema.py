"""The session store's schema 2: structured turns, bounded tail loads, and the migration of version 1 files."""

from __future__ import annotations

import logging
import pathlib
import sqlite3

import pytest

from openclaw_http_compat import ToolCall
from openclaw_http_compat.reference import SessionStore, Turn
from openclaw_http_compat.reference.store import SCHEMA_VERSION

# The schema version 1 wrote (commit 6d12adb), verbatim.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_key TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_key, id);
"""

CALLS = (
    ToolCall(id="call_a", name="get_weather", arguments='{"city": "Zürich"}'),
    ToolCall(id="call_b", name="get_time", arguments=""),
)
TOOL_EXCHANGE = [
    Turn("user", "weather and time?"),
    Turn("assistant", "", tool_calls=CALLS),
    Turn("tool", "12°C, rain", tool_call_id="call_a"),
    Turn("tool", "10:00", tool_call_id="call_b"),
    Turn("assistant", "Rainy, 12°C, at ten."),
]


def write_v1_file(path: pathlib.Path, rows: list[tuple[str, str, str]], *, version: int = 1) -> None:
    """A database as version 1 left it: its table and index, ``rows``, and a deleted row so
    the AUTOINCREMENT counter is past the highest id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(V1_SCHEMA)
        conn.executemany(
            "INSERT INTO turns (session_key, role, content, created_at) VALUES (?, ?, ?, ?)",
            [(*row, 1_700_000_000.0 + index) for index, row in enumerate(rows)],
        )
        conn.execute("INSERT INTO turns (session_key, role, content, created_at) VALUES ('gone', 'user', 'x', 0)")
        conn.execute("DELETE FROM turns WHERE session_key = 'gone'")
        conn.execute(f"PRAGMA user_version={version}")
        conn.commit()
    finally:
        conn.close()


def inspect(path: pathlib.Path) -> tuple[int, list[str], list[tuple[object, ...]], int]:
    """user_version, the turns table's columns, its rows (but created_at), and its AUTOINCREMENT counter."""
    conn = sqlite3.connect(path)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(turns)")]
        # Every column but created_at, in table order.
        rows = [row[:-1] for row in conn.execute("SELECT * FROM turns ORDER BY id")]
        (seq,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'turns'").fetchone()
        return version, columns, rows, seq
    finally:
        conn.close()


V1_ROWS = [
    ("agent:main:openai-user:alice", "user", "hello"),
    ("agent:main:openai-user:bob", "user", "hi"),
    ("agent:main:openai-user:alice", "assistant", "Hello Alice"),
    ("agent:main:openai-user:bob", "assistant", ""),
]


@pytest.mark.parametrize("version", [1, 0], ids=["v1", "v1-table-without-version"])
async def test_v1_file_is_migrated(db_path: pathlib.Path, version: int, caplog: pytest.LogCaptureFixture) -> None:
    """A version 1 file (also one whose user_version write never happened) becomes version 2:
    its rows are user/assistant text turns with the same ids, the counter keeps its place, and
    the new columns and the tool role work. The migration is logged."""
    write_v1_file(db_path, V1_ROWS, version=version)
    store = SessionStore(db_path)
    with caplog.at_level(logging.INFO, logger="openclaw_http_compat.reference.store"):
        await store.open()
    assert caplog.messages == [f"{db_path}: session schema migrated from version {version} to {SCHEMA_VERSION}"]
    try:
        assert await store.load("agent:main:openai-user:alice") == [Turn("user", "hello"), Turn("assistant", "Hello Alice")]
        assert await store.load("agent:main:openai-user:bob") == [Turn("user", "hi"), Turn("assistant", "")]
        await store.append("agent:main:openai-user:alice", TOOL_EXCHANGE)
        assert (await store.load("agent:main:openai-user:alice"))[2:] == TOOL_EXCHANGE
    finally:
        await store.close()
    found_version, columns, rows, seq = inspect(db_path)
    assert found_version == SCHEMA_VERSION
    assert columns == ["id", "session_key", "role", "content", "tool_calls", "tool_call_id", "created_at"]
    assert rows[:4] == [(i + 1, key, role, content, None, None) for i, (key, role, content) in enumerate(V1_ROWS)]
    # Ids are never reused: the deleted row had id 5, so the appended turns start at 6.
    assert [row[0] for row in rows[4:]] == [6, 7, 8, 9, 10]
    assert seq == 10
    assert rows[5][4] == (
        '[{"id": "call_a", "name": "get_weather", "arguments": "{\\"city\\": \\"Zürich\\"}"}, '
        '{"id": "call_b", "name": "get_time", "arguments": ""}]'
    )
    assert rows[6][2:] == ("tool", "12°C, rain", None, "call_a")


async def test_migrated_file_opens_again_unchanged(db_path: pathlib.Path) -> None:
    """Opening a migrated (or new) file again changes nothing."""
    write_v1_file(db_path, V1_ROWS)
    for _ in range(2):
        store = SessionStore(db_path)
        await store.open()
        await store.close()
    assert inspect(db_path)[0] == SCHEMA_VERSION
    assert len(inspect(db_path)[2]) == 4


async def test_new_file_is_created_at_version_2(db_path: pathlib.Path) -> None:
    """A new file gets the version 2 table and index straight away."""
    store = SessionStore(db_path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"turns_by_session", "idempotency_by_expiry", "stored_completions_by_owner"} <= indexes
    finally:
        conn.close()


async def test_newer_file_is_refused_and_left_alone(db_path: pathlib.Path) -> None:
    """A file of a newer schema is refused before anything is written to it."""
    newer = SCHEMA_VERSION + 1
    write_v1_file(db_path, V1_ROWS, version=newer)
    with pytest.raises(
        RuntimeError, match=f"{db_path} has session schema version {newer}; this gateway knows {SCHEMA_VERSION}."
    ):
        await SessionStore(db_path).open()
    version, columns, rows, _ = inspect(db_path)
    assert (version, "tool_calls" in columns, len(rows)) == (newer, False, 4)


async def test_tool_turns_round_trip(store: SessionStore) -> None:
    """Assistant tool calls (several, non-ASCII arguments) and tool results load back as stored."""
    await store.append("s", TOOL_EXCHANGE)
    assert await store.load("s") == TOOL_EXCHANGE


@pytest.mark.parametrize(("limit", "expected"), [(None, 10), (3, 3), (10, 10), (50, 10), (1, 1)])
async def test_load_tail(store: SessionStore, limit: int | None, expected: int) -> None:
    """``limit`` loads only the newest turns, still oldest first."""
    turns = [Turn("user" if i % 2 == 0 else "assistant", f"t{i}") for i in range(10)]
    await store.append("s", turns[:4])
    await store.append("other", [Turn("user", "elsewhere")])
    await store.append("s", turns[4:])
    assert await store.load("s", limit=limit) == turns[10 - expected :]


def test_turn_fields_belong_to_their_roles() -> None:
    """Tool calls are an assistant turn's, a call id a tool turn's; a tool turn is a valid role."""
    with pytest.raises(ValueError, match="'tool_calls' is for assistant turns only, not 'user'"):
        Turn("user", "x", tool_calls=CALLS)
    with pytest.raises(ValueError, match="'tool_call_id' is for tool turns only, not 'assistant'"):
        Turn("assistant", "x", tool_call_id="call_a")
    assert Turn("tool", "result", tool_call_id="call_a").role == "tool"
