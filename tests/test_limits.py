"""Limits: in-flight run cap, body size before reading, body timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openclaw_http_compat import (
    RunEnd,
    TextDelta,
)

from .conftest import ScriptedRunner, events_script

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_runs_past_the_cap_get_429(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """With maxConcurrentRuns 2, a third concurrent run is refused at once with 429 and Retry-After."""
    release = asyncio.Event()

    async def slow(request: Any) -> Any:
        await release.wait()
        yield TextDelta("done")
        yield RunEnd()

    runner.script = slow
    client = await gateway_client(endpoint={"maxConcurrentRuns": 2})
    body = {"model": "openclaw", "messages": MESSAGES}
    first = asyncio.ensure_future(client.post("/v1/chat/completions", json=body, headers=auth_headers))
    second = asyncio.ensure_future(client.post("/v1/chat/completions", json=body, headers=auth_headers))
    while len(runner.requests) < 2:
        await asyncio.sleep(0.01)
    third = await client.post("/v1/chat/completions", json=body, headers=auth_headers)
    assert third.status == 429
    assert third.headers["Retry-After"] == "1"
    assert await third.json() == {"error": {
        "message": "Too many agent runs in flight. Please retry shortly.",
        "type": "rate_limit_error", "param": None, "code": "concurrency_limit"}}
    release.set()
    assert [(await first).status, (await second).status] == [200, 200]
    runner.script = events_script(TextDelta("again"), RunEnd())
    fourth = await client.post("/v1/chat/completions", json=body, headers=auth_headers)
    assert fourth.status == 200


async def test_declared_oversized_body_is_413_before_reading(gateway_client: Any, auth_headers: dict[str, str]) -> None:
    """A Content-Length over maxBodyBytes gets 413 without the body being read."""
    client = await gateway_client(endpoint={"maxBodyBytes": 64})

    async def never_finishes() -> Any:
        yield b'{"model": "openclaw", "messages": ['
        await asyncio.sleep(30)

    resp = await client.post(
        "/v1/chat/completions",
        data=never_finishes(),
        headers={**auth_headers, "Content-Length": "100000", "Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert await resp.json() == {"error": {"message": "Payload too large", "type": "invalid_request_error",
                                           "param": None, "code": None}}


async def test_streamed_oversized_body_is_413(gateway_client: Any, auth_headers: dict[str, str]) -> None:
    """A chunked body that grows past maxBodyBytes gets 413."""
    client = await gateway_client(endpoint={"maxBodyBytes": 64})

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 32

    resp = await client.post("/v1/chat/completions", data=chunks(), headers=auth_headers)
    assert resp.status == 413


async def test_trickling_body_gets_408(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """A body still arriving after bodyTimeoutMs gets 408, and no run starts."""
    client = await gateway_client(endpoint={"bodyTimeoutMs": 200})

    async def trickle() -> Any:
        for piece in (b'{"model": ', b'"openclaw", ', b'"messages": []}'):
            yield piece
            await asyncio.sleep(0.15)

    resp = await client.post("/v1/chat/completions", data=trickle(), headers=auth_headers)
    assert resp.status == 408
    assert await resp.json() == {"error": {"message": "Request body timeout", "type": "invalid_request_error",
                                           "param": None, "code": None}}
    assert runner.requests == []


async def test_number_too_long_is_400_without_python_wording(gateway_client: Any, auth_headers: dict[str, str]) -> None:
    """An integer past Python's digit limit is a 400 whose message names no interpreter internals."""
    client = await gateway_client()
    resp = await client.post(
        "/v1/chat/completions",
        data=b'{"model": "openclaw", "seed": ' + b"1" * 5000 + b"}",
        headers={**auth_headers, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert await resp.json() == {"error": {"message": "Request body has a number too long to parse.",
                                           "type": "invalid_request_error", "param": None, "code": None}}


@pytest.mark.parametrize("header", ["x-openclaw-session-key", "Authorization"])
async def test_oversized_header_is_refused_before_any_run(
    gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str], header: str
) -> None:
    """A header past aiohttp's 8 KiB field limit is refused by the parser: a 4xx, and no run starts."""
    client = await gateway_client()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "messages": MESSAGES},
        headers={**auth_headers, header: "k" * 10_000},
    )
    assert resp.status == 400
    assert runner.requests == []
