"""The exact JSON and frames the package writes (behaviour spec section 5), as pure functions."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from openclaw_http_compat import (
    RateLimitedError,
    RunUsage,
    ToolCall,
)
from openclaw_http_compat.errors import ApiError, InvalidRequestError, UpstreamError
from openclaw_http_compat.wire import (
    DONE_FRAME,
    KEEPALIVE_FRAME,
    ChunkEncoder,
    completion_body,
    dumps,
    json_error_response,
    json_response,
    usage_body,
)

from .conftest import (
    DONE,
    KEEPALIVE,
    Identity,
    compact,
    content_chunk,
    error_frame,
    finish_chunk,
    role_chunk,
    tool_args_chunk,
    tool_start_chunk,
    usage_chunk,
)

ID = "chatcmpl_0b0f8f2e-3c1e-4d5b-9a6f-1e2d3c4b5a69"
CREATED = 1_790_000_000
IDENT = Identity(ID, CREATED, "openclaw/beta")
NAN = cast(int, float("nan"))
INF = cast(int, float("inf"))


@pytest.mark.parametrize(
    ("usage", "body"),
    [
        (None, None),
        (RunUsage(input=42, output=17), {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}),
        (RunUsage(input=10, output=5, cache_read=20, cache_write=3),
         {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35,
          "prompt_tokens_details": {"cached_tokens": 20}}),
        (RunUsage(input=10, output=5, total=100), {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 100}),
        (RunUsage(total=123), {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 123}),
        (RunUsage(input=NAN, output=INF, cache_read=2),
         {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2,
          "prompt_tokens_details": {"cached_tokens": 2}}),
        (RunUsage(input=NAN, output=INF, total=123), {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 123}),
        (RunUsage(cache_write=10, total=10), {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 10}),
        (RunUsage(input=12, output=5, cache_read=3, total=20),
         {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
          "prompt_tokens_details": {"cached_tokens": 3}}),
        (RunUsage(input=-5, output=-1, total=-3), {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
        (RunUsage(input=10, output=5, total=3), {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}),
        (RunUsage(input=3, output=4, reasoning=2),
         {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
          "completion_tokens_details": {"reasoning_tokens": 2}}),
    ],
    ids=("none", "42-17", "cache-read-counts-write-does-not", "explicit-total", "total-only", "non-finite-parts",
         "non-finite-with-total", "cache-write-only-through-total", "include-usage-example", "negative",
         "total-below-sum", "reasoning"),
)
def test_usage_mapping(usage: RunUsage | None, body: dict[str, Any]) -> None:
    """Ports openai-http.test.ts usage cases: prompt = input + cacheRead, total = max(sum, total)."""
    assert usage_body(usage) == body


def test_completion_body() -> None:
    """A non-streaming completion: one choice, assistant message, finish reason, usage."""
    assert completion_body(completion_id=ID, created=CREATED, model="openclaw", content="Hello",
                           finish_reason="stop", usage=RunUsage(input=1, output=2)) == {
        "id": ID, "object": "chat.completion", "created": CREATED, "model": "openclaw",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_completion_body_with_tool_calls_has_no_index() -> None:
    """Tool calls in a non-streamed message are ``{id, type, function}`` with arguments as a string."""
    calls = [ToolCall(id="call_1", name="get_weather", arguments='{"city":"Taipei"}'), ToolCall(id="c2", name="t")]
    body = completion_body(completion_id=ID, created=CREATED, model="m", content="", finish_reason="tool_calls",
                           tool_calls=calls, usage=None)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}},
        {"id": "c2", "type": "function", "function": {"name": "t", "arguments": ""}},
    ]}, "finish_reason": "tool_calls"}]


ENCODER = ChunkEncoder(completion_id=ID, created=CREATED, model="openclaw/beta")


def test_role_frame() -> None:
    """The first frame carries ``delta: {role: assistant}`` and ``finish_reason: null``."""
    assert ENCODER.role().decode() == role_chunk(IDENT) == (
        f'data: {{"id":"{ID}","object":"chat.completion.chunk","created":{CREATED},"model":"openclaw/beta",'
        '"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}\n\n')


@pytest.mark.parametrize(
    "text",
    ["hello", "", "line one\nline two", 'quote " and \\ backslash', "Grüße 😀 — 你好", "</script><scr", "\u2028\x00"],
    ids=("plain", "empty", "newline", "escapes", "non-ascii", "html", "separators"),
)
def test_content_frame(text: str) -> None:
    """Content frames are one compact ``data:`` line; newlines are escaped, non-ASCII kept as UTF-8."""
    frame = ENCODER.content(text)
    assert frame.decode("utf-8") == content_chunk(IDENT, text)
    assert frame.count(b"\n") == 2 and frame.endswith(b"\n\n")
    assert json.loads(frame.decode().removeprefix("data: "))["choices"][0]["delta"]["content"] == text


def test_tool_call_frames() -> None:
    """A streamed tool call is an identity frame with ``index`` then argument fragments."""
    call = ToolCall(id="call_1", name="get_weather", arguments="ignored here")
    assert ENCODER.tool_call_start(1, call).decode() == tool_start_chunk(IDENT, 1, "call_1", "get_weather")
    assert ENCODER.tool_call_arguments(1, '{"city":').decode() == tool_args_chunk(IDENT, 1, '{"city":')


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls"])
def test_finish_frame(reason: str) -> None:
    """The finish frame has an empty delta and the reason."""
    assert ENCODER.finish(reason).decode() == finish_chunk(IDENT, reason)  # type: ignore[arg-type]


def test_usage_frame() -> None:
    """The usage frame has ``choices: []`` and the usage object."""
    assert ENCODER.usage(RunUsage(input=12, output=3)).decode() == usage_chunk(
        IDENT, {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    assert ENCODER.usage(None).decode() == usage_chunk(IDENT, None)
    assert ENCODER.usage(None).decode().endswith('"choices":[],"usage":null}\n\n')


def test_error_frame() -> None:
    """An in-band error is ``data: {"error": {...}}`` with the full envelope."""
    frame = ChunkEncoder.error(UpstreamError("slow down", status=429, type="rate_limit_error", code="rl"))
    assert frame.decode() == error_frame("slow down", "rate_limit_error", code="rl") == (
        'data: {"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rl"}}\n\n')


def test_terminal_and_keepalive_frames() -> None:
    """``[DONE]`` and the keep-alive comment are fixed bytes; the comment is never ``: ping``."""
    assert DONE_FRAME.decode() == DONE == "data: [DONE]\n\n"
    assert KEEPALIVE_FRAME.decode() == KEEPALIVE == ": keepalive\n\n"


def test_dumps_is_compact_utf8() -> None:
    """``dumps`` writes compact JSON and keeps non-ASCII as UTF-8."""
    assert dumps({"a": [1, "ü"]}) == '{"a":[1,"ü"]}'.encode()
    assert dumps({"a": "ü"}).decode() == compact({"a": "ü"})


def test_json_response() -> None:
    """JSON responses carry ``application/json; charset=utf-8`` and the given status and headers."""
    response = json_response({"ok": "ü"}, status=201, headers={"x-request-id": "r"})
    assert response.status == 201
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["x-request-id"] == "r"
    assert response.body == '{"ok":"ü"}'.encode()


@pytest.mark.parametrize(
    ("error", "status", "body", "headers"),
    [
        (InvalidRequestError("bad", param="model"), 400,
         {"error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": None}}, {}),
        (InvalidRequestError("Payload too large", status=413), 413,
         {"error": {"message": "Payload too large", "type": "invalid_request_error", "param": None, "code": None}},
         {}),
        (RateLimitedError(7), 429,
         {"error": {"message": "Too many failed authentication attempts. Please try again later.",
                    "type": "rate_limited", "param": None, "code": None}}, {"Retry-After": "7"}),
        (ApiError("teapot", status=418, type="odd", code="c"), 418,
         {"error": {"message": "teapot", "type": "odd", "param": None, "code": "c"}}, {}),
    ],
    ids=("400", "413", "429", "any-status"),
)
def test_json_error_response(error: ApiError, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    """An ApiError becomes a raisable HTTP error with its status, envelope and headers."""
    response = json_error_response(error)
    assert response.status == status
    assert response.content_type == "application/json"
    assert response.text is not None and json.loads(response.text) == body
    for name, value in headers.items():
        assert response.headers[name] == value
