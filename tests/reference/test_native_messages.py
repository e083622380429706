"""The conversation reaches the model once, natively (findings F5 and F6).

The runtime sends the client's conversation as OpenAI messages (parts, assistant tool calls,
tool results), a session's transcript and then only what the agent has not seen, and stores
turns structurally so a session replays as the conversation it was.
"""

from __future__ import annotations

import pathlib
from typing import Any

import openai

from openclaw_http_compat import (
    AgentRunRequest,
    ChatMessage,
    ImageInput,
    ImagePart,
    RunEnd,
    RunUsage,
    TextDelta,
    TextPart,
    ToolCall,
)
from openclaw_http_compat.reference import AgentRuntime, SessionStore, Turn

from .mock_upstream import MockUpstream, StreamReply
from .real_gateway import gateway_config, serve_gateway
from .test_runtime import SESSION, _collect, runtime, runtime_for

__all__ = ("runtime", "runtime_for")  # fixtures, imported for pytest

WEATHER = ToolCall(id="call_1", name="get_weather", arguments='{"city":"Taipei"}')
WEATHER_MESSAGE = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}}],
}
PNG = ImageInput("image/png", "iVBORw0KGgo=")
# The question, the call and its result, as stored.
WEATHER_TURNS = [
    Turn("user", "Weather in Taipei?"),
    Turn("assistant", "", tool_calls=(WEATHER,)),
    Turn("tool", "Sunny, 30C", tool_call_id="call_1"),
]


def _run(*messages: ChatMessage, message: str = "flattened", **kwargs: Any) -> AgentRunRequest:
    fields: dict[str, Any] = {"run_id": "chatcmpl_1", "agent_id": "main", "session_key": SESSION}
    return AgentRunRequest(message=message, messages=messages, **{**fields, **kwargs})


def _weather_reply() -> StreamReply:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}}
    return StreamReply(deltas=(), tool_calls=(call,), finish_reason="tool_calls")


CONVERSATION = (
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Weather in Taipei?"),
    ChatMessage(role="assistant", content=None, tool_calls=(WEATHER,)),
    ChatMessage(role="developer", content="Use metric units."),
    ChatMessage(role="tool", content="Sunny, 30C", tool_call_id="call_1"),
    ChatMessage(role="user", content=(TextPart("And this one?"), ImagePart(PNG))),
)
CONVERSATION_SENT = [
    {"role": "user", "content": "Weather in Taipei?"},
    WEATHER_MESSAGE,
    {"role": "tool", "content": "Sunny, 30C", "tool_call_id": "call_1"},
    {"role": "user", "content": [
        {"type": "text", "text": "And this one?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]},
]


async def test_stateless_conversation_is_sent_as_the_client_sent_it(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """A request on a minted key sends the system prompt, then the client's conversation
    natively without its system and developer entries; it stores only its new entries."""
    mock_upstream.reply(StreamReply(deltas=("A cat.",)))
    request = _run(*CONVERSATION, new_session=True, extra_system_prompt="Be brief.\n\nUse metric units.")
    # The mock reports no usage: the estimate (768 of it for the image) comes before the end.
    assert await _collect(runtime, request) == [TextDelta("A cat."), RunUsage(input=822, output=2), RunEnd("stop")]
    assert mock_upstream.requests[0].json["messages"] == [
        {"role": "system", "content": "Be brief.\n\nUse metric units."},
        *CONVERSATION_SENT,
    ]
    # After the client's last assistant message: the tool result and the new question (its
    # image is not stored), then the reply.
    assert await store.load(SESSION) == [
        Turn("tool", "Sunny, 30C", tool_call_id="call_1"),
        Turn("user", "And this one?"),
        Turn("assistant", "A cat."),
    ]


async def test_named_session_keeps_the_whole_first_conversation(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """A named session with no turns stores the client's whole conversation, so its next run
    replays it; a client that then resends it all makes the model read it once."""
    mock_upstream.reply(StreamReply(deltas=("A cat.",)), StreamReply(deltas=("Yes.",)))
    assert (await _collect(runtime, _run(*CONVERSATION)))[-1] == RunEnd("stop")
    assert await store.load(SESSION) == [*WEATHER_TURNS, Turn("user", "And this one?"), Turn("assistant", "A cat.")]
    resent = (*CONVERSATION, ChatMessage(role="assistant", content="A cat."), ChatMessage(role="user", content="Sure?"))
    assert (await _collect(runtime, _run(*resent)))[-1] == RunEnd("stop")
    assert mock_upstream.requests[1].json["messages"] == [
        *CONVERSATION_SENT[:3],
        {"role": "user", "content": "And this one?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    assert (await store.load(SESSION))[-2:] == [Turn("user", "Sure?"), Turn("assistant", "Yes.")]


async def test_tool_call_and_result_replay_natively(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """A run that ends calling a tool stores the call; the client's result is stored as a tool
    turn; later runs (also one built from one message) replay both as native messages."""
    mock_upstream.reply(_weather_reply(), StreamReply(deltas=("Sunny.",)), StreamReply(deltas=("Bye.",)))
    question = ChatMessage(role="user", content="Weather in Taipei?")
    assert (await _collect(runtime, _run(question)))[-1] == RunEnd("tool_calls")
    result = ChatMessage(role="tool", content="Sunny, 30C", tool_call_id="call_1")
    called = ChatMessage(role="assistant", content=None, tool_calls=(WEATHER,))
    assert (await _collect(runtime, _run(question, called, result)))[-1] == RunEnd("stop")
    assert (await _collect(runtime, _run(message="thanks")))[-1] == RunEnd("stop")
    exchange = [CONVERSATION_SENT[0], WEATHER_MESSAGE, CONVERSATION_SENT[2]]
    assert [r.json["messages"] for r in mock_upstream.requests] == [
        exchange[:1],
        exchange,
        [*exchange, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "thanks"}],
    ]
    assert await store.load(SESSION) == [
        *WEATHER_TURNS, Turn("assistant", "Sunny."), Turn("user", "thanks"), Turn("assistant", "Bye.")
    ]


async def test_unpaired_calls_and_results_are_left_out_of_the_replay(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """A stored call nobody answered (the client moved on) and a result with no call are not
    sent (an upstream would refuse the conversation); the transcript itself keeps them."""
    stored = [
        Turn("user", "Weather?"),
        Turn("assistant", "", tool_calls=(WEATHER,)),
        Turn("user", "Never mind. Time?"),
        Turn("assistant", "Checking.", tool_calls=(ToolCall(id="call_2", name="get_time"),)),
        Turn("tool", "stray", tool_call_id="call_9"),
        Turn("user", "Forget it."),
        Turn("assistant", "OK."),
    ]
    await store.append(SESSION, stored)
    await _collect(runtime, _run(ChatMessage(role="user", content="Hi again.")))
    assert mock_upstream.requests[0].json["messages"] == [
        {"role": "user", "content": "Weather?"},
        {"role": "user", "content": "Never mind. Time?"},
        {"role": "assistant", "content": "Checking."},
        {"role": "user", "content": "Forget it."},
        {"role": "assistant", "content": "OK."},
        {"role": "user", "content": "Hi again."},
    ]
    assert (await store.load(SESSION))[:7] == stored


async def test_image_only_turn_is_stored_with_the_placeholder(
    runtime: AgentRuntime, mock_upstream: MockUpstream, store: SessionStore
) -> None:
    """An image-only user turn reaches the model as its image part; the transcript keeps
    OpenClaw's placeholder text (images are not stored)."""
    await _collect(runtime, _run(ChatMessage(role="user", content=(ImagePart(PNG),))))
    assert mock_upstream.requests[0].json["messages"] == [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
    ]
    assert (await store.load(SESSION))[0] == Turn("user", "User sent image(s) with no text.")


async def test_sdk_client_resending_its_history_is_read_once(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """Through the gateway, an openai SDK client that resends its whole history and sets
    `user`: each upstream call holds every turn exactly once, and the session stores them once."""
    mock_upstream.reply(*(StreamReply(deltas=(f"answer {i}",)) for i in range(3)))
    history: list[Any] = [{"role": "system", "content": "Be brief."}]
    async with serve_gateway(gateway_config(mock_upstream.url), tmp_path) as (url, store):
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
            for i in range(3):
                history.append({"role": "user", "content": f"question {i}"})
                reply = await client.chat.completions.create(model="openclaw", user="alice", messages=history)
                history.append({"role": "assistant", "content": reply.choices[0].message.content})
        transcript = await store.load("agent:main:openai-user:alice")
    conversation = history[1:]
    assert [r.json["messages"] for r in mock_upstream.requests] == [
        [{"role": "system", "content": "Be brief."}, *conversation[: 2 * i + 1]] for i in range(3)
    ]
    assert transcript == [Turn(m["role"], m["content"]) for m in conversation]
