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

from benchmarks.mock_upstream import STATS_PATH
from benchmarks.procs import ServerProcess

from .mock_upstream import CompletionReply, ErrorReply, MockUpstream, Received, Reply, StreamReply, openai_error

USAGE: Final = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
ID: Final = re.compile(r'^data: \{"id":"(chatcmpl-[0-9a-f]{32})","object":"chat\.completion\.chunk","created":(\d+),')


def chat(*, stream: bool, include_usage: bool = False, content: str = "hi") -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": content}]}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return body


def stream_text(completion_id: str, created: str, pieces: tuple[str, ...], usage: bool) -> str:
    """The exact SSE body of a :class:`CompletionReply` stream."""
    head = f'data: {{"id":"{completion_id}","object":"chat.completion.chunk","created":{created},"model":"m",'

    def choice(delta: str, finish: str = "null") -> str:
        return f'{head}"choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}\n\n'

    text = choice('{"role":"assistant","content":""}')
    text += "".join(choice(json.dumps({"content": piece}, separators=(",", ":"))) for piece in pieces)
    text += choice("{}", '"stop"')
    if usage:
        text += f'{head}"choices":[],"usage":{json.dumps(USAGE, separators=(",", ":"))}}}\n\n'
    return text + "data: [DONE]\n\n"


async def post(url: str, body: dict[str, Any]) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.post(f"{url}/chat/completions", json=body) as resp:
        return resp.status, resp.content_type, await resp.text()


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
