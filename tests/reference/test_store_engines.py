"""One behaviour suite for both session store engines: SQLite and PostgreSQL (a real server).

Each test gets an :class:`Engine`: where a store lives (a file, a database) and how to open
stores there. The PostgreSQL runs use the throwaway cluster of :mod:`.pg`, a database per
test; without the server binaries or asyncpg they are skipped with a message.
"""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import attrs
import pytest

from openclaw_http_compat import AgentEvent, AgentRunRequest, RunEnd, RunError, ToolCall
from openclaw_http_compat.reference import AgentRuntime, GatewayConfig, Turn
from openclaw_http_compat.reference.storage import SessionTurn, StoreSchemaError, TranscriptStore
from openclaw_http_compat.reference.store import SQLiteStore

from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url


@attrs.frozen
class Engine:
    """Where a test's stores live: ``make`` builds an unopened store there."""

    name: str
    make: Callable[[], TranscriptStore]
    #: Marks the stored schema as newer than this code knows.
    bump_schema: Callable[[], Awaitable[None]]
    #: Exceptions a refused newer schema may raise.
    schema_error: type[Exception]


async def _bump_sqlite(path: pathlib.Path) -> None:
    def bump() -> None:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA user_version=99")
        finally:
            conn.close()

    await asyncio.to_thread(bump)


async def _bump_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE openclaw_schema SET version = 99")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Engine:
    """Each engine in turn, on a fresh file or database."""
    if request.param == "sqlite":
        path = tmp_path / "sessions.sqlite"
        return Engine("sqlite", lambda: SQLiteStore(path, fsync=False), lambda: _bump_sqlite(path), RuntimeError)
    url: str = request.getfixturevalue("pg_url")
    from openclaw_http_compat.reference.pgstore import PostgresStore

    return Engine("postgres", lambda: PostgresStore(url), lambda: _bump_postgres(url), StoreSchemaError)


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[TranscriptStore]:
    """An opened store of the engine under test, closed afterwards."""
    opened = engine.make()
    await opened.open()
    yield opened
    await opened.close()


CALL = ToolCall(id="call_1", name="lookup", arguments='{"q": "caf\\u00e9", "n": [1, 2]}')
EXCHANGE = (
    Turn("user", "what is on the menu? ☕"),
    Turn("assistant", "", tool_calls=(CALL, ToolCall(id="call_2", name="price", arguments="{}"))),
    Turn("tool", '{"items": ["tea"]}', tool_call_id="call_1"),
    Turn("tool", "3 EUR", tool_call_id="call_2"),
    Turn("assistant", "Tea, for 3 EUR."),
)


async def test_round_trip_of_every_kind_of_turn(store: TranscriptStore) -> None:
    """User, assistant (with tool calls) and tool turns come back exactly, in order; other keys are apart."""
    assert await store.load("s") == []
    await store.append("s", EXCHANGE)
    await store.append("other", [Turn("user", "elsewhere")])
    assert await store.load("s") == list(EXCHANGE)
    assert await store.load("other") == [Turn("user", "elsewhere")]
    await store.append("s", [])  # nothing to store: a no-op
    assert await store.load("s") == list(EXCHANGE)


async def test_bounded_tail_loads(store: TranscriptStore) -> None:
    """``limit`` returns the newest turns, oldest first; a limit past the length returns them all."""
    turns = [Turn("user" if i % 2 == 0 else "assistant", f"t{i}") for i in range(30)]
    for i in range(0, 30, 3):
        await store.append("s", turns[i : i + 3])
    assert await store.load("s", limit=1) == turns[-1:]
    assert await store.load("s", limit=7) == turns[-7:]
    assert await store.load("s", limit=100) == turns
    assert await store.load("s", limit=0) == []
    assert await store.load("s") == turns


async def test_concurrent_appends_on_one_key_keep_a_serial_order(store: TranscriptStore) -> None:
    """40 concurrent two-turn appends on one key: all stored, each pair together, none interleaved."""
    n = 40
    await asyncio.gather(
        *(store.append("s", [Turn("user", f"q{i}"), Turn("assistant", f"a{i}")]) for i in range(n))
    )
    turns = await store.load("s")
    assert len(turns) == 2 * n
    pairs = [(turns[j].content, turns[j + 1].content) for j in range(0, 2 * n, 2)]
    assert all(q == f"q{a[1:]}" for q, a in pairs), pairs
    assert sorted(int(q[1:]) for q, _ in pairs) == list(range(n))


async def test_turn_taking_on_one_key(store: TranscriptStore) -> None:
    """Runs on one key take turns: each sees every earlier run's turns; other keys do not wait."""
    order: list[str] = []

    async def run(i: int) -> int:
        async with store.take_turn("s") as turn:
            assert isinstance(turn, SessionTurn)
            assert turn.session_key == "s"
            history = await turn.load()
            order.append(f"start {i}")
            await asyncio.sleep(0.01)  # a run's upstream call: another run on the key must wait
            await turn.append([Turn("user", f"q{i}"), Turn("assistant", f"a{i}")])
            order.append(f"end {i}")
            return len(history)

    async def other_key() -> None:
        async with store.take_turn("t") as turn:
            await turn.append([Turn("user", "x")])

    seen, _ = await asyncio.gather(asyncio.gather(*(run(i) for i in range(5))), other_key())
    assert sorted(seen) == [0, 2, 4, 6, 8]
    # Never two runs inside at once: every start is followed by its own end.
    assert all(order[k].split()[1] == order[k + 1].split()[1] for k in range(0, 10, 2)), order
    assert store.lock_count == 0
    assert len(await store.load("s")) == 10
    assert await store.load("t") == [Turn("user", "x")]


async def test_reopen_keeps_everything(engine: Engine) -> None:
    """Closed and opened again (a restart), the store has every committed turn."""
    first = engine.make()
    await first.open()
    await first.open()  # opening twice is a no-op
    await first.append("s", EXCHANGE)
    await first.close()
    await first.close()  # so is closing twice
    second = engine.make()
    await second.open()
    try:
        assert await second.load("s") == list(EXCHANGE)
        await second.append("s", [Turn("user", "again")])
        assert await second.load("s", limit=1) == [Turn("user", "again")]
    finally:
        await second.close()


async def test_newer_schema_is_refused(engine: Engine) -> None:
    """A database whose schema is newer than this code is refused at open, with a clear message."""
    store = engine.make()
    await store.open()
    await store.close()
    await engine.bump_schema()
    newer = engine.make()
    with pytest.raises(engine.schema_error, match=r"schema version 99; this gateway knows \d+"):
        await newer.open()
    with pytest.raises(RuntimeError, match=r"open\(\) must be awaited"):
        await newer.load("s")


async def test_stores_open_a_fresh_database_at_once(engine: Engine) -> None:
    """Three processes' stores starting at once on a fresh database: all open (one creates the
    schema, the others wait and find it), and they share one transcript."""
    a, b, c = engine.make(), engine.make(), engine.make()
    await asyncio.gather(a.open(), b.open(), c.open())
    try:
        await a.append("s", [Turn("user", "from a")])
        await b.append("s", [Turn("assistant", "from b")])
        assert await c.load("s") == [Turn("user", "from a"), Turn("assistant", "from b")]
        assert await b.load("s") == await a.load("s")
    finally:
        await asyncio.gather(a.close(), b.close(), c.close())


async def test_not_open(engine: Engine) -> None:
    """Using a store before open() fails clearly; turn-taking works without it."""
    store = engine.make()
    with pytest.raises(RuntimeError, match=r"open\(\) must be awaited"):
        await store.append("s", [Turn("user", "x")])
    async with store.take_turn("s"):
        assert store.lock_count == 1
    assert store.lock_count == 0



class _Relay:
    """A TCP relay on 127.0.0.1 in front of the test cluster: stopping it is a database outage."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_postgres_outage_is_a_store_error_then_recovers(pg_cluster: PgCluster, pg_url: str) -> None:
    """PostgreSQL only: while the server cannot be reached, load and append fail with StoreError
    (what the runtime reports as a store failure, nothing half-stored); once it is back, the
    pool reconnects by itself and every committed turn is there."""
    from openclaw_http_compat.reference.pgstore import PostgresStore
    from openclaw_http_compat.reference.storage import STORE_ERRORS, StoreError

    relay = _Relay(pg_cluster.port)
    await relay.start()
    database = pg_url.rsplit("/", 1)[1]
    store = PostgresStore(f"postgresql://postgres:secret@127.0.0.1:{relay.port}/{database}")
    await store.open()
    try:
        assert "secret" not in repr(store)
        await store.append("s", [Turn("user", "before")])
        await relay.stop()
        with pytest.raises(StoreError) as failed:
            await store.load("s")
        assert isinstance(failed.value, STORE_ERRORS)
        assert "secret" not in str(failed.value)
        with pytest.raises(StoreError):
            await store.append("s", [Turn("user", "during")])
        await relay.start()  # the same port again
        assert await store.load("s") == [Turn("user", "before")]
    finally:
        await store.close()
        await relay.stop()


async def test_runtime_on_postgres_reports_an_outage_as_a_run_error(
    pg_cluster: PgCluster, pg_url: str, client_session: aiohttp.ClientSession
) -> None:
    """PostgreSQL only: an echo run on the PostgreSQL store stores its turns; with the database
    unreachable a run ends with the store-failure RunError; once it is back, runs go on."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    relay = _Relay(pg_cluster.port)
    await relay.start()
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}")
    await store.open()
    config = GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}}, env={})
    runtime = AgentRuntime(config, store, client_session)

    async def last_event(message: str) -> AgentEvent:
        request = AgentRunRequest(run_id="r", agent_id="main", session_key="s", message=message)
        return [event async for event in runtime.run(request)][-1]

    try:
        assert isinstance(await last_event("one"), RunEnd)
        await relay.stop()
        assert await last_event("lost") == RunError(
            message="session store unavailable", reason="unavailable", retry_after=1.0
        )
        await relay.start()
        assert isinstance(await last_event("two"), RunEnd)
        assert [turn.content for turn in await store.load("s")] == ["one", "echo: one", "two", "echo: two"]
    finally:
        await store.close()
        await relay.stop()
