"""The reference gateway in front of a mock upstream, driven by real clients.

The `openai` SDK and LangChain's `ChatOpenAI` talk to the reference gateway over a real socket;
the gateway's runtime calls the mock upstream over HTTP. These pin what crosses both hops:
tools, tool results, images, usage, provider errors and client disconnects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import ClientSession, ClientTimeout, web
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.app import build_gateway_app

from .mock_upstream import ErrorReply, MockUpstream, RawReply, StreamReply, openai_error

TOKEN = "e2e-token"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class Gateway:
    def __init__(self, url: str, upstream: MockUpstream) -> None:
        self.url = url
        self.upstream = upstream

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key=TOKEN, max_retries=0)

    def langchain(self, **kwargs: Any) -> ChatOpenAI:
        return ChatOpenAI(base_url=self.url, api_key=TOKEN, model="openclaw/main", max_retries=0, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=[False, True], ids=["default-runner", "handler-cancellation"])
async def gateway(
    request: pytest.FixtureRequest, mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> AsyncIterator[Gateway]:
    """The reference gateway on a real AppRunner, as `run_app` serves it (and with cancellation on)."""
    config = GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(tmp_path / "state"),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True, "model": "mock/m", "systemPrompt": "You are Main."}]},
            "models": {"providers": {"mock": {"baseUrl": mock_upstream.url, "api": "openai-completions",
                                              "apiKey": "upstream-key", "models": [{"id": "m"}]}}},
        },
        env={},
    )
    # aiohttp's test server always turns handler_cancellation on; production runners do not,
    # so both are served here and the plugin must abort runs either way.
    runner = web.AppRunner(build_gateway_app(config), handler_cancellation=request.param)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Gateway(f"http://127.0.0.1:{port}/v1", mock_upstream)
    finally:
        await runner.cleanup()


WEATHER_CALL = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Taipei"}'}}


async def test_openai_sdk_round_trip_with_usage(gateway: Gateway) -> None:
    """The SDK gets the upstream's text and usage; the upstream got system prompt and message."""
    gateway.upstream.reply(StreamReply(deltas=["Hi", " there"], usage={"prompt_tokens": 9, "completion_tokens": 2,
                                                                       "total_tokens": 11}))
    async with gateway.openai() as client:
        reply = await client.chat.completions.create(
            model="openclaw", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
        )
    assert reply.choices[0].message.content == "Hi there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (9, 2, 11)
    sent = gateway.upstream.requests[0]
    assert sent.json["model"] == "m"
    assert sent.json["messages"] == [
        {"role": "system", "content": "You are Main.\n\nBe brief."},
        {"role": "user", "content": "hello"},
    ]
    # Nobody watches this run live: the gateway asks for the whole completion (this mock
    # streams anyway, as some servers do, and that works too).
    assert (sent.json["stream"], "stream_options" in sent.json) == (False, False)
    assert sent.headers["Authorization"] == "Bearer upstream-key"


async def test_openai_sdk_streams_usage_when_asked(gateway: Gateway) -> None:
    """include_usage gives a final usage chunk with empty choices; the text streams in pieces."""
    gateway.upstream.reply(StreamReply(deltas=["a", "b", "c"], usage={"prompt_tokens": 4, "completion_tokens": 3,
                                                                      "total_tokens": 7}))
    async with gateway.openai() as client:
        stream = await client.chat.completions.create(
            model="openclaw/main", messages=[{"role": "user", "content": "x"}], stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "abc"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    assert len({c.id for c in chunks}) == 1


async def test_tools_forwarded_and_tool_calls_returned(gateway: Gateway) -> None:
    """Client tools reach the upstream; its tool call comes back with finish_reason tool_calls."""
    gateway.upstream.reply(StreamReply(deltas=[], tool_calls=[WEATHER_CALL], finish_reason="tool_calls"))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    async with gateway.openai() as client:
        reply = await client.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "Weather in Taipei?"}], tools=tools  # type: ignore[arg-type]
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "get_weather", {"city": "Taipei"})  # type: ignore[union-attr]
    assert gateway.upstream.requests[0].json["tools"] == tools


async def test_tool_result_reaches_the_next_run(gateway: Gateway) -> None:
    """The client's conversation reaches the upstream natively: the assistant's tool call as
    ``tool_calls`` (content null) and the result as a ``tool`` message, after the system prompt."""
    gateway.upstream.reply(StreamReply(deltas=["It is sunny."]))
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Taipei?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 30C"},
    ]
    async with gateway.openai() as client:
        reply = await client.chat.completions.create(model="openclaw", messages=messages)
    assert reply.choices[0].message.content == "It is sunny."
    assert gateway.upstream.requests[0].json["messages"] == [{"role": "system", "content": "You are Main."}, *messages]


async def test_streamed_tool_call_deltas(gateway: Gateway) -> None:
    """Streaming, a tool call arrives as an identity delta with index then argument fragments."""
    gateway.upstream.reply(StreamReply(deltas=["Let me check."], tool_calls=[WEATHER_CALL], finish_reason="tool_calls"))
    async with gateway.openai() as client:
        stream = await client.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "Weather?"}], stream=True,
            tools=[{"type": "function", "function": {"name": "get_weather"}}],
        )
        chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks]
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert (calls[0].index, calls[0].id, calls[0].type, calls[0].function.name) == (0, "call_1", "function", "get_weather")  # type: ignore[union-attr]
    assert "".join(c.function.arguments or "" for c in calls) == '{"city": "Taipei"}'  # type: ignore[union-attr]
    assert "".join(d.content or "" for d in deltas) == "Let me check."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_images_are_forwarded_upstream(gateway: Gateway) -> None:
    """An image_url data URI on the active turn reaches the upstream as an image part."""
    b64 = base64.b64encode(PNG).decode()
    async with gateway.openai() as client:
        await client.chat.completions.create(
            model="openclaw",
            messages=[{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                   {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}]}],
        )
    assert gateway.upstream.requests[0].json["messages"][-1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
    ]


async def test_sampling_options_are_forwarded(gateway: Gateway) -> None:
    """temperature, top_p, max tokens, stop, seed and response_format reach the upstream."""
    async with gateway.openai() as client:
        await client.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "x"}], temperature=0.2, top_p=0.9,
            max_completion_tokens=64, stop="END", seed=7, response_format={"type": "json_object"},
        )
    sent = gateway.upstream.requests[0].json
    assert {k: sent[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed", "response_format")} == {
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": ["END"], "seed": 7,
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize(
    ("upstream_status", "status", "error_type", "exc"),
    [
        (401, 401, "authentication_error", openai.AuthenticationError),
        (429, 429, "rate_limit_error", openai.RateLimitError),
        (400, 400, "invalid_request_error", openai.BadRequestError),
        (500, 502, "api_error", openai.InternalServerError),
        (503, 503, "api_error", openai.InternalServerError),
        # An Anthropic-style overload (LiteLLM) goes out as 503, a status OpenAI clients know.
        (529, 503, "api_error", openai.InternalServerError),
    ],
)
async def test_upstream_errors_are_mapped(
    gateway: Gateway, upstream_status: int, status: int, error_type: str, exc: type[openai.APIStatusError]
) -> None:
    """Provider failures become the mapped status and error type, and the SDK raises."""
    gateway.upstream.reply(ErrorReply(status=upstream_status, body=openai_error("upstream says no", code="some_code")))
    async with gateway.openai() as client:
        with pytest.raises(exc) as raised:
            await client.chat.completions.create(model="openclaw", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == status
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == error_type


async def test_upstream_error_before_content_raises_its_status_in_sdk(gateway: Gateway) -> None:
    """Streaming, a provider failure before any content is the real HTTP error (#10 F7):
    the SDK raises RateLimitError from create(), as it would against OpenAI."""
    gateway.upstream.reply(ErrorReply(status=429, body=openai_error("slow down", type="rate_limit_error")))
    async with gateway.openai() as client:
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(
                model="openclaw", messages=[{"role": "user", "content": "x"}], stream=True
            )
    assert raised.value.status_code == 429
    assert raised.value.body == {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}


async def test_upstream_error_mid_stream_raises_in_sdk(gateway: Gateway) -> None:
    """Streaming, a provider failure after content went out is one in-band error frame: the SDK
    yields the content, then raises APIError."""
    gateway.upstream.reply(
        RawReply(pieces=(b'data: {"choices": [{"index": 0, "delta": {"content": "ok"}}]}\n\n', b"data: {not json\n\n"))
    )
    texts: list[str] = []
    async with gateway.openai() as client:
        stream = await client.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError) as raised:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)
    assert texts == ["ok"]
    assert raised.value.body == {"message": "upstream provider error", "type": "api_error", "param": None,
                                 "code": None}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_client_disconnect_aborts_upstream_request(gateway: Gateway, stream: bool) -> None:
    """A client that goes away aborts its run, and the runtime closes its upstream request."""
    gateway.upstream.reply(StreamReply(deltas=["thinking"], stall=True))
    body = {"model": "openclaw", "stream": stream, "messages": [{"role": "user", "content": "x"}]}

    async def call() -> None:
        async with ClientSession(timeout=ClientTimeout(total=10)) as session:
            async with session.post(
                f"{gateway.url}/chat/completions", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                await resp.content.read()

    client = asyncio.ensure_future(call())
    await gateway.upstream.wait_for_requests(1)
    await asyncio.sleep(0.05)
    client.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await client
    async with asyncio.timeout(1.5):
        await gateway.upstream.disconnected.wait()


async def test_langchain_invoke_stream_and_tools(gateway: Gateway) -> None:
    """ChatOpenAI: invoke, stream and bind_tools work against the gateway."""
    gateway.upstream.reply(
        StreamReply(deltas=["Hello", " from", " main"]),
        StreamReply(deltas=["s1", "s2"]),
        StreamReply(deltas=[], tool_calls=[WEATHER_CALL], finish_reason="tool_calls"),
        StreamReply(deltas=["Sunny it is."]),
    )
    llm = gateway.langchain()
    result = await asyncio.to_thread(llm.invoke, [HumanMessage("hi")])
    assert result.content == "Hello from main"
    pieces = [chunk.content async for chunk in llm.astream([HumanMessage("stream please")])]
    assert "".join(str(p) for p in pieces) == "s1s2"

    @tool
    def get_weather(city: str) -> str:
        """Weather by city."""
        return f"Sunny in {city}"

    bound = llm.bind_tools([get_weather])
    called = await bound.ainvoke([HumanMessage("Weather in Taipei?")])
    assert isinstance(called, AIMessage)
    assert called.tool_calls == [{"name": "get_weather", "args": {"city": "Taipei"}, "id": "call_1", "type": "tool_call"}]
    assert gateway.upstream.requests[2].json["tools"][0]["function"]["name"] == "get_weather"
    final = await bound.ainvoke([HumanMessage("Weather in Taipei?"), called,
                                 ToolMessage("Sunny in Taipei", tool_call_id="call_1")])
    assert final.content == "Sunny it is."
    assert gateway.upstream.requests[3].json["messages"][-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Taipei"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny in Taipei"},
    ]


async def test_user_conversation_continues_across_requests(gateway: Gateway) -> None:
    """With `user`, the second request's upstream context holds the first turn from the store."""
    gateway.upstream.reply(StreamReply(deltas=["first answer"]), StreamReply(deltas=["second answer"]))
    async with gateway.openai() as client:
        for text in ("one", "two"):
            await client.chat.completions.create(model="openclaw", user="alice", messages=[{"role": "user", "content": text}])
    assert gateway.upstream.requests[1].json["messages"][1:] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "two"},
    ]
