"""The runner contract (``host.AgentRunner``) through the real stack, streamed and not.

A runner may set a ``contextvars.ContextVar`` and enter ``asyncio.timeout()`` before its first
``yield`` and rely on both after it, because the plugin reads every event in the request's own
task. These tests hold the plugin to that, with a runner written the way tracing and deadlines
are usually written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Final

import pytest
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import AgentEvent, AgentRunRequest, RunEnd, RunError, TextDelta

from .conftest import (
    DONE,
    GatewayClient,
    ProductionLikeServer,
    ScriptedRunner,
    chat_body,
    content_chunk,
    error_body,
    error_frame,
    failing_script,
    finish_chunk,
    identity_of,
    make_config,
    make_gateway,
    role_chunk,
    wait_for,
)
from .test_handlers import completion, completion_of, post, refused
from .test_stream import sse_text, stream

#: Stands for a logging or OpenTelemetry context: set by the run, read after its first yield.
TRACE: Final[ContextVar[str]] = ContextVar("trace")
LOST: Final = "<lost>"
#: Every answer here takes milliseconds; a context or deadline lost on the way would leave a
#: run, or the response, hanging instead of failing the test.
ANSWER_S: Final = 5.0


class DeadlineRunner:
    """Sets ``TRACE`` and enters ``asyncio.timeout(timeout_s)`` before its first ``yield``.

    Before its first event it waits for ``before`` when given (the stream's hold timer may fire
    meanwhile). After the first event it thinks for ``think_s`` (forever when ``None``), then
    reports what it still sees: the trace, and whether it is still in the task that started it. A deadline
    that expires is reported as ``RunError(reason="timeout")``. ``seen_at_close`` records the
    trace each run's ``finally`` saw, and ``ended_by`` what ended a run before its last event
    (the ``GeneratorExit`` the plugin's ``aclose()`` throws in at that last ``yield`` is not one).
    """

    def __init__(self, *, timeout_s: float, think_s: float | None, before: asyncio.Event | None = None) -> None:
        self.timeout_s = timeout_s
        self.think_s = think_s
        self.before = before
        self.started = asyncio.Event()
        self.seen_at_close: list[str] = []
        self.ended_by: list[str] = []

    async def run(self, request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        token = TRACE.set(f"trace-of-{request.message}")
        last = False
        try:
            async with asyncio.timeout(self.timeout_s):
                task = asyncio.current_task()
                self.started.set()
                if self.before is not None:
                    await self.before.wait()
                yield TextDelta("started;")
                if self.think_s is None:
                    await asyncio.Event().wait()
                else:
                    await asyncio.sleep(self.think_s)
                yield TextDelta(f" trace={TRACE.get(LOST)};")
                yield TextDelta(f" same task={asyncio.current_task() is task}")
                last = True
                yield RunEnd()
        except TimeoutError:
            last = True
            yield RunError(message="the model took too long", reason="timeout")
        except BaseException as exc:
            if not last:
                self.ended_by.append(type(exc).__name__)
            raise
        finally:
            self.seen_at_close.append(TRACE.get(LOST))
            # Raises ValueError if the run is closed in another context than it started in.
            TRACE.reset(token)


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_context_and_deadline_set_before_the_first_yield_hold_after_it(
    aiohttp_client: AiohttpClient, streamed: bool
) -> None:
    """The ContextVar set before the first event is read back after it, in the same task; the deadline exits clean.

    The deadline firing after the first event is the next test.
    """
    runner = DeadlineRunner(timeout_s=5, think_s=0.01)
    client = await aiohttp_client(make_gateway(make_config(), runner))
    texts = ["started;", " trace=trace-of-hi;", " same task=True"]
    async with asyncio.timeout(ANSWER_S):
        if streamed:
            text, ident = await sse_text(await stream(client, chat_body("hi")))
            assert text == (role_chunk(ident) + "".join(content_chunk(ident, t) for t in texts)
                            + finish_chunk(ident) + DONE)
        else:
            body = await completion_of(await post(client, chat_body("hi")))
            assert body == completion(body, "".join(texts))
    assert (runner.seen_at_close, runner.ended_by) == (["trace-of-hi"], [])


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_deadline_entered_before_the_first_yield_expires_after_it(
    aiohttp_client: AiohttpClient, streamed: bool
) -> None:
    """The deadline fires while the runner awaits after its first event; its RunError is answered, mapped."""
    runner = DeadlineRunner(timeout_s=0.05, think_s=None)
    client = await aiohttp_client(make_gateway(make_config(), runner))
    started = time.monotonic()
    async with asyncio.timeout(ANSWER_S):
        if streamed:
            text, ident = await sse_text(await stream(client, chat_body("hi")))
            assert text == (role_chunk(ident) + content_chunk(ident, "started;")
                            + error_frame("upstream provider timeout", "api_error") + DONE)
        else:
            await refused(await post(client, chat_body("hi")), 504,
                          error_body("upstream provider timeout", "api_error"))
    assert time.monotonic() - started < 2
    assert (runner.seen_at_close, runner.ended_by) == (["trace-of-hi"], [])


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_an_abort_reaches_the_runner_in_its_own_context(aiohttp_client: AiohttpClient, streamed: bool) -> None:
    """A client that leaves cancels the run at its await, in the request's task: ``finally`` still sees the trace.

    Served without ``handler_cancellation``, so the run registry's disconnect polling does the abort.
    """
    runner = DeadlineRunner(timeout_s=30, think_s=None)
    client: GatewayClient = await aiohttp_client(ProductionLikeServer(make_gateway(make_config(), runner)))
    async with asyncio.timeout(ANSWER_S):
        if streamed:
            resp = await stream(client, chat_body("hi"))
            head = (await resp.content.readuntil(b"\n\n")).decode()
            head += (await resp.content.readuntil(b"\n\n")).decode()
            ident = identity_of(head)
            assert head == role_chunk(ident) + content_chunk(ident, "started;")
            resp.close()
        else:
            pending = asyncio.ensure_future(post(client, chat_body("hi")))
            await runner.started.wait()
            pending.cancel()
    await wait_for(lambda: bool(runner.seen_at_close))
    assert (runner.seen_at_close, runner.ended_by) == (["trace-of-hi"], ["CancelledError"])


@pytest.mark.parametrize("streamed", [False, True], ids=("json", "sse"))
async def test_a_runner_failing_before_its_first_event_leaves_nothing_behind(
    aiohttp_client: AiohttpClient, streamed: bool
) -> None:
    """A runner raising before any event is answered 500 ``internal error``, streamed or not (the stream's head
    was still held); nothing reaches the loop's handler."""
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        client = await aiohttp_client(make_gateway(make_config(), ScriptedRunner(failing_script())))
        async with asyncio.timeout(ANSWER_S):
            await refused(await post(client, chat_body("hi", stream=streamed)), 500,
                          error_body("internal error", "api_error"))
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_context_and_deadline_hold_when_the_head_went_out_first(aiohttp_client: AiohttpClient) -> None:
    """The hold timer sends the head while the runner still works towards its first event, in its own task:
    the ContextVar and the deadline the runner entered before that event still hold after it."""
    before = asyncio.Event()
    runner = DeadlineRunner(timeout_s=5, think_s=0.01, before=before)
    client = await aiohttp_client(make_gateway(make_config(endpoint={"streamHoldMs": 50}), runner))
    texts = ["started;", " trace=trace-of-hi;", " same task=True"]
    async with asyncio.timeout(ANSWER_S):
        resp = await stream(client, chat_body("hi"))
        head = (await resp.content.readuntil(b"\n\n")).decode()
        ident = identity_of(head)
        assert head == role_chunk(ident)
        before.set()
        rest = (await resp.read()).decode()
    assert rest == "".join(content_chunk(ident, t) for t in texts) + finish_chunk(ident) + DONE
    assert (runner.seen_at_close, runner.ended_by) == (["trace-of-hi"], [])


@pytest.mark.parametrize("hold_ms", [50, 2000], ids=("head-sent-first", "head-still-held"))
async def test_deadline_expiring_before_the_first_yield(aiohttp_client: AiohttpClient, hold_ms: int) -> None:
    """A deadline entered before the first yield expires in the runner, not in the plugin: after the head went out
    (hold timer first) its RunError is an in-band frame; before, the real 504."""
    runner = DeadlineRunner(timeout_s=0.15, think_s=None, before=asyncio.Event())
    client = await aiohttp_client(make_gateway(make_config(endpoint={"streamHoldMs": hold_ms}), runner))
    async with asyncio.timeout(ANSWER_S):
        if hold_ms < 150:
            text, ident = await sse_text(await stream(client, chat_body("hi")))
            assert text == role_chunk(ident) + error_frame("upstream provider timeout", "api_error") + DONE
        else:
            await refused(await post(client, chat_body("hi", stream=True)), 504,
                          error_body("upstream provider timeout", "api_error"))
    assert (runner.seen_at_close, runner.ended_by) == (["trace-of-hi"], [])
