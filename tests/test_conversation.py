"""structured_messages: the client's conversation in OpenAI's structure, next to the flattened message."""

from __future__ import annotations

from typing import Any

from openclaw_http_compat import ChatMessage, ImageInput, ImagePart, TextPart, ToolCall
from openclaw_http_compat.conversation import structured_messages

PNG = ImageInput(mime_type="image/png", data="iVBORw0KGgo=")


def test_roles_text_tool_calls_and_results_keep_their_structure() -> None:
    """Every role keeps its entry; assistant tool calls and tool results are native, not text."""
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
        {"role": "user", "content": "Weather in Oslo?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "CET"}}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "function", "name": "get_time", "content": "12:00"},
        {"role": "user", "content": "Thanks"},
    ]
    assert structured_messages(messages) == (
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="developer", content=(TextPart("Use metric."),)),
        ChatMessage(role="user", content="Weather in Oslo?", name="ann"),
        ChatMessage(role="assistant", content=None, tool_calls=(
            ToolCall(id="call_1", name="get_weather", arguments='{"city":"Oslo"}'),
            ToolCall(id="call_2", name="get_time", arguments='{"tz":"CET"}'),
        )),
        ChatMessage(role="tool", content="18C sunny", tool_call_id="call_1"),
        ChatMessage(role="tool", content="12:00", name="get_time"),
        ChatMessage(role="user", content="Thanks"),
    )


def test_only_the_active_turns_checked_images_are_carried() -> None:
    """Image parts of the active turn become the checked images, in order; earlier turns' are dropped."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "old"}, image]},
        {"role": "assistant", "content": "seen"},
        {"role": "user", "content": [{"type": "input_text", "input_text": "new"}, image]},
    ]
    assert structured_messages(messages, (PNG,)) == (
        ChatMessage(role="user", content=(TextPart("old"),)),
        ChatMessage(role="assistant", content="seen"),
        ChatMessage(role="user", content=(TextPart("new"), ImagePart(PNG))),
    )


def test_malformed_entries_are_skipped_like_the_flattening_skips_them() -> None:
    """Non-objects, unknown roles and malformed tool calls leave no entry (or no call)."""
    messages: list[Any] = [
        "text", 5, {"content": "no role"}, {"role": "critic", "content": "x"},
        {"role": "assistant", "content": "ok", "tool_calls": [{"id": "", "function": {"name": "f"}}, "bad",
                                                              {"id": "c", "function": {"arguments": "{}"}}]},
        {"role": "user", "content": 42},
    ]
    assert structured_messages(messages) == (
        ChatMessage(role="assistant", content="ok"),
        ChatMessage(role="user", content=None),
    )
