"""The real ``openai`` SDK against the plugin on a real socket (#10).

What a direct call to OpenAI gives the SDK, the gateway must give it too: a streamed run failing
before its answer starts raises ``RateLimitError`` / ``BadRequestError`` and is retried as the SDK
retries OpenAI (F7); a run without usage gives ``usage is None`` (F1); the conversation reaches the
runner in its structure, tool calls and results included (F6), with ``tool_choice`` as sent (F2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from openclaw_http_compat import (
    AgentEvent,
    AgentRunRequest,
    ChatMessage,
    RunEnd,
    RunError,
    TextDelta,
    ToolCall,
    ToolChoice,
)

from .conftest import TOKEN, ClientFactory, GatewayClient, ScriptedRunner, events_script

RATE_LIMITED: Final = RunError(message="Rate limit reached", reason="rate_limit", status=429, retry_after=3)


def sdk(client: GatewayClient, *, max_retries: int = 0) -> openai.AsyncOpenAI:
    """An SDK client for the test server's real socket."""
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=TOKEN, max_retries=max_retries)


async def streamed_text(api: openai.AsyncOpenAI, **fields: Any) -> str:
    stream = await api.chat.completions.create(
        model="openclaw", messages=[{"role": "user", "content": "hi"}], stream=True, **fields
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(parts)


# --- F7: failures before the answer are real HTTP errors --------------------------------------------


async def test_streamed_rate_limit_raises_rate_limit_error(gateway_client: ClientFactory,
                                                           runner: ScriptedRunner) -> None:
    """A streamed run failing first with 429 raises ``RateLimitError`` with its status, body and Retry-After."""
    runner.script = events_script(RATE_LIMITED)
    client = await gateway_client()
    async with sdk(client) as api:
        with pytest.raises(openai.RateLimitError) as info:
            await streamed_text(api)
    error = info.value
    assert (error.status_code, error.type, error.code, error.body) == (
        429, "rate_limit_error", None,
        {"message": "Rate limit reached", "type": "rate_limit_error", "param": None, "code": None})
    assert error.response.headers["retry-after"] == "3"
    assert len(runner.requests) == 1


async def test_streamed_rate_limit_is_retried_by_the_sdk(gateway_client: ClientFactory,
                                                         runner: ScriptedRunner) -> None:
    """With ``max_retries=2`` the SDK retries a streamed 429 as it retries OpenAI's; the third run answers.

    No Retry-After here, so the SDK's own backoff (about 0.5 s, then 1 s) applies.
    """
    replies = [events_script(RunError(message="busy", reason="rate_limit", status=429))] * 2 + [
        events_script(TextDelta("third time lucky"), RunEnd())]

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        async for event in replies[len(runner.requests) - 1](request):
            yield event

    runner.script = script
    client = await gateway_client()
    async with sdk(client, max_retries=2) as api:
        assert await streamed_text(api) == "third time lucky"
    assert len(runner.requests) == 3
    assert len(runner.finished) == 3


async def test_streamed_context_overflow_raises_bad_request(gateway_client: ClientFactory,
                                                            runner: ScriptedRunner) -> None:
    """A context overflow before the answer raises ``BadRequestError`` with ``code == "context_length_exceeded"``."""
    message = "requested 287 tokens (279 in the messages, 8 in the completion). Please reduce the length."
    runner.script = events_script(RunError(message=message, reason="format", status=400,
                                           code="context_length_exceeded"))
    client = await gateway_client()
    async with sdk(client, max_retries=2) as api:
        with pytest.raises(openai.BadRequestError) as info:
            await streamed_text(api)
    assert (info.value.status_code, info.value.code, info.value.message) == (
        400, "context_length_exceeded", f"Error code: 400 - {message}")
    assert info.value.body == {"message": message, "type": "invalid_request_error", "param": None,
                               "code": "context_length_exceeded"}
    assert len(runner.requests) == 1  # a 400 is not retried


async def test_error_after_content_is_an_api_error_in_the_stream(gateway_client: ClientFactory,
                                                                 runner: ScriptedRunner) -> None:
    """After the first content the 200 is out: a failure is the in-band error the SDK raises as ``APIError``."""
    runner.script = events_script(TextDelta("partial"), RATE_LIMITED)
    client = await gateway_client()
    seen: list[str] = []
    async with sdk(client, max_retries=2) as api:
        stream = await api.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")
    assert not isinstance(info.value, openai.APIStatusError)
    assert info.value.message == "Rate limit reached"
    assert seen == ["", "partial"]
    assert len(runner.requests) == 1


# --- F1: no usage reported, usage is None ----------------------------------------------------------


async def test_no_usage_is_none_through_the_sdk(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """A runner that reports no usage: ``completion.usage is None``, and the streamed usage chunk's too."""
    runner.script = events_script(TextDelta("no meter"), RunEnd())
    client = await gateway_client()
    async with sdk(client) as api:
        completion = await api.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "no meter"
        assert completion.usage is None
        stream = await api.chat.completions.create(
            model="openclaw", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "no meter"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is None
    assert chunks[-2].choices[0].finish_reason == "stop"


# --- F2, F6: the run gets the conversation's structure and tool_choice as sent -----------------------


async def test_the_run_gets_the_conversation_structured(gateway_client: ClientFactory,
                                                        runner: ScriptedRunner) -> None:
    """An SDK conversation with an assistant tool call and its result reaches the runner as native messages."""
    runner.script = events_script(TextDelta("18C and sunny."), RunEnd())
    client = await gateway_client()
    weather: ChatCompletionFunctionToolParam = {
        "type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
    ]
    async with sdk(client) as api:
        completion = await api.chat.completions.create(
            model="openclaw", messages=messages, tools=[weather], tool_choice="auto")
    assert completion.choices[0].message.content == "18C and sunny."
    run = runner.requests[0]
    assert run.messages == (
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Weather in Oslo?"),
        ChatMessage(role="assistant", content=None,
                    tool_calls=(ToolCall(id="call_1", name="get_weather", arguments='{"city":"Oslo"}'),)),
        ChatMessage(role="tool", content="18C sunny", tool_call_id="call_1"),
    )
    assert run.tool_choice == ToolChoice(mode="auto")
    assert [t.name for t in run.client_tools] == ["get_weather"]
