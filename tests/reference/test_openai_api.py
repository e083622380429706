"""The OpenAI Chat Completions mapping (``reference/openai_api.py``): pure, on values alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openclaw_http_compat import (
    AgentRunRequest,
    ClientTool,
    GenerationOptions,
    RunEnd,
    RunError,
    RunUsage,
    StopReason,
    TextDelta,
    ToolCall,
    ToolChoice,
)
from openclaw_http_compat.reference.openai_api import (
    MALFORMED_STREAM,
    NO_FINISH_REASON,
    StreamedCompletion,
    build_request_body,
    error_fields,
    estimate_usage,
    http_error,
    reason_for_status,
    retry_after_s,
    usage_from_openai,
    whole_completion,
)

from .mock_upstream import LITELLM_USAGE


def _request(**kwargs: Any) -> AgentRunRequest:
    fields: dict[str, Any] = {"run_id": "run-1", "agent_id": "main", "session_key": "s", "message": "hi"}
    fields.update(kwargs)
    return AgentRunRequest(**fields)


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


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        (ToolChoice(), None),
        (ToolChoice(mode="none"), "none"),
        (ToolChoice(mode="required"), "required"),
        (ToolChoice(mode="function", name="ping"), {"type": "function", "function": {"name": "ping"}}),
    ],
    ids=["auto", "none", "required", "function"],
)
def test_request_body_tool_choice(choice: ToolChoice, sent: object) -> None:
    """The tools go as the client sent them, with its tool_choice; auto is left out (the upstream's default)."""
    body = build_request_body("m", [], _request(client_tools=(ClientTool(name="ping"),), tool_choice=choice))
    assert body["tools"] == [{"type": "function", "function": {"name": "ping"}}]
    assert body.get("tool_choice", None) == sent
    assert ("tool_choice" in body) == (sent is not None)


def test_request_body_tool_choice_none_without_tools() -> None:
    """Without tools no tool_choice goes upstream: OpenAI refuses one given without tools."""
    body = build_request_body("m", [], _request(tool_choice=ToolChoice(mode="none")))
    assert "tools" not in body and "tool_choice" not in body


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
        (409, "format"),
        (418, "format"),
        (599, "server_error"),
        (302, None),
    ],
)
def test_reason_for_status(status: int, reason: str | None) -> None:
    """HTTP statuses map to OpenClaw's failure reasons; an unlisted 4xx is a refused request (format)."""
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


def _chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return json.dumps({"object": "chat.completion.chunk", "choices": choices, **extra})


def test_streamed_completion_text_tool_call_usage_and_done() -> None:
    """Text comes at once; tool-call fragments and usage wait for [DONE], which ends with tool_calls."""
    completion = StreamedCompletion()
    fed = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hi"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_", "arguments": '{"ci'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": 'ty": "Rome"}'}}]}),
        _chunk({}, "tool_calls"),
        _chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
    ]
    assert [completion.data(data) for data in fed] == [[], [TextDelta("Hi")], [], [], [], []]
    assert completion.data("[DONE]") == [
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Rome"}'),
        RunUsage(input=5, output=2, total=7),
        RunEnd("tool_calls"),
    ]


@pytest.mark.parametrize(("finish", "stop"), [("stop", "stop"), ("length", "length"), ("content_filter", "stop")])
def test_streamed_completion_stop_reason(finish: str, stop: StopReason) -> None:
    """The finish_reason ``length`` is kept; any other ends as ``stop``."""
    completion = StreamedCompletion()
    assert completion.data(_chunk({"content": "x"}, finish)) == [TextDelta("x")]
    assert completion.end() == [RunEnd(stop)]


@pytest.mark.parametrize("finish", [None, ""], ids=["null", "empty"])
def test_streamed_completion_without_finish_reason_fails(finish: str | None) -> None:
    """A stream whose chunks never carried a finish_reason ends, at [DONE], as a failure: no tool call, no usage."""
    completion = StreamedCompletion()
    fed = [
        _chunk({"content": "x"}, finish),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": "{}"}}]}),
        _chunk(usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
    ]
    assert [completion.data(data) for data in fed] == [[TextDelta("x")], [], []]
    assert completion.data("[DONE]") == [NO_FINISH_REASON]
    assert NO_FINISH_REASON == RunError(message="upstream stream ended without a finish_reason", reason="server_error")


@pytest.mark.parametrize("data", ["{not json", "[1, 2, 3]", '"text"', ""], ids=["not-json", "array", "string", "empty"])
def test_streamed_completion_malformed_data(data: str) -> None:
    """Data that is no JSON object ends the stream as malformed."""
    assert StreamedCompletion().data(data) == [MALFORMED_STREAM]


def test_streamed_completion_in_band_error() -> None:
    """An in-band ``{"error": ...}`` frame ends the stream as the upstream's server_error."""
    completion = StreamedCompletion()
    assert completion.data(json.dumps({"error": {"message": "model crashed", "code": 500}})) == [
        RunError(message="model crashed", reason="server_error", code="500")
    ]
    assert completion.data(json.dumps({"error": {}})) == [
        RunError(message="upstream provider error", reason="server_error")
    ]


def test_whole_completion() -> None:
    """A whole completion reads as one big delta, then its usage and stop reason."""
    payload = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    assert whole_completion(payload) == [TextDelta("done"), RunUsage(input=3, output=1), RunEnd("length")]
    assert whole_completion({"error": {"message": "nope"}}) == [RunError(message="nope", reason="server_error")]
    assert whole_completion(None) == [RunError(message="upstream sent a malformed response", reason="server_error")]


def test_whole_completion_without_finish_reason_is_complete() -> None:
    """A body that parsed as a whole completion is complete: a missing or null finish_reason ends as stop."""
    for choice in ({"index": 0, "message": {"content": "ok"}}, {"index": 0, "message": {"content": "ok"},
                                                                  "finish_reason": None}):
        assert whole_completion({"choices": [choice]}) == [TextDelta("ok"), RunEnd("stop")]


def test_litellm_usage_extras_are_ignored() -> None:
    """LiteLLM's usage (cost, text_tokens, null details) maps like OpenAI's: its extras change nothing."""
    assert usage_from_openai(LITELLM_USAGE) == RunUsage(input=12, output=9, total=21, reasoning=0)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, b'{"error": {"message": "Slow down.", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}',
         RunError(message="Slow down.", reason="rate_limit", status=429, code="rate_limit_exceeded")),
        (500, b"<html>oops</html>", RunError(message="upstream provider returned HTTP 500", reason="server_error",
                                             status=500)),
        (400, b'{"error": "bad input"}', RunError(message="bad input", reason="format", status=400)),
        (418, b"", RunError(message="upstream provider returned HTTP 418", reason="format", status=418)),
    ],
    ids=["openai-error", "html", "error-string", "empty"],
)
def test_http_error(status: int, body: bytes, expected: RunError) -> None:
    """An error status keeps the upstream's message and code when the body is an OpenAI error."""
    assert http_error(status, body) == expected


def test_error_fields() -> None:
    """Message and code come from an error object, a bare object, or a string; anything else is empty."""
    assert error_fields({"error": {"message": "m", "code": 7}}) == ("m", "7")
    assert error_fields({"message": "bare", "code": "c"}) == ("bare", "c")
    assert error_fields({"error": "text"}) == ("text", None)
    assert error_fields({"error": {"message": "", "code": True}}) == (None, None)
    assert error_fields([1]) == (None, None)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"Retry-After": "7", "retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "junk", "Retry-After": "3"}, 3.0),
        ({"Retry-After": "Fri, 04 Dec 2026 10:00:30 GMT"}, 30.0),
        ({"Retry-After": "Fri, 04 Dec 2026 09:59:00 GMT"}, 0.0),
        ({"Retry-After": "Fri, 04 Dec 2026 10:00:30 -0000"}, 30.0),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
    ids=["seconds", "fraction", "ms-first", "bad-ms", "date", "past-date", "naive-date", "negative", "inf", "junk",
         "none"],
)
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    """Retry-After as seconds or an HTTP date, retry-after-ms first, as the openai SDK reads them."""
    now = 1796378400.0  # Fri, 04 Dec 2026 10:00:00 GMT
    assert retry_after_s(headers, now=now) == seconds


def test_http_error_keeps_retry_after() -> None:
    """A 429's Retry-After becomes the RunError's retry_after, next to the upstream's message and code."""
    body = b'{"error": {"message": "litellm.RateLimitError: slow down", "type": "None", "code": "429"}}'
    assert http_error(429, body, {"Retry-After": "7"}) == RunError(
        message="litellm.RateLimitError: slow down", reason="rate_limit", status=429, code="429", retry_after=7.0
    )


def test_estimate_usage() -> None:
    """Usage is estimated with the gateway's one estimator (reference.tokens): 4 UTF-8 bytes a
    token per text, 4 a message, 768 an image, 3 to prime the reply, the tools as JSON."""
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},  # 9 bytes: 3 tokens, + 4
            {"role": "user", "name": "ann", "content": [  # "this": 1 token, + 768 + 4
                {"type": "text", "text": "this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": None, "tool_calls": [  # id 2 + name 1 + arguments 1, + 4
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},  # 1 + id 2, + 4
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],  # 45 bytes of JSON: 12 tokens
    }
    prompt = 3 + (3 + 4) + (1 + 768 + 4) + (4 + 4) + (3 + 4) + 12
    # Output: "Hello worldf{}", 14 bytes.
    assert estimate_usage(body, ["Hello", " world", "f", "{}"]) == RunUsage(input=prompt, output=4)
    assert estimate_usage({"messages": "junk"}, []) == RunUsage(input=3, output=0)
