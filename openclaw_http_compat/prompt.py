"""Flattening an OpenAI ``messages`` array into one agent message (section 4).

System and developer text becomes the extra system prompt. The other messages become one
user message: the current turn alone when there is no history, otherwise the history under
``[Chat messages since your last reply - for context]`` and the current turn under
``[Current message - respond to this]``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

__all__ = (
    "HISTORY_MARKER",
    "CURRENT_MARKER",
    "IMAGE_PLACEHOLDER",
    "Prompt",
    "active_turn",
    "content_text",
    "flatten_messages",
    "message_role",
)

HISTORY_MARKER: Final = "[Chat messages since your last reply - for context]"
CURRENT_MARKER: Final = "[Current message - respond to this]"
IMAGE_PLACEHOLDER: Final = "User sent image(s) with no text."
_FAILED_TURN: Final = "[assistant turn failed before producing content]"
_TEXT_PART_TYPES: Final = ("text", "input_text")  # a tuple: a client may send an unhashable "type"


@attrs.frozen
class Prompt:
    """The flattened prompt: the message to respond to and the extra system prompt."""

    message: str
    extra_system_prompt: str | None


@attrs.frozen
class _Entry:
    role: str  # user, assistant or tool
    sender: str
    body: str


def content_text(content: object) -> str:
    """The text of a message ``content``: a string, or the text parts joined by newlines."""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        pieces: list[str] = []
        for part in content:
            if not isinstance(part, Mapping):
                continue
            text = part.get("text")
            if part.get("type") in _TEXT_PART_TYPES and isinstance(text, str):
                piece = text
            elif isinstance(part.get("input_text"), str):
                piece = part["input_text"]
            else:
                continue
            if piece:
                pieces.append(piece)
        return "\n".join(pieces).strip()
    return ""


def message_role(message: Mapping[str, object]) -> str:
    """A message's role, lower-cased; the legacy ``function`` role is ``tool``; ``""`` when none."""
    role = message.get("role")
    if not isinstance(role, str):
        return ""
    role = role.strip().lower()
    return "tool" if role == "function" else role


def active_turn(messages: Sequence[object]) -> Mapping[str, object] | None:
    """The last user, tool or function message (the turn whose images count)."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message_role(message) in ("user", "tool"):
            return message
    return None


def _tool_call_lines(message: Mapping[str, object]) -> list[str]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    lines = []
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        call_id = call.get("id")
        if not isinstance(function, Mapping) or not isinstance(call_id, str) or not call_id:
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue
        arguments = function.get("arguments")
        if arguments is None:
            args_text = ""
        elif isinstance(arguments, str):
            args_text = arguments
        else:
            args_text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        lines.append(f"tool_call id={call_id} name={name} arguments={args_text}")
    return lines


def _tool_sender(message: Mapping[str, object]) -> str:
    for key in ("tool_call_id", "name"):
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return f"Tool:{value.strip()}"
    return "Tool"


def flatten_messages(messages: Sequence[object], *, active_has_images: bool = False) -> Prompt:
    """Flatten ``messages`` into a :class:`Prompt`.

    Args:
        messages: the request's ``messages`` (items that are not objects are skipped).
        active_has_images: the active user turn carries images, so an image-only turn is
            kept with the placeholder text.
    """
    system: list[str] = []
    entries: list[_Entry] = []
    active = active_turn(messages) if active_has_images else None
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message_role(message)
        if not role:
            continue
        text = content_text(message.get("content"))
        if role in ("system", "developer"):
            if text:
                system.append(text)
            continue
        if role == "user":
            if not text and message is active:
                text = IMAGE_PLACEHOLDER
            if text:
                entries.append(_Entry("user", "User", text))
        elif role == "assistant":
            if text == _FAILED_TURN and message.get("stopReason") == "error":
                continue
            lines = _tool_call_lines(message)
            body = "\n".join([text, *lines] if text else lines)
            if body:
                entries.append(_Entry("assistant", "Assistant", body))
        elif role == "tool":
            sender = _tool_sender(message)
            # A tool result with an id is kept even when empty: the agent must see it came back.
            if text or sender != "Tool":
                entries.append(_Entry("tool", sender, text))
    extra = "\n\n".join(system) or None
    if not entries:
        return Prompt("", extra)
    current_index = len(entries) - 1
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].role in ("user", "tool"):
            current_index = index
            break
    current = entries[current_index]
    history = entries[:current_index]
    if not history:
        body = f"{current.sender}: {current.body}" if current.role == "tool" else current.body
        return Prompt(body, extra)
    lines = [HISTORY_MARKER]
    lines.extend(f"{e.sender}: {e.body}" for e in history)
    lines.extend(["", CURRENT_MARKER, f"{current.sender}: {current.body}"])
    return Prompt("\n".join(lines), extra)
