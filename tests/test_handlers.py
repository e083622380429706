"""POST /v1/chat/completions (non-streaming) and GET /v1/models, end to end through a stand-in gateway."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    ToolChoice,
    ClientTool,
    GenerationOptions,
    HttpCompatConfig,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
    ToolCall,
)
from openclaw_http_compat.errors import map_run_error
from openclaw_http_compat.prompt import CURRENT_MARKER, HISTORY_MARKER

from .conftest import (
    COMPLETION_ID,
    COMPLETIONS,
    TOKEN,
    UUID4,
    ClientFactory,
    GatewayClient,
    ScriptedRunner,
    chat_body,
    error_body,
    events_script,
    failing_script,
    make_gateway,
    stalled_script,
    wait_for,
)

MISSING_USER = error_body("Missing user message in `messages`.", param="messages")
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time"}}


async def post(client: GatewayClient, body: Any, **headers: str) -> ClientResponse:
    return await client.post(COMPLETIONS, json=body, headers={"Authorization": f"Bearer {TOKEN}", **headers})


async def completion_of(resp: ClientResponse) -> dict[str, Any]:
    """The JSON body of a 200 completion, after checking its identity fields and headers."""
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    body: dict[str, Any] = await resp.json()
    assert COMPLETION_ID.match(body["id"])
    assert resp.headers["x-request-id"] == body["id"]
    assert abs(body["created"] - time.time()) < 60
    return body


def completion(body: dict[str, Any], content: str, *, model: str = "openclaw", finish_reason: str = "stop",
               usage: dict[str, Any] | None = None, tool_calls: list[Any] | None = None) -> dict[str, Any]:
    """The exact completion expected, reusing the id and created of ``body``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {"id": body["id"], "object": "chat.completion", "created": body["created"], "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": usage}


async def refused(resp: ClientResponse, status: int, body: dict[str, Any]) -> None:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.json() == body


# --- response shape ------------------------------------------------------------------------------


async def test_non_streaming_completion_shape(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: chat.completion object, ``chatcmpl_`` id, assistant message, ``stop``."""
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body("hi")))
    assert body == completion(body, "echo: hi")
    assert runner.requests[0].run_id == body["id"]
    assert runner.finished == [body["id"]]


async def test_each_request_gets_a_new_id(gateway_client: ClientFactory) -> None:
    """Every completion has its own id."""
    client = await gateway_client()
    first = await completion_of(await post(client, chat_body()))
    second = await completion_of(await post(client, chat_body()))
    assert first["id"] != second["id"]


@pytest.mark.parametrize(("model", "echoed"), [("openclaw/beta", "openclaw/beta"), ("OpenClaw:Beta", "OpenClaw:Beta"),
                                              (None, "openclaw"), ("", "openclaw")])
async def test_model_is_echoed(gateway_client: ClientFactory, model: str | None, echoed: str) -> None:
    """The response echoes the request's ``model`` verbatim (``openclaw`` when absent)."""
    client = await gateway_client()
    request = chat_body()
    if model is None:
        del request["model"]
    else:
        request["model"] = model
    body = await completion_of(await post(client, request))
    assert body["model"] == echoed


async def test_deltas_are_joined_and_non_ascii_kept(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Text deltas are concatenated as produced; non-ASCII text comes back intact."""
    runner.script = events_script(TextDelta("Grüße "), TextDelta(""), TextDelta("😀"), TextDelta(" 😀"), RunEnd())
    client = await gateway_client()
    resp = await post(client, chat_body())
    body = await completion_of(resp)
    assert body == completion(body, "Grüße 😀 😀")
    assert "Grüße".encode() in await resp.read()


@pytest.mark.parametrize("events", [(RunEnd(),), (TextDelta(""), RunEnd()), ()], ids=("end-only", "empty", "nothing"))
async def test_no_text_means_no_response_from_openclaw(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                       events: tuple[Any, ...]) -> None:
    """Ports openai-http.test.ts: an empty run answers ``No response from OpenClaw.``."""
    runner.script = events_script(*events)
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body()))
    assert body == completion(body, "No response from OpenClaw.")


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (RunUsage(input=42, output=17), {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": 59}),
        (RunUsage(input=10, output=5, cache_read=20, cache_write=3),
         {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35,
          "prompt_tokens_details": {"cached_tokens": 20}}),
        (RunUsage(input=10, output=5, total=100), {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 100}),
        (RunUsage(total=123), {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 123}),
    ],
    ids=("42-17", "cached", "explicit-total", "total-only"),
)
async def test_usage_mapping(gateway_client: ClientFactory, runner: ScriptedRunner, usage: RunUsage,
                             expected: dict[str, Any]) -> None:
    """Ports openai-http.test.ts: the run's usage maps onto OpenAI ``usage`` (section 5.2 examples)."""
    runner.script = events_script(TextDelta("ok"), RunUsage(input=1), usage, RunEnd())
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body()))
    assert body == completion(body, "ok", usage=expected)


async def test_length_stop_is_reported(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A run that stopped on its length limit finishes with ``length`` (V4+)."""
    runner.script = events_script(TextDelta("truncat"), RunEnd("length"))
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body()))
    assert body == completion(body, "truncat", finish_reason="length")


async def test_events_after_the_end_are_not_read(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """The plugin stops reading at RunEnd; later events do not leak into the answer."""
    runner.script = events_script(TextDelta("done"), RunEnd(), TextDelta(" and more"))
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body()))
    assert body["choices"][0]["message"]["content"] == "done"


# --- tools ---------------------------------------------------------------------------------------


async def test_tool_calls_non_stream(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: two pending calls -> ``tool_calls`` finish, content kept, no ``index``."""
    runner.script = events_script(
        TextDelta("Let me check that."),
        ToolCall(id="call_1", name="get_weather", arguments='{"city":"Taipei"}'),
        ToolCall(id="call_2", name="get_time", arguments="{}"),
        RunEnd("tool_calls"),
    )
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body(tools=[WEATHER_TOOL, TIME_TOOL])))
    assert body == completion(body, "Let me check that.", finish_reason="tool_calls", tool_calls=[
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ])


async def test_tool_call_without_text_has_empty_content(gateway_client: ClientFactory,
                                                        runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: no text payloads plus a tool call -> ``content: ""`` (never null)."""
    runner.script = events_script(ToolCall(id="c1", name="get_weather", arguments="{}"), RunEnd("tool_calls"))
    client = await gateway_client()
    body = await completion_of(await post(client, chat_body(tools=[WEATHER_TOOL])))
    assert body == completion(body, "", finish_reason="tool_calls", tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}])


@pytest.mark.parametrize(
    ("tool_choice", "choice", "extra"),
    [
        (None, ToolChoice(), None),
        ("auto", ToolChoice(), None),
        ("none", ToolChoice(mode="none"), None),
        ("required", ToolChoice(mode="required"), "You must call one of the available tools before responding."),
        ({"type": "function", "function": {"name": "get_weather"}}, ToolChoice(mode="function", name="get_weather"),
         "You must call the get_weather tool before responding."),
    ],
    ids=("absent", "auto", "none", "required", "named"),
)
async def test_tool_choice_shapes_the_run(gateway_client: ClientFactory, runner: ScriptedRunner, tool_choice: Any,
                                          choice: ToolChoice, extra: str | None) -> None:
    """The run gets the client's tools and tool_choice as sent (#10, F2: a runner forwards both to its
    model; ``none`` keeps the tools), and a forced choice also adds OpenClaw's system line."""
    runner.script = events_script(ToolCall(id="c1", name="get_weather", arguments="{}"), RunEnd("tool_calls"))
    client = await gateway_client()
    request = chat_body(tools=[WEATHER_TOOL, TIME_TOOL])
    request["messages"].insert(0, {"role": "system", "content": "Be brief."})
    if tool_choice is not None:
        request["tool_choice"] = tool_choice
    await completion_of(await post(client, request))
    run = runner.requests[0]
    assert tuple(t.name for t in run.client_tools) == ("get_weather", "get_time")
    assert run.tool_choice == choice
    assert run.extra_system_prompt == ("Be brief." if extra is None else f"Be brief.\n\n{extra}")


async def test_strict_tool_is_forwarded(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: ``tool_choice: auto`` with one strict tool forwards it as is."""
    client = await gateway_client()
    tool = {"type": "function", "function": {"name": "get_weather", "description": "d",
                                             "parameters": {"type": "object"}, "strict": True}}
    await completion_of(await post(client, chat_body(tools=[tool], tool_choice="auto")))
    assert runner.requests[0].client_tools == (
        ClientTool(name="get_weather", description="d", parameters={"type": "object"}, strict=True),)


@pytest.mark.parametrize(
    ("tool_choice", "events", "message"),
    [
        ("required", (TextDelta("Sunny, probably."), RunEnd()),
         "tool_choice=required was not satisfied by the agent response"),
        ({"type": "function", "function": {"name": "get_weather"}},
         (ToolCall(id="c1", name="get_time", arguments="{}"), RunEnd("tool_calls")),
         "tool_choice required a get_weather tool call, but the agent did not produce one"),
    ],
    ids=("required-text-only", "named-wrong-tool"),
)
async def test_unsatisfied_forced_tool_choice_is_502(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                     tool_choice: Any, events: tuple[Any, ...],
                                                     message: str) -> None:
    """Ports openai-http.test.ts: a forced tool_choice the agent ignored is 502 ``api_error``."""
    runner.script = events_script(*events)
    client = await gateway_client()
    resp = await post(client, chat_body(tools=[WEATHER_TOOL, TIME_TOOL], tool_choice=tool_choice))
    await refused(resp, 502, error_body(message, "api_error"))


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice=required but no tools were provided", "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice names unknown tool 'nope'", "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools"}},
         "tool_choice allowed_tools is not supported", "tool_choice"),
        ({"tools": [{"type": "function", "name": "get_weather"}]}, "tool.function is required", "tools"),
    ],
    ids=("required-without-tools", "unknown-tool", "allowed_tools", "flat-tool"),
)
async def test_tool_validation_errors(gateway_client: ClientFactory, runner: ScriptedRunner,
                                      fields: dict[str, Any], message: str, param: str) -> None:
    """Ports openai-http.test.ts: bad tools/tool_choice are 400 before any run starts."""
    client = await gateway_client()
    resp = await post(client, chat_body(**fields))
    await refused(resp, 400, error_body(f"Invalid tools/tool_choice: {message}", param=param))
    assert runner.requests == []


# --- run failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "body"),
    [
        (RunError(message="slow down", reason="rate_limit", status=429), 429,
         error_body("slow down", "rate_limit_error")),
        (RunError(message="decimal above max", reason="format", status=400, code="decimal_above_max_value"), 400,
         error_body("decimal above max", code="decimal_above_max_value")),
        (RunError(message="boom at provider", reason="server_error", status=500), 502,
         error_body("upstream provider error", "api_error")),
        (RunError(message="provider timed out", reason="timeout"), 504,
         error_body("upstream provider timeout", "api_error")),
        (RunError(message="stack trace with secrets"), 500, error_body("internal error", "api_error")),
    ],
    ids=("rate_limit", "format-with-code", "server_error", "timeout", "unclassified"),
)
async def test_run_error_is_mapped(gateway_client: ClientFactory, runner: ScriptedRunner, error: RunError,
                                   status: int, body: dict[str, Any]) -> None:
    """Ports openai-http.test.ts: provider failures map to OpenAI status and type (section 6.3)."""
    runner.script = events_script(TextDelta("partial"), error, TextDelta("never read"))
    client = await gateway_client()
    await refused(await post(client, chat_body()), status, body)


@pytest.mark.parametrize(
    ("error", "status", "type", "message", "code"),
    [
        (RunError(message="bad key", reason="auth"), 401, "authentication_error", "bad key", None),
        (RunError(message="banned", reason="auth_permanent"), 403, "permission_error", "banned", None),
        (RunError(message="pay up", reason="billing"), 402, "insufficient_quota", "pay up", None),
        (RunError(message="bad", reason="format", status=422, code="c"), 422, "invalid_request_error", "bad", "c"),
        (RunError(message="gone", reason="model_not_found"), 404, "invalid_request_error", "gone", None),
        (RunError(message="expired", reason="session_expired"), 410, "invalid_request_error", "expired", None),
        (RunError(message="busy", reason="overloaded"), 503, "api_error", "upstream provider overloaded", None),
        (RunError(message="busy", reason="overloaded", status=529), 503, "api_error",
         "upstream provider overloaded", None),
        (RunError(message="busy", reason="overloaded", status=429), 503, "api_error",
         "upstream provider overloaded", None),
        (RunError(message="refused", reason="unreachable"), 502, "api_error", "upstream unreachable", None),
        (RunError(message="session store unavailable", reason="unavailable"), 503, "api_error",
         "session store unavailable", None),
        (RunError(message="x", reason="format", status=500, code="c"), 400, "invalid_request_error", "x", "c"),
        (RunError(message="x", reason="server_error"), 502, "api_error", "upstream provider error", None),
        (RunError(message="x", reason="server_error", status=503), 502, "api_error", "upstream provider error", None),
        (RunError(message="x", reason="server_error", status=400), 400, "api_error", "upstream provider error", None),
        (RunError(message="x", reason="timeout", status=408), 408, "api_error", "upstream provider timeout", None),
        (RunError(message="x", reason="timeout", status=500), 504, "api_error", "upstream provider timeout", None),
        (RunError(message="slow", reason="rate_limit"), 429, "rate_limit_error", "slow", None),
        (RunError(message="", reason="rate_limit"), 429, "rate_limit_error", "request failed", None),
        (RunError(message="odd", reason="rate_limit", status=200), 429, "rate_limit_error", "odd", None),
        (RunError(message="secret", reason="something_new", status=418), 500, "api_error", "internal error", None),
        (RunError(message="secret"), 500, "api_error", "internal error", None),
    ],
)
def test_map_run_error(error: RunError, status: int, type: str, message: str, code: str | None) -> None:
    """OpenClaw's openai-compat-errors table: reason -> type, status rules, fixed messages (section 6.3),
    with statuses OpenAI clients know (an overload is 503, never 529)."""
    mapped = map_run_error(error)
    assert (mapped.status, mapped.type, mapped.message, mapped.code, mapped.param) == (
        status, type, message, code, None)
    assert dict(mapped.headers) == {}


@pytest.mark.parametrize(("retry_after", "header"), [(7.0, "7"), (0.2, "1"), (0.0, "0")])
def test_map_run_error_passes_retry_after(retry_after: float, header: str) -> None:
    """A provider's Retry-After (seconds) reaches the client's error as a whole number of seconds, rounded up."""
    mapped = map_run_error(RunError(message="slow down", reason="rate_limit", status=429, retry_after=retry_after))
    assert (mapped.status, mapped.type, mapped.message) == (429, "rate_limit_error", "slow down")
    assert dict(mapped.headers) == {"Retry-After": header}


async def test_runner_exception_is_500_without_leaking(gateway_client: ClientFactory,
                                                       runner: ScriptedRunner) -> None:
    """An exception escaping the runner is a generic 500 ``internal error``; its text never reaches the client."""
    runner.script = failing_script(TextDelta("partial"))
    client = await gateway_client()
    resp = await post(client, chat_body())
    await refused(resp, 500, error_body("internal error", "api_error"))
    assert "secret internal detail" not in await resp.text()


# --- body and field validation -------------------------------------------------------------------


async def raw_post(client: GatewayClient, data: bytes) -> ClientResponse:
    return await client.post(COMPLETIONS, data=data, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.mark.parametrize("raw", ['{"messages": [', "{'single': 'quotes'}", '{"a": 1} trailing', "nul"])
async def test_invalid_json_is_400_with_the_parser_message(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                           raw: str) -> None:
    """Invalid JSON is 400 whose message is the JSON parser's own text."""
    with pytest.raises(ValueError) as parser:
        json.loads(raw)
    client = await gateway_client()
    await refused(await raw_post(client, raw.encode()), 400, error_body(str(parser.value)))
    assert runner.requests == []


@pytest.mark.parametrize("raw", [b"", b"   \n\t ", b"{}", b'{"messages": []}', b'{"messages": null}'],
                         ids=("empty", "whitespace", "empty-object", "empty-messages", "null-messages"))
async def test_nothing_to_say_is_missing_user_message(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                      raw: bytes) -> None:
    """An empty body counts as ``{}`` and, like no messages, is 400 Missing user message."""
    client = await gateway_client()
    await refused(await raw_post(client, raw), 400, MISSING_USER)
    assert runner.requests == []


async def test_system_only_is_missing_user_message(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: only a system message -> 400 Missing user message."""
    client = await gateway_client()
    resp = await post(client, {"model": "openclaw", "messages": [{"role": "system", "content": "You are helpful."}]})
    await refused(resp, 400, MISSING_USER)


async def test_content_type_is_not_checked(gateway_client: ClientFactory) -> None:
    """The body is read as JSON whatever the Content-Type says."""
    client = await gateway_client()
    resp = await client.post(COMPLETIONS, data=json.dumps(chat_body()).encode(),
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"})
    assert resp.status == 200


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (b"[]", error_body("Request body must be a JSON object.")),
        (b'"text"', error_body("Request body must be a JSON object.")),
        (b"\xff\xfe{}", error_body("Request body is not valid UTF-8.")),
    ],
    ids=("array", "string", "not-utf8"),
)
async def test_body_must_be_a_utf8_json_object(gateway_client: ClientFactory, raw: bytes,
                                               body: dict[str, Any]) -> None:
    """A body that is not a UTF-8 JSON object is 400."""
    client = await gateway_client()
    await refused(await raw_post(client, raw), 400, body)


async def test_body_over_max_body_bytes_is_413(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A body over chatCompletions.maxBodyBytes is 413 Payload too large; exactly at the limit is fine."""
    client = await gateway_client(endpoint={"maxBodyBytes": 200})
    at_limit = json.dumps(chat_body("x")).encode()
    at_limit += b" " * (200 - len(at_limit))
    assert (await raw_post(client, at_limit)).status == 200
    await refused(await raw_post(client, at_limit + b" "), 413, error_body("Payload too large"))
    assert len(runner.requests) == 1


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ({"n": 2}, error_body("Only one choice is supported: `n` must be 1.", param="n")),
        ({"stream": "yes"}, error_body("stream: expected a boolean", param="stream")),
        ({"model": 5}, error_body("model: expected a string", param="model")),
        ({"temperature": 999}, error_body("`temperature` must be between 0 and 2.", param="temperature")),
        ({"top_p": 5}, error_body("`top_p` must be between 0 and 1.", param="top_p")),
        ({"seed": 1.5}, error_body("`seed` must be an integer.", param="seed")),
        ({"max_tokens": 0}, error_body("max_tokens must be a positive safe integer", param="max_tokens")),
        ({"max_completion_tokens": "32"},
         error_body("max_completion_tokens must be a positive safe integer", param="max_completion_tokens")),
        ({"stop": ["a", "b", "c", "d", "e"]},
         error_body("Invalid stop: stop supports at most 4 sequences", param="stop")),
        ({"response_format": {"type": "xml"}},
         error_body("Invalid response_format: response_format.type must be text, json_object, or json_schema",
                    param="response_format")),
    ],
    ids=("n", "stream", "model", "temperature", "top_p", "seed", "max_tokens", "max_completion_tokens", "stop",
         "response_format"),
)
async def test_field_validation_errors(gateway_client: ClientFactory, runner: ScriptedRunner,
                                       fields: dict[str, Any], body: dict[str, Any]) -> None:
    """Ports openai-http.test.ts: out-of-range or mistyped fields are 400 naming the field; no run starts."""
    client = await gateway_client()
    await refused(await post(client, chat_body(**fields)), 400, body)
    assert runner.requests == []


@pytest.mark.parametrize(
    ("fields", "options"),
    [
        ({}, None),
        ({"max_tokens": None, "max_completion_tokens": None}, None),
        ({"max_completion_tokens": 64, "max_tokens": 999}, GenerationOptions(max_tokens=64)),
        ({"temperature": 0, "top_p": 0.95}, GenerationOptions(temperature=0.0, top_p=0.95)),
        ({"frequency_penalty": -0.5, "presence_penalty": 1.25, "seed": 12345},
         GenerationOptions(frequency_penalty=-0.5, presence_penalty=1.25, seed=12345)),
        ({"stop": "\n\n"}, GenerationOptions(stop=("\n\n",))),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}}},
         GenerationOptions(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {}}})),
    ],
    ids=("none", "sdk-nulls", "caps", "sampling", "penalties-seed", "stop", "response_format"),
)
async def test_options_are_forwarded(gateway_client: ClientFactory, runner: ScriptedRunner,
                                     fields: dict[str, Any], options: GenerationOptions | None) -> None:
    """Ports openai-http.test.ts: sampling, caps, stop and response_format reach AgentRunRequest.options."""
    client = await gateway_client()
    await completion_of(await post(client, chat_body(**fields)))
    assert runner.requests[0].options == options


async def test_stream_options_without_streaming_is_accepted(gateway_client: ClientFactory) -> None:
    """``stream_options`` with ``stream: false`` is accepted and ignored (vLLM would 400)."""
    client = await gateway_client()
    resp = await post(client, chat_body(stream=False, stream_options={"include_usage": True}))
    body = await completion_of(resp)
    assert body == completion(body, "echo: hi")


# --- agents, sessions, prompt, channel -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "headers", "agent"),
    [
        ("openclaw", {}, "main"),
        ("openclaw/default", {}, "main"),
        ("openclaw/beta", {}, "beta"),
        ("openclaw:beta", {}, "beta"),
        ("agent:alpha", {}, "alpha"),
        ("openclaw", {"x-openclaw-agent-id": "beta"}, "beta"),
        ("openclaw", {"x-openclaw-agent": "alpha"}, "alpha"),
        ("openclaw", {"x-openclaw-agent-id": "beta", "x-openclaw-agent": "alpha"}, "beta"),
        ("openclaw", {"x-openclaw-agent-id": "  ", "x-openclaw-agent": "alpha"}, "alpha"),
        ("openclaw:beta", {"x-openclaw-agent-id": "alpha"}, "alpha"),
        ("openclaw", {"x-openclaw-agent-id": " Beta "}, "beta"),
    ],
    ids=("openclaw", "openclaw/default", "slash", "colon", "agent-prefix", "header", "alias-header",
         "id-header-first", "blank-id-header", "header-wins-over-model", "header-normalised"),
)
async def test_agent_selection(gateway_client: ClientFactory, runner: ScriptedRunner, model: str,
                               headers: dict[str, str], agent: str) -> None:
    """Ports openai-http tests: header wins, then ``openclaw/<id>``/``openclaw:<id>``/``agent:<id>``, then default."""
    client = await gateway_client()
    await completion_of(await post(client, chat_body(model=model), **headers))
    assert runner.requests[0].agent_id == agent
    assert runner.requests[0].session_key.startswith(f"agent:{agent}:openai:")


async def test_configured_default_agent_runs_for_openclaw(gateway_client: ClientFactory,
                                                          runner: ScriptedRunner) -> None:
    """``openclaw`` and ``openclaw/default`` run the configured default, not necessarily ``main``."""
    client = await gateway_client(agents=[{"id": "alpha"}, {"id": "beta", "default": True}])
    await completion_of(await post(client, chat_body(model="openclaw")))
    await completion_of(await post(client, chat_body(model="openclaw/default")))
    assert [r.agent_id for r in runner.requests] == ["beta", "beta"]


@pytest.mark.parametrize(
    ("model", "headers", "body"),
    [
        ("openclaw", {"x-openclaw-agent-id": "missing-agent"},
         error_body("Unknown agent 'missing-agent'.", code="model_not_found")),
        ("openclaw/missing-agent", {},
         error_body("Unknown agent 'missing-agent'.", param="model", code="model_not_found")),
        ("gpt-4o", {}, error_body("Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.", param="model",
                                  code="model_not_found")),
        ("openai/", {}, error_body("Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.", param="model",
                                   code="model_not_found")),
    ],
    ids=("unknown-header-agent", "unknown-model-agent", "foreign-model", "provider-ref"),
)
async def test_unknown_agent_or_invalid_model_is_400(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                     model: str, headers: dict[str, str],
                                                     body: dict[str, Any]) -> None:
    """Ports openai-http.test.ts: unknown agents and non-agent models are 400 before any run starts."""
    client = await gateway_client()
    await refused(await post(client, chat_body(model=model), **headers), 400, body)
    assert runner.requests == []


@pytest.mark.parametrize(
    ("headers", "user", "key"),
    [
        ({"x-openclaw-agent-id": "beta", "x-openclaw-session-key": "agent:beta:openai:custom"}, "alice",
         "agent:beta:openai:custom"),
        ({"x-openclaw-session-key": "MyApp-Thread-9"}, None, "MyApp-Thread-9"),
        ({}, "alice", "agent:main:openai-user:alice"),
        ({"x-openclaw-agent-id": "Beta"}, "Conv:ABC-1", "agent:beta:openai-user:conv:abc-1"),
    ],
    ids=("header-verbatim", "header-case-kept", "user", "user-lowercased"),
)
async def test_session_keys(gateway_client: ClientFactory, runner: ScriptedRunner, headers: dict[str, str],
                            user: str | None, key: str) -> None:
    """Ports openai-http tests: the session header is used verbatim; ``user`` gives ``openai-user:<user>``."""
    client = await gateway_client()
    await completion_of(await post(client, chat_body(user=user), **headers))
    assert runner.requests[0].session_key == key


@pytest.mark.parametrize("user", [None, {"id": "u1", "name": "Ann"}, 7, "   "], ids=("absent", "object", "number",
                                                                                    "blank"))
async def test_without_hints_every_request_is_a_new_session(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                            user: Any) -> None:
    """No session header and no string ``user``: a fresh ``agent:main:openai:<uuid>`` each time."""
    client = await gateway_client()
    for _ in range(2):
        await completion_of(await post(client, chat_body(user=user)))
    keys = [r.session_key for r in runner.requests]
    assert all(re.fullmatch(f"agent:main:openai:{UUID4}", k) for k in keys)
    assert keys[0] != keys[1]


@pytest.mark.parametrize("key", ["agent:main:subagent:spoofed", "agent:main:harness:codex:abc", "cron:job",
                                 "ACP:thread"])
async def test_reserved_session_keys_are_400(gateway_client: ClientFactory, runner: ScriptedRunner, key: str) -> None:
    """Ports openai-http.test.ts: reserved session namespaces in the header are 400."""
    client = await gateway_client()
    resp = await post(client, chat_body(), **{"x-openclaw-session-key": key})
    await refused(resp, 400, error_body("`x-openclaw-session-key` cannot use reserved internal session namespaces."))
    assert runner.requests == []


async def test_worked_example_prompt(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """The worked example of spec section 4.7 reaches the run as one message plus extra system prompt."""
    client = await gateway_client()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "name": "bob",
         "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": "Explain."}]},
        {"role": "assistant", "content": "(draft)"},
    ]
    await completion_of(await post(client, {"model": "openclaw", "messages": messages}))
    run = runner.requests[0]
    assert run.message == "\n".join([HISTORY_MARKER, "User: Hi", "Assistant: Hello! How can I help?", "",
                                     CURRENT_MARKER, "User: What is 2+2?", "Explain."])
    assert run.extra_system_prompt == "You are terse.\n\nAnswer in English."


@pytest.mark.parametrize(
    ("messages", "message", "extra"),
    [
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}], "Hello", "S"),
        ([{"role": "developer", "content": "D"}, {"role": "user", "content": "Hi"}], "Hi", "D"),
        ([{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "input_text", "text": "world"}]}],
         "hello\nworld", None),
        ([{"role": "user", "content": "What's the weather?"}, {"role": "assistant", "content": "Checking."},
          {"role": "tool", "content": "Sunny, 70F."}],
         f"{HISTORY_MARKER}\nUser: What's the weather?\nAssistant: Checking.\n\n{CURRENT_MARKER}\nTool: Sunny, 70F.",
         None),
        ([{"role": "user", "content": "Weather?"},
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny, 70F."}]}],
         f"{HISTORY_MARKER}\nUser: Weather?\n"
         'Assistant: tool_call id=call_1 name=get_weather arguments={"city":"Taipei"}\n\n'
         f"{CURRENT_MARKER}\nTool:call_1: Sunny, 70F.", None),
        ([{"role": "assistant", "content": "Only me."}], "Only me.", None),
    ],
    ids=("system-single-user", "developer", "text-parts", "tool-current-turn", "tool-call-round-trip",
         "assistant-only"),
)
async def test_prompt_flattening(gateway_client: ClientFactory, runner: ScriptedRunner, messages: list[Any],
                                 message: str, extra: str | None) -> None:
    """Ports openai-http.e2e.test.ts/openai-http.test.ts prompt cases: what the agent receives."""
    client = await gateway_client()
    await completion_of(await post(client, {"model": "openclaw", "messages": messages}))
    assert (runner.requests[0].message, runner.requests[0].extra_system_prompt) == (message, extra)


@pytest.mark.parametrize(
    ("headers", "channel"),
    [({}, "webchat"), ({"x-openclaw-message-channel": "custom-client-channel"}, "custom-client-channel"),
     ({"x-openclaw-message-channel": " Custom-Channel "}, "custom-channel"),
     ({"x-openclaw-message-channel": "   "}, "webchat")],
    ids=("default", "custom", "trimmed-lowercased", "blank"),
)
async def test_message_channel_header(gateway_client: ClientFactory, runner: ScriptedRunner,
                                      headers: dict[str, str], channel: str) -> None:
    """Ports openai-http/http-utils tests: ``x-openclaw-message-channel`` trimmed and lowercased, else webchat."""
    client = await gateway_client()
    await completion_of(await post(client, chat_body(), **headers))
    assert runner.requests[0].message_channel == channel


def config_with_models(models: dict[str, Any]) -> HttpCompatConfig:
    return HttpCompatConfig.from_mapping({
        "gateway": {"auth": {"token": TOKEN}, "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
        "agents": {"defaults": {"model": {"primary": "openai/gpt-5.4"}, "models": models},
                   "list": [{"id": "main"}]},
    }, env={})


@pytest.mark.parametrize(
    ("header", "models", "override"),
    [
        (None, {}, None),
        ("openai/gpt-5.4", {}, "openai/gpt-5.4"),
        ("gpt-5.4", {"openai/gpt-5.4": {}}, "gpt-5.4"),
        ("openai/gpt-5.4", {"openai/gpt-5.4": {}}, "openai/gpt-5.4"),
    ],
    ids=("absent", "no-allowlist", "bare-allowed", "allowed"),
)
async def test_model_override_header(aiohttp_client: AiohttpClient, header: str | None, models: dict[str, Any],
                                     override: str | None) -> None:
    """Ports openai-http.test.ts: ``x-openclaw-model`` reaches the run as the raw header string."""
    runner = ScriptedRunner()
    client = await aiohttp_client(make_gateway(config_with_models(models), runner))
    headers = {"x-openclaw-model": header} if header else {}
    await completion_of(await post(client, chat_body(), **headers))
    assert runner.requests[0].model_override == override


@pytest.mark.parametrize(
    ("header", "models", "body"),
    [
        ("openai/", {}, error_body("Invalid `x-openclaw-model`.", param="x-openclaw-model")),
        ("anthropic/claude", {"openai/gpt-5.4": {}},
         error_body("Model 'anthropic/claude' is not allowed for agent 'main'.", param="x-openclaw-model")),
    ],
    ids=("unparseable", "not-allowed"),
)
async def test_model_override_errors(aiohttp_client: AiohttpClient, header: str, models: dict[str, Any],
                                     body: dict[str, Any]) -> None:
    """Ports openai-http.test.ts: an unparseable or disallowed ``x-openclaw-model`` is 400."""
    client = await aiohttp_client(make_gateway(config_with_models(models), ScriptedRunner()))
    await refused(await post(client, chat_body(), **{"x-openclaw-model": header}), 400, body)


# --- disconnect and shutdown ---------------------------------------------------------------------


@pytest.mark.parametrize("handler_cancellation", [True, False], ids=("cancelling-server", "run_app-default"))
async def test_client_disconnect_aborts_a_non_streaming_run(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                            handler_cancellation: bool) -> None:
    """Ports openai-http.test.ts: a non-streaming client that goes away aborts the run."""
    runner.script = stalled_script()
    client = await gateway_client(handler_cancellation=handler_cancellation)
    pending = asyncio.ensure_future(post(client, chat_body()))
    await wait_for(lambda: bool(runner.requests))
    pending.cancel()
    await wait_for(lambda: runner.aborted == [runner.requests[0].run_id])
    assert runner.finished == []


async def test_shutdown_answers_an_open_non_streaming_run(gateway_client: ClientFactory,
                                                          runner: ScriptedRunner) -> None:
    """Shutting the gateway down ends a thinking run at once with 503 ``shutting_down``."""
    runner.script = stalled_script()
    client = await gateway_client()
    pending = asyncio.ensure_future(post(client, chat_body()))
    await wait_for(lambda: bool(runner.requests))
    started = time.monotonic()
    await client.server.close()
    resp = await pending
    assert time.monotonic() - started < 1
    await refused(resp, 503, error_body("The gateway is shutting down.", "api_error", code="shutting_down"))
    assert runner.aborted == [runner.requests[0].run_id]


# --- models --------------------------------------------------------------------------------------


def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "openclaw", "permission": []}


async def test_list_models(gateway_client: ClientFactory, auth_headers: dict[str, str]) -> None:
    """``GET /v1/models`` lists ``openclaw``, ``openclaw/default`` and ``openclaw/<id>`` per agent."""
    client = await gateway_client()
    resp = await client.get("/v1/models", headers=auth_headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.json() == {"object": "list", "data": [
        model_object(m) for m in ("openclaw", "openclaw/default", "openclaw/main", "openclaw/beta", "openclaw/alpha")
    ]}


async def test_list_models_without_agents(gateway_client: ClientFactory, auth_headers: dict[str, str]) -> None:
    """With no agents configured, the list names ``main``."""
    client = await gateway_client(agents=[])
    resp = await client.get("/v1/models", headers=auth_headers)
    assert [m["id"] for m in (await resp.json())["data"]] == ["openclaw", "openclaw/default", "openclaw/main"]


@pytest.mark.parametrize(
    "path", ["/v1/models/openclaw", "/v1/models/openclaw%2Fdefault", "/v1/models/openclaw%2Fbeta", "/v1/models/openclaw/beta"]
)
async def test_get_model_found(gateway_client: ClientFactory, auth_headers: dict[str, str], path: str) -> None:
    """``GET /v1/models/{id}`` returns the one model object (ids percent-encoded, as the OpenAI SDK sends them, or raw)."""
    client = await gateway_client()
    resp = await client.get(path, headers=auth_headers)
    assert resp.status == 200
    model_id = path.removeprefix("/v1/models/").replace("%2F", "/")
    assert await resp.json() == model_object(model_id)


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/v1/models/gpt-4o", 404, error_body("Model 'gpt-4o' not found.", code="model_not_found")),
        ("/v1/models/openclaw%2Fghost", 404, error_body("Model 'openclaw/ghost' not found.", code="model_not_found")),
        ("/v1/models/%20", 400, error_body("Missing model id.")),
    ],
    ids=("foreign", "unknown-agent", "blank"),
)
async def test_get_model_errors(gateway_client: ClientFactory, auth_headers: dict[str, str], path: str, status: int,
                                body: dict[str, Any]) -> None:
    """An unknown model id is 404; a blank one is 400."""
    client = await gateway_client()
    await refused(await client.get(path, headers=auth_headers), status, body)


