"""The held head of a streamed answer (#10, F7): errors before the answer starts are real HTTP errors.

A streamed response's head (and role chunk) waits for the run's first event, or
``chatCompletions.streamHoldMs`` at most. A run failing before then gets its real status, the
JSON envelope and ``Retry-After``, as the non-streamed answer does; after the head, errors are
in-band frames. Every test runs the real stack and checks exact bytes.
"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Final

import pytest
from aiohttp import ClientResponse, web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import AgentEvent, AgentRunRequest, RunEnd, RunError, RunUsage, TextDelta
from openclaw_http_compat.keys import RUNS_KEY
from openclaw_http_compat.registry import RunRegistry
from openclaw_http_compat.stream import ChatEventStream

from .conftest import (
    DONE,
    KEEPALIVE,
    ClientFactory,
    GatewayClient,
    ScriptedRunner,
    chat_body,
    compact,
    content_chunk,
    error_body,
    error_frame,
    events_script,
    failing_script,
    finish_chunk,
    identity_of,
    make_config,
    make_gateway,
    role_chunk,
    stalled_script,
    usage_chunk,
    wait_for,
)
from .test_handlers import post, refused
from .test_stream import sse_text, stream

#: The x-request-id of an answer that is not a completion (an error answered as JSON).
REQUEST_ID: Final = re.compile(r"^req_[0-9a-f]{32}$")
#: Tasks a streamed answer may start; none may outlive it.
STREAM_TASKS: Final = frozenset({"HeldStream._send_head", "ChatEventStream._ping"})

RATE_LIMITED = RunError(message="Rate limit reached for gpt-x", reason="rate_limit", status=429, retry_after=3)
CONTEXT_OVERFLOW = RunError(
    message="requested 287 tokens (279 in the messages, 8 in the completion). Please reduce the length.",
    reason="format",
    status=400,
    code="context_length_exceeded",
)
UNREACHABLE = RunError(message="Cannot connect to host 127.0.0.1:9", reason="unreachable")


def registry_of(client: GatewayClient) -> RunRegistry:
    """The plugin's run registry, found on the gateway's mounted sub-app."""
    assert client.app is not None
    (subapp,) = [r.get_info()["app"] for r in client.app.router.resources() if isinstance(r, web.PrefixedSubAppResource)]
    return subapp[RUNS_KEY]


def stream_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") in STREAM_TASKS]


async def nothing_left(client: GatewayClient) -> None:
    """No run slot, no watched task, no head or keep-alive task is left once an answer is over."""
    registry = registry_of(client)
    await wait_for(lambda: registry.in_flight == 0 and not registry.tasks and not stream_tasks())


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler (an unretrieved task exception, say) meanwhile."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        yield reported
    finally:
        loop.set_exception_handler(None)


async def next_frame(resp: ClientResponse) -> str:
    return (await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)).decode()


def gated_script(gate: asyncio.Event, *events: AgentEvent) -> Any:
    """A script silent until ``gate`` is set, then yielding ``events``."""

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        await gate.wait()
        for event in events:
            yield event

    return script


# --- failures before the head: real HTTP errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "body", "retry_after"),
    [
        (RATE_LIMITED, 429, error_body("Rate limit reached for gpt-x", "rate_limit_error"), "3"),
        (CONTEXT_OVERFLOW, 400, error_body(CONTEXT_OVERFLOW.message, code="context_length_exceeded"), None),
        (UNREACHABLE, 502, error_body("upstream unreachable", "api_error"), None),
    ],
    ids=("rate-limit-429", "context-length-400", "unreachable-502"),
)
async def test_a_run_failing_first_is_a_real_http_error(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                        error: RunError, status: int, body: dict[str, Any],
                                                        retry_after: str | None) -> None:
    """A streamed run whose first event is a RunError is answered as the JSON path answers it: the exact status,
    the envelope and Retry-After; no SSE byte."""
    runner.script = events_script(error, TextDelta("never read"))
    client = await gateway_client()
    for streamed in (True, False):
        resp = await post(client, chat_body(stream=streamed))
        assert resp.status == status
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.text() == compact(body)
        assert resp.headers.get("Retry-After") == retry_after
        assert REQUEST_ID.match(resp.headers["x-request-id"])
    assert runner.finished == [r.run_id for r in runner.requests]
    await nothing_left(client)


async def test_an_unmet_forced_tool_choice_known_before_the_head_is_502(gateway_client: ClientFactory,
                                                                        runner: ScriptedRunner) -> None:
    """A run ending at once (RunEnd first) without the forced call: nothing went out yet, so 502 as the JSON path.
    (Once an event arrived, the head is out and it is an in-band frame: test_stream.py.)"""
    runner.script = events_script(RunEnd())
    client = await gateway_client()
    body = chat_body(stream=True, tools=[{"type": "function", "function": {"name": "get_weather"}}],
                     tool_choice="required")
    await refused(await post(client, body), 502,
                  error_body("tool_choice=required was not satisfied by the agent response", "api_error"))


async def test_a_run_ending_before_the_head_streams_whole(gateway_client: ClientFactory,
                                                          runner: ScriptedRunner) -> None:
    """A run whose first event is its end is answered as one ordinary stream: head, role, stand-in, finish, usage."""
    runner.script = events_script(RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(stream_options={"include_usage": True})))
    assert text == (role_chunk(ident) + content_chunk(ident, "No response from OpenClaw.") + finish_chunk(ident)
                    + usage_chunk(ident, None) + DONE)


# --- after the head: in-band ---------------------------------------------------------------------


async def test_a_silent_run_gets_its_head_when_the_hold_expires(gateway_client: ClientFactory,
                                                                runner: ScriptedRunner) -> None:
    """Silent past ``streamHoldMs``: the head and role chunk go out then, keep-alives follow, then the content."""
    gate = asyncio.Event()
    runner.script = gated_script(gate, TextDelta("late"), RunEnd())
    client = await gateway_client(endpoint={"streamHoldMs": 100, "keepaliveMs": 30})
    started = asyncio.get_running_loop().time()
    resp = await asyncio.wait_for(stream(client), 2)
    held_for = asyncio.get_running_loop().time() - started
    assert 0.1 <= held_for < 1.5
    first = await next_frame(resp)
    ident = identity_of(first)
    assert first == role_chunk(ident)
    assert resp.headers["x-request-id"] == ident.id
    assert [await next_frame(resp), await next_frame(resp)] == [KEEPALIVE, KEEPALIVE]
    assert not gate.is_set()  # the head and the keep-alives came before the first content
    gate.set()
    rest = (await resp.read()).decode()
    assert rest.replace(KEEPALIVE, "") == content_chunk(ident, "late") + finish_chunk(ident) + DONE
    await nothing_left(client)


async def test_a_run_error_after_the_hold_is_in_band(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A RunError after the hold expired, before any content: the head is out, so an error frame and [DONE]."""
    gate = asyncio.Event()
    runner.script = gated_script(gate, RATE_LIMITED)
    client = await gateway_client(endpoint={"streamHoldMs": 50})
    resp = await stream(client)
    first = await next_frame(resp)
    ident = identity_of(first)
    gate.set()
    rest = (await resp.read()).decode()
    assert first + rest == role_chunk(ident) + error_frame("Rate limit reached for gpt-x", "rate_limit_error") + DONE
    assert "Retry-After" not in resp.headers
    await nothing_left(client)


async def test_any_first_event_sends_the_head(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A first event that writes no frame (usage) still means the run is answering: the head goes out at once,
    long before the hold, and a later failure is in-band."""
    gate = asyncio.Event()

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        yield RunUsage(input=3)
        await gate.wait()
        yield UNREACHABLE

    runner.script = script
    client = await gateway_client(endpoint={"streamHoldMs": 5000})
    resp = await asyncio.wait_for(stream(client), 2)
    first = await next_frame(resp)
    ident = identity_of(first)
    gate.set()
    rest = (await resp.read()).decode()
    assert first + rest == role_chunk(ident) + error_frame("upstream unreachable") + DONE


async def test_no_hold_keeps_every_failure_in_band(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """``streamHoldMs: 0`` sends the head at once: even a first-event RunError is an in-band frame (as before #10)."""
    runner.script = events_script(RATE_LIMITED)
    client = await gateway_client(endpoint={"streamHoldMs": 0})
    text, ident = await sse_text(await stream(client))
    assert text == role_chunk(ident) + error_frame("Rate limit reached for gpt-x", "rate_limit_error") + DONE
    await nothing_left(client)


# --- client gone and shutdown before the head --------------------------------------------------------


@pytest.mark.parametrize("handler_cancellation", [True, False], ids=("cancelling-server", "run_app-default"))
async def test_client_gone_before_the_head(gateway_client: ClientFactory, runner: ScriptedRunner,
                                           handler_cancellation: bool) -> None:
    """A client leaving while the head is held aborts the run (the registry's polling finds it within 0.25 s when
    aiohttp does not cancel the handler); the hold timer never fires afterwards, and no task or run slot is left."""
    hold_ms = 1000
    hold_s = hold_ms / 1000
    runner.script = stalled_script()
    client = await gateway_client(handler_cancellation=handler_cancellation, endpoint={"streamHoldMs": hold_ms})
    loop = asyncio.get_running_loop()
    with loop_errors() as reported:
        started = loop.time()
        pending = asyncio.ensure_future(post(client, chat_body(stream=True)))
        await wait_for(lambda: bool(runner.requests))
        pending.cancel()
        await wait_for(lambda: runner.aborted == [runner.requests[0].run_id])
        assert loop.time() - started < hold_s
        await nothing_left(client)
        # Past the hold: a timer left armed would now start a head for a request long gone,
        # and its failure would reach the loop's exception handler.
        await asyncio.sleep(hold_s + 0.1 - (loop.time() - started))
        gc.collect()
        assert stream_tasks() == []
    assert reported == []
    assert runner.finished == []


async def test_shutdown_before_the_head_is_503(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Shutdown while the head is held: 503 ``shutting_down`` JSON, as the non-streamed answer; the run is aborted."""
    runner.script = stalled_script()
    client = await gateway_client()
    pending = asyncio.ensure_future(post(client, chat_body(stream=True)))
    await wait_for(lambda: bool(runner.requests))
    started = asyncio.get_running_loop().time()
    await client.server.close()
    resp = await asyncio.wait_for(pending, 1)
    assert asyncio.get_running_loop().time() - started < 1
    await refused(resp, 503, error_body("The gateway is shutting down.", "api_error", code="shutting_down"))
    assert (runner.aborted, runner.finished) == ([runner.requests[0].run_id], [])
    assert stream_tasks() == []


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_a_runner_raising_first_leaves_nothing_behind(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                            streamed: bool) -> None:
    """A runner raising before its first event is a 500, streamed or not, and its task is no longer watched."""
    runner.script = failing_script()
    client = await gateway_client()
    await refused(await post(client, chat_body(stream=streamed)), 500, error_body("internal error", "api_error"))
    await nothing_left(client)


async def test_shutdown_while_the_timer_sends_the_head(aiohttp_client: AiohttpClient) -> None:
    """Shutdown cancels the request's task while it waits for the head the hold timer is sending (held up here by
    the gateway's own ``on_response_prepare``): the head is not cut short, and the stream ends properly after it."""
    first_event, head_released, preparing = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if isinstance(response, ChatEventStream):
            preparing.set()
            await head_released.wait()

    runner = ScriptedRunner(gated_script(first_event, TextDelta("never written")))
    app = make_gateway(make_config(endpoint={"streamHoldMs": 50}), runner)
    app.on_response_prepare.append(slow_prepare)
    client = await aiohttp_client(app)
    pending = asyncio.ensure_future(post(client, chat_body(stream=True)))
    await asyncio.wait_for(preparing.wait(), 2)  # the timer's task is sending the head
    first_event.set()  # the request's task now waits for that head before writing its first event
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(client.server.close())
    await asyncio.sleep(0.05)
    head_released.set()
    resp = await asyncio.wait_for(pending, 2)
    text = (await asyncio.wait_for(resp.read(), 2)).decode()
    await asyncio.wait_for(closing, 2)
    ident = identity_of(text)
    assert resp.status == 200
    assert text == role_chunk(ident) + error_frame("The gateway is shutting down.", code="shutting_down") + DONE
    assert runner.aborted == [ident.id]
    assert stream_tasks() == []
