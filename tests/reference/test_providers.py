"""Providers: SSE parsing, request bodies, usage and status mapping, the echo provider."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from openclaw_http_compat import (
    AgentRunRequest,
    ClientTool,
    GenerationOptions,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
)
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.http1 import HttpClient
from openclaw_http_compat.reference.providers import (
    MAX_SSE_LINE_CHARS,
    EchoProvider,
    OpenAICompletionsProvider,
    SSEDecoder,
    ServerSentEvent,
    build_request_body,
    make_provider,
    reason_for_status,
    usage_from_openai,
)


def _request(**kwargs: Any) -> AgentRunRequest:
    fields: dict[str, Any] = {"run_id": "run-1", "agent_id": "main", "session_key": "s", "message": "hi"}
    fields.update(kwargs)
    return AgentRunRequest(**fields)


def _decode_all(pieces: Sequence[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.end())
    return events


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n"], ids=("LF", "CR", "CR+LF"))
@pytest.mark.parametrize("split", [False, True], ids=("whole", "byte-by-byte"))
def test_sse_line_endings_and_splits(newline: str, split: bool) -> None:
    """Every SSE line ending parses the same, whether the body arrives whole or one byte at a time."""
    body = newline.join(["data: {\"a\":1}", "", "data: ünï ✓", "", "data: [DONE]", "", ""]).encode()
    pieces = _bytewise(body) if split else [body]
    assert _decode_all(pieces) == [
        ServerSentEvent('{"a":1}'),
        ServerSentEvent("ünï ✓"),
        ServerSentEvent("[DONE]"),
    ]


def test_sse_fields() -> None:
    """Comments are skipped, data lines join with LF, one leading space is dropped, event/id/retry are handled."""
    body = (
        b"\xef\xbb\xbf: a comment\n"
        b"event: error\n"
        b"id: 7\n"
        b"retry: 100\n"
        b"data:first\n"
        b"data:  second\n"
        b"data\n"
        b"\n"
        b"\n"
        b": only a comment\n"
        b"\n"
        b"data: after\n"
        b"\n"
    )
    assert _decode_all([body]) == [
        ServerSentEvent("first\n second\n", event="error"),
        ServerSentEvent("after"),
    ]


def test_sse_unterminated_last_event_is_returned_by_end() -> None:
    """end() returns an event the stream left without its closing blank line."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\n\ndata: [DONE]") == [ServerSentEvent("x")]
    assert decoder.end() == [ServerSentEvent("[DONE]")]


def test_sse_overlong_line_is_refused() -> None:
    """A line longer than the limit raises ValueError instead of growing the buffer forever."""
    decoder = SSEDecoder()
    with pytest.raises(ValueError, match="too long"):
        decoder.feed(b"data: " + b"x" * MAX_SSE_LINE_CHARS)


def test_request_body_minimal() -> None:
    """Without options or tools the body is model, messages and the streaming flags only."""
    messages = [{"role": "user", "content": "hi"}]
    assert build_request_body("gpt-test", messages, _request()) == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_request_body_for_a_run_nobody_streams() -> None:
    """A run whose reply is used whole asks for the whole completion: no streaming flags."""
    messages = [{"role": "user", "content": "hi"}]
    assert build_request_body("gpt-test", messages, _request(stream=False)) == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
    }


def test_request_body_options_and_tools() -> None:
    """Given options map to their OpenAI names, unset ones are left out, tools become function objects."""
    request = _request(
        options=GenerationOptions(
            max_tokens=64,
            temperature=0.5,
            top_p=None,
            seed=7,
            stop=("END", "STOP"),
            response_format={"type": "json_object"},
        ),
        client_tools=(
            ClientTool(
                name="get_weather",
                description="Weather by city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ("city",)},
                strict=True,
            ),
            ClientTool(name="ping"),
        ),
    )
    body = build_request_body("m", [], request)
    assert {k: v for k, v in body.items() if k not in ("model", "messages", "stream", "stream_options")} == {
        "max_tokens": 64,
        "temperature": 0.5,
        "seed": 7,
        "stop": ["END", "STOP"],
        "response_format": {"type": "json_object"},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather by city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                    "strict": True,
                },
            },
            {"type": "function", "function": {"name": "ping"}},
        ],
    }


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "format"),
        (401, "auth"),
        (402, "billing"),
        (403, "auth_permanent"),
        (404, "model_not_found"),
        (408, "timeout"),
        (422, "format"),
        (429, "rate_limit"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "overloaded"),
        (529, "overloaded"),
        (418, None),
    ],
)
def test_reason_for_status(status: int, reason: str | None) -> None:
    """HTTP statuses map to OpenClaw's failure reasons; an unlisted 4xx stays unclassified."""
    assert reason_for_status(status) == reason


def test_usage_mapping() -> None:
    """Cached prompt tokens become cache reads and leave the input count; reasoning tokens carry over."""
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    assert usage_from_openai(usage) == RunUsage(input=70, output=20, cache_read=30, total=120, reasoning=5)


def test_usage_mapping_minimal_and_invalid() -> None:
    """Missing details leave cache reads 0 and reasoning None; a non-object is no usage."""
    assert usage_from_openai({"prompt_tokens": 3, "completion_tokens": 4}) == RunUsage(input=3, output=4)
    assert usage_from_openai(None) is None
    assert usage_from_openai("12") is None


async def test_echo_streams_word_by_word() -> None:
    """Echo answers 'echo: <message>', one word and its trailing space per delta, then usage and RunEnd."""
    events = [e async for e in EchoProvider().stream("echo", [], _request(message="hello  big world"))]
    assert events == [
        TextDelta("echo: "),
        TextDelta("hello  "),
        TextDelta("big "),
        TextDelta("world"),
        RunUsage(input=3, output=4),
        RunEnd("stop"),
    ]


def _config(providers: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}, "models": {"providers": providers}}, env={})


async def test_make_provider(http: HttpClient) -> None:
    """Configured ids give their provider, 'echo' is built in, anything else explains the failure."""
    config = _config(
        {
            "up": {"api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1/"},
            "claude": {"api": "anthropic-messages", "baseUrl": "http://127.0.0.1:9"},
            "nourl": {"api": "openai-completions"},
        }
    )
    up = make_provider(config, "up", http)
    assert isinstance(up, OpenAICompletionsProvider)
    assert up.url == "http://127.0.0.1:9/v1/chat/completions"
    assert isinstance(make_provider(config, "echo", http), EchoProvider)
    assert make_provider(config, "ghost", http) == RunError(message="Unknown provider 'ghost'", reason="model_not_found")
    assert make_provider(config, "claude", http) == RunError(
        message="Provider 'claude' uses the unsupported api 'anthropic-messages'"
    )
    assert make_provider(config, "nourl", http) == RunError(message="Provider 'nourl' has no baseUrl")


async def test_configured_echo_wins_over_builtin(http: HttpClient) -> None:
    """A provider configured under the id 'echo' replaces the built-in one."""
    config = _config({"echo": {"baseUrl": "http://127.0.0.1:9/v1"}})
    assert isinstance(make_provider(config, "echo", http), OpenAICompletionsProvider)

