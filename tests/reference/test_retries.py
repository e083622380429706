"""Runs that survive the network, through the reference gateway: the openai SDK's own retries,
a dropped stream sent again, ``onDisconnect``, and ``Idempotency-Key`` across two gateway
processes on one PostgreSQL database.

The upstream is the real mock; the clients are the real ``openai`` SDK or raw aiohttp.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import sqlite3
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any, Final

import aiohttp
import openai
import pytest

from tests.conftest import DONE, content_chunk, finish_chunk, identity_of, role_chunk

from aiohttp import web

from .mock_upstream import CompletionReply, MockUpstream, Received, Reply, StreamReply
from .pg import PgCluster, pg_cluster as pg_cluster, pg_url as pg_url
from .real_gateway import gateway_config, serve_gateway
from .test_store_engines import _Relay

#: The agent takes 2.5 s; the SDK's attempts time out after 1 s.
SLOW: Final = CompletionReply(pieces=("slow ", "but ", "sure ", "answer", "."), delay_s=0.5)
SLOW_TEXT: Final = "slow but sure answer."
KEY: Final = "order-7f3a-retry"


def with_endpoint(raw: dict[str, Any], **endpoint: Any) -> dict[str, Any]:
    gateway = raw["gateway"]
    chat = {**gateway["http"]["endpoints"]["chatCompletions"], **endpoint}
    return {**raw, "gateway": {**gateway, "http": {"endpoints": {"chatCompletions": chat}}}}


def with_postgres(raw: dict[str, Any], url: str) -> dict[str, Any]:
    return {**raw, "gateway": {**raw["gateway"], "sessionStore": {"url": url}}}


def body(*, stream: bool, content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": "openclaw", "stream": stream, "messages": [{"role": "user", "content": content}], **fields}


async def test_sdk_with_a_short_timeout_gets_its_answer_from_one_run(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """The issue's scenario: ``timeout=1.0, max_retries=3`` against an agent needing 2.5 s. The
    first attempt times out and leaves; its run is kept, the SDK's retry attaches to it and
    gets its answer. One upstream call."""
    mock_upstream.default = SLOW
    async with serve_gateway(gateway_config(mock_upstream.url), tmp_path / "state") as (url, _):
        async with openai.AsyncOpenAI(base_url=url, api_key="none", timeout=1.0, max_retries=3) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="openclaw", messages=[{"role": "user", "content": "hi"}]
            )
    completion = raw.parse()
    assert completion.choices[0].message.content == SLOW_TEXT
    assert raw.headers["Idempotent-Replayed"] == "true"
    assert raw.headers["x-request-id"] == completion.id
    assert mock_upstream.stats.requests == 1


class LateReply(Reply):
    """A stream whose first byte comes after ``first_byte_s``: an agent thinking before it answers."""

    def __init__(self, first_byte_s: float, then: Reply) -> None:
        self.first_byte_s = first_byte_s
        self.then = then

    async def answer(self, request: web.Request, received: Received) -> web.StreamResponse:
        """``then``'s answer, late."""
        await asyncio.sleep(self.first_byte_s)
        return await self.then.answer(request, received)


async def test_sdk_streaming_with_a_short_timeout_gets_the_stream_of_one_run(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """``stream=True, timeout=1.0``: the agent's first token comes after 1.5 s, so the SDK's
    first attempt times out waiting for the head and the SDK sends it again with
    ``x-stainless-retry-count: 1``; the retry attaches and streams the one run."""
    mock_upstream.default = LateReply(1.5, StreamReply(deltas=("late ", "but ", "whole")))
    async with serve_gateway(gateway_config(mock_upstream.url), tmp_path / "state") as (url, _):
        async with openai.AsyncOpenAI(base_url=url, api_key="none", timeout=1.0, max_retries=3) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="openclaw", stream=True, messages=[{"role": "user", "content": "hi"}]
            )
            # The answer came from a retry that attached to the run.
            assert raw.headers["Idempotent-Replayed"] == "true"
            chunks = [chunk async for chunk in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "late but whole"
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert mock_upstream.stats.requests == 1


async def test_a_dropped_stream_sent_again_as_a_retry_gets_the_whole_stream(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """A stream whose connection drops after its first chunk, sent again with
    ``x-stainless-retry-count: 1`` as the SDK does: the retry attaches to the same run and gets
    every frame of it, from the role chunk to ``[DONE]``, byte for byte."""
    mock_upstream.default = CompletionReply(pieces=("one ", "two ", "three"), delay_s=0.3)
    async with serve_gateway(gateway_config(mock_upstream.url), tmp_path / "state") as (url, _):
        async with aiohttp.ClientSession() as session:
            first = await session.post(
                f"{url}/chat/completions", json=body(stream=True), headers={"x-stainless-retry-count": "0"}
            )
            seen = await first.content.readuntil(b'"one "},"finish_reason":null}]}\n\n')
            first.close()  # the connection drops
            retry = await session.post(
                f"{url}/chat/completions", json=body(stream=True), headers={"x-stainless-retry-count": "1"}
            )
            whole = await retry.read()
    text = whole.decode()
    ident = identity_of(text)
    assert text == (role_chunk(ident) + content_chunk(ident, "one ") + content_chunk(ident, "two ")
                    + content_chunk(ident, "three") + finish_chunk(ident) + DONE)  # fmt: skip
    assert whole.startswith(seen)
    assert (retry.status, retry.headers["x-request-id"], retry.headers["Idempotent-Replayed"]) == (200, ident.id, "true")
    assert mock_upstream.stats.requests == 1


async def _drop_mid_stream(url: str, payload: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{url}/chat/completions", json=payload)
        await resp.content.readuntil(b'"first "},"finish_reason":null}]}\n\n')
        resp.close()


@pytest.mark.parametrize("policy", ["finish", "abort"])
async def test_on_disconnect(mock_upstream: MockUpstream, tmp_path: pathlib.Path, policy: str) -> None:
    """``finish``: a client that drops mid-stream still gets its turn committed, and the next
    turn of that ``user`` sends it upstream. ``abort`` (the default): the run and its upstream
    request end with the client, nothing is committed."""
    mock_upstream.reply(CompletionReply(pieces=("first ", "second ", "third"), delay_s=0.3))
    raw = gateway_config(mock_upstream.url)
    if policy == "finish":
        raw = with_endpoint(raw, onDisconnect="finish")
    session_key = "agent:main:openai-user:alice"
    async with serve_gateway(raw, tmp_path / "state") as (url, store):
        await _drop_mid_stream(url, body(stream=True, content="tell me", user="alice"))
        if policy == "finish":
            async with asyncio.timeout(5):
                while len(await store.load(session_key)) < 2:
                    await asyncio.sleep(0.05)
        else:
            await asyncio.wait_for(mock_upstream.disconnected.wait(), 5)
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
            await client.chat.completions.create(
                model="openclaw", user="alice", messages=[{"role": "user", "content": "and?"}]
            )
        turns = [(t.role, t.content) for t in await store.load(session_key)]
    upstream_messages = mock_upstream.requests[1].json["messages"]
    if policy == "finish":
        assert upstream_messages == [
            {"role": "user", "content": "tell me"},
            {"role": "assistant", "content": "first second third"},
            {"role": "user", "content": "and?"},
        ]
        assert turns[:2] == [("user", "tell me"), ("assistant", "first second third")]
        assert mock_upstream.disconnects == 0
    else:
        assert upstream_messages == [{"role": "user", "content": "and?"}]
        assert turns[0] == ("user", "and?")
        assert mock_upstream.disconnects == 1


# --- two gateway processes on one store: PostgreSQL, or one SQLite file -------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> str | None:
    """The store: ``None`` for the SQLite file of the state directory, or a new PostgreSQL database's URL."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return url
    return None


def fleet_config(raw: dict[str, Any], engine: str | None) -> dict[str, Any]:
    """``raw`` on the engine's store."""
    return raw if engine is None else with_postgres(raw, engine)


async def _fleet(stack: AsyncExitStack, raw: dict[str, Any], tmp_path: pathlib.Path) -> tuple[str, str]:
    # Two gateways, each with its own pool, runs and in-memory state, as two processes have;
    # on SQLite they share one state directory (one file), as --workers do.
    sqlite = "sessionStore" not in raw["gateway"]
    one, _ = await stack.enter_async_context(serve_gateway(raw, tmp_path / "one"))
    two, _ = await stack.enter_async_context(serve_gateway(raw, tmp_path / ("one" if sqlite else "two")))
    return one, two


async def _post(session: aiohttp.ClientSession, url: str, payload: Mapping[str, Any], key: str) -> Any:
    async with session.post(f"{url}/chat/completions", json=payload, headers={"Idempotency-Key": key}) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


@pytest.mark.parametrize("stream", [False, True], ids=("json", "sse"))
async def test_a_key_running_in_another_process_is_a_409_then_replayed_there(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, engine: str | None, stream: bool
) -> None:
    """Process one runs a keyed request; the same key sent to process two waits
    ``idempotency.waitMs`` and is answered 409 ``idempotency_request_in_progress`` with
    ``Retry-After``. Once the run finished, process two replays its answer exactly. One run."""
    mock_upstream.default = CompletionReply(pieces=("a ", "slow ", "run"), delay_s=0.4)
    raw = with_endpoint(fleet_config(gateway_config(mock_upstream.url), engine), idempotency={"waitMs": 100})
    payload = body(stream=stream)
    async with AsyncExitStack() as stack:
        one, two = await _fleet(stack, raw, tmp_path)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        running = asyncio.ensure_future(_post(session, one, payload, KEY))
        await mock_upstream.wait_for_requests(1)
        status, headers, conflict = await _post(session, two, payload, KEY)
        assert (status, headers["Retry-After"], json.loads(conflict)) == (409, "1", {"error": {
            "message": "A request with this Idempotency-Key is still running. Retry shortly.",
            "type": "invalid_request_error", "param": "Idempotency-Key", "code": "idempotency_request_in_progress",
        }})  # fmt: skip
        first = await running
        replayed = await _post(session, two, payload, KEY)
        reused = await _post(session, two, body(stream=stream, content="other"), KEY)
    assert first[0] == 200
    if stream:
        text = first[2].decode()
        ident = identity_of(text)
        assert text == (role_chunk(ident) + "".join(content_chunk(ident, p) for p in ("a ", "slow ", "run"))
                        + finish_chunk(ident) + DONE)  # fmt: skip
    else:
        assert json.loads(first[2])["choices"][0]["message"]["content"] == "a slow run"
    assert (replayed[0], replayed[2], replayed[1]["Idempotent-Replayed"]) == (200, first[2], "true")
    assert replayed[1]["x-request-id"] == first[1]["x-request-id"]
    assert reused[0] == 422 and json.loads(reused[2])["error"]["code"] == "idempotency_key_reused"
    assert mock_upstream.stats.requests == 1


async def test_a_repeat_waits_for_the_other_process_and_is_replayed(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, engine: str | None
) -> None:
    """With a wait longer than the run, the repeat in the other process is answered with the
    run's answer (replayed), not a 409."""
    mock_upstream.default = CompletionReply(pieces=("quick",), delay_s=0.3)
    raw = with_endpoint(fleet_config(gateway_config(mock_upstream.url), engine), idempotency={"waitMs": 5000})
    async with AsyncExitStack() as stack:
        one, two = await _fleet(stack, raw, tmp_path)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        running = asyncio.ensure_future(_post(session, one, body(stream=False), KEY))
        await mock_upstream.wait_for_requests(1)
        waited = await _post(session, two, body(stream=False), KEY)
        first = await running
    assert (waited[0], waited[2], waited[1]["Idempotent-Replayed"]) == (200, first[2], "true")
    assert mock_upstream.stats.requests == 1


async def _record_rows(engine: str | None, raw: dict[str, Any], state: pathlib.Path) -> list[dict[str, Any]]:
    columns = ("key_digest", "fingerprint", "owner", "status")
    if engine is not None:
        import asyncpg

        conn = await asyncpg.connect(raw["gateway"]["sessionStore"]["url"])
        try:
            rows = await conn.fetch(f"SELECT {', '.join(columns)} FROM openclaw_idempotency")
        finally:
            await conn.close()
        return [dict(row) for row in rows]
    with sqlite3.connect(state / "sessions.sqlite") as db:
        return [dict(zip(columns, row)) for row in db.execute(f"SELECT {', '.join(columns)} FROM idempotency")]


async def test_only_digests_are_stored(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, engine: str | None
) -> None:
    """The record's row names neither the key nor the principal: the key column is the digest
    of both, the fingerprint a digest too."""
    from openclaw_http_compat.idempotency import key_digest

    raw = fleet_config(gateway_config(mock_upstream.url), engine)
    async with serve_gateway(raw, tmp_path / "state") as (url, _):
        async with aiohttp.ClientSession() as session:
            status, _, _ = await _post(session, url, body(stream=False, content="secret question"), KEY)
    assert status == 200
    rows = await _record_rows(engine, raw, tmp_path / "state")
    assert len(rows) == 1
    row = rows[0]
    columns = " ".join(str(v) for v in row.values())
    assert KEY not in columns and "secret question" not in columns
    assert row["status"] == 200
    # Auth mode none: every request is the anonymous principal; the key is scoped to it.
    assert row["key_digest"] == key_digest("none", KEY)
    assert len(row["fingerprint"]) == 64 and int(row["fingerprint"], 16) >= 0
    assert hashlib.sha256(KEY.encode()).hexdigest() != row["key_digest"]


async def test_a_records_store_outage_is_a_temporary_503_then_recovers(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """With PostgreSQL unreachable, a keyed request is a clean 503 with ``Retry-After`` before
    any run; once the database is back the same key runs, once, and is replayed."""
    relay = _Relay(pg_cluster.port)
    await relay.start()
    relayed_url = f"postgresql://postgres@127.0.0.1:{relay.port}/{pg_url.rsplit('/', 1)[1]}"
    raw = with_postgres(gateway_config(mock_upstream.url), relayed_url)
    try:
        async with serve_gateway(raw, tmp_path / "state") as (url, _), aiohttp.ClientSession() as session:
            await relay.stop()
            status, headers, down = await _post(session, url, body(stream=False), KEY)
            assert (status, headers["Retry-After"], json.loads(down)) == (503, "1", {"error": {
                "message": "idempotency store unavailable", "type": "api_error", "param": None, "code": None,
            }})  # fmt: skip
            assert mock_upstream.stats.requests == 0
            await relay.start()
            first = await _post(session, url, body(stream=False), KEY)
            again = await _post(session, url, body(stream=False), KEY)
        assert (first[0], again[0], again[2], again[1]["Idempotent-Replayed"]) == (200, 200, first[2], "true")
        assert mock_upstream.stats.requests == 1
    finally:
        await relay.stop()
