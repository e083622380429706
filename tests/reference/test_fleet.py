"""A fleet: real gateway processes sharing sessions through one PostgreSQL database.

Each test starts real ``python -m openclaw_http_compat gateway`` processes (two, or one
``--workers 2`` supervisor) on one database of the throwaway cluster of :mod:`.pg`, in front
of the mock upstream. What a run saw of its session is read from what the upstream received;
what was stored, from the database itself. ``leaseMs`` is 2000, so a killed process frees its
sessions within 2 s.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import signal
import sys
import time
from typing import Any, Final

import aiohttp
import openai
import pytest

from openclaw_http_compat.reference.storage import TranscriptStore

from .mock_upstream import MockUpstream, Received, Reply, StreamReply
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config, serve_gateway
from .test_shutdown import gateway_env
from .test_store_engines import _Relay
from .test_workers import Fleet

LEASE_MS: Final = 2000
LISTENING: Final = re.compile(rb"listening on http://127\.0\.0\.1:(\d+) ")
START_TIMEOUT_S: Final = 30.0


def _write_config(tmp_path: pathlib.Path, upstream_url: str, store_url: str, **store: Any) -> pathlib.Path:
    raw = gateway_config(upstream_url)
    raw["gateway"]["sessionStore"] = {"url": store_url, "leaseMs": LEASE_MS, **store}
    path = tmp_path / "openclaw.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


class Gateway:
    """One gateway process on ``--port 0``; killed on exit. Its log goes to ``log_path``."""

    def __init__(self, config: pathlib.Path, state: pathlib.Path, name: str) -> None:
        self.config = config
        self.state = state
        self.log_path = state.parent / f"{name}.log"
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Gateway:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", str(self.config),
                "--port", "0", stdout=asyncio.subprocess.PIPE, stderr=log, env=gateway_env(self.state),
            )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await self.proc.stdout.readline()
            match = LISTENING.search(line)
            assert match is not None, (line, self.log_path.read_text(errors="replace"))
        except BaseException:
            await self.__aexit__()
            raise
        self.port = int(match.group(1))
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    @property
    def url(self) -> str:
        """The ``/v1`` base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def kill(self) -> None:
        """SIGKILL the process and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


def _numbered_replies(received: Received) -> Reply:
    # The reply names the message it answers, so each stored turn is recognisable.
    return StreamReply(deltas=(f"re: {received.json['messages'][-1]['content']}",))


async def _ask(session: aiohttp.ClientSession, base: str, user: str, content: str, *, stream: bool = False) -> str:
    body = {"model": "openclaw", "user": user, "stream": stream, "messages": [{"role": "user", "content": content}]}
    async with session.post(f"{base}/chat/completions", json=body) as resp:
        text = await resp.text()
        assert resp.status == 200, text
    if stream:
        return text
    answer: str = json.loads(text)["choices"][0]["message"]["content"]
    return answer


async def _stored(url: str, user: str) -> list[tuple[str, str]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT role, content FROM openclaw_turns WHERE session_key = $1 ORDER BY id",
            f"agent:main:openai-user:{user}",
        )
    finally:
        await conn.close()
    return [(row[0], row[1]) for row in rows]


def _exchange(*contents: str) -> list[tuple[str, str]]:
    return [turn for content in contents for turn in (("user", content), ("assistant", f"re: {content}"))]


def _one_serial_order(histories: list[list[dict[str, Any]]]) -> list[str]:
    """The questions in the order the runs took turns, checking that every run saw exactly the
    turns of the runs before it: each run's history is the previous run's, plus its exchange."""
    ordered = sorted(histories, key=len)
    questions: list[str] = []
    for k, messages in enumerate(ordered):
        assert len(messages) == 2 * k + 1, [len(m) for m in ordered]
        assert messages[:-1] == [
            m for q in questions for m in ({"role": "user", "content": q}, {"role": "assistant", "content": f"re: {q}"})
        ]
        questions.append(messages[-1]["content"])
    return questions


async def test_interleaved_turns_on_two_processes_keep_one_transcript_and_survive_a_restart(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """Turns of one `user` alternate between two processes: each turn sees every earlier one
    (one serial transcript in the database). Both restarted, the conversation goes on."""
    mock_upstream.default = _numbered_replies
    config = _write_config(tmp_path, mock_upstream.url, pg_url)
    questions = [f"q{i}" for i in range(6)]
    async with Gateway(config, tmp_path / "state", "a") as a, Gateway(config, tmp_path / "state", "b") as b:
        async with aiohttp.ClientSession() as session:
            for i, question in enumerate(questions):
                assert await _ask(session, (a, b)[i % 2].url, "alice", question) == f"re: {question}"
    assert await _stored(pg_url, "alice") == _exchange(*questions)
    assert _one_serial_order([r.json["messages"] for r in mock_upstream.requests]) == questions
    async with Gateway(config, tmp_path / "state", "c") as c:
        async with openai.AsyncOpenAI(base_url=c.url, api_key="none", max_retries=0) as client:
            again = await client.chat.completions.create(
                model="openclaw", user="alice", messages=[{"role": "user", "content": "after restart"}]
            )
    assert again.choices[0].message.content == "re: after restart"
    assert len(mock_upstream.requests[-1].json["messages"]) == 13
    assert await _stored(pg_url, "alice") == _exchange(*questions, "after restart")
    assert not (tmp_path / "state").exists()  # nothing went to SQLite


async def test_concurrent_requests_on_one_key_split_across_processes_run_one_after_another(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """10 concurrent requests of one `user`, 5 to each process: all complete, and they saw 0…9
    earlier exchanges, in one serial order (the first requests on a fresh key too: which one
    starts the session is decided inside the lease, so there is one session, not two)."""
    mock_upstream.default = lambda received: StreamReply(
        deltas=(f"re: {received.json['messages'][-1]['content']}",), delay_s=0.01
    )
    config = _write_config(tmp_path, mock_upstream.url, pg_url)
    async with Gateway(config, tmp_path / "state", "a") as a, Gateway(config, tmp_path / "state", "b") as b:
        async with aiohttp.ClientSession() as session:
            answers = await asyncio.gather(
                *(_ask(session, (a, b)[i % 2].url, "bob", f"q{i}", stream=bool(i % 3 == 0)) for i in range(10))
            )
    assert all(f"re: q{i}" in answer for i, answer in enumerate(answers))
    order = _one_serial_order([r.json["messages"] for r in mock_upstream.requests])
    assert sorted(order) == sorted(f"q{i}" for i in range(10))
    assert await _stored(pg_url, "bob") == _exchange(*order)


async def test_a_process_killed_mid_run_frees_its_session_within_the_lease(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """SIGKILL of a process whose run is streaming: the other process serves the session within
    leaseMs plus a second; every committed turn is there, and the killed run left nothing."""
    config = _write_config(tmp_path, mock_upstream.url, pg_url)
    async with Gateway(config, tmp_path / "state", "a") as a, Gateway(config, tmp_path / "state", "b") as b:
        async with aiohttp.ClientSession() as session:
            mock_upstream.reply(StreamReply(deltas=("re: committed",)))
            assert await _ask(session, a.url, "carol", "committed") == "re: committed"
            mock_upstream.reply(StreamReply(deltas=("partial",), stall=True))
            body = {"model": "openclaw", "user": "carol", "stream": True,
                    "messages": [{"role": "user", "content": "killed"}]}  # fmt: skip
            async with session.post(f"{a.url}/chat/completions", json=body) as resp:
                assert resp.status == 200
                assert b"partial" in await resp.content.readuntil(b"partial")
                killed_at = time.monotonic()
                await a.kill()
            mock_upstream.reply(StreamReply(deltas=("re: after",)))
            assert await _ask(session, b.url, "carol", "after") == "re: after"
            # The one timed assertion the issue asks for: the lease's own bound, not a speed.
            assert time.monotonic() - killed_at <= LEASE_MS / 1000 + 1
    assert mock_upstream.requests[-1].json["messages"] == [
        {"role": "user", "content": "committed"},
        {"role": "assistant", "content": "re: committed"},
        {"role": "user", "content": "after"},
    ]
    assert await _stored(pg_url, "carol") == _exchange("committed", "after")


async def test_store_outage_is_503_on_every_process_then_recovers(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """Both processes reach PostgreSQL through a relay; with it stopped, a session turn on either
    is 503 with Retry-After and the envelope (no 500, no hang); started again, both serve the
    session again (their pools and lease listeners reconnect by themselves), no turn lost."""
    mock_upstream.default = _numbered_replies
    relay = _Relay(pg_cluster.port)
    await relay.start()
    relayed = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    config = _write_config(tmp_path, mock_upstream.url, relayed)
    try:
        async with Gateway(config, tmp_path / "state", "a") as a, Gateway(config, tmp_path / "state", "b") as b:
            async with aiohttp.ClientSession() as session:
                assert await _ask(session, a.url, "dave", "before") == "re: before"
                await relay.stop()
                for gateway in (a, b):
                    body = {"model": "openclaw", "user": "dave", "messages": [{"role": "user", "content": "lost"}]}
                    async with session.post(f"{gateway.url}/chat/completions", json=body) as resp:
                        assert (resp.status, resp.headers["Retry-After"], await resp.json()) == (
                            503, "1",
                            {"error": {"message": "session store unavailable", "type": "api_error",
                                       "param": None, "code": None}},
                        )  # fmt: skip
                await relay.start()
                assert await _ask(session, b.url, "dave", "back on b") == "re: back on b"
                assert await _ask(session, a.url, "dave", "back on a") == "re: back on a"
    finally:
        await relay.stop()
    assert await _stored(pg_url, "dave") == _exchange("before", "back on b", "back on a")


async def test_workers_2_on_postgres_serve_a_session_workload(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """``--workers 2`` starts on a PostgreSQL store (no escape hatch needed) and serves three
    users' concurrent turns, over fresh connections spread across both workers, each user's
    turns in one serial transcript."""
    mock_upstream.default = lambda received: StreamReply(
        deltas=(f"re: {received.json['messages'][-1]['content']}",), delay_s=0.005
    )
    config = _write_config(tmp_path, mock_upstream.url, pg_url)
    fleet = Fleet(config, tmp_path / "state")
    del fleet.env["OPENCLAW_STATELESS_WORKERS"]
    users = ("u0", "u1", "u2")
    async with fleet:
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = f"{fleet.base}/v1"
            await asyncio.gather(*(_ask(session, base, user, f"{user}-q{i}") for user in users for i in range(6)))
        access = re.compile(r"aiohttp\.access\[(\d+)\]: .* method=POST route=/v1/chat/completions ")
        # Each worker writes its own access log lines: wait until all 18 have arrived.
        async with asyncio.timeout(10):
            while sum(bool(access.search(line)) for line in fleet.log) < 18:
                await asyncio.sleep(0.05)
        served = {int(m.group(1)) for line in fleet.log if (m := access.search(line))}
        assert served == set(fleet.worker_pids().values())
    for user in users:
        histories = [r.json["messages"] for r in mock_upstream.requests if r.json["messages"][-1]["content"].startswith(user)]
        order = _one_serial_order(histories)
        assert sorted(order) == [f"{user}-q{i}" for i in range(6)]
        assert await _stored(pg_url, user) == _exchange(*order)


@pytest.fixture(params=["sqlite", "postgres"])
def store_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``gateway.sessionStore`` with a 300 ms wait, on each engine in turn."""
    if request.param == "sqlite":
        return {"waitMs": 300}
    return {"waitMs": 300, "url": request.getfixturevalue("pg_url")}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_session_busy_past_wait_ms_is_429_session_busy(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, store_section: dict[str, Any], stream: bool
) -> None:
    """While a run holds a session, another request on it waits ``waitMs``, then gets 429
    ``session_busy`` with Retry-After in the OpenAI envelope (a stream too: its head is still
    held); once the first run ends, the session serves again."""
    hold = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("slow",), hold=hold))
    raw = gateway_config(mock_upstream.url)
    raw["gateway"]["sessionStore"] = store_section
    body = {"model": "openclaw", "user": "erin", "messages": [{"role": "user", "content": "first"}]}
    state: TranscriptStore
    async with serve_gateway(raw, tmp_path / "state") as (url, state), aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(f"{url}/chat/completions", json=body))
        await mock_upstream.wait_for_requests(1)
        busy_body = {**body, "stream": stream, "messages": [{"role": "user", "content": "second"}]}
        async with session.post(f"{url}/chat/completions", json=busy_body) as resp:
            assert (resp.status, resp.headers["Retry-After"], await resp.json()) == (
                429, "1",
                {"error": {"message": "Another run on this session is still in progress; retry later.",
                           "type": "rate_limit_error", "param": None, "code": "session_busy"}},
            )  # fmt: skip
        hold.set()
        async with await first as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == "slow"
        mock_upstream.reply(StreamReply(deltas=("third",)))
        assert await _ask(session, url, "erin", "third") == "third"
        assert [t.content for t in await state.load("agent:main:openai-user:erin")] == ["first", "slow", "third", "third"]


async def test_a_session_busy_after_the_stream_head_is_an_error_frame(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """With the stream's head sent at once (``streamHoldMs: 0``), a request that waits past
    ``waitMs`` gets its 429 ``session_busy`` in-band: the role chunk, the error frame, ``[DONE]``."""
    hold = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("slow",), hold=hold))
    raw = gateway_config(mock_upstream.url)
    raw["gateway"]["sessionStore"] = {"waitMs": 300}
    raw["gateway"]["http"]["endpoints"]["chatCompletions"]["streamHoldMs"] = 0
    body = {"model": "openclaw", "user": "fay", "messages": [{"role": "user", "content": "first"}]}
    async with serve_gateway(raw, tmp_path / "state") as (url, _), aiohttp.ClientSession() as session:
        first = asyncio.create_task(session.post(f"{url}/chat/completions", json=body))
        await mock_upstream.wait_for_requests(1)
        busy_body = {**body, "stream": True, "messages": [{"role": "user", "content": "second"}]}
        async with session.post(f"{url}/chat/completions", json=busy_body) as resp:
            assert resp.status == 200
            frames = (await resp.text()).split("\n\n")
        hold.set()
        async with await first as done:
            assert done.status == 200
    assert frames[-2:] == ["data: [DONE]", ""]
    assert json.loads(frames[0].removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(frames[1].removeprefix("data: ")) == {
        "error": {"message": "Another run on this session is still in progress; retry later.",
                  "type": "rate_limit_error", "param": None, "code": "session_busy"}
    }  # fmt: skip
    assert len(frames) == 4
