"""The one mock upstream itself: the benchmarks' reply, a responder, the counters and the stats route.

The scripted replies are pinned by the tests that use them (``test_runtime``, ``test_faults``
and the others); these pin what the benchmarks and the soak rely on, in-process and as the
``python -m benchmarks.servers upstream`` process.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Final

import aiohttp
import pytest
from multidict import CIMultiDict

from benchmarks.mock_upstream import STATS_PATH
from benchmarks.procs import ServerProcess

from .mock_upstream import (
    LITELLM_USAGE,
    CompletionReply,
    EmptyReply,
    ErrorReply,
    LiteLLMErrorReply,
    MockUpstream,
    Received,
    Reply,
    ServerReply,
    StreamReply,
    ToolChoiceResponder,
    openai_error,
)

USAGE: Final = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
ID: Final = re.compile(r'^data: \{"id":"(chatcmpl-[0-9a-f]{32})","object":"chat\.completion\.chunk","created":(\d+),')


def chat(*, stream: bool, include_usage: bool = False, content: str = "hi") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def stream_text(completion_id: str, created: str, pieces: tuple[str, ...], usage: bool, *, finish: bool = True) -> str:
    """The exact SSE body of a :class:`CompletionReply` or :class:`ServerReply` stream (``finish``: with a stop chunk)."""
    head = f'data: {{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},"model":"m",'

    def choice(delta: str, finish: str = "null") -> str:
        return f'{head}"choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}\n\n'

    text = choice('{"role":"assistant","content":""}')
    text += "".join(choice(json.dumps({"content": piece}, separators=(",", ":"))) for piece in pieces)
    if finish:
        text += choice("{}", '"stop"')
    if usage:
        text += f'{head}"choices":[],"usage":{json.dumps(USAGE, separators=(",", ":"))}}}\n\n'
    return text + "data: [DONE]\n\n"


async def post(url: str, body: dict[str, Any]) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/chat/completions", json=body) as resp:
        return resp.status, resp.content_type, await resp.text()


async def post_for_headers(url: str, body: dict[str, Any]) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/chat/completions", json=body) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def stats(upstream_url: str, query: str = "") -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(upstream_url.removesuffix("/v1") + STATS_PATH + query) as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result


async def test_completion_reply_whole(mock_upstream: MockUpstream) -> None:
    """Without ``stream``, the joined pieces as one completion, with usage."""
    mock_upstream.default = CompletionReply()
    status, content_type, text = await post(mock_upstream.url, chat(stream=False))
    body = json.loads(text)
    assert (status, content_type) == (200, "application/json")
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", body.pop("id"))
    assert isinstance(body.pop("created"), int)
    assert body == {
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                     "finish_reason": "stop"}],
        "usage": USAGE,
    }


async def test_completion_reply_streams_usage_only_when_asked(mock_upstream: MockUpstream) -> None:
    """With ``stream``, role, pieces, stop and ``[DONE]``; the usage chunk only with ``include_usage``."""
    mock_upstream.default = CompletionReply()
    pieces = ("Hello!", " How can I", " help you", " today?")
    for include_usage in (False, True):
        status, content_type, text = await post(mock_upstream.url, chat(stream=True, include_usage=include_usage))
        match = ID.match(text)
        assert match is not None, text
        assert (status, content_type) == (200, "text/event-stream")
        assert text == stream_text(match[1], match[2], pieces, include_usage)


async def test_responder_picks_the_reply_from_the_request(mock_upstream: MockUpstream) -> None:
    """A callable default sees each request; a queued reply still comes first."""

    def responder(received: Received) -> Reply:
        if received.json["messages"][-1]["content"] == "fail":
            return ErrorReply(status=429, body=openai_error("Slow down.", type="rate_limit_error"))
        return CompletionReply(pieces=("ok",))

    mock_upstream.default = responder
    mock_upstream.reply(StreamReply(deltas=("queued",), finish_reason=None))
    queued = await post(mock_upstream.url, chat(stream=True))
    failed = await post(mock_upstream.url, chat(stream=False, content="fail"))
    fine = await post(mock_upstream.url, chat(stream=False))
    assert '"delta":{"content":"queued"}' in queued[2]
    assert failed[:2] == (429, "application/json")
    assert json.loads(failed[2]) == openai_error("Slow down.", type="rate_limit_error")
    assert json.loads(fine[2])["choices"][0]["message"]["content"] == "ok"
    assert [r.json["messages"][-1]["content"] for r in mock_upstream.requests] == ["hi", "fail", "hi"]


async def test_counters_and_stats_route(mock_upstream: MockUpstream) -> None:
    """Completed, aborted and endless replies are counted; idle connections are closed on request."""
    mock_upstream.reply(CompletionReply(delay_s=0.01, repeat_s=30.0))
    mock_upstream.default = CompletionReply()
    async with aiohttp.ClientSession() as session:
        url = f"{mock_upstream.url}/chat/completions"
        async with session.post(url, json=chat(stream=True)) as resp:
            await resp.content.readuntil(b"\n\n")
            during = await stats(mock_upstream.url)
            resp.close()  # goes away from an endless reply
        async with asyncio.timeout(5):
            await mock_upstream.disconnected.wait()
        async with session.post(url, json=chat(stream=False)) as resp:
            assert resp.status == 200
            await resp.read()
        # The session keeps that connection idle: the pool's, closed before counting.
        after = await stats(mock_upstream.url, "?close_idle=1")
    assert during == {"requests": 1, "completed": 0, "aborted": 0, "endless": 1, "open_requests": 1,
                      "max_open_requests": 1, "open_connections": 1, "closed_idle": 0}
    assert after == {"requests": 2, "completed": 1, "aborted": 1, "endless": 1, "open_requests": 0,
                     "max_open_requests": 1, "open_connections": 0, "closed_idle": 1}
    assert mock_upstream.disconnects == 1


async def test_runs_as_a_benchmark_server_process() -> None:
    """``python -m benchmarks.servers upstream``: the same mock, answering at once; exits 0 on SIGTERM."""
    with ServerProcess("upstream") as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        status, _, text = await post(url, chat(stream=True, include_usage=True))
        match = ID.match(text)
        assert match is not None, text
        assert (status, text) == (200, stream_text(match[1], match[2], ("Hello!", " How can I", " help you", " today?"),
                                                   True))
        counts = await stats(url)
        assert (counts["requests"], counts["completed"], counts["open_requests"]) == (1, 1, 0)
        assert server.stop() == 0


PIECES: Final = ("Hello!", " How can I", " help you", " today?")


@pytest.mark.parametrize(
    ("reply", "usage", "finish"),
    [
        (ServerReply(), True, True),
        (ServerReply(stream_usage=False), False, True),
        (ServerReply(usage=None), False, True),
        (ServerReply(interrupted=True), False, False),
    ],
    ids=["openai", "llama.cpp-no-stream-usage", "no-usage", "llama.cpp-interrupted"],
)
async def test_server_reply_streams(mock_upstream: MockUpstream, reply: ServerReply, usage: bool, finish: bool) -> None:
    """Asked for, usage is streamed unless the server never streams it; an interrupted stream has no finish chunk."""
    mock_upstream.default = reply
    status, content_type, text = await post(mock_upstream.url, chat(stream=True, include_usage=True))
    match = ID.match(text)
    assert match is not None, text
    assert (status, content_type) == (200, "text/event-stream")
    assert text == stream_text(match[1], match[2], PIECES, usage, finish=finish)


@pytest.mark.parametrize(
    ("reply", "usage"),
    [(ServerReply(), USAGE), (ServerReply(stream_usage=False), USAGE), (ServerReply(interrupted=True), USAGE),
     (ServerReply(usage=None), None), (ServerReply(usage=LITELLM_USAGE), LITELLM_USAGE)],
    ids=["openai", "llama.cpp-no-stream-usage", "llama.cpp-interrupted", "no-usage", "litellm-usage"],
)
async def test_server_reply_whole(
    mock_upstream: MockUpstream, reply: ServerReply, usage: dict[str, Any] | None
) -> None:
    """Unstreamed, a whole completion; usage left out only by ``usage=None`` (LiteLLM's extra fields kept)."""
    mock_upstream.default = reply
    status, content_type, text = await post(mock_upstream.url, chat(stream=False))
    body = json.loads(text)
    assert (status, content_type) == (200, "application/json")
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", body.pop("id"))
    assert isinstance(body.pop("created"), int)
    expected: dict[str, Any] = {
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                     "finish_reason": "stop"}],
    }
    if usage is not None:
        expected["usage"] = usage
    assert body == expected


#: A tool, and a tool_choice naming it (the two objects happen to look alike).
WEATHER: Final = {"type": "function", "function": {"name": "get_weather"}}
NAMED: Final = {"type": "function", "function": {"name": "get_weather"}}


async def test_tool_choice_responder(mock_upstream: MockUpstream) -> None:
    """A named tool_choice gets a call to that function, whole or streamed; unnamed choices get the text reply."""
    mock_upstream.default = ToolChoiceResponder(arguments='{"city":"Rome"}')
    function = {"name": "get_weather", "arguments": '{"city":"Rome"}'}
    call = {"id": "call_mock_1", "type": "function", "function": function}
    named = {**chat(stream=False), "tools": [WEATHER], "tool_choice": NAMED}
    status, _, text = await post(mock_upstream.url, named)
    assert status == 200
    assert json.loads(text)["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
         "finish_reason": "tool_calls"}
    ]
    _, _, text = await post(mock_upstream.url, {**named, "stream": True})
    frames = [json.loads(line.removeprefix("data: ")) for line in text.split("\n\n") if line.startswith("data: {")]
    assert [f["choices"][0] for f in frames[1:]] == [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}, "finish_reason": None},
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"},
    ]
    assert text.endswith("data: [DONE]\n\n")
    for choice in ("none", "required", "auto"):
        _, _, text = await post(mock_upstream.url, {**named, "tool_choice": choice})
        message = json.loads(text)["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "Hello! How can I help you today?"}


async def test_tool_choice_responder_refuses_an_unoffered_function(mock_upstream: MockUpstream) -> None:
    """Naming a function that is not among the tools is a 400."""
    mock_upstream.default = ToolChoiceResponder()
    status, _, text = await post(mock_upstream.url, {**chat(stream=False), "tool_choice": NAMED})
    assert (status, json.loads(text)) == (400, openai_error("tool_choice names 'get_weather', which is not in tools"))


async def test_empty_reply(mock_upstream: MockUpstream) -> None:
    """llama.cpp's streamed context overflow: 200 text/event-stream, not one byte of body."""
    mock_upstream.default = EmptyReply()
    status, headers, body = await post_for_headers(mock_upstream.url, chat(stream=True, include_usage=True))
    assert (status, headers["Content-Type"], body) == (200, "text/event-stream", b"")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_litellm_error_reply(mock_upstream: MockUpstream, stream: bool) -> None:
    """LiteLLM's error: the status itself, even to stream: true, its JSON body and retry headers."""
    mock_upstream.default = LiteLLMErrorReply(status=429, message="litellm.RateLimitError: slow down",
                                              retry_after="7", retry_after_ms="6500")
    status, headers, body = await post_for_headers(mock_upstream.url, chat(stream=stream))
    assert (status, headers["Content-Type"], headers["retry-after"], headers["retry-after-ms"]) == (
        429, "application/json", "7", "6500"
    )
    assert body == (b'{"error":{"message":"litellm.RateLimitError: slow down","type":"None","param":null,'
                    b'"code":"429"}}')
    mock_upstream.default = LiteLLMErrorReply(status=529, message="Overloaded")
    status, headers, _ = await post_for_headers(mock_upstream.url, chat(stream=stream))
    assert status == 529 and "retry-after" not in headers
