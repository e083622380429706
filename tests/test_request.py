"""Request body validation (behaviour spec sections 1.3, 4.6 and 6.1), as a pure function."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openclaw_http_compat import (
    ClientTool,
    GenerationOptions,
)
from openclaw_http_compat.errors import InvalidRequestError
from openclaw_http_compat.request import ChatRequest, ToolChoice, parse_chat_request

MAX_SAFE_INTEGER = 2**53 - 1
USER = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                                            "parameters": {"type": "object"}, "strict": True}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def refused(body: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def test_defaults() -> None:
    """An empty object parses to the defaults: model ``openclaw``, not streaming, no options."""
    assert parse_chat_request({}) == ChatRequest()
    assert ChatRequest().model == "openclaw"


def test_full_request() -> None:
    """Every field we act on is read; unknown fields are ignored."""
    body = {
        "model": "openclaw/beta", "messages": USER, "stream": True, "stream_options": {"include_usage": True},
        "user": "alice", "tools": [WEATHER], "tool_choice": "auto", "temperature": 0.3, "n": 1,
        "logprobs": False, "metadata": {"a": "b"}, "parallel_tool_calls": True, "store": False,
    }
    assert parse_chat_request(body) == ChatRequest(
        model="openclaw/beta", messages=tuple(USER), stream=True, include_usage=True, user="alice",
        tools=(ClientTool(name="get_weather", description="Weather by city", parameters={"type": "object"},
                          strict=True),),
        tool_choice=ToolChoice(), options=GenerationOptions(temperature=0.3))


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ([], "Request body must be a JSON object.", None),
        ("text", "Request body must be a JSON object.", None),
        ({"model": 5}, "model: expected a string", "model"),
        ({"messages": {"role": "user"}}, "messages: expected an array", "messages"),
        ({"stream": "false"}, "stream: expected a boolean", "stream"),
        ({"stream": 1}, "stream: expected a boolean", "stream"),
        ({"stream_options": True}, "stream_options: expected an object", "stream_options"),
        ({"n": 2}, "Only one choice is supported: `n` must be 1.", "n"),
        ({"n": "1"}, "Only one choice is supported: `n` must be 1.", "n"),
        ({"n": True}, "Only one choice is supported: `n` must be 1.", "n"),
    ],
    ids=("array", "string", "model", "messages", "stream-string", "stream-number", "stream_options", "n-2",
         "n-string", "n-bool"),
)
def test_type_errors(body: Any, message: str, param: str | None) -> None:
    """A field we act on with the wrong type is 400, naming the field."""
    error = refused(body)
    assert (error.message, error.param) == (message, param)


@pytest.mark.parametrize("n", [None, 1, 1.0])
def test_n_of_one_is_accepted(n: Any) -> None:
    """``n`` absent or 1 is fine: there is always exactly one choice."""
    assert parse_chat_request({"n": n}).model == "openclaw"


@pytest.mark.parametrize("user", [{"name": "x", "id": "1"}, 5, None, ["a"]])
def test_non_string_user_is_ignored(user: Any) -> None:
    """A non-string ``user`` (Open WebUI pipelines send an object) is ignored, not refused."""
    assert parse_chat_request({"user": user}).user is None


@pytest.mark.parametrize(
    ("body", "include_usage"),
    [
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": True, "stream_options": {"include_usage": "true"}}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True}, False),
        ({"stream": False, "stream_options": {"include_usage": True}}, False),
        ({"stream_options": {"include_usage": True}}, False),
        ({"stream": None, "stream_options": None}, False),
    ],
)
def test_include_usage_only_when_streaming(body: dict[str, Any], include_usage: bool) -> None:
    """``include_usage`` counts only when it is exactly true and the request streams."""
    assert parse_chat_request(body).include_usage is include_usage


def test_empty_model_means_openclaw() -> None:
    """An empty ``model`` string falls back to ``openclaw``."""
    assert parse_chat_request({"model": ""}).model == "openclaw"


@pytest.mark.parametrize(
    ("fields", "options"),
    [
        ({}, None),
        ({"max_tokens": None, "max_completion_tokens": None, "temperature": None, "stop": None}, None),
        ({"max_completion_tokens": 256}, GenerationOptions(max_tokens=256)),
        ({"max_tokens": 128}, GenerationOptions(max_tokens=128)),
        ({"max_completion_tokens": 64, "max_tokens": 999}, GenerationOptions(max_tokens=64)),
        ({"max_completion_tokens": 32, "max_tokens": None}, GenerationOptions(max_tokens=32)),
        ({"max_completion_tokens": None, "max_tokens": 16}, GenerationOptions(max_tokens=16)),
        ({"max_tokens": MAX_SAFE_INTEGER}, GenerationOptions(max_tokens=MAX_SAFE_INTEGER)),
        ({"max_tokens": 12.0}, GenerationOptions(max_tokens=12)),
        ({"temperature": 0.3, "top_p": 0.95}, GenerationOptions(temperature=0.3, top_p=0.95)),
        ({"temperature": 0}, GenerationOptions(temperature=0.0)),
        ({"temperature": 2, "top_p": 0}, GenerationOptions(temperature=2.0, top_p=0.0)),
        ({"frequency_penalty": -0.5, "presence_penalty": 1.25, "seed": 12345},
         GenerationOptions(frequency_penalty=-0.5, presence_penalty=1.25, seed=12345)),
        ({"frequency_penalty": -2, "presence_penalty": 2.0, "seed": -7.0},
         GenerationOptions(frequency_penalty=-2.0, presence_penalty=2.0, seed=-7)),
        ({"stop": "\n\n"}, GenerationOptions(stop=("\n\n",))),
        ({"stop": ["a", "b", "c", "d"]}, GenerationOptions(stop=("a", "b", "c", "d"))),
        ({"stop": []}, None),
        ({"response_format": {"type": "json_object"}}, GenerationOptions(response_format={"type": "json_object"})),
        ({"response_format": {"type": "text"}}, GenerationOptions(response_format={"type": "text"})),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}},
         GenerationOptions(response_format={"type": "json_schema",
                                            "json_schema": {"name": "x", "schema": {"type": "object"}}})),
    ],
    ids=("none", "sdk-nulls", "max_completion_tokens", "max_tokens", "completion-wins", "completion-only",
         "legacy-only", "max-safe-integer", "integral-float", "sampling", "temperature-zero-kept", "bounds",
         "penalties-seed", "penalty-bounds", "stop-string", "stop-four", "stop-empty-list", "json_object", "text",
         "json_schema"),
)
def test_generation_options(fields: dict[str, Any], options: GenerationOptions | None) -> None:
    """Ports openai-http.test.ts: sampling, caps, stop and response_format are forwarded as options."""
    assert parse_chat_request({"messages": USER, **fields}).options == options


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"max_completion_tokens": "32"}, "max_completion_tokens must be a positive safe integer",
         "max_completion_tokens"),
        ({"max_completion_tokens": {}}, "max_completion_tokens must be a positive safe integer",
         "max_completion_tokens"),
        ({"max_completion_tokens": [32]}, "max_completion_tokens must be a positive safe integer",
         "max_completion_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens must be a positive safe integer",
         "max_completion_tokens"),
        ({"max_tokens": -1}, "max_tokens must be a positive safe integer", "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens must be a positive safe integer", "max_tokens"),
        ({"max_tokens": True}, "max_tokens must be a positive safe integer", "max_tokens"),
        ({"max_tokens": MAX_SAFE_INTEGER + 1}, "max_tokens must be a positive safe integer", "max_tokens"),
        ({"max_completion_tokens": 64, "max_tokens": 0}, "max_tokens must be a positive safe integer",
         "max_tokens"),
        ({"max_completion_tokens": -5, "max_tokens": 64}, "max_completion_tokens must be a positive safe integer",
         "max_completion_tokens"),
        ({"temperature": 999}, "`temperature` must be between 0 and 2.", "temperature"),
        ({"temperature": -0.1}, "`temperature` must be between 0 and 2.", "temperature"),
        ({"temperature": "0.5"}, "`temperature` must be a finite number.", "temperature"),
        ({"temperature": True}, "`temperature` must be a finite number.", "temperature"),
        ({"top_p": 5}, "`top_p` must be between 0 and 1.", "top_p"),
        ({"frequency_penalty": 3}, "`frequency_penalty` must be between -2.0 and 2.0.", "frequency_penalty"),
        ({"presence_penalty": -3}, "`presence_penalty` must be between -2.0 and 2.0.", "presence_penalty"),
        ({"seed": 1.5}, "`seed` must be an integer.", "seed"),
        ({"seed": "1"}, "`seed` must be a finite number.", "seed"),
        ({"temperature": 5, "top_p": 5}, "`temperature` must be between 0 and 2.", "temperature"),
        ({"top_p": 5, "frequency_penalty": 5}, "`top_p` must be between 0 and 1.", "top_p"),
        ({"stop": 5}, "Invalid stop: stop must be a string or array of strings", "stop"),
        ({"stop": {}}, "Invalid stop: stop must be a string or array of strings", "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "Invalid stop: stop supports at most 4 sequences", "stop"),
        ({"stop": [""]}, "Invalid stop: stop entries must be non-empty strings", "stop"),
        ({"stop": [123]}, "Invalid stop: stop entries must be non-empty strings", "stop"),
        ({"response_format": "json"}, "Invalid response_format: response_format must be an object",
         "response_format"),
        ({"response_format": {"type": "xml"}},
         "Invalid response_format: response_format.type must be text, json_object, or json_schema",
         "response_format"),
        ({"response_format": {}},
         "Invalid response_format: response_format.type must be text, json_object, or json_schema",
         "response_format"),
    ],
)
def test_generation_option_errors(fields: dict[str, Any], message: str, param: str) -> None:
    """Ports openai-http.test.ts: malformed caps, sampling, stop and response_format are 400 naming the field."""
    error = refused({"messages": USER, **fields})
    assert (error.message, error.param) == (message, param)


@pytest.mark.parametrize(
    ("raw", "message", "param"),
    [
        ('{"max_tokens": 1e309}', "max_tokens must be a positive safe integer", "max_tokens"),
        ('{"temperature": NaN}', "`temperature` must be a finite number.", "temperature"),
        ('{"top_p": Infinity}', "`top_p` must be a finite number.", "top_p"),
        ('{"seed": -Infinity}', "`seed` must be a finite number.", "seed"),
    ],
)
def test_non_finite_json_numbers_are_refused(raw: str, message: str, param: str) -> None:
    """Numbers the JSON parser turns into inf or NaN (raw ``1e309``, ``NaN``) are refused."""
    error = refused(json.loads(raw))
    assert (error.message, error.param) == (message, param)


@pytest.mark.parametrize(
    ("fields", "tools", "choice"),
    [
        ({}, (), ToolChoice()),
        ({"tools": None, "tool_choice": None}, (), ToolChoice()),
        ({"tools": [WEATHER, TIME]}, ("get_weather", "get_time"), ToolChoice()),
        ({"tools": [WEATHER], "tool_choice": "auto"}, ("get_weather",), ToolChoice()),
        ({"tools": [WEATHER], "tool_choice": "none"}, ("get_weather",), ToolChoice(mode="none")),
        ({"tools": [WEATHER], "tool_choice": "required"}, ("get_weather",), ToolChoice(mode="required")),
        ({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
         ("get_weather", "get_time"), ToolChoice(mode="function", name="get_time")),
        ({"tools": [{"type": "function", "function": {"name": "  spaced  "}}]}, ("spaced",), ToolChoice()),
    ],
)
def test_tools_and_tool_choice(fields: dict[str, Any], tools: tuple[str, ...], choice: ToolChoice) -> None:
    """Function tools are parsed; ``tool_choice`` is auto, none, required or one named function."""
    parsed = parse_chat_request({"messages": USER, **fields})
    assert tuple(t.name for t in parsed.tools) == tools
    assert parsed.tool_choice == choice


def test_tool_fields_are_copied() -> None:
    """Description, parameters and strict are copied; wrong-typed ones are dropped."""
    tools = [WEATHER, {"type": "function", "function": {"name": "f", "description": 5, "parameters": [],
                                                         "strict": "yes"}}]
    assert parse_chat_request({"tools": tools}).tools == (
        ClientTool(name="get_weather", description="Weather by city", parameters={"type": "object"}, strict=True),
        ClientTool(name="f"),
    )


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"tools": {"type": "function"}}, "tools must be an array", "tools"),
        ({"tools": ["get_weather"]}, "each tool must be an object", "tools"),
        ({"tools": [{"type": "web_search"}]}, "only function tools are supported", "tools"),
        ({"tools": [{"type": "function", "name": "get_weather"}]}, "tool.function is required", "tools"),
        ({"tools": [{"type": "function", "function": {"name": " "}}]}, "tool.function.name is required", "tools"),
        ({"tool_choice": "required"}, "tool_choice=required but no tools were provided", "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
         "tool_choice names unknown tool 'get_time'", "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {}}},
         "tool_choice.function.name is required", "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}},
         "tool_choice allowed_tools is not supported", "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice must be a string or object", "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": 1}, "tool_choice must be a string or object", "tool_choice"),
    ],
    ids=("tools-object", "tool-string", "non-function", "flat-responses-style", "blank-name", "required-no-tools",
         "unknown-tool", "nameless-choice", "allowed_tools", "unknown-string", "number"),
)
def test_tool_errors(fields: dict[str, Any], message: str, param: str) -> None:
    """Ports openai-http.test.ts: bad tools/tool_choice are 400 ``Invalid tools/tool_choice: <detail>``."""
    error = refused({"messages": USER, **fields})
    assert (error.message, error.param) == (f"Invalid tools/tool_choice: {message}", param)
