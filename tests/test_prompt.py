"""Prompt flattening (behaviour spec section 4), as pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from openclaw_http_compat.prompt import (
    CURRENT_MARKER,
    HISTORY_MARKER,
    IMAGE_PLACEHOLDER,
    Prompt,
    active_turn,
    content_text,
    flatten_messages,
)


def lines(*parts: str) -> str:
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("hello", "hello"),
        ("  padded \n", "padded"),
        ([{"type": "text", "text": "hello"}, {"type": "input_text", "text": "world"}], "hello\nworld"),
        ([{"input_text": "legacy part"}], "legacy part"),
        ([{"type": "text", "text": " a "}, {"type": "text", "text": " b "}], "a \n b"),
        ([{"type": "text", "text": ""}, {"type": "text", "text": "x"}], "x"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "hi"}],
         "hi"),
        ([{"type": "text", "text": 5}, "bare string", None, {"type": "refusal", "refusal": "no"}], ""),
        ([], ""),
        (None, ""),
        (42, ""),
        ({"type": "text", "text": "an object, not a list"}, ""),
    ],
    ids=("string", "trimmed", "text-and-input_text", "input_text-key", "trim-only-outside", "empty-part-skipped",
         "image-ignored", "junk-parts", "empty-list", "null", "number", "object"),
)
def test_content_text(content: Any, text: str) -> None:
    """Content is a string, or text/input_text parts joined by newlines; anything else is empty."""
    assert content_text(content) == text


WORKED_EXAMPLE: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": "Answer in English."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "name": "bob",
     "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": "Explain."}]},
    {"role": "assistant", "content": "(draft)"},
]


def test_worked_example() -> None:
    """The worked example of spec section 4.7: markers, history lines, trailing assistant dropped."""
    assert flatten_messages(WORKED_EXAMPLE) == Prompt(
        lines(HISTORY_MARKER, "User: Hi", "Assistant: Hello! How can I help?", "", CURRENT_MARKER,
              "User: What is 2+2?", "Explain."),
        "You are terse.\n\nAnswer in English.",
    )


def test_markers_are_openclaws() -> None:
    """The marker strings are OpenClaw's, byte for byte."""
    assert HISTORY_MARKER == "[Chat messages since your last reply - for context]"
    assert CURRENT_MARKER == "[Current message - respond to this]"
    assert IMAGE_PLACEHOLDER == "User sent image(s) with no text."


def test_system_and_single_user_sends_just_the_text() -> None:
    """Ports openai-http.test.ts: system + single user ``Hello`` -> message ``Hello``, system to extra prompt."""
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hello"}]
    assert flatten_messages(messages) == Prompt("Hello", "S")


def test_developer_goes_to_the_extra_system_prompt() -> None:
    """Ports openai-http.e2e.test.ts: a developer message becomes the extra system prompt."""
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert flatten_messages(messages) == Prompt("Hi", "Be brief.")


def test_system_messages_anywhere_join_with_blank_lines() -> None:
    """System texts from any position are collected in order and joined with a blank line."""
    messages = [
        {"role": "system", "content": "one"},
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "two"}]},
        {"role": "system", "content": "   "},
    ]
    assert flatten_messages(messages) == Prompt("Hi", "one\n\ntwo")


def test_user_assistant_user_history() -> None:
    """Ports openai-http.test.ts: user/assistant/user -> both markers with User:/Assistant: lines."""
    messages = [
        {"role": "user", "content": "Hello, who are you?"},
        {"role": "assistant", "content": "I am Claude."},
        {"role": "user", "content": "What did I just ask you?"},
    ]
    assert flatten_messages(messages).message == lines(
        HISTORY_MARKER, "User: Hello, who are you?", "Assistant: I am Claude.", "", CURRENT_MARKER,
        "User: What did I just ask you?")


def test_trailing_tool_message_is_the_current_turn() -> None:
    """Ports openai-http.test.ts: a trailing tool message ``Sunny, 70F.`` is the current turn."""
    messages = [
        {"role": "user", "content": "What's the weather?"},
        {"role": "assistant", "content": "Checking the weather."},
        {"role": "tool", "content": "Sunny, 70F."},
    ]
    assert flatten_messages(messages).message == lines(
        HISTORY_MARKER, "User: What's the weather?", "Assistant: Checking the weather.", "", CURRENT_MARKER,
        "Tool: Sunny, 70F.")


def test_tool_call_example() -> None:
    """The tool example of section 4.7: assistant tool_calls rendered, ``Tool:call_1: Sunny`` current."""
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Taipei"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny"}]},
    ]
    assert flatten_messages(messages).message == lines(
        HISTORY_MARKER, "User: Weather?",
        'Assistant: tool_call id=call_1 name=get_weather arguments={"city":"Taipei"}', "", CURRENT_MARKER,
        "Tool:call_1: Sunny")


@pytest.mark.parametrize(
    ("tool_calls", "body"),
    [
        ([{"id": "c1", "function": {"name": "f", "arguments": {"a": 1, "b": "ü"}}}],
         'tool_call id=c1 name=f arguments={"a":1,"b":"ü"}'),
        ([{"id": "c1", "function": {"name": "f"}}], "tool_call id=c1 name=f arguments="),
        ([{"id": "c1", "function": {"name": "f", "arguments": "{}"}},
          {"id": "c2", "function": {"name": "g", "arguments": "[]"}}],
         "tool_call id=c1 name=f arguments={}\ntool_call id=c2 name=g arguments=[]"),
        ([{"function": {"name": "f"}}, {"id": "", "function": {"name": "f"}}, {"id": "c", "function": {"name": ""}},
          {"id": "c", "function": "f"}, "junk", {"id": "ok", "function": {"name": "kept"}}],
         "tool_call id=ok name=kept arguments="),
    ],
    ids=("non-string-arguments-as-json", "missing-arguments", "two-calls", "incomplete-calls-skipped"),
)
def test_assistant_tool_call_lines(tool_calls: list[Any], body: str) -> None:
    """Assistant tool calls with an id and a name render as ``tool_call id=… name=… arguments=…``."""
    messages = [{"role": "assistant", "content": None, "tool_calls": tool_calls}, {"role": "user", "content": "ok"}]
    assert flatten_messages(messages).message == lines(HISTORY_MARKER, f"Assistant: {body}", "", CURRENT_MARKER,
                                                       "User: ok")


def test_assistant_text_and_tool_calls_share_one_entry() -> None:
    """Assistant commentary comes first, then its tool-call lines."""
    messages = [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    assert flatten_messages(messages).message == lines(
        HISTORY_MARKER, "Assistant: Let me check.", "tool_call id=c1 name=f arguments=", "", CURRENT_MARKER,
        "Tool:c1: done")


@pytest.mark.parametrize(
    ("message", "rendered"),
    [
        ({"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "ok"}, "Tool:call_1: ok"),
        ({"role": "tool", "name": "get_weather", "content": "ok"}, "Tool:get_weather: ok"),
        ({"role": "tool", "content": "ok"}, "Tool: ok"),
        ({"role": "function", "name": "get_time", "content": "noon"}, "Tool:get_time: noon"),
        ({"role": "tool", "tool_call_id": "call_1", "content": ""}, "Tool:call_1: "),
        ({"role": "function", "name": "get_time", "content": None}, "Tool:get_time: "),
    ],
    ids=("id-wins", "name", "bare", "function-is-tool", "empty-result-with-id-kept", "function-null-content"),
)
def test_lone_tool_entry_keeps_its_prefix(message: dict[str, Any], rendered: str) -> None:
    """A lone tool entry keeps its ``Tool:<id>:`` prefix (V4), with the sender precedence of V3+."""
    assert flatten_messages([message]).message == rendered


def test_empty_tool_result_without_id_is_dropped() -> None:
    """A tool message with no text and no id or name is dropped."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "tool", "content": ""}]
    assert flatten_messages(messages).message == "Hi"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "only system"}],
        [{"role": "user", "content": "   "}],
        [{"role": "user", "content": None}],
        [{"role": "critic", "content": "unknown roles are dropped"}],
        ["not an object", 5, None, {"content": "no role"}, {"role": "  ", "content": "blank role"}],
        [{"role": "assistant", "content": "", "tool_calls": []}],
    ],
    ids=("empty", "system-only", "blank-user", "null-user", "unknown-role", "junk", "empty-assistant"),
)
def test_nothing_to_send_is_an_empty_message(messages: list[Any]) -> None:
    """With no user, assistant or tool text the message is empty (the handler then answers 400)."""
    assert flatten_messages(messages).message == ""


def test_assistant_only_is_not_rejected() -> None:
    """An assistant-only array is not empty: its last assistant message is the current entry."""
    assert flatten_messages([{"role": "assistant", "content": "A"}]) == Prompt("A", None)
    assert flatten_messages([{"role": "assistant", "content": "A1"}, {"role": "assistant", "content": "A2"}]) == Prompt(
        lines(HISTORY_MARKER, "Assistant: A1", "", CURRENT_MARKER, "Assistant: A2"), None)


def test_user_name_is_ignored_and_roles_are_trimmed() -> None:
    """The user's ``name`` does not change the ``User`` label; roles are trimmed."""
    messages = [{"role": " user ", "name": "bob", "content": "one"}, {"role": "assistant", "content": "two"},
                {"role": "user", "name": "bob", "content": "three"}]
    assert flatten_messages(messages).message == lines(
        HISTORY_MARKER, "User: one", "Assistant: two", "", CURRENT_MARKER, "User: three")


def test_failed_assistant_turn_is_dropped_from_history() -> None:
    """An assistant turn marked ``stopReason: error`` with the failure marker is not replayed."""
    failed = {"role": "assistant", "content": "[assistant turn failed before producing content]", "stopReason": "error"}
    messages = [{"role": "user", "content": "one"}, failed, {"role": "user", "content": "two"}]
    assert flatten_messages(messages).message == lines(HISTORY_MARKER, "User: one", "", CURRENT_MARKER, "User: two")
    unmarked = {**failed, "stopReason": "stop"}
    assert "Assistant: [assistant turn failed" in flatten_messages([unmarked, {"role": "user", "content": "x"}]).message


def test_multiline_bodies_are_kept() -> None:
    """History bodies keep their own newlines."""
    messages = [{"role": "user", "content": "line one\nline two"}, {"role": "assistant", "content": "a"},
                {"role": "user", "content": "b"}]
    assert flatten_messages(messages).message == lines(
        HISTORY_MARKER, "User: line one", "line two", "Assistant: a", "", CURRENT_MARKER, "User: b")


IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_image_only_active_turn_gets_the_placeholder() -> None:
    """An image-only active user turn reads ``User sent image(s) with no text.`` when images were resolved."""
    messages = [{"role": "user", "content": [IMAGE_PART]}]
    assert flatten_messages(messages, active_has_images=True).message == IMAGE_PLACEHOLDER
    assert flatten_messages(messages, active_has_images=False).message == ""


def test_placeholder_is_never_used_for_history() -> None:
    """An older image-only user turn is dropped from history, not given the placeholder."""
    messages = [{"role": "user", "content": [IMAGE_PART]}, {"role": "assistant", "content": "nice"},
                {"role": "user", "content": [IMAGE_PART]}]
    assert flatten_messages(messages, active_has_images=True).message == lines(
        HISTORY_MARKER, "Assistant: nice", "", CURRENT_MARKER, f"User: {IMAGE_PLACEHOLDER}")


@pytest.mark.parametrize(
    ("messages", "index"),
    [
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], 0),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], 1),
        ([{"role": "user", "content": "a"}, {"role": "function", "name": "f", "content": "b"}], 1),
        ([{"role": "assistant", "content": "b"}, "junk"], None),
        ([], None),
    ],
)
def test_active_turn(messages: list[Any], index: int | None) -> None:
    """The active turn is the last user, tool or function message."""
    assert active_turn(messages) is (messages[index] if index is not None else None)
