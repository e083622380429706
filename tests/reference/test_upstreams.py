"""Real upstreams' behaviours through the reference gateway, as the ``openai`` SDK sees them.

Each behaviour of ``real-upstreams.md`` is played by the mock upstream (llama.cpp's streams
without usage, its interrupted streams, its empty 200, its named ``tool_choice``; LiteLLM's
error statuses and usage) in front of the reference gateway on a real socket. Pinned: usage
is measured or estimated, never 0 (F1); ``tool_choice`` reaches the model (F2); a cut-off
stream is a failure that leaves nothing in the session (F3); statuses are ones OpenAI clients
know, and each upstream failure is one warning (F9).
"""

from __future__ import annotations

import json
import logging
import pathlib
import socket
from collections.abc import AsyncIterator
from typing import Any, Final

import openai
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from openclaw_http_compat.reference.app import build_gateway_app
from openclaw_http_compat.reference.config import GatewayConfig

from .mock_upstream import (
    EmptyReply,
    LITELLM_USAGE,
    LiteLLMErrorReply,
    MockUpstream,
    ServerReply,
    StreamReply,
    ToolChoiceResponder,
)

TOKEN: Final = "upstreams-token"
#: The upstream's API key: it must never reach a log line.
UPSTREAM_KEY: Final = "sk-upstream-secret-0123456789"
#: A user message: it must never reach a log line either.
SECRET_QUESTION: Final = "What is my bank PIN 4321?"
PROVIDERS_LOGGER: Final = "openclaw_http_compat.reference.providers"
WEATHER_TOOL: Final = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather by city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
#: The fixed error a streaming client gets for an upstream's server_error.
PROVIDER_ERROR: Final = {"message": "upstream provider error", "type": "api_error", "param": None, "code": None}


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def client(
    aiohttp_server: AiohttpServer, mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An SDK client of the reference gateway; agent ``main`` on ``mock/m``, ``dead/m`` refuses connections."""
    config = GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(tmp_path / "state"),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
            "models": {"providers": {
                "mock": {"baseUrl": mock_upstream.url, "api": "openai-completions", "apiKey": UPSTREAM_KEY},
                "dead": {"baseUrl": f"http://127.0.0.1:{closed_port()}/v1", "api": "openai-completions",
                         "apiKey": UPSTREAM_KEY},
            }},
        },
        env={},
    )
    server: TestServer = await aiohttp_server(build_gateway_app(config), host="127.0.0.1")
    async with openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=TOKEN, max_retries=0) as sdk:
        yield sdk


async def ask(client: openai.AsyncOpenAI, content: str = "Hello there", **kwargs: Any) -> Any:
    """One non-streaming completion of ``content``."""
    return await client.chat.completions.create(
        model="openclaw", messages=[{"role": "user", "content": content}], **kwargs
    )


async def ask_streamed(client: openai.AsyncOpenAI, content: str = "Hello there", **kwargs: Any) -> list[Any]:
    """One streamed completion of ``content``, with include_usage; its chunks."""
    stream = await client.chat.completions.create(
        model="openclaw", messages=[{"role": "user", "content": content}], stream=True,
        stream_options={"include_usage": True}, **kwargs,
    )
    return [chunk async for chunk in stream]


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def usage_numbers(usage: Any) -> tuple[int, int, int]:
    assert usage is not None
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


# --- F1: usage measured, never invented ---------------------------------------------------------

#: The estimate for "Hello there" answered with the mock's "Hello! How can I help you today?":
#: input 3 (reply) + 3 (message) + ceil(len("user" "Hello there") 15 bytes / 4) 4 = 10;
#: output ceil(32 bytes / 4) = 8.
ESTIMATED: Final = (10, 8, 18)


async def test_stream_without_usage_gets_an_estimate(client: openai.AsyncOpenAI, mock_upstream: MockUpstream) -> None:
    """llama.cpp streams no usage though asked for it: the client's usage chunk carries the estimate, not zeros."""
    mock_upstream.reply(ServerReply(stream_usage=False))
    chunks = await ask_streamed(client)
    assert streamed_text(chunks) == "Hello! How can I help you today?"
    assert chunks[-1].choices == []
    assert usage_numbers(chunks[-1].usage) == ESTIMATED
    sent = mock_upstream.requests[0].json
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})


async def test_whole_completion_without_usage_gets_an_estimate(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream
) -> None:
    """A whole completion without usage is estimated the same way."""
    mock_upstream.reply(ServerReply(usage=None))
    reply = await ask(client)
    assert reply.choices[0].message.content == "Hello! How can I help you today?"
    assert usage_numbers(reply.usage) == ESTIMATED
    assert mock_upstream.requests[0].json["stream"] is False


async def test_all_zero_usage_is_no_measurement(client: openai.AsyncOpenAI, mock_upstream: MockUpstream) -> None:
    """An upstream reporting 0 tokens for a real reply gets the estimate instead."""
    mock_upstream.reply(ServerReply(usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))
    assert usage_numbers((await ask(client)).usage) == ESTIMATED


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_reported_usage_wins_litellm_extras_ignored(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream, stream: bool
) -> None:
    """Usage the upstream measured is passed on as measured; LiteLLM's cost and text_tokens change nothing."""
    mock_upstream.reply(ServerReply(usage=LITELLM_USAGE))
    usage = (await ask_streamed(client))[-1].usage if stream else (await ask(client)).usage
    assert usage_numbers(usage) == (12, 9, 21)
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


# --- F2: tool_choice reaches the model ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_named_tool_choice_is_honoured(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream, stream: bool
) -> None:
    """A named tool_choice goes upstream as sent; a model honouring it (llama.cpp) gives the client the call."""
    mock_upstream.default = ToolChoiceResponder(arguments='{"city": "Taipei"}')
    choice = {"type": "function", "function": {"name": "get_weather"}}
    kwargs: dict[str, Any] = {"tools": [WEATHER_TOOL], "tool_choice": choice}
    if stream:
        chunks = await ask_streamed(client, "Weather?", **kwargs)
        calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
        assert [(c.index, c.id, c.function.name) for c in calls[:1]] == [(0, "call_mock_1", "get_weather")]
        assert "".join(c.function.arguments or "" for c in calls) == '{"city": "Taipei"}'
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    else:
        reply = await ask(client, "Weather?", **kwargs)
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.tool_calls is not None
        (call,) = reply.choices[0].message.tool_calls
        assert (call.id, call.function.name, call.function.arguments) == (
            "call_mock_1", "get_weather", '{"city": "Taipei"}'
        )
    sent = mock_upstream.requests[0].json
    assert (sent["tools"], sent["tool_choice"]) == ([WEATHER_TOOL], choice)


@pytest.mark.parametrize(
    ("tool_choice", "sent"), [("none", "none"), ("required", "required"), ("auto", None), (None, None)],
    ids=["none", "required", "auto", "absent"],
)
async def test_tool_choice_is_forwarded_as_sent(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream, tool_choice: str | None, sent: str | None
) -> None:
    """`none` keeps the tools and forbids calling them; `required` goes as is; `auto` (or none given) is left out."""
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    mock_upstream.reply(ServerReply(content=(), tool_calls=(tool_call,), finish_reason="tool_calls")
                        if tool_choice == "required" else ServerReply())
    kwargs: dict[str, Any] = {"tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        kwargs["tool_choice"] = tool_choice
    reply = await ask(client, "Weather?", **kwargs)
    assert reply.choices[0].finish_reason == ("tool_calls" if tool_choice == "required" else "stop")
    received = mock_upstream.requests[0].json
    assert received["tools"] == [WEATHER_TOOL]
    assert received.get("tool_choice") == sent
    assert ("tool_choice" in received) == (sent is not None)


# --- F3: a cut-off stream is not a finished one -------------------------------------------------

NO_FINISH: Final = "upstream stream ended without a finish_reason"


async def failed_turn(client: openai.AsyncOpenAI, *, stream: bool, content: str, **kwargs: Any) -> openai.APIError:
    """A turn of user ``alice`` that fails; the SDK's exception (raised by create, or by the stream)."""
    with pytest.raises(openai.APIError) as raised:
        if stream:
            await ask_streamed(client, content, user="alice", **kwargs)
        else:
            await ask(client, content, user="alice", **kwargs)
    return raised.value


@pytest.mark.parametrize(
    ("reply", "stream", "logged"),
    [
        (ServerReply(content=("It is", " sun"), interrupted=True), True, NO_FINISH),
        (StreamReply(deltas=("It is", " sun"), finish_reason=None), False, NO_FINISH),
        (EmptyReply(), True, "upstream answered 200 with an empty body"),
        (EmptyReply(), False, "upstream answered 200 with an empty body"),
    ],
    ids=["interrupted-stream", "null-finish-whole", "empty-200-stream", "empty-200-whole"],
)
async def test_cut_reply_fails_and_stays_out_of_the_session(
    client: openai.AsyncOpenAI,
    mock_upstream: MockUpstream,
    caplog: pytest.LogCaptureFixture,
    reply: ServerReply | StreamReply | EmptyReply,
    stream: bool,
    logged: str,
) -> None:
    """A stream ending before any finish_reason, or a 200 with no body, fails the turn: nothing of it is kept."""
    mock_upstream.reply(reply)
    caplog.set_level(logging.WARNING, PROVIDERS_LOGGER)
    error = await failed_turn(client, stream=stream, content="Weather?")
    assert error.body == PROVIDER_ERROR
    if not stream:
        assert isinstance(error, openai.InternalServerError) and error.status_code == 502
    (record,) = [r for r in caplog.records if r.name == PROVIDERS_LOGGER]
    assert record.levelno == logging.WARNING
    assert "status=200 reason=server_error" in record.getMessage()
    assert repr(logged) in record.getMessage()

    # The next turn works, and its context holds nothing of the failed one.
    mock_upstream.reply(ServerReply(content=("Sunny.",)), ServerReply(content=("Yes.",)))
    assert (await ask(client, "Weather now?", user="alice")).choices[0].message.content == "Sunny."
    assert (await ask(client, "Sure?", user="alice")).choices[0].message.content == "Yes."
    assert mock_upstream.requests[1].json["messages"] == [{"role": "user", "content": "Weather now?"}]
    assert mock_upstream.requests[2].json["messages"] == [
        {"role": "user", "content": "Weather now?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Sure?"},
    ]


# --- F9: errors and logs ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("reply", "exc", "status", "body", "retry_after"),
    [
        (LiteLLMErrorReply(status=429, message="litellm.RateLimitError: slow down", retry_after="7"),
         openai.RateLimitError, 429,
         {"message": "litellm.RateLimitError: slow down", "type": "rate_limit_error", "param": None, "code": "429"},
         "7"),
        (LiteLLMErrorReply(status=429, message="slow down", retry_after="30", retry_after_ms="1500"),
         openai.RateLimitError, 429,
         {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "429"}, "2"),
        (LiteLLMErrorReply(status=400, message="litellm.ContextWindowExceededError: too long"),
         openai.BadRequestError, 400,
         {"message": "litellm.ContextWindowExceededError: too long", "type": "invalid_request_error", "param": None,
          "code": "400"}, None),
        (LiteLLMErrorReply(status=500, message="litellm.InternalServerError: boom"), openai.InternalServerError, 502,
         {"message": "upstream provider error", "type": "api_error", "param": None, "code": "500"}, None),
        (LiteLLMErrorReply(status=529, message="litellm.InternalServerError: Overloaded", retry_after="3"),
         openai.InternalServerError, 503,
         {"message": "upstream provider overloaded", "type": "api_error", "param": None, "code": "529"}, "3"),
    ],
    ids=["429", "429-retry-after-ms", "400", "500", "529"],
)
async def test_litellm_error_statuses(
    client: openai.AsyncOpenAI,
    mock_upstream: MockUpstream,
    reply: LiteLLMErrorReply,
    exc: type[openai.APIStatusError],
    status: int,
    body: dict[str, Any],
    retry_after: str | None,
    stream: bool,
) -> None:
    """LiteLLM's plain error statuses (also to stream: true) map to statuses OpenAI clients know, Retry-After kept."""
    mock_upstream.reply(reply)
    error = await failed_turn(client, stream=stream, content="x")
    assert error.body == body
    if isinstance(error, openai.APIStatusError):
        # Answered before any byte of the stream: the client's own status and headers.
        assert type(error) is exc and error.status_code == status
        assert error.response.headers.get("retry-after") == retry_after
    else:
        assert stream  # an in-band error frame on a stream that had begun


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_unreachable_upstream_is_not_an_upstream_error(
    client: openai.AsyncOpenAI, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    """A refused connection is 502 'upstream unreachable', told apart from an upstream's 500, and logged once."""
    caplog.set_level(logging.WARNING, PROVIDERS_LOGGER)
    error = await failed_turn(client, stream=stream, content="x", extra_headers={"x-openclaw-model": "dead/m"})
    assert error.body == {"message": "upstream unreachable", "type": "api_error", "param": None, "code": None}
    if not stream:
        assert isinstance(error, openai.InternalServerError) and error.status_code == 502
    (record,) = [r for r in caplog.records if r.name == PROVIDERS_LOGGER]
    line = record.getMessage()
    assert line.startswith("provider dead failed: model=m run=chatcmpl_")
    assert " status=- reason=unreachable code=None message='upstream unreachable' (cannot connect (" in line


async def test_each_upstream_failure_is_logged_once_without_secrets(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per failure: provider, model, status, code, the message's first 200 characters; no key, no prompt."""
    long_message = f"Incorrect API key provided: {UPSTREAM_KEY}. " + "x" * 300
    mock_upstream.reply(
        LiteLLMErrorReply(status=401, message=long_message, type="auth_error"),
        LiteLLMErrorReply(status=529, message="Overloaded"),
        StreamReply(deltas=("partial",), error={"message": "model crashed", "code": "engine_error"}),
    )
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        with pytest.raises(openai.APIError):
            await ask(client, SECRET_QUESTION)
    records = [r for r in caplog.records if r.name == PROVIDERS_LOGGER]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    lines = [r.getMessage() for r in records]
    masked = long_message.replace(UPSTREAM_KEY, "***")[:200]
    assert lines[0].startswith("provider mock failed: model=m run=chatcmpl_")
    assert lines[0].endswith(f" status=401 reason=auth code=401 message={masked!r}")
    assert lines[1].endswith(" status=529 reason=overloaded code=529 message='Overloaded'")
    assert lines[2].endswith(" status=200 reason=server_error code=engine_error message='model crashed'")
    # Everything the gateway logged (the SDK's own debug log of its request is the client's).
    everything = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("openai", "http")))
    assert "HTTP/1.1\" 401" in everything  # the access log is in there
    assert UPSTREAM_KEY not in everything
    assert SECRET_QUESTION not in everything and "bank PIN" not in everything
    # The upstream did get the key and the question: the log is what kept them out.
    assert mock_upstream.requests[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert json.dumps(SECRET_QUESTION) in json.dumps(mock_upstream.requests[0].json)


async def test_an_echoed_api_key_is_masked_for_the_client(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream
) -> None:
    """An upstream 4xx message goes to the client, but not the provider's API key it may echo."""
    mock_upstream.reply(LiteLLMErrorReply(status=401, message=f"Incorrect API key provided: {UPSTREAM_KEY}."))
    with pytest.raises(openai.AuthenticationError) as raised:
        await ask(client)
    assert raised.value.body == {"message": "Incorrect API key provided: ***.", "type": "authentication_error",
                                 "param": None, "code": "401"}
