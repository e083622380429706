"""One behaviour suite for both session store engines: SQLite and PostgreSQL (a real server).

Each test gets an :class:`Engine`: where a store lives (a file, a database) and how to open
stores there. The PostgreSQL runs use the throwaway cluster of :mod:`.pg`, a database per
test; without the server binaries or asyncpg they are skipped with a message.
"""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiohttp
import attrs
import pytest

from openclaw_http_compat import AgentEvent, AgentRunRequest, RunEnd, RunError, ToolCall
from openclaw_http_compat.reference import AgentRuntime, GatewayConfig, Turn
from openclaw_http_compat.reference.storage import (
    LeaseLost,
    SessionBusy,
    SessionTurn,
    StoreSchemaError,
    TranscriptStore,
)
from openclaw_http_compat.reference.store import SQLiteStore

from .mock_upstream import MockUpstream, StreamReply
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config

if TYPE_CHECKING:
    from openclaw_http_compat.reference.pgstore import PostgresStore


class _Make(Protocol):
    def __call__(self, *, wait_s: float = 120.0, lease_s: float = 30.0) -> TranscriptStore: ...


@attrs.frozen
class Engine:
    """Where a test's stores live: ``make`` builds an unopened store there (``lease_s`` only
    matters to an engine with run leases)."""

    name: str
    make: _Make
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

        def sqlite(*, wait_s: float = 120.0, lease_s: float = 30.0) -> TranscriptStore:
            return SQLiteStore(path, fsync=False, wait_s=wait_s)

        return Engine("sqlite", sqlite, lambda: _bump_sqlite(path), RuntimeError)
    url: str = request.getfixturevalue("pg_url")
    from openclaw_http_compat.reference.pgstore import PostgresStore

    def postgres(*, wait_s: float = 120.0, lease_s: float = 30.0) -> TranscriptStore:
        return PostgresStore(url, wait_s=wait_s, lease_s=lease_s)

    return Engine("postgres", postgres, lambda: _bump_postgres(url), StoreSchemaError)


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
    """Using a store before open() fails clearly; SQLite's in-process turn-taking works without
    it, PostgreSQL's turns are leases in the database and need it."""
    store = engine.make()
    with pytest.raises(RuntimeError, match=r"open\(\) must be awaited"):
        await store.append("s", [Turn("user", "x")])
    if engine.name == "postgres":
        with pytest.raises(RuntimeError, match=r"open\(\) must be awaited"):
            async with store.take_turn("s"):
                pass
        return
    async with store.take_turn("s"):
        assert store.lock_count == 1
    assert store.lock_count == 0


async def test_waiting_past_wait_s_is_session_busy(engine: Engine) -> None:
    """A run that cannot get its session within the store's wait gets SessionBusy (the 429
    session_busy of the gateway); the holder is undisturbed, and the session is free after."""
    store = engine.make(wait_s=0.2)
    await store.open()
    try:
        async with store.take_turn("s") as turn:
            with pytest.raises(SessionBusy) as busy:
                async with store.take_turn("s"):
                    raise AssertionError("two turns at once")
            assert (busy.value.session_key, busy.value.retry_after_s) == ("s", 1.0)
            del busy  # its traceback holds the lock's frames
            await turn.append([Turn("user", "held")])
        async with store.take_turn("s") as turn:
            assert await turn.load() == [Turn("user", "held")]
        assert store.lock_count == 0
    finally:
        await store.close()


# --- Run leases across processes (PostgreSQL): each store below stands for one process.

T = TypeVar("T")


class _Process:
    """An event loop in a thread of its own, as another process's: it can be stalled (as a
    process is by SIGSTOP, a long GC pause or a swapped-out page) while the test's loop runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and await its result from the caller's."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stall(self) -> threading.Event:
        """Block this loop until the returned event is set."""
        resume = threading.Event()
        self.loop.call_soon_threadsafe(resume.wait)
        return resume

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _tokens(url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return {row[0]: row[1] for row in await conn.fetch("SELECT session_key, token FROM openclaw_leases")}
    finally:
        await conn.close()


async def test_runs_take_turns_across_stores(pg_url: str) -> None:
    """Two processes' stores on one database: 10 runs on one key, split across them, take
    turns; each sees every earlier run's turns (0, 2, …, 18), and each holder's fencing token
    is greater than the one before."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    await asyncio.gather(a.open(), b.open())
    tokens: list[int] = []
    inside = 0

    async def run(store: PostgresStore, i: int) -> int:
        nonlocal inside
        async with store.take_turn("s") as turn:
            inside += 1
            assert inside == 1
            tokens.append(turn.token)  # type: ignore[attr-defined]
            seen = len(await turn.load())
            await asyncio.sleep(0.005)
            await turn.append([Turn("user", f"q{i}"), Turn("assistant", f"a{i}")])
            inside -= 1
            return seen

    try:
        seen = await asyncio.gather(*(run(a if i % 2 else b, i) for i in range(10)))
        assert sorted(seen) == list(range(0, 20, 2))
        assert tokens == sorted(tokens) and len(set(tokens)) == 10
        assert len(await a.load("s")) == 20
        assert await _tokens(pg_url) == {"s": tokens[-1]}
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_processes_with_queues_on_one_key_take_turns_fairly(pg_url: str) -> None:
    """Two processes, each with runs queued on one key: a released session goes to the other
    process's waiter, not to the releasing process's next run (which would win every race by
    a network hop), so neither process holds more than two turns in a row."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    await asyncio.gather(a.open(), b.open())
    holders: list[str] = []

    async def run(store: PostgresStore, name: str) -> None:
        async with store.take_turn("s") as turn:
            holders.append(name)
            await asyncio.sleep(0.01)
            await turn.append([Turn("user", name)])

    try:
        await asyncio.gather(*(run(a, "a") for _ in range(6)), *(run(b, "b") for _ in range(6)))
        streaks = "".join(holders).replace("ab", "a b").replace("ba", "b a").split()
        assert max(map(len, streaks)) <= 2, holders
        assert len(await a.load("s")) == 12
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_waiter_that_gives_up_does_not_keep_the_session(pg_url: str) -> None:
    """A waiter in another process marks the session as wanted, then its request goes away
    (cancelled) or runs out of waitMs: its mark is cleared, so the holder's process takes the
    next turn at once, not after the mark goes stale (two 60 s leases later)."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    a = PostgresStore(pg_url, lease_s=60.0)
    b = PostgresStore(pg_url, lease_s=60.0, wait_s=0.3)
    await asyncio.gather(a.open(), b.open())

    async def wait_in_b() -> None:
        async with b.take_turn("s"):
            raise AssertionError("b got the session while a held it")

    try:
        for gives_up in ("cancelled", "busy"):
            async with a.take_turn("s") as held:
                waiter = asyncio.create_task(wait_in_b())
                while b.leases.listener.watched == 0:
                    await asyncio.sleep(0.01)
                if gives_up == "cancelled":
                    waiter.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waiter
                else:
                    with pytest.raises(SessionBusy):
                        await waiter
                await held.append([Turn("user", gives_up)])
            while b.leases._tasks:  # the mark is cleared in a task of b's
                await asyncio.sleep(0.01)
            async with asyncio.timeout(20):  # a bound against hanging, far below the 120 s mark
                async with a.take_turn("s") as turn:
                    assert (await turn.load())[-1] == Turn("user", gives_up)
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_release_wakes_a_waiter_through_notify(pg_url: str) -> None:
    """A waiter in another process is woken by the release's NOTIFY: with a 60 s lease its
    fallback re-check would come a minute later, yet it gets the session once it is released."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    a, b = PostgresStore(pg_url, lease_s=60.0), PostgresStore(pg_url, lease_s=60.0)
    await asyncio.gather(a.open(), b.open())
    try:
        waiter = await _handed_over(a, b, "first")
        # The bound only keeps a broken build from hanging; the fallback would take 60 s.
        async with asyncio.timeout(20):
            assert await waiter == [Turn("user", "first")]
    finally:
        await asyncio.gather(a.close(), b.close())


async def _handed_over(holder: PostgresStore, waiter: PostgresStore, text: str) -> asyncio.Task[list[Turn]]:
    """``holder`` appends ``text`` in its turn on "s" while a run of ``waiter`` (another process)
    waits for the session; the holder's turn is over when this returns. The waiting run's task
    gives what it loads once it has the session."""

    async def wait_for_it() -> list[Turn]:
        async with waiter.take_turn("s") as turn:
            return await turn.load()

    async with holder.take_turn("s") as held:
        await held.append([Turn("user", text)])
        task = asyncio.create_task(wait_for_it())
        while waiter.leases.listener.watched == 0:  # it has tried once and now listens for "s"
            await asyncio.sleep(0.01)
        assert not task.done()
    return task


async def test_only_a_release_another_process_waits_for_sends_a_notification(pg_url: str) -> None:
    """A release sends NOTIFY only when another process has marked the session as wanted (each
    one serialises commits on the server and wakes every listener): a lone run's release sends
    none; one released while another process waits sends one naming the session, and the
    waiter's own release after it (its mark cleared by taking) sends none."""
    import hashlib

    import asyncpg

    from openclaw_http_compat.reference.pglease import CHANNEL
    from openclaw_http_compat.reference.pgstore import PostgresStore

    heard: list[str] = []
    marker = asyncio.Event()

    def on_notify(conn: object, pid: int, channel: str, payload: str) -> None:
        heard.append(payload)
        if payload == "marker":
            marker.set()

    async def heard_until_marker() -> list[str]:
        # Notifications come in commit order: whatever the releases sent comes before this one.
        marker.clear()
        await listener.execute(f"SELECT pg_notify('{CHANNEL}', 'marker')")
        async with asyncio.timeout(10):
            await marker.wait()
        got = heard.copy()
        heard.clear()
        return got

    async def take_and_release(store: PostgresStore, key: str) -> None:
        async with store.take_turn(key) as turn:
            await turn.append([Turn("user", key)])

    listener = await asyncpg.connect(pg_url)
    await listener.add_listener(CHANNEL, on_notify)
    a, b = PostgresStore(pg_url, lease_s=60.0), PostgresStore(pg_url, lease_s=60.0)
    await asyncio.gather(a.open(), b.open())
    try:
        await take_and_release(a, "alone")
        assert await heard_until_marker() == ["marker"]

        async with a.take_turn("wanted"):
            waiter = asyncio.create_task(take_and_release(b, "wanted"))
            async with asyncio.timeout(10):
                while not await listener.fetchval(
                    "SELECT wanted_by IS NOT NULL FROM openclaw_leases WHERE session_key = 'wanted'"
                ):
                    await asyncio.sleep(0.01)
        async with asyncio.timeout(10):
            await waiter
        digest = hashlib.md5(b"wanted", usedforsecurity=False).hexdigest()
        assert await heard_until_marker() == [digest, "marker"]
        assert await b.load("wanted") == [Turn("user", "wanted")]
    finally:
        await asyncio.gather(a.close(), b.close())
        await listener.close()


async def test_a_waiter_that_found_another_process_mark_gets_the_turn_after(pg_url: str) -> None:
    """a1 holds a session; b, in another process, waits and marks it, then stalls; a1 ends and
    a2, queued behind it in its process, finds b's mark, so it cannot place its own and notes
    that others wait. When b goes on, it takes the session (clearing its mark), and its release
    is announced all the same and wakes a2: a1, b, a2 in that order, within seconds (with a 60 s
    lease, a2's fallback re-check would come two minutes later)."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    other = _Process()
    a, b = PostgresStore(pg_url, lease_s=60.0), PostgresStore(pg_url, lease_s=60.0)
    await a.open()
    await other.run(b.open())
    order: list[str] = []
    a1_may_end = asyncio.Event()

    async def run(store: PostgresStore, name: str, until: asyncio.Event | None = None) -> None:
        async with store.take_turn("s") as turn:
            order.append(name)
            if until is not None:
                await until.wait()
            await turn.append([Turn("user", name)])

    try:
        async with asyncio.timeout(10):
            a1 = asyncio.create_task(run(a, "a1", a1_may_end))
            while order != ["a1"]:
                await asyncio.sleep(0.01)
            waiter_b = asyncio.ensure_future(other.run(run(b, "b")))
            while not await a.pool.fetchval("SELECT wanted_by IS NOT NULL FROM openclaw_leases WHERE session_key = 's'"):
                await asyncio.sleep(0.01)
            resume_b = other.stall()
            a2 = asyncio.create_task(run(a, "a2"))
            a1_may_end.set()
            await a1
            # a2 tries, finds b's mark and sleeps; only then does b go on.
            await asyncio.sleep(0.3)
            assert order == ["a1"]
            resume_b.set()
            await asyncio.gather(waiter_b, a2)
        assert order == ["a1", "b", "a2"]
        assert [turn.content for turn in await a.load("s")] == ["a1", "b", "a2"]
    finally:
        await a.close()
        await other.run(b.close())
        other.close()


async def test_a_runs_last_append_releases_its_lease_in_the_same_statement(pg_url: str) -> None:
    """A run's last append (last=True) releases its lease with it: a waiter in another process
    gets the session while the run has not left its turn yet, the turn can append no more,
    and leaving it releases nothing of the new holder's."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    a, b = PostgresStore(pg_url, lease_s=0.3), PostgresStore(pg_url, lease_s=0.3, wait_s=10.0)
    await asyncio.gather(a.open(), b.open())
    b_holds = asyncio.Event()
    b_may_end = asyncio.Event()

    async def waiter() -> None:
        async with b.take_turn("s") as turn:
            b_holds.set()
            await b_may_end.wait()
            await turn.append([Turn("assistant", "b")], last=True)

    try:
        async with asyncio.timeout(10):
            async with a.take_turn("s") as turn:
                waiting = asyncio.create_task(waiter())
                while b.leases.listener.watched == 0:
                    await asyncio.sleep(0.01)
                await turn.append([Turn("user", "a")], last=True)
                await b_holds.wait()  # before a leaves its turn
                with pytest.raises(RuntimeError, match="last append"):
                    await turn.append([Turn("user", "late")])
            b_may_end.set()
            await waiting
        assert [turn.content for turn in await a.load("s")] == ["a", "b"]
        assert (await _tokens(pg_url))["s"] == 2
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_lease_released_by_the_last_append_is_not_renewed(pg_url: str) -> None:
    """With nobody waiting, a run lingers in its turn after its last append for longer than its
    lease (renewed every 0.1 s while it lives): the lease stays released, not renewed, so
    another run takes the session at once."""
    import asyncpg

    from openclaw_http_compat.reference.pgstore import PostgresStore

    a, b = PostgresStore(pg_url, lease_s=0.3), PostgresStore(pg_url, lease_s=0.3, wait_s=0.0)
    await asyncio.gather(a.open(), b.open())
    conn = await asyncpg.connect(pg_url)
    try:
        async with a.take_turn("s") as turn:
            await turn.append([Turn("user", "a")], last=True)
            await asyncio.sleep(0.5)
            assert await conn.fetchval("SELECT expires_at <= now() FROM openclaw_leases WHERE session_key = 's'")
            async with b.take_turn("s") as other:  # waitMs 0: the session must be free now
                await other.append([Turn("user", "b")], last=True)
        assert [turn.content for turn in await a.load("s")] == ["a", "b"]
    finally:
        await conn.close()
        await asyncio.gather(a.close(), b.close())


async def test_renewal_keeps_a_lease_past_its_length(pg_url: str) -> None:
    """A run that lives for several lease lengths keeps its session (its process renews the
    lease): another process waiting meanwhile gives up with SessionBusy, and the run appends."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    a, b = PostgresStore(pg_url, lease_s=0.3), PostgresStore(pg_url, lease_s=0.3, wait_s=1.2)
    await asyncio.gather(a.open(), b.open())
    try:
        async with a.take_turn("s") as turn:
            with pytest.raises(SessionBusy):
                async with b.take_turn("s"):
                    raise AssertionError("the lease was not renewed")
            await turn.append([Turn("user", "kept")])
        assert await b.load("s") == [Turn("user", "kept")]
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_stalled_run_that_lost_its_lease_cannot_append(pg_url: str) -> None:
    """A process stalls mid-run past its lease; another takes the session and appends. When the
    stalled run goes on, its append is refused (LeaseLost) and nothing of it is stored; the
    session goes on from the other run's turns."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    stalled = _Process()
    a = PostgresStore(pg_url, lease_s=0.4)
    b = PostgresStore(pg_url, lease_s=0.4)
    await stalled.run(a.open())
    await b.open()
    took = asyncio.Event()
    go_on = asyncio.Event()
    test_loop = asyncio.get_running_loop()

    async def stalled_run() -> None:
        async with a.take_turn("s") as turn:
            test_loop.call_soon_threadsafe(took.set)
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(go_on.wait(), test_loop))
            await turn.append([Turn("user", "stale"), Turn("assistant", "stale reply")])

    try:
        first = asyncio.ensure_future(stalled.run(stalled_run()))
        await took.wait()
        resume = stalled.stall()
        try:
            # Served once a's lease expires (a's process renews nothing while stalled).
            async with b.take_turn("s") as turn:
                assert await turn.load() == []
                await turn.append([Turn("user", "fresh")])
        finally:
            resume.set()
        go_on.set()
        with pytest.raises(LeaseLost):
            await first
        assert await b.load("s") == [Turn("user", "fresh")]
        async with b.take_turn("s") as turn:
            assert await turn.load() == [Turn("user", "fresh")]
    finally:
        await b.close()
        await stalled.run(a.close())
        stalled.close()



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


async def test_lease_listener_reconnects_after_an_outage(pg_cluster: PgCluster, pg_url: str) -> None:
    """PostgreSQL only: the listening connection is lost with the database; taking a turn then
    fails with StoreError (the runtime's 503). Once the database is back the listener
    reconnects by itself, and a release wakes a waiter through NOTIFY again (with a 60 s lease
    the fallback re-check would come a minute later)."""
    from openclaw_http_compat.reference.pgstore import PostgresStore
    from openclaw_http_compat.reference.storage import StoreError

    relay = _Relay(pg_cluster.port)
    await relay.start()
    relayed = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    a, b = PostgresStore(pg_url, lease_s=60.0), PostgresStore(relayed, lease_s=60.0)
    await asyncio.gather(a.open(), b.open())
    try:
        assert b.leases.listener.connected
        await relay.stop()
        with pytest.raises(StoreError, match="cannot take a session lease"):
            async with b.take_turn("s"):
                raise AssertionError("a turn without the database")
        await relay.start()
        listener = b.leases.listener
        async with asyncio.timeout(20):  # reconnection backs off to 2 s at most
            while not listener.connected:
                await asyncio.sleep(0.05)
        waiter = await _handed_over(a, b, "after the outage")
        async with asyncio.timeout(20):
            assert await waiter == [Turn("user", "after the outage")]
    finally:
        await asyncio.gather(a.close(), b.close())
        await relay.stop()


async def test_a_run_that_lost_its_lease_ends_with_a_run_error_and_stores_nothing(
    pg_url: str, mock_upstream: MockUpstream
) -> None:
    """PostgreSQL only, through the runtime: a run's process stalls while its upstream is still
    answering; its lease expires and a run in another process takes the session. The stalled
    run, once its upstream finishes, ends with the lease-lost RunError (a 503 with
    Retry-After), and nothing of it is stored."""
    from openclaw_http_compat.client import open_client_session
    from openclaw_http_compat.reference.pgstore import PostgresStore

    hold = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("stale reply",), hold=hold))
    config = GatewayConfig.from_mapping(gateway_config(mock_upstream.url), env={})
    stalled = _Process()
    a, b = PostgresStore(pg_url, lease_s=0.4), PostgresStore(pg_url, lease_s=0.4)
    await stalled.run(a.open())
    await b.open()

    async def stalled_run() -> list[AgentEvent]:
        async with open_client_session() as session:
            runtime = AgentRuntime(config, a, session)
            request = AgentRunRequest(run_id="r1", agent_id="main", session_key="s", message="stale")
            return [event async for event in runtime.run(request)]

    try:
        first = asyncio.ensure_future(stalled.run(stalled_run()))
        await mock_upstream.wait_for_requests(1)  # the run holds the session, its upstream is busy
        resume = stalled.stall()
        try:
            async with b.take_turn("s") as turn:  # once the stalled process's lease expired
                await turn.append([Turn("user", "fresh")])
        finally:
            resume.set()
        hold.set()
        events = await first
        assert events[-1] == RunError(
            message="the run lost its turn on the session; retry", reason="unavailable",
            code="session_lease_lost", retry_after=1.0,
        )  # fmt: skip
        assert await b.load("s") == [Turn("user", "fresh")]
    finally:
        await b.close()
        await stalled.run(a.close())
        stalled.close()


async def test_a_minted_session_takes_no_lease(pg_url: str, client_session: aiohttp.ClientSession) -> None:
    """PostgreSQL only: a run on a key minted for its request (no `user`, no session header)
    stores its turns without taking a lease (no other run can name that key: two round trips
    saved per stateless request); a named session's run takes one."""
    from openclaw_http_compat.reference.pgstore import PostgresStore

    store = PostgresStore(pg_url)
    await store.open()
    config = GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}}, env={})
    runtime = AgentRuntime(config, store, client_session)
    try:
        minted = AgentRunRequest(run_id="r1", agent_id="main", session_key="minted-1", message="hi", new_session=True)
        assert isinstance([event async for event in runtime.run(minted)][-1], RunEnd)
        assert [t.content for t in await store.load("minted-1")] == ["hi", "echo: hi"]
        assert await _tokens(pg_url) == {}
        named = AgentRunRequest(run_id="r2", agent_id="main", session_key="named", message="hi")
        assert isinstance([event async for event in runtime.run(named)][-1], RunEnd)
        assert await _tokens(pg_url) == {"named": 1}
    finally:
        await store.close()
