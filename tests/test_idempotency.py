"""``Idempotency-Key``, SDK retries and ``onDisconnect`` through the real plugin stack, with a
scripted runner: every rule of the key, and the runner contract for runs in a task of their own.

The reference gateway's versions (real upstream, the openai SDK, PostgreSQL, two processes)
are in ``tests/reference/test_retries.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest
from aiohttp import ClientResponse, web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import AgentEvent, AgentRunRequest, Host, RunEnd, RunError, SharedSecretAuthenticator
from openclaw_http_compat import TextDelta, auth_middleware, setup
from openclaw_http_compat.idempotency import MemoryIdempotencyStore, fingerprint, key_digest, valid_key
from openclaw_http_compat.keys import LIVE_RUNS_KEY, RUNS_KEY

from .conftest import (
    COMPLETIONS,
    DONE,
    TOKEN,
    GatewayClient,
    ProductionLikeServer,
    ScriptedRunner,
    chat_body,
    content_chunk,
    error_body,
    finish_chunk,
    identity_of,
    make_config,
    make_gateway,
    role_chunk,
    wait_for,
)
from .test_runner_contract import ANSWER_S, DeadlineRunner

KEY: Final = "Idempotency-Key"


class GatedRunner(ScriptedRunner):
    """Answers ``first:`` at once, then ``second`` once :attr:`gate` is set."""

    def __init__(self) -> None:
        super().__init__(self._script)
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def _script(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        self.started.set()
        yield TextDelta("first:")
        await self.gate.wait()
        yield TextDelta(f"second ({request.message})")
        yield RunEnd()


def auth(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **headers}


class Gateway:
    """A test client of a gateway with the plugin, and the plugin's run tables."""

    def __init__(self, client: GatewayClient, subapp: web.Application) -> None:
        self.client = client
        self.post = client.post
        self.server = client.server
        self.live = subapp[LIVE_RUNS_KEY]
        self.runs = subapp[RUNS_KEY]


async def gateway(aiohttp_client: AiohttpClient, runner: Any, *, store: Any = None, **endpoint: Any) -> Gateway:
    """Served like ``web.run_app`` (no handler cancellation); ``endpoint``: chatCompletions keys."""
    config = make_config(endpoint=endpoint)
    authenticator = SharedSecretAuthenticator(config.auth)
    app = web.Application(middlewares=[auth_middleware(authenticator)])
    subapp = setup(app, config, Host(runner=runner, authenticator=authenticator, roster=config.agents, idempotency=store))
    assert subapp is not None
    return Gateway(await aiohttp_client(ProductionLikeServer(app)), subapp)


def followers(gw: Gateway) -> int:
    """How many requests follow the one keyed run in flight."""
    return sum(run.clients for run in gw.live.by_key.values())


async def answer(resp: ClientResponse) -> tuple[int, dict[str, str], bytes]:
    body = await resp.read()
    keep = ("Content-Type", "x-request-id", "Idempotent-Replayed", "Retry-After")
    return resp.status, {k: resp.headers[k] for k in keep if k in resp.headers}, body


# --- the header -------------------------------------------------------------------------------


def test_key_syntax() -> None:
    assert [valid_key(k) for k in ("a", "x" * 255, "x" * 256, "", "a b", "é", "a\tb", '"q"')] == [
        True, True, False, False, False, False, False, True,
    ]  # fmt: skip


def test_digests_scope_keys_to_the_principal_and_fingerprints_cover_the_run_headers() -> None:
    assert key_digest("alice", "k") != key_digest("bob", "k")
    assert key_digest("a", "bk") != key_digest("ab", "k")
    assert len(key_digest("alice", "k")) == 64 and "alice" not in key_digest("alice", "k")
    body = chat_body("hi")
    assert fingerprint(body, {}) == fingerprint(dict(reversed(body.items())), {"x-other": "1"})
    for header in ("x-openclaw-agent-id", "x-openclaw-session-key", "x-openclaw-model", "x-openclaw-message-channel"):
        assert fingerprint(body, {header: "v"}) != fingerprint(body, {})
    assert fingerprint(chat_body("hi", user="u"), {}) != fingerprint(body, {})


@pytest.mark.parametrize("value", ["x" * 256, "a b", "caf\u00e9"], ids=("too-long", "space", "non-ascii"))
async def test_malformed_key_is_a_400_naming_the_header(aiohttp_client: AiohttpClient, value: str) -> None:
    runner = ScriptedRunner()
    client = await gateway(aiohttp_client, runner)
    headers = auth()
    raw = value.encode("utf-8").decode("latin-1")
    resp = await client.post(COMPLETIONS, json=chat_body(), headers={**headers, KEY: raw})
    assert resp.status == 400
    assert await resp.json() == error_body(
        "`Idempotency-Key` must be 1 to 255 visible ASCII characters.",
        param="Idempotency-Key",
        code="invalid_idempotency_key",
    )
    assert runner.requests == []


# --- replay and attach ------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_repeat_after_the_end_is_replayed_exactly_without_a_run(
    aiohttp_client: AiohttpClient, streamed: bool
) -> None:
    runner = ScriptedRunner()
    client = await gateway(aiohttp_client, runner)
    body = chat_body("hi", stream=streamed)
    first = await answer(await client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k-1"})))
    second = await answer(await client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k-1"})))
    assert len(runner.requests) == 1
    status, headers, raw = first
    assert status == 200 and "Idempotent-Replayed" not in headers
    assert second == (status, {**headers, "Idempotent-Replayed": "true"}, raw)
    if streamed:
        text = raw.decode()
        ident = identity_of(text)
        assert text == role_chunk(ident) + content_chunk(ident, "echo: hi") + finish_chunk(ident) + DONE
        assert headers["x-request-id"] == ident.id
    # Another key is another run.
    await answer(await client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k-2"})))
    assert len(runner.requests) == 2


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_repeat_while_running_attaches_and_gets_the_whole_answer(
    aiohttp_client: AiohttpClient, streamed: bool
) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner, streamHoldMs=0)
    body = chat_body("hi", stream=streamed)
    first = asyncio.ensure_future(client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k"})))
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    if streamed:
        # The first client has read the head and the first frames before the repeat comes.
        resp = await first
        head = await resp.content.readuntil(b"first:\"},\"finish_reason\":null}]}\n\n")
        repeat = asyncio.ensure_future(client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k"})))
        await wait_for(lambda: followers(client) == 2)
        runner.gate.set()
        raw_first = head + await resp.read()
        second = await answer(await repeat)
        assert second[2] == raw_first
        text = raw_first.decode()
        ident = identity_of(text)
        assert text == (role_chunk(ident) + content_chunk(ident, "first:") + content_chunk(ident, "second (hi)")
                        + finish_chunk(ident) + DONE)  # fmt: skip
        assert second[1]["Idempotent-Replayed"] == "true"
    else:
        repeat = asyncio.ensure_future(client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k"})))
        await wait_for(lambda: followers(client) == 2)
        runner.gate.set()
        one, two = await answer(await first), await answer(await repeat)
        assert one[0] == 200 and two == (200, {**one[1], "Idempotent-Replayed": "true"}, one[2])
    assert len(runner.requests) == 1
    await wait_for(lambda: client.runs.in_flight == 0)


async def test_same_key_with_another_request_is_a_422(aiohttp_client: AiohttpClient) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner)
    running = asyncio.ensure_future(client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{KEY: "k"})))
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    reused = error_body(
        "This Idempotency-Key was used with a different request.",
        param="Idempotency-Key",
        code="idempotency_key_reused",
    )
    # While it runs, and after: another body, or another run header.
    for headers in ({}, {"x-openclaw-session-key": "s"}):
        resp = await client.post(COMPLETIONS, json=chat_body("other"), headers=auth(**{KEY: "k"}, **headers))
        assert (resp.status, await resp.json()) == (422, reused)
    runner.gate.set()
    assert (await running).status == 200
    resp = await client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{KEY: "k", "x-openclaw-model": "m"}))
    assert (resp.status, await resp.json()) == (422, reused)
    assert len(runner.requests) == 1


async def test_records_expire_after_the_ttl(aiohttp_client: AiohttpClient) -> None:
    now = [1_000_000.0]
    store = MemoryIdempotencyStore(clock=lambda: now[0])
    runner = ScriptedRunner()
    client = await gateway(aiohttp_client, runner, store=store, idempotency={"ttlMs": 60_000})
    ids = []
    for advance in (0.0, 59.0, 2.0):
        now[0] += advance
        resp = await client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{KEY: "k"}))
        ids.append((await resp.json())["id"])
        # Recorded (at this clock's time) once the run's task settled.
        await wait_for(lambda: not client.live.by_key)
    # Replayed within the minute, run again after it.
    assert ids[0] == ids[1] != ids[2]
    assert len(runner.requests) == 2
    assert len(store) == 1


async def test_a_run_aborted_because_its_client_left_releases_its_key(aiohttp_client: AiohttpClient) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner)
    first = asyncio.ensure_future(client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{KEY: "k"})))
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    first.cancel()
    await wait_for(lambda: len(runner.aborted) == 1)
    await wait_for(lambda: client.runs.in_flight == 0)
    runner.gate.set()
    resp = await client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{KEY: "k"}))
    body = await resp.json()
    assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
    assert body["choices"][0]["message"]["content"] == "first:second (hi)"
    assert len(runner.requests) == 2


async def test_a_failure_the_client_would_retry_is_not_kept(aiohttp_client: AiohttpClient) -> None:
    calls = []

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        calls.append(request.run_id)
        if len(calls) == 1:
            yield RunError(message="slow down", reason="rate_limit", status=429, retry_after=2)
        else:
            yield TextDelta("ok")
            yield RunEnd()

    client = await gateway(aiohttp_client, ScriptedRunner(script))
    first = await client.post(COMPLETIONS, json=chat_body(), headers=auth(**{KEY: "k"}))
    assert (first.status, first.headers["Retry-After"]) == (429, "2")
    second = await client.post(COMPLETIONS, json=chat_body(), headers=auth(**{KEY: "k"}))
    assert second.status == 200 and (await second.json())["choices"][0]["message"]["content"] == "ok"
    third = await client.post(COMPLETIONS, json=chat_body(), headers=auth(**{KEY: "k"}))
    assert third.headers["Idempotent-Replayed"] == "true"
    assert len(calls) == 2


# --- SDK retries and onDisconnect ---------------------------------------------------------------


async def test_first_attempts_are_never_merged(aiohttp_client: AiohttpClient) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner)
    headers = auth(**{"x-stainless-retry-count": "0"})
    both = [asyncio.ensure_future(client.post(COMPLETIONS, json=chat_body("hi"), headers=headers)) for _ in range(2)]
    await wait_for(lambda: len(runner.requests) == 2)
    runner.gate.set()
    ids = {(await (await b).json())["id"] for b in both}
    assert len(ids) == 2


async def test_a_retry_attaches_to_the_run_its_first_attempt_left(aiohttp_client: AiohttpClient) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner)
    first = asyncio.ensure_future(
        client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{"x-stainless-retry-count": "0"}))
    )
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    first.cancel()
    live = client.live
    await wait_for(lambda: all(r.clients == 0 for r in live.by_retry.values()))
    retry = asyncio.ensure_future(
        client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{"x-stainless-retry-count": "1"}))
    )
    await wait_for(lambda: all(r.clients == 1 for r in live.by_retry.values()))
    runner.gate.set()
    resp = await retry
    assert resp.headers["Idempotent-Replayed"] == "true"
    assert (await resp.json())["choices"][0]["message"]["content"] == "first:second (hi)"
    assert (len(runner.requests), runner.aborted) == (1, [])
    # A retry of another question runs it.
    resp = await client.post(COMPLETIONS, json=chat_body("other"), headers=auth(**{"x-stainless-retry-count": "1"}))
    assert resp.status == 200 and len(runner.requests) == 2


async def test_no_retry_within_the_window_aborts(aiohttp_client: AiohttpClient) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner, reattachMs=50)
    first = asyncio.ensure_future(
        client.post(COMPLETIONS, json=chat_body("hi"), headers=auth(**{"x-stainless-retry-count": "0"}))
    )
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    first.cancel()
    await wait_for(lambda: len(runner.aborted) == 1)
    await wait_for(lambda: client.runs.in_flight == 0 and not client.live.by_retry)


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_on_disconnect_finish_completes_the_run_and_keeps_its_answer(
    aiohttp_client: AiohttpClient, streamed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The run goes on without its client, holding its slot (maxConcurrentRuns 1: another
    request meanwhile is a 429), is logged, and its answer is replayed to the key's repeat."""
    caplog.set_level(logging.INFO, logger="openclaw_http_compat")
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner, onDisconnect="finish", streamHoldMs=0, maxConcurrentRuns=1)
    body = chat_body("hi", stream=streamed)
    first = asyncio.ensure_future(client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k"})))
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    if streamed:
        await (await first).content.readuntil(b"first:")
        (await first).close()
    else:
        first.cancel()
    live = client.live
    await wait_for(lambda: all(r.clients == 0 for r in live.by_key.values()))
    # The slot stays taken while the detached run goes on.
    assert client.runs.in_flight == 1
    busy = await client.post(COMPLETIONS, json=chat_body("another"), headers=auth())
    assert (busy.status, (await busy.json())["error"]["code"]) == (429, "concurrency_limit")
    runner.gate.set()
    await wait_for(lambda: len(runner.finished) == 1 and client.runs.in_flight == 0)
    resp = await client.post(COMPLETIONS, json=body, headers=auth(**{KEY: "k"}))
    assert resp.headers["Idempotent-Replayed"] == "true"
    raw = (await resp.read()).decode()
    assert "second (hi)" in raw
    assert (len(runner.requests), runner.aborted) == (1, [])
    run_id = runner.requests[0].run_id
    assert f"run {run_id} continues without its client (onDisconnect: finish)" in caplog.messages
    assert f"detached run {run_id} finished" in caplog.messages


async def test_shutdown_ends_a_detached_run(aiohttp_client: AiohttpClient) -> None:
    runner = GatedRunner()
    client = await gateway(aiohttp_client, runner, onDisconnect="finish")
    first = asyncio.ensure_future(client.post(COMPLETIONS, json=chat_body("hi"), headers=auth()))
    await asyncio.wait_for(runner.started.wait(), ANSWER_S)
    first.cancel()
    live = client.live
    await wait_for(lambda: len(live.tasks) == 1 and client.runs.in_flight == 1)
    task = next(iter(live.tasks))
    await client.server.close()
    assert task.done() and runner.aborted == [runner.requests[0].run_id]
    assert client.runs.in_flight == 0


# --- the runner contract, for a run in a task of its own -----------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_runner_contract_holds_in_the_runs_own_task(aiohttp_client: AiohttpClient, streamed: bool) -> None:
    runner = DeadlineRunner(timeout_s=5, think_s=0.01)
    client = await aiohttp_client(make_gateway(make_config(), runner))
    resp = await client.post(COMPLETIONS, json=chat_body("hi", stream=streamed), headers=auth(**{KEY: "k"}))
    text = await resp.text()
    assert resp.status == 200
    for piece in ("started;", " trace=trace-of-hi;", " same task=True"):
        assert piece.replace('"', '\\"') in text
    assert (runner.seen_at_close, runner.ended_by) == (["trace-of-hi"], [])
