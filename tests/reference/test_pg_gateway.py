"""The reference gateway on the PostgreSQL store: a real server, a real socket, and the
start-up error when asyncpg is missing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import openai
import pytest

from .mock_upstream import MockUpstream, StreamReply
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config, serve_gateway
from .test_store_engines import _Relay

MISSING_ASYNCPG = (
    "error: gateway.sessionStore.url: a PostgreSQL session store needs asyncpg:"
    " pip install 'openclaw-http-compat[postgres]'\n"
)


async def test_user_conversation_lands_in_postgres(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """With sessionStore.url, a `user` conversation's turns are stored in PostgreSQL (read back
    with a direct query) and the second run reads the first from there; no SQLite file appears."""
    import asyncpg

    from openclaw_http_compat.reference.pgstore import PostgresStore

    mock_upstream.reply(StreamReply(deltas=("hi ", "alice")), StreamReply(deltas=("again",)))
    raw = gateway_config(mock_upstream.url)
    raw = {**raw, "gateway": {**raw["gateway"], "sessionStore": {"url": pg_url}}}
    async with serve_gateway(raw, tmp_path / "state") as (url, store):
        assert isinstance(store, PostgresStore)
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
            first = await client.chat.completions.create(
                model="openclaw", user="alice", messages=[{"role": "user", "content": "hello"}]
            )
            second = await client.chat.completions.create(
                model="openclaw", user="alice", messages=[{"role": "user", "content": "and now?"}]
            )
    assert (first.choices[0].message.content, second.choices[0].message.content) == ("hi alice", "again")
    assert mock_upstream.requests[1].json["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi alice"},
        {"role": "user", "content": "and now?"},
    ]
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT session_key, role, content FROM openclaw_turns ORDER BY id")
    finally:
        await conn.close()
    key = "agent:main:openai-user:alice"
    assert [tuple(row) for row in rows] == [
        (key, "user", "hello"),
        (key, "assistant", "hi alice"),
        (key, "user", "and now?"),
        (key, "assistant", "again"),
    ]
    assert not (tmp_path / "state").exists()


# Runs the CLI with asyncpg unimportable, as on an install without the postgres extra.
_WITHOUT_ASYNCPG = (
    "import sys; sys.modules['asyncpg'] = None; "
    "from openclaw_http_compat.__main__ import main; sys.argv[0] = 'openclaw-http-compat'; sys.exit(main())"
)


@pytest.mark.parametrize(
    "command", [["gateway", "--port", "0"], ["agent", "--message", "hi"]], ids=["gateway", "agent"]
)
def test_postgres_url_without_asyncpg_is_one_clear_line(tmp_path: pathlib.Path, command: list[str]) -> None:
    """A postgresql:// URL without asyncpg: exit 2 and one `error:` line naming what to install,
    before anything listens or any state is created."""
    state = tmp_path / "state"
    config: dict[str, Any] = {
        "gateway": {
            "auth": {"mode": "none"},
            "stateDir": str(state),
            "sessionStore": {"url": "postgresql://gw:secret@127.0.0.1:1/openclaw"},
        }
    }
    path = tmp_path / "openclaw.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ASYNCPG, command[0], "--config", str(path), *command[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stderr, result.stdout) == (2, MISSING_ASYNCPG, "")
    assert "secret" not in result.stderr
    assert not state.exists()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_store_outage_is_a_temporary_503_then_recovers(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_cluster: PgCluster, pg_url: str, stream: bool
) -> None:
    """With PostgreSQL unreachable, a `user` turn is a clean temporary error, 503 with
    Retry-After (also streamed: the head is still held), never a 500; once the database is
    back the same session answers, with nothing of the failed turn stored."""
    relay = _Relay(pg_cluster.port)
    await relay.start()
    raw = gateway_config(mock_upstream.url)
    relayed_url = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    raw = {**raw, "gateway": {**raw["gateway"], "sessionStore": {"url": relayed_url}}}
    try:
        async with serve_gateway(raw, tmp_path / "state") as (url, store):
            async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
                await relay.stop()
                with pytest.raises(openai.InternalServerError) as down:
                    await client.chat.completions.create(
                        model="openclaw", user="bob", stream=stream, messages=[{"role": "user", "content": "lost"}]
                    )
                assert down.value.status_code == 503
                assert down.value.response.headers["Retry-After"] == "1"
                assert down.value.body == {"message": "session store unavailable", "type": "api_error",
                                           "param": None, "code": None}
                await relay.start()
                mock_upstream.reply(StreamReply(deltas=("back",)))
                answer = await client.chat.completions.create(
                    model="openclaw", user="bob", messages=[{"role": "user", "content": "again"}]
                )
            assert answer.choices[0].message.content == "back"
            assert [t.content for t in await store.load("agent:main:openai-user:bob")] == ["again", "back"]
    finally:
        await relay.stop()
