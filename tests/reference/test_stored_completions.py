"""Stored completions on the reference gateway: the ``openai`` SDK's stored-completions calls
over a real socket, kept in the session database (SQLite, PostgreSQL) so that another gateway
process on the same database reads them, and purged past retention."""

from __future__ import annotations

import json
import pathlib
import sqlite3
from typing import Any

import openai
import pytest

from openclaw_http_compat import CompletionQuery, StoredCompletion
from openclaw_http_compat.reference.sqlite_completions import SQLiteCompletionStore
from openclaw_http_compat.reference.store import SCHEMA_VERSION, SQLiteStore

from .mock_upstream import MockUpstream, StreamReply
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config, serve_gateway
from .test_store_engines import _Relay

DAY = 86_400


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)


def with_store_url(raw: dict[str, Any], url: str) -> dict[str, Any]:
    return {**raw, "gateway": {**raw["gateway"], "sessionStore": {"url": url}}}


async def test_sdk_stored_completions_calls_pass(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """chat.completions.retrieve, list (auto-paging, filters), update, messages.list and delete
    of the openai SDK all work against the reference gateway, with exact values."""
    mock_upstream.reply(StreamReply(deltas=("first",)), StreamReply(deltas=("second",)), StreamReply(deltas=("third",)))
    async with serve_gateway(gateway_config(mock_upstream.url), tmp_path / "state") as (url, _):
        async with sdk(url) as client:
            created = []
            for index, model in enumerate(("openclaw", "openclaw/default", "openclaw")):
                created.append(await client.chat.completions.create(
                    model=model, store=True, metadata={"n": str(index), "kind": "odd" if index % 2 else "even"},
                    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{index}"}],
                ))
            ids = [c.id for c in created]
            got = await client.chat.completions.retrieve(ids[0])
            assert got.id == ids[0] and got.choices[0].message.content == "first"
            assert got.model_dump(exclude_unset=True) == {
                **created[0].model_dump(exclude_unset=True), "metadata": {"n": "0", "kind": "even"}}
            assert [c.id async for c in client.chat.completions.list(limit=2)] == ids
            assert [c.id async for c in client.chat.completions.list(order="desc")] == ids[::-1]
            assert [c.id async for c in client.chat.completions.list(model="openclaw")] == [ids[0], ids[2]]
            even = client.chat.completions.list(metadata={"kind": "even"})
            assert [c.id async for c in even] == [ids[0], ids[2]]
            page = await client.chat.completions.list(limit=1, order="asc")
            assert (page.data[0].id, page.has_more) == (ids[0], True)
            updated = await client.chat.completions.update(ids[1], metadata={"kind": "reviewed"})
            assert (updated.id, updated.metadata) == (ids[1], {"kind": "reviewed"})
            assert [c.id async for c in client.chat.completions.list(metadata={"kind": "reviewed"})] == [ids[1]]
            messages = [m async for m in client.chat.completions.messages.list(ids[2])]
            assert [(m.id, m.role, m.content) for m in messages] == [
                (f"{ids[2]}-0", "system", "Be brief."), (f"{ids[2]}-1", "user", "q2")]
            second = await client.chat.completions.messages.list(ids[2], limit=1, after=f"{ids[2]}-0")
            assert ([m.id for m in second.data], second.has_more) == ([f"{ids[2]}-1"], False)
            deleted = await client.chat.completions.delete(ids[0])
            assert (deleted.id, deleted.deleted, deleted.object) == (ids[0], True, "chat.completion.deleted")
            with pytest.raises(openai.NotFoundError) as missing:
                await client.chat.completions.retrieve(ids[0])
            assert missing.value.body == {"message": f"No stored chat completion found with id '{ids[0]}'.",
                                          "type": "invalid_request_error", "param": None, "code": "not_found"}
            with pytest.raises(openai.BadRequestError) as bad:
                await client.chat.completions.create(
                    model="openclaw", store=True, metadata={"k" * 65: "v"}, messages=[{"role": "user", "content": "x"}])
            assert bad.value.body["param"] == "metadata"  # type: ignore[index]
    assert len(mock_upstream.requests) == 3


async def test_a_stream_with_store_is_retrieved_whole(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> None:
    """A streamed completion with store true is retrieved as the content it streamed, with usage."""
    mock_upstream.reply(StreamReply(deltas=("Hel", "lo", "!"), usage={"prompt_tokens": 4, "completion_tokens": 3,
                                                                         "total_tokens": 7}))
    async with serve_gateway(gateway_config(mock_upstream.url), tmp_path / "state") as (url, _):
        async with sdk(url) as client:
            stream = await client.chat.completions.create(
                model="openclaw", store=True, stream=True, messages=[{"role": "user", "content": "hi"}])
            chunks = [chunk async for chunk in stream]
            got = await client.chat.completions.retrieve(chunks[0].id)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert got.choices[0].message.content == "Hello!"
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None and got.usage.total_tokens == 7


async def test_sqlite_completions_outlive_the_process_and_are_in_the_file(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """A completion stored through one gateway is read through another on the same state
    directory (a restart, or another worker), from the session database file."""
    state = tmp_path / "state"
    raw = gateway_config(mock_upstream.url)
    async with serve_gateway(raw, state) as (url, _):
        async with sdk(url) as client:
            first = await client.chat.completions.create(
                model="openclaw", store=True, metadata={"a": "b"}, messages=[{"role": "user", "content": "keep"}])
        async with serve_gateway(raw, state) as (other_url, _):
            async with sdk(other_url) as other:
                seen = await other.chat.completions.retrieve(first.id)
                listed = [c.id async for c in other.chat.completions.list()]
    assert (seen.choices[0].message.content, listed) == ("Hello world", [first.id])
    conn = sqlite3.connect(state / "sessions.sqlite")
    try:
        rows = conn.execute("SELECT id, owner, metadata, messages FROM stored_completions").fetchall()
    finally:
        conn.close()
    assert rows == [(first.id, "none", '{"a":"b"}',
                     json.dumps([{"id": f"{first.id}-0", "role": "user", "content": "keep", "name": None,
                                  "content_parts": None}], separators=(",", ":")))]


def record(completion_id: str, created: int, owner: str = "none", **metadata: str) -> StoredCompletion:
    body = {"id": completion_id, "object": "chat.completion", "created": created, "model": "openclaw",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ü"}, "finish_reason": "stop"}],
            "usage": None}
    return StoredCompletion(id=completion_id, owner=owner, created=created, model="openclaw", metadata=metadata,
                            completion=body)


async def test_sqlite_store_contract_and_purge(tmp_path: pathlib.Path) -> None:
    """The SQLite engine scopes by owner, filters, pages by (created, storage order), and
    purges every owner's expired records in batches."""
    sessions = SQLiteStore(tmp_path / "s.sqlite")
    await sessions.open()
    store = SQLiteCompletionStore(sessions.path)
    await store.open()
    try:
        for index in range(3):
            await store.save(record(f"c{index}", 1000, tag="x" if index != 1 else "y"), [{"id": f"c{index}-0"}])
        await store.save(record("bob1", 1000, owner="bob"), [])
        await store.save(record("old", 10), [])
        page = await store.list("none", CompletionQuery(not_before=100, limit=2))
        assert ([r.id for r in page.data], page.has_more) == (["c0", "c1"], True)
        page = await store.list("none", CompletionQuery(not_before=100, after="c1"))
        assert [r.id for r in page.data] == ["c2"]
        page = await store.list("none", CompletionQuery(not_before=0, order="desc", metadata={"tag": "x"}))
        assert [r.id for r in page.data] == ["c2", "c0"]
        assert (await store.get("none", "c0", not_before=0)) == record("c0", 1000, tag="x")
        assert await store.get("bob", "c0", not_before=0) is None
        assert await store.messages("none", "c2", not_before=0) == [{"id": "c2-0"}]
        assert await store.delete("bob", "c2", not_before=0) is False
        updated = await store.update_metadata("none", "c2", {"tag": "z"}, not_before=0)
        assert updated is not None and updated.metadata == {"tag": "z"}
        assert await store.purge(100) == 1
        assert await store.get("none", "old", not_before=0) is None
        assert await store.purge(2000) == 4
    finally:
        await store.close()
        await sessions.close()


async def test_a_version_2_database_gains_the_table(tmp_path: pathlib.Path) -> None:
    """A session file of schema 2 (before stored completions) is migrated: its turns stay, the
    stored_completions table appears, user_version is SCHEMA_VERSION."""
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE turns (id INTEGER PRIMARY KEY AUTOINCREMENT, session_key TEXT NOT NULL, role TEXT NOT NULL"
        " CHECK (role IN ('user', 'assistant', 'tool')), content TEXT NOT NULL, tool_calls TEXT, tool_call_id TEXT,"
        " created_at REAL NOT NULL)"
    )
    conn.execute("INSERT INTO turns (session_key, role, content, created_at) VALUES ('k', 'user', 'hi', 0)")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    sessions = SQLiteStore(path)
    await sessions.open()
    try:
        assert [t.content for t in await sessions.load("k")] == ["hi"]
    finally:
        await sessions.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("SELECT count(*) FROM stored_completions").fetchone() == (0,)
    finally:
        conn.close()


async def test_postgres_completion_stored_through_one_gateway_is_served_by_another(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_url: str
) -> None:
    """Two gateway apps on one PostgreSQL database: a completion stored through the first is
    retrieved, listed, paged, updated and deleted through the second, and the first sees it go."""
    raw = with_store_url(gateway_config(mock_upstream.url), pg_url)
    async with serve_gateway(raw, tmp_path / "a") as (url_a, _), serve_gateway(raw, tmp_path / "b") as (url_b, _):
        async with sdk(url_a) as a, sdk(url_b) as b:
            made = await a.chat.completions.create(
                model="openclaw", store=True, metadata={"who": "a"}, messages=[{"role": "user", "content": "hello"}])
            streamed = await a.chat.completions.create(
                model="openclaw", store=True, stream=True, messages=[{"role": "user", "content": "again"}])
            stream_id = [chunk async for chunk in streamed][0].id
            seen = await b.chat.completions.retrieve(made.id)
            assert seen.choices[0].message.content == made.choices[0].message.content
            assert (await b.chat.completions.retrieve(stream_id)).choices[0].message.content == "Hello world"
            assert [c.id async for c in b.chat.completions.list(limit=1)] == [made.id, stream_id]
            assert [c.id async for c in b.chat.completions.list(metadata={"who": "a"})] == [made.id]
            assert [m.content async for m in b.chat.completions.messages.list(made.id)] == ["hello"]
            await b.chat.completions.update(made.id, metadata={"who": "b"})
            assert (await a.chat.completions.retrieve(made.id)).metadata == {"who": "b"}
            await b.chat.completions.delete(made.id)
            with pytest.raises(openai.NotFoundError):
                await a.chat.completions.retrieve(made.id)


async def test_postgres_store_purges_and_keeps_json_as_answered(pg_url: str) -> None:
    """On PostgreSQL the completion comes back with its keys in answer order and non-ASCII
    text intact; a purge removes every owner's expired records and nothing else."""
    import asyncpg

    from openclaw_http_compat.reference.pg_completions import PostgresCompletionStore
    from openclaw_http_compat.reference.pgstore import PostgresStore

    sessions = PostgresStore(pg_url)
    await sessions.open()
    try:
        store = PostgresCompletionStore(sessions.pool)
        await store.save(record("old", 10, tag="x"), [])
        await store.save(record("old-bob", 20, owner="bob"), [])
        await store.save(record("new", 1000, tag="x"), [{"id": "new-0", "content": "ü"}])
        got = await store.get("none", "new", not_before=0)
        assert got is not None and list(got.completion) == ["id", "object", "created", "model", "choices", "usage"]
        assert got == record("new", 1000, tag="x")
        assert await store.messages("none", "new", not_before=0) == [{"id": "new-0", "content": "ü"}]
        page = await store.list("none", CompletionQuery(not_before=0, metadata={"tag": "x"}, order="desc"))
        assert [r.id for r in page.data] == ["new", "old"]
        assert await store.purge(100) == 2
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetch("SELECT id FROM openclaw_stored_completions") == [("new",)]
        finally:
            await conn.close()
    finally:
        await sessions.close()


async def test_postgres_outage_is_a_temporary_503_then_recovers(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """With PostgreSQL unreachable, reading stored completions is 503 with Retry-After (never a
    500); once the database is back the same gateway serves them again."""
    relay = _Relay(pg_cluster.port)
    await relay.start()
    relayed_url = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    try:
        async with serve_gateway(with_store_url(gateway_config(mock_upstream.url), relayed_url), tmp_path / "s") as (
            url, _,
        ):
            async with sdk(url) as client:
                made = await client.chat.completions.create(
                    model="openclaw", store=True, messages=[{"role": "user", "content": "hi"}])
                await relay.stop()
                for call in (client.chat.completions.retrieve(made.id), client.chat.completions.list()):
                    with pytest.raises(openai.InternalServerError) as down:
                        await call
                    assert down.value.status_code == 503
                    assert down.value.response.headers["Retry-After"] == "1"
                    assert down.value.body == {"message": "Stored completions are unavailable. Please retry shortly.",
                                               "type": "api_error", "param": None, "code": None}
                await relay.start()
                assert (await client.chat.completions.retrieve(made.id)).id == made.id
    finally:
        await relay.stop()
