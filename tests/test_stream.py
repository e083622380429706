"""Streamed completions: exact SSE bytes, tool-call deltas, in-band errors, keep-alives, disconnect, shutdown."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp_sse import EventSourceResponse
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
    ToolCall,
)
from openclaw_http_compat.stream import ChatEventStream

from .conftest import (
    COMPLETIONS,
    DONE,
    KEEPALIVE,
    TOKEN,
    ClientFactory,
    GatewayClient,
    Identity,
    ScriptedRunner,
    chat_body,
    content_chunk,
    error_body,
    error_frame,
    events_script,
    failing_script,
    finish_chunk,
    identity_of,
    role_chunk,
    stalled_script,
    tool_args_chunk,
    tool_start_chunk,
    usage_chunk,
    wait_for,
)

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather"}}


async def stream(client: GatewayClient, body: dict[str, Any] | None = None, **headers: str) -> ClientResponse:
    request = {**(body or chat_body()), "stream": True}
    resp = await client.post(COMPLETIONS, json=request, headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert resp.status == 200, await resp.text()
    return resp


async def sse_text(resp: ClientResponse) -> tuple[str, Identity]:
    """The whole stream, after checking the SSE headers, and the identity its chunks share."""
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache"
    text = await resp.text()
    ident = identity_of(text)
    assert resp.headers["x-request-id"] == ident.id
    return text, ident


def frames(text: str) -> list[str]:
    """The frames of a stream (without their blank-line terminators)."""
    assert text.endswith("\n\n")
    return text[:-2].split("\n\n")


async def test_deltas_stream_as_exact_bytes(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: role chunk, one chunk per delta, exactly one stop chunk, then [DONE]."""
    runner.script = events_script(TextDelta("he"), TextDelta("llo"), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client))
    assert ident.model == "openclaw"
    assert text == (role_chunk(ident) + content_chunk(ident, "he") + content_chunk(ident, "llo")
                    + finish_chunk(ident, "stop") + DONE)
    assert runner.requests[0].run_id == ident.id
    assert runner.finished == [ident.id]


async def test_identical_deltas_are_not_deduplicated(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: repeated ``hi``, ``hi`` deltas arrive as ``hihi``."""
    runner.script = events_script(TextDelta("hi"), TextDelta("hi"), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client))
    assert text == role_chunk(ident) + content_chunk(ident, "hi") * 2 + finish_chunk(ident) + DONE


@pytest.mark.parametrize("events", [(RunEnd(),), (TextDelta(""), RunEnd()), ()], ids=("end-only", "empty", "nothing"))
async def test_no_text_streams_no_response_from_openclaw(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                         events: tuple[AgentEvent, ...]) -> None:
    """A run that produced nothing still streams one content chunk ``No response from OpenClaw.``."""
    runner.script = events_script(*events)
    client = await gateway_client()
    text, ident = await sse_text(await stream(client))
    assert text == role_chunk(ident) + content_chunk(ident, "No response from OpenClaw.") + finish_chunk(ident) + DONE


async def test_model_is_echoed_on_every_chunk(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Every chunk carries the request's ``model`` string verbatim."""
    runner.script = events_script(TextDelta("x"), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(model="OpenClaw:Beta")))
    assert ident.model == "OpenClaw:Beta"
    assert text == role_chunk(ident) + content_chunk(ident, "x") + finish_chunk(ident) + DONE
    assert runner.requests[0].agent_id == "beta"


async def test_text_is_one_line_per_frame_and_utf8(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Newlines inside text are JSON-escaped (one ``data:`` line per frame); non-ASCII is sent as UTF-8."""
    runner.script = events_script(TextDelta("line one\nline two\r\n"), TextDelta("Grüße 😀"), TextDelta("<scr"),
                                  TextDelta("ipt>"), RunEnd())
    client = await gateway_client()
    resp = await stream(client)
    raw = await resp.read()
    text = raw.decode("utf-8")
    ident = identity_of(text)
    assert text == (role_chunk(ident) + content_chunk(ident, "line one\nline two\r\n")
                    + content_chunk(ident, "Grüße 😀") + content_chunk(ident, "<scr") + content_chunk(ident, "ipt>")
                    + finish_chunk(ident) + DONE)
    assert "Grüße 😀".encode() in raw
    assert all(frame.startswith("data: ") and "\n" not in frame for frame in frames(text))


async def test_every_chunk_shares_identity_and_one_finish(gateway_client: ClientFactory,
                                                          runner: ScriptedRunner) -> None:
    """Same id/created/model on all chunks, role chunk first, one finish chunk last before [DONE]."""
    runner.script = events_script(*(TextDelta(f"{i} ") for i in range(50)), RunUsage(input=1, output=2),
                                  RunEnd(), delay=0.001)
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(stream_options={"include_usage": True})))
    parsed = [json.loads(f.removeprefix("data: ")) for f in frames(text)[:-1]]
    assert frames(text)[-1] == "data: [DONE]"
    assert {(c["id"], c["object"], c["created"], c["model"]) for c in parsed} == {
        (ident.id, "chat.completion.chunk", ident.created, ident.model)}
    assert parsed[0]["choices"] == [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]
    finishes = [c for c in parsed if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert finishes == [parsed[-2]]
    assert parsed[-1]["choices"] == []
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in parsed[1:-2]) == "".join(
        f"{i} " for i in range(50))


async def test_length_stop_streams_length_finish(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A run stopped on its length limit finishes the stream with ``length``."""
    runner.script = events_script(TextDelta("cut"), RunEnd("length"))
    client = await gateway_client()
    text, ident = await sse_text(await stream(client))
    assert text == role_chunk(ident) + content_chunk(ident, "cut") + finish_chunk(ident, "length") + DONE


async def test_role_chunk_is_flushed_before_the_run_produces(gateway_client: ClientFactory,
                                                             runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: with ``streamHoldMs: 0`` (OpenClaw's own behaviour) the headers and the
    role chunk arrive at once, before the agent has said anything."""
    release = asyncio.Event()

    async def waits(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        await release.wait()
        yield TextDelta("late")
        yield RunEnd()

    runner.script = waits
    client = await gateway_client(endpoint={"streamHoldMs": 0})
    resp = await asyncio.wait_for(stream(client), 1)
    first = (await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 1)).decode()
    ident = identity_of(first)
    assert first == role_chunk(ident)
    release.set()
    rest = (await resp.read()).decode()
    assert rest == content_chunk(ident, "late") + finish_chunk(ident) + DONE


# --- usage ---------------------------------------------------------------------------------------


async def test_include_usage_adds_a_usage_chunk(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: include_usage -> a ``choices: []`` usage chunk (15/5/20, cached 3) before [DONE]."""
    runner.script = events_script(TextDelta("ok"), RunUsage(input=12, output=5, cache_read=3, total=20), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(stream_options={"include_usage": True})))
    usage = {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
             "prompt_tokens_details": {"cached_tokens": 3}}
    assert text == (role_chunk(ident) + content_chunk(ident, "ok") + finish_chunk(ident) + usage_chunk(ident, usage)
                    + DONE)


async def test_include_usage_without_reported_usage_sends_null(gateway_client: ClientFactory,
                                                               runner: ScriptedRunner) -> None:
    """With include_usage but no usage from the run, the usage chunk says ``"usage": null``, never zeros."""
    runner.script = events_script(TextDelta("ok"), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(stream_options={"include_usage": True})))
    assert text == (role_chunk(ident) + content_chunk(ident, "ok") + finish_chunk(ident)
                    + usage_chunk(ident, None) + DONE)
    assert '"choices":[],"usage":null}' in text


@pytest.mark.parametrize("stream_options", [None, {}, {"include_usage": False}, {"include_usage": "true"}])
async def test_no_usage_chunk_unless_requested(gateway_client: ClientFactory, runner: ScriptedRunner,
                                               stream_options: Any) -> None:
    """Ports openai-http.test.ts: without ``include_usage: true`` no chunk carries usage."""
    runner.script = events_script(TextDelta("ok"), RunUsage(input=7, output=3), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(stream_options=stream_options)))
    assert text == role_chunk(ident) + content_chunk(ident, "ok") + finish_chunk(ident) + DONE
    assert "usage" not in text


# --- tool calls ----------------------------------------------------------------------------------


async def test_tool_calls_stream(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: commentary, then per call an identity chunk and argument chunks; ``tool_calls``."""
    runner.script = events_script(
        TextDelta("Let me check."),
        ToolCall(id="call_1", name="get_weather", arguments='{"city":"Taipei"}'),
        ToolCall(id="call_2", name="get_time", arguments=""),
        RunEnd("tool_calls"),
    )
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(tools=[WEATHER_TOOL])))
    assert text == (role_chunk(ident) + content_chunk(ident, "Let me check.")
                    + tool_start_chunk(ident, 0, "call_1", "get_weather")
                    + tool_args_chunk(ident, 0, '{"city":"Taipei"}')
                    + tool_start_chunk(ident, 1, "call_2", "get_time") + tool_args_chunk(ident, 1, "")
                    + finish_chunk(ident, "tool_calls") + DONE)


async def test_tool_call_with_usage(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: include_usage with a tool call -> usage chunk 12/3/15 after the finish."""
    runner.script = events_script(ToolCall(id="c1", name="get_weather", arguments="{}"),
                                  RunUsage(input=12, output=3), RunEnd("tool_calls"))
    client = await gateway_client()
    text, ident = await sse_text(await stream(
        client, chat_body(tools=[WEATHER_TOOL], stream_options={"include_usage": True})))
    assert text == (role_chunk(ident) + tool_start_chunk(ident, 0, "c1", "get_weather")
                    + tool_args_chunk(ident, 0, "{}") + finish_chunk(ident, "tool_calls")
                    + usage_chunk(ident, {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}) + DONE)


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@pytest.mark.parametrize(
    ("arguments", "pieces"),
    [
        ("a" * 256, ["a" * 256]),
        ("a" * 600, ["a" * 256, "a" * 256, "a" * 88]),
        ("a" * 255 + "😀" + "b" * 10, ["a" * 255, "😀" + "b" * 10]),
        ("a" * 254 + "😀" + "b", ["a" * 254 + "😀", "b"]),
        ("a" * 256 + "b" * 255 + "𐐷" + "c", ["a" * 256, "b" * 255, "𐐷c"]),
        ("é" * 300, ["é" * 256, "é" * 44]),
    ],
    ids=("exactly-256", "600-ascii", "emoji-at-255", "emoji-fits", "deseret-at-511", "bmp-non-ascii"),
)
async def test_tool_arguments_split_at_256_utf16_units(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                       arguments: str, pieces: list[str]) -> None:
    """Ports openai-http.test.ts: argument chunks hold at most 256 UTF-16 units and never split a surrogate pair."""
    assert "".join(pieces) == arguments
    runner.script = events_script(ToolCall(id="c1", name="f", arguments=arguments), RunEnd("tool_calls"))
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(tools=[WEATHER_TOOL])))
    assert text == (role_chunk(ident) + tool_start_chunk(ident, 0, "c1", "f")
                    + "".join(tool_args_chunk(ident, 0, p) for p in pieces) + finish_chunk(ident, "tool_calls") + DONE)
    assert all(utf16_units(p) <= 256 for p in pieces)


async def test_forced_tool_choice_releases_prose_with_the_call(gateway_client: ClientFactory,
                                                               runner: ScriptedRunner) -> None:
    """With a forced tool_choice, prose is held until the required call arrives, then sent in order."""
    runner.script = events_script(TextDelta("Checking."), ToolCall(id="c1", name="get_weather", arguments="{}"),
                                  TextDelta(" Done."), RunEnd("tool_calls"))
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(tools=[WEATHER_TOOL], tool_choice="required")))
    assert text == (role_chunk(ident) + content_chunk(ident, "Checking.")
                    + tool_start_chunk(ident, 0, "c1", "get_weather") + tool_args_chunk(ident, 0, "{}")
                    + content_chunk(ident, " Done.") + finish_chunk(ident, "tool_calls") + DONE)


@pytest.mark.parametrize(
    ("tool_choice", "events", "message"),
    [
        ("required", (TextDelta("Sunny, probably."), RunEnd()),
         "tool_choice=required was not satisfied by the agent response"),
        ({"type": "function", "function": {"name": "get_weather"}},
         (TextDelta("Let me see."), ToolCall(id="c1", name="get_time", arguments="{}"), RunEnd("tool_calls")),
         "tool_choice required a get_weather tool call, but the agent did not produce one"),
    ],
    ids=("required-text-only", "named-wrong-tool"),
)
async def test_unsatisfied_forced_tool_choice_streams_an_error(gateway_client: ClientFactory,
                                                               runner: ScriptedRunner, tool_choice: Any,
                                                               events: tuple[AgentEvent, ...], message: str) -> None:
    """Ports openai-http.test.ts: an unmet forced tool_choice ends in an error frame; the prose is never sent."""
    runner.script = events_script(*events)
    client = await gateway_client()
    body = chat_body(tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "get_time"}}],
                     tool_choice=tool_choice)
    text, ident = await sse_text(await stream(client, body))
    assert text == role_chunk(ident) + error_frame(message, "api_error") + DONE


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "frame"),
    [
        ((TextDelta("partial"), RunError(message="slow down", reason="rate_limit", status=429, retry_after=3)),
         error_frame("slow down", "rate_limit_error")),
        ((TextDelta("partial answer"), RunError(message="All model fallback candidates failed")),
         error_frame("internal error", "api_error")),
        ((TextDelta("partial"), RunError(message="x", reason="format", code="decimal_above_max_value")),
         error_frame("x", "invalid_request_error", code="decimal_above_max_value")),
    ],
    ids=("rate-limit", "unclassified-after-text", "with-code"),
)
async def test_run_error_is_an_in_band_error_frame(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                   events: tuple[AgentEvent, ...], frame: str) -> None:
    """A RunError after the first content is one ``data: {"error": …}`` frame then [DONE]: no finish, no usage
    chunk (and no Retry-After: the 200 head is long gone). Before it, it is an HTTP error (test_stream_hold.py)."""
    runner.script = events_script(*events, TextDelta("never read"), RunEnd())
    client = await gateway_client()
    text, ident = await sse_text(await stream(client, chat_body(stream_options={"include_usage": True})))
    contents = "".join(content_chunk(ident, e.text) for e in events if isinstance(e, TextDelta))
    assert text == role_chunk(ident) + contents + frame + DONE
    assert runner.finished == [ident.id]


async def test_runner_exception_is_an_error_frame_without_leaking(gateway_client: ClientFactory,
                                                                  runner: ScriptedRunner) -> None:
    """An exception escaping the runner ends the stream with ``internal error`` and [DONE]; its text stays inside.
    Raised before the first event it is a 500 (test_runner_contract.py)."""
    runner.script = failing_script(TextDelta("partial"))
    client = await gateway_client()
    text, ident = await sse_text(await stream(client))
    assert text == role_chunk(ident) + content_chunk(ident, "partial") + error_frame("internal error") + DONE
    assert "secret internal detail" not in text


async def test_validation_errors_come_before_any_sse_header(gateway_client: ClientFactory,
                                                            runner: ScriptedRunner) -> None:
    """Pre-run errors of a streaming request are plain JSON errors, not a stream."""
    client = await gateway_client()
    resp = await client.post(COMPLETIONS, json=chat_body(stream=True, model="gpt-4o"),
                             headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 400
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.json() == error_body("Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.",
                                           param="model", code="model_not_found")
    assert runner.requests == []


# --- keep-alive ----------------------------------------------------------------------------------


async def test_keepalive_comment_during_a_slow_run(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A quiet run gets ``: keepalive`` comments between frames (never ``: ping``); data frames are unchanged."""
    runner.script = events_script(TextDelta("slow"), RunEnd(), delay=0.25)
    client = await gateway_client(endpoint={"keepaliveMs": 40})
    text, ident = await sse_text(await stream(client))
    assert text.count(KEEPALIVE) >= 2
    assert ": ping" not in text
    assert text.replace(KEEPALIVE, "") == role_chunk(ident) + content_chunk(ident, "slow") + finish_chunk(ident) + DONE
    assert text.startswith(role_chunk(ident))
    assert text.endswith(DONE)
    assert all(frame == ": keepalive" or frame.startswith("data: ") for frame in frames(text))


@pytest.mark.parametrize("endpoint", [{}, {"keepaliveMs": 0}], ids=("default-15s", "disabled"))
async def test_no_keepalive_for_a_quick_run(gateway_client: ClientFactory, runner: ScriptedRunner,
                                            endpoint: dict[str, Any]) -> None:
    """With the default interval (or 0, off) a short run sends no comment at all."""
    runner.script = events_script(TextDelta("quick"), RunEnd(), delay=0.1)
    client = await gateway_client(endpoint=endpoint)
    text, ident = await sse_text(await stream(client))
    assert text == role_chunk(ident) + content_chunk(ident, "quick") + finish_chunk(ident) + DONE


async def test_keepalive_frames_come_from_our_ping_override(aiohttp_client: AiohttpClient) -> None:
    """Pins stream.py's override of aiohttp-sse's private ``_ping``.

    aiohttp-sse must still define ``_ping`` and start it from ``prepare()``: a bare stream left
    idle then carries only our ``: keepalive`` comments, never aiohttp-sse's ``: ping``.
    """
    assert callable(vars(EventSourceResponse).get("_ping")), "aiohttp-sse no longer defines _ping"
    assert ChatEventStream._ping is not EventSourceResponse._ping

    async def idle(request: web.Request) -> web.StreamResponse:
        sse = ChatEventStream(keepalive_s=0.02)
        await sse.prepare(request)
        async with sse:
            await asyncio.sleep(0.15)
        return sse

    app = web.Application()
    app.router.add_get("/idle", idle)
    client = await aiohttp_client(app)
    resp = await client.get("/idle")
    assert resp.status == 200
    text = await resp.text()
    count = text.count(KEEPALIVE)
    assert count >= 2, text
    assert text == KEEPALIVE * count


# --- disconnect and shutdown ---------------------------------------------------------------------


@pytest.mark.parametrize("handler_cancellation", [True, False], ids=("cancelling-server", "run_app-default"))
@pytest.mark.parametrize("agent", ["silent", "thinking", "talking"])
async def test_client_disconnect_mid_stream_aborts_the_run(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                           handler_cancellation: bool, agent: str) -> None:
    """Ports openai-http.test.ts: a client that goes away mid-stream aborts the run, silent agent or not
    (a silent one has not yielded its first event yet: its head went out when the 50 ms hold expired)."""
    if agent == "silent":
        runner.script = stalled_script()
    elif agent == "thinking":
        runner.script = stalled_script(TextDelta("first"))
    else:
        runner.script = events_script(*(TextDelta("more") for _ in range(1000)), RunEnd(), delay=0.01)
    client = await gateway_client(handler_cancellation=handler_cancellation, endpoint={"streamHoldMs": 50})
    resp = await stream(client)
    role = (await resp.content.readuntil(b"\n\n")).decode()
    ident = identity_of(role)
    if agent != "silent":
        assert (await resp.content.readuntil(b"\n\n")).decode() == content_chunk(
            ident, "first" if agent == "thinking" else "more")
    resp.close()
    await wait_for(lambda: runner.aborted == [ident.id])
    assert runner.finished == []


async def test_shutdown_ends_a_stream_before_its_first_event(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Shutdown while the run still waits for its first event, its head sent when the hold expired: error frame,
    [DONE], the run aborted. Before the head it is a 503 (test_stream_hold.py)."""
    runner.script = stalled_script()
    client = await gateway_client(endpoint={"streamHoldMs": 50})
    resp = await stream(client)
    role = (await resp.content.readuntil(b"\n\n")).decode()
    ident = identity_of(role)
    assert role == role_chunk(ident)
    closing = asyncio.ensure_future(client.server.close())
    rest = (await asyncio.wait_for(resp.read(), 1)).decode()
    await asyncio.wait_for(closing, 1)
    assert rest == error_frame("The gateway is shutting down.", "api_error", code="shutting_down") + DONE
    assert (runner.aborted, runner.finished) == ([ident.id], [])


async def test_shutdown_ends_an_open_stream(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """App shutdown ends an open stream within a second: an error frame, then [DONE]; the run is aborted."""
    runner.script = stalled_script(TextDelta("thinking…"))
    client = await gateway_client()
    resp = await stream(client)
    head = (await resp.content.readuntil(b"\n\n")).decode()
    head += (await resp.content.readuntil(b"\n\n")).decode()
    ident = identity_of(head)
    assert head == role_chunk(ident) + content_chunk(ident, "thinking…")
    started = time.monotonic()
    closing = asyncio.ensure_future(client.server.close())
    rest = (await asyncio.wait_for(resp.read(), 1)).decode()
    await asyncio.wait_for(closing, 1)
    assert time.monotonic() - started < 1
    assert rest == error_frame("The gateway is shutting down.", "api_error", code="shutting_down") + DONE
    assert runner.aborted == [ident.id]
