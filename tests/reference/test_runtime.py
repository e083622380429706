"""The agent runtime end to end: echo, and a real streaming upstream (the mock server)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Literal, TypeAlias

import aiohttp
import pytest

from openclaw_http_compat import (
    AgentEvent,
    AgentRunner,
    AgentRunRequest,
    ClientTool,
    GenerationOptions,
    ImageInput,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
    ToolCall,
)
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference import AgentRuntime, SessionStore, Turn

from .mock_upstream import ErrorReply, JsonReply, MockUpstream, RawReply, StallReply, StreamReply, openai_error

SESSION = "agent:main:openai-user:alice"


def _config(
    upstream_url: str | None = None,
    *,
    agents: Mapping[str, Any] | None = None,
    provider: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    raw: dict[str, Any] = {"gateway": {"auth": {"mode": "none"}}}
    if agents is not None:
        raw["agents"] = dict(agents)
    if upstream_url is not None:
        raw["models"] = {
            "providers": {
                "mock": {
                    "api": "openai-completions",
                    "baseUrl": upstream_url,
                    "apiKey": "sk-upstream",
                    "headers": {"X-Org": "acme"},
                    **(provider or {}),
                }
            }
        }
    return GatewayConfig.from_mapping(raw, env={})


def _mock_agents(**extra: Any) -> dict[str, Any]:
    return {"defaults": {"model": "mock/gpt-test", **extra}}


def _request(message: str = "hi", **kwargs: Any) -> AgentRunRequest:
    fields: dict[str, Any] = {"run_id": "chatcmpl_1", "agent_id": "main", "session_key": SESSION, "message": message}
    fields.update(kwargs)
    return AgentRunRequest(**fields)


async def _collect(runtime: AgentRuntime, request: AgentRunRequest) -> list[AgentEvent]:
    return [event async for event in runtime.run(request)]


RuntimeFactory: TypeAlias = Callable[..., AgentRuntime]


@pytest.fixture
def runtime_for(store: SessionStore, client_session: aiohttp.ClientSession) -> RuntimeFactory:
    """Build an AgentRuntime over the test store and client session."""

    def make(config: GatewayConfig, **kwargs: Any) -> AgentRuntime:
        return AgentRuntime(config, store, client_session, **kwargs)

    return make


@pytest.fixture
def runtime(runtime_for: RuntimeFactory, mock_upstream: MockUpstream) -> AgentRuntime:
    """A runtime whose default model is mock/gpt-test on the mock upstream."""
    return runtime_for(_config(mock_upstream.url, agents=_mock_agents()))


def test_runtime_is_an_agent_runner(runtime: AgentRuntime) -> None:
    """AgentRuntime satisfies the plugin's AgentRunner protocol."""
    runner: AgentRunner = runtime
    assert runner is runtime


# --- echo --------------------------------------------------------------------------------


async def test_echo_without_config(runtime_for: RuntimeFactory, store: SessionStore) -> None:
    """With no model configured the run uses echo/echo, streams word by word and persists the turn."""
    runtime = runtime_for(_config())
    events = await _collect(runtime, _request("hello big world"))
    assert events == [
        TextDelta("echo: "),
        TextDelta("hello "),
        TextDelta("big "),
        TextDelta("world"),
        RunUsage(input=3, output=4),
        RunEnd("stop"),
    ]
    assert await store.load(SESSION) == [Turn("user", "hello big world"), Turn("assistant", "echo: hello big world")]


async def test_turn_is_durable_before_run_end(runtime_for: RuntimeFactory, store: SessionStore) -> None:
    """When RunEnd is yielded, the completed turn is already in the store."""
    runtime = runtime_for(_config())
    run = runtime.run(_request("ping"))
    assert isinstance(run, AsyncGenerator)
    async with contextlib.aclosing(run) as events:
        async for event in events:
            if isinstance(event, RunEnd):
                assert await store.load(SESSION) == [Turn("user", "ping"), Turn("assistant", "echo: ping")]
                break
        else:
            pytest.fail("no RunEnd")


async def test_unknown_provider(runtime_for: RuntimeFactory, store: SessionStore) -> None:
    """A model ref naming an unconfigured provider fails with model_not_found and persists nothing."""
    runtime = runtime_for(_config(agents={"defaults": {"model": "ghost/gpt-x"}}))
    assert await _collect(runtime, _request()) == [
        RunError(message="Unknown provider 'ghost'", reason="model_not_found")
    ]
    assert await store.load(SESSION) == []


async def test_store_failure_is_a_run_error(
    runtime_for: RuntimeFactory, store: SessionStore, mock_upstream: MockUpstream
) -> None:
    """A database error while loading the session ends the run with an unclassified RunError, before any upstream call."""

    def drop_table() -> None:
        conn = sqlite3.connect(store.path)
        try:
            conn.execute("DROP TABLE turns")
        finally:
            conn.close()

    await asyncio.to_thread(drop_table)
    runtime = runtime_for(_config(mock_upstream.url, agents=_mock_agents()))
    assert await _collect(runtime, _request()) == [
        RunError(message="session store unavailable", reason="unavailable", retry_after=1.0)
    ]
    assert mock_upstream.requests == []


# --- what the upstream receives ------------------------------------------------------------


async def test_upstream_receives_model_messages_and_headers(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """The upstream gets the model id, the new message last, streaming flags, the API key and configured headers."""
    events = await _collect(runtime, _request("What is 2+2?"))
    # The mock reports no usage: the provider estimates it (openai_api.estimate_usage).
    assert events == [TextDelta("Hello"), TextDelta(" world"), RunUsage(input=10, output=3), RunEnd("stop")]
    (received,) = mock_upstream.requests
    assert received.json == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert received.headers["Authorization"] == "Bearer sk-upstream"
    assert received.headers["X-Org"] == "acme"
    assert received.headers["Content-Type"] == "application/json"
    assert await store.load(SESSION) == [Turn("user", "What is 2+2?"), Turn("assistant", "Hello world")]


async def test_no_api_key_sends_no_authorization(runtime_for: RuntimeFactory, mock_upstream: MockUpstream) -> None:
    """A provider without apiKey is called without an Authorization header."""
    config = _config(mock_upstream.url, agents=_mock_agents(), provider={"apiKey": None})
    runtime = runtime_for(config)
    assert (await _collect(runtime, _request()))[-1] == RunEnd("stop")
    assert "Authorization" not in mock_upstream.requests[0].headers


@pytest.mark.parametrize(
    ("agent", "default_prompt", "extra", "expected"),
    [
        ({"systemPrompt": "You are Ada."}, "Default prompt.", "Be brief.", "You are Ada.\n\nBe brief."),
        ({}, "Default prompt.", "Be brief.", "Default prompt.\n\nBe brief."),
        ({"systemPrompt": "You are Ada."}, None, None, "You are Ada."),
        ({}, None, "Be brief.", "Be brief."),
        ({}, None, None, None),
    ],
    ids=("agent+extra", "default+extra", "agent-only", "extra-only", "none"),
)
async def test_leading_system_message(
    runtime_for: RuntimeFactory,
    mock_upstream: MockUpstream,
    agent: dict[str, Any],
    default_prompt: str | None,
    extra: str | None,
    expected: str | None,
) -> None:
    """One leading system message: the agent's (or default) prompt, a blank line, the extra prompt; none if both empty."""
    agents = {
        "defaults": {"model": "mock/gpt-test", "systemPrompt": default_prompt},
        "list": [{"id": "main", **agent}],
    }
    runtime = runtime_for(_config(mock_upstream.url, agents=agents))
    await _collect(runtime, _request("q", extra_system_prompt=extra))
    messages = mock_upstream.requests[0].json["messages"]
    if expected is None:
        assert messages == [{"role": "user", "content": "q"}]
    else:
        assert messages == [{"role": "system", "content": expected}, {"role": "user", "content": "q"}]


async def test_history_from_earlier_runs(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """A run sends the session's earlier turns between the system message and the new message."""
    mock_upstream.reply(StreamReply(deltas=("Four.",)), StreamReply(deltas=("Six.",)))
    await _collect(runtime, _request("2+2?", extra_system_prompt="Math tutor."))
    await _collect(runtime, _request("3+3?", extra_system_prompt="Math tutor."))
    await _collect(runtime, _request("other session", session_key="agent:main:openai-user:bob"))
    assert mock_upstream.requests[1].json["messages"] == [
        {"role": "system", "content": "Math tutor."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "3+3?"},
    ]
    assert mock_upstream.requests[2].json["messages"] == [{"role": "user", "content": "other session"}]


async def test_new_session_skips_the_history_lookup(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """A run marked new_session sends no history, and still stores its turn."""
    await store.append(SESSION, [Turn("user", "old"), Turn("assistant", "older")])
    mock_upstream.reply(StreamReply(deltas=("Fresh.",)))
    await _collect(runtime, _request("hello", new_session=True))
    assert mock_upstream.requests[0].json["messages"] == [{"role": "user", "content": "hello"}]
    assert (await store.load(SESSION))[-2:] == [Turn("user", "hello"), Turn("assistant", "Fresh.")]


async def test_options_forwarded(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """Generation options reach the upstream under their OpenAI names; unset ones are absent."""
    options = GenerationOptions(
        max_tokens=100,
        temperature=0.2,
        top_p=0.9,
        frequency_penalty=0.5,
        presence_penalty=-0.5,
        seed=42,
        stop=("\n\n",),
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )
    await _collect(runtime, _request(options=options))
    body = mock_upstream.requests[0].json
    assert {k: body[k] for k in body if k not in ("model", "messages", "stream", "stream_options")} == {
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.5,
        "seed": 42,
        "stop": ["\n\n"],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    }


async def test_tools_forwarded(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """Client tools reach the upstream as OpenAI function tools."""
    tools = (
        ClientTool(
            name="lookup",
            description="Look a word up",
            parameters={"type": "object", "properties": {"word": {"type": "string"}}},
        ),
        ClientTool(name="noop", strict=False),
    )
    await _collect(runtime, _request(client_tools=tools))
    assert mock_upstream.requests[0].json["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a word up",
                "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
            },
        },
        {"type": "function", "function": {"name": "noop", "strict": False}},
    ]


async def test_images_forwarded(runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore) -> None:
    """Images go as content parts on the last user message; only the text is persisted."""
    images = (ImageInput("image/png", "iVBORw0KGgo="), ImageInput("image/jpeg", "/9j/4AAQ"))
    await _collect(runtime, _request("describe this", images=images))
    assert mock_upstream.requests[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
            ],
        }
    ]
    assert await store.load(SESSION) == [Turn("user", "describe this"), Turn("assistant", "Hello world")]


# --- model override --------------------------------------------------------------------------


async def test_model_override_with_provider(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """A provider/model override replaces the agent's model for the run."""
    events = await _collect(runtime, _request("a b", model_override="echo/echo"))
    assert events[-2:] == [RunUsage(input=2, output=3), RunEnd("stop")]
    assert mock_upstream.requests == []


async def test_bare_model_override_uses_agent_provider(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """A bare model id override keeps the agent's provider."""
    await _collect(runtime, _request(model_override="gpt-other"))
    assert mock_upstream.requests[0].json["model"] == "gpt-other"


async def test_model_override_unknown_provider(runtime: AgentRuntime) -> None:
    """An override naming an unknown provider fails with model_not_found."""
    assert await _collect(runtime, _request(model_override="nowhere/x")) == [
        RunError(message="Unknown provider 'nowhere'", reason="model_not_found")
    ]


async def test_model_override_allowlist(runtime_for: RuntimeFactory, mock_upstream: MockUpstream) -> None:
    """With agents.defaults.models set, overrides outside it (and not the agent's own model) are refused."""
    agents = _mock_agents(models={"mock/gpt-allowed": {}})
    runtime = runtime_for(_config(mock_upstream.url, agents=agents))
    assert await _collect(runtime, _request(model_override="mock/gpt-secret")) == [
        RunError(message="Model 'mock/gpt-secret' is not allowed for agent 'main'.", reason="format")
    ]
    assert (await _collect(runtime, _request(model_override="gpt-allowed")))[-1] == RunEnd("stop")
    assert (await _collect(runtime, _request(model_override="mock/gpt-test")))[-1] == RunEnd("stop")
    assert [r.json["model"] for r in mock_upstream.requests] == ["gpt-allowed", "gpt-test"]


async def test_invalid_model_override(runtime: AgentRuntime) -> None:
    """An override that is not a model ref fails as a format error."""
    assert await _collect(runtime, _request(model_override="mock/")) == [
        RunError(message="Invalid model override 'mock/'.", reason="format")
    ]


# --- streamed results -------------------------------------------------------------------------


async def test_tool_calls_accumulate(runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore) -> None:
    """Tool-call fragments are joined per index and emitted at the end; the run stops with tool_calls,
    and the stored reply keeps its calls."""
    mock_upstream.reply(
        StreamReply(
            deltas=("Let me check.",),
            tool_calls=(
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                {"index": 0, "function": {"arguments": '{"city":'}},
                {"index": 0, "function": {"arguments": ' "Paris"}'}},
            ),
            finish_reason="tool_calls",
        )
    )
    events = await _collect(runtime, _request("weather?"))
    assert events == [
        TextDelta("Let me check."),
        ToolCall(id="call_a", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(id="call_b", name="get_time", arguments="{}"),
        RunUsage(input=9, output=13),
        RunEnd("tool_calls"),
    ]
    assert await store.load(SESSION) == [
        Turn("user", "weather?"),
        Turn("assistant", "Let me check.", tool_calls=tuple(e for e in events if isinstance(e, ToolCall))),
    ]


async def test_tool_calls_without_index(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """Without an index, a new id starts a new tool call and an id-less fragment continues the latest one."""
    mock_upstream.reply(
        StreamReply(
            deltas=(),
            tool_calls=(
                {"id": "call_a", "function": {"name": "f", "arguments": "{"}},
                {"function": {"arguments": "}"}},
                {"id": "call_b", "function": {"name": "g", "arguments": "[]"}},
            ),
            finish_reason="tool_calls",
        )
    )
    assert await _collect(runtime, _request()) == [
        ToolCall(id="call_a", name="f", arguments="{}"),
        ToolCall(id="call_b", name="g", arguments="[]"),
        RunUsage(input=8, output=2),
        RunEnd("tool_calls"),
    ]


async def test_lenient_stream_details(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """A null error field is no error, tool_calls without calls ends as stop, a final [DONE] needs no blank line."""
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"tool_calls"}],"error":null}\n\n'
        b"data: [DONE]"
    )
    mock_upstream.reply(RawReply(pieces=(body,)))
    assert await _collect(runtime, _request()) == [TextDelta("x"), RunUsage(input=8, output=1), RunEnd("stop")]


async def test_usage_mapped(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """The upstream's usage chunk becomes one RunUsage before RunEnd."""
    mock_upstream.reply(
        StreamReply(
            deltas=("ok",),
            usage={
                "prompt_tokens": 50,
                "completion_tokens": 7,
                "total_tokens": 57,
                "prompt_tokens_details": {"cached_tokens": 40},
                "completion_tokens_details": {"reasoning_tokens": 3},
            },
        )
    )
    assert await _collect(runtime, _request()) == [
        TextDelta("ok"),
        RunUsage(input=10, output=7, cache_read=40, total=57, reasoning=3),
        RunEnd("stop"),
    ]


async def test_length_finish(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """finish_reason 'length' ends the run with stop reason 'length'."""
    mock_upstream.reply(StreamReply(deltas=("trunc",), finish_reason="length"))
    assert await _collect(runtime, _request()) == [TextDelta("trunc"), RunUsage(input=8, output=2), RunEnd("length")]


async def test_crlf_and_comments_in_stream(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """An upstream using CR LF line endings and comment lines streams the same deltas."""
    mock_upstream.reply(StreamReply(deltas=("a", "b"), newline="\r\n", comment=True))
    assert await _collect(runtime, _request()) == [
        TextDelta("a"), TextDelta("b"), RunUsage(input=8, output=1), RunEnd("stop")
    ]


async def test_raw_frames_split_anywhere(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """Frames split across TCP writes (mid-line, mid-UTF-8) parse correctly."""
    body = (
        'data: {"choices":[{"index":0,"delta":{"content":"h\u00e9"}}]}\n\n'
        'data: {"choices":[{"index":0,"delta":{"content":"llo"},"finish_reason":"stop"}]}\n\n'
        "data: [DONE]\n\n"
    ).encode()
    cut = body.index("\u00e9".encode()) + 1
    mock_upstream.reply(RawReply(pieces=(body[:10], body[10:cut], body[cut:70], body[70:])))
    assert await _collect(runtime, _request()) == [
        TextDelta("h\u00e9"), TextDelta("llo"), RunUsage(input=8, output=2), RunEnd("stop")
    ]


async def test_non_streaming_upstream_answer(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """An upstream that ignores stream:true and answers one JSON completion still gives a complete run."""
    mock_upstream.reply(
        JsonReply(
            body={
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                            ],
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            }
        )
    )
    assert await _collect(runtime, _request()) == [
        ToolCall(id="call_1", name="f", arguments="{}"),
        RunUsage(input=5, output=2, total=7),
        RunEnd("tool_calls"),
    ]


# --- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "format"),
        (401, "auth"),
        (402, "billing"),
        (403, "auth_permanent"),
        (404, "model_not_found"),
        (422, "format"),
        (429, "rate_limit"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "overloaded"),
        (529, "overloaded"),
    ],
)
async def test_http_error_mapping(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore, status: int, reason: str
) -> None:
    """An upstream error status becomes a RunError with its reason, status, and the body's message and code."""
    mock_upstream.reply(ErrorReply(status=status, body=openai_error(f"upstream says {status}", code=f"c{status}")))
    assert await _collect(runtime, _request()) == [
        RunError(message=f"upstream says {status}", reason=reason, status=status, code=f"c{status}")
    ]
    assert await store.load(SESSION) == []


async def test_http_error_without_json_body(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """An error status with a non-JSON body gets a message naming the status."""
    mock_upstream.reply(ErrorReply(status=502, body="<html>Bad Gateway</html>"))
    assert await _collect(runtime, _request()) == [
        RunError(message="upstream provider returned HTTP 502", reason="server_error", status=502)
    ]


async def test_in_band_error_frame(runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore) -> None:
    """A data: {"error": ...} frame mid-stream ends the run with a server_error RunError and persists nothing."""
    mock_upstream.reply(StreamReply(deltas=("partial",), error={"message": "model crashed", "code": "engine_error"}))
    assert await _collect(runtime, _request()) == [
        TextDelta("partial"),
        RunError(message="model crashed", reason="server_error", code="engine_error"),
    ]
    assert await store.load(SESSION) == []


async def test_malformed_frame(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """A data frame that is not a JSON object is a server_error."""
    mock_upstream.reply(RawReply(pieces=(b"data: {not json\n\n",)))
    assert await _collect(runtime, _request()) == [
        RunError(message="upstream sent malformed stream data", reason="server_error")
    ]


@pytest.mark.parametrize(
    ("cut", "error"),
    [
        ("eof", RunError(message="upstream stream ended before [DONE]", reason="server_error")),
        ("abort", RunError(message="upstream provider connection failed", reason="server_error")),
    ],
    ids=("clean-eof", "connection-dropped"),
)
async def test_stream_cut(
    runtime: AgentRuntime,
    mock_upstream: MockUpstream,
    store: SessionStore,
    cut: Literal["eof", "abort"],
    error: RunError,
) -> None:
    """A stream that stops before [DONE] (cleanly or by a dropped connection) fails as server_error, persisting nothing."""
    mock_upstream.reply(StreamReply(deltas=("par", "tial"), cut=cut))
    assert await _collect(runtime, _request()) == [TextDelta("par"), TextDelta("tial"), error]
    assert await store.load(SESSION) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused(runtime_for: RuntimeFactory, store: SessionStore) -> None:
    """An upstream that refuses the connection is unreachable, without status (not an upstream server_error)."""
    runtime = runtime_for(_config(f"http://127.0.0.1:{_closed_port()}/v1", agents=_mock_agents()))
    assert await _collect(runtime, _request()) == [RunError(message="upstream unreachable", reason="unreachable")]
    assert await store.load(SESSION) == []


async def test_total_timeout(runtime_for: RuntimeFactory, mock_upstream: MockUpstream) -> None:
    """An upstream slower than the provider's timeoutMs fails as timeout."""
    config = _config(mock_upstream.url, agents=_mock_agents(), provider={"timeoutMs": 300})
    runtime = runtime_for(config)
    mock_upstream.reply(StreamReply(deltas=("slow",) * 20, delay_s=0.05))
    events = await asyncio.wait_for(_collect(runtime, _request()), 5)
    assert events[-1] == RunError(message="upstream provider timeout", reason="timeout")
    assert events[:-1] == [TextDelta("slow")] * (len(events) - 1)
    assert len(events) - 1 < 20
    await asyncio.wait_for(mock_upstream.disconnected.wait(), 5)


async def test_timeout_before_headers(runtime_for: RuntimeFactory, mock_upstream: MockUpstream) -> None:
    """An upstream that never sends its headers fails as timeout once the idle timeout passes."""
    runtime = runtime_for(_config(mock_upstream.url, agents=_mock_agents()), idle_timeout_s=0.2)
    mock_upstream.reply(StallReply())
    assert await asyncio.wait_for(_collect(runtime, _request()), 5) == [
        RunError(message="upstream provider timeout", reason="timeout")
    ]


async def test_idle_timeout_mid_stream(runtime_for: RuntimeFactory, mock_upstream: MockUpstream, store: SessionStore) -> None:
    """An upstream that goes silent mid-stream fails as timeout after the idle timeout; nothing is persisted."""
    runtime = runtime_for(_config(mock_upstream.url, agents=_mock_agents()), idle_timeout_s=0.2)
    mock_upstream.reply(StreamReply(deltas=("a",), stall=True))
    assert await asyncio.wait_for(_collect(runtime, _request()), 5) == [
        TextDelta("a"),
        RunError(message="upstream provider timeout", reason="timeout"),
    ]
    await asyncio.wait_for(mock_upstream.disconnected.wait(), 5)
    assert await store.load(SESSION) == []


# --- abort and serialisation ------------------------------------------------------------------


async def test_aclose_closes_upstream_and_releases_lock(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """aclose() mid-stream closes the upstream connection, releases the session lock and persists nothing."""
    mock_upstream.reply(StreamReply(deltas=("first",), stall=True))
    events = runtime.run(_request())
    assert isinstance(events, AsyncGenerator)
    assert await anext(events) == TextDelta("first")
    assert store.lock(SESSION).locked()
    await events.aclose()
    await asyncio.wait_for(mock_upstream.disconnected.wait(), 5)
    assert mock_upstream.disconnects == 1
    assert not store.lock(SESSION).locked()
    assert await store.load(SESSION) == []


async def test_cancel_closes_upstream(runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore) -> None:
    """Cancelling the task that waits for the next event propagates CancelledError and closes the upstream."""
    mock_upstream.reply(StreamReply(deltas=("first",), stall=True))
    seen: list[AgentEvent] = []

    async def consume() -> None:
        async for event in runtime.run(_request()):
            seen.append(event)

    task = asyncio.create_task(consume())
    await mock_upstream.wait_for_requests(1)
    while not seen:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(mock_upstream.disconnected.wait(), 5)
    assert seen == [TextDelta("first")]
    assert not store.lock(SESSION).locked()
    assert await store.load(SESSION) == []


async def test_second_run_on_same_session_waits(runtime: AgentRuntime, mock_upstream: MockUpstream) -> None:
    """A second run on a session key starts upstream only after the first finished, and sees its turn."""
    hold = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("one",), hold=hold))
    first = asyncio.create_task(_collect(runtime, _request("first")))
    await mock_upstream.wait_for_requests(1)
    second = asyncio.create_task(_collect(runtime, _request("second")))
    other = await asyncio.wait_for(_collect(runtime, _request("elsewhere", session_key="agent:main:other")), 5)
    assert other == [TextDelta("Hello"), TextDelta(" world"), RunUsage(input=10, output=3), RunEnd("stop")]
    mock_upstream.reply(StreamReply(deltas=("two",)))
    await asyncio.sleep(0.1)
    assert [r.json["messages"][-1]["content"] for r in mock_upstream.requests] == ["first", "elsewhere"]
    assert not second.done()
    hold.set()
    assert await asyncio.wait_for(first, 5) == [TextDelta("one"), RunUsage(input=9, output=1), RunEnd("stop")]
    assert await asyncio.wait_for(second, 5) == [TextDelta("two"), RunUsage(input=20, output=1), RunEnd("stop")]
    assert mock_upstream.requests[2].json["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
    ]
