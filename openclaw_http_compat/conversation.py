"""The client's ``messages`` in OpenAI's own structure, for runners that send a model native messages.

OpenClaw's runners take one flattened message (:mod:`.prompt`); a runner that talks to an
OpenAI-compatible model does better with the conversation as the client sent it: roles, text
and image parts, assistant ``tool_calls`` and ``tool`` results. Both forms travel on the
:class:`~.host.AgentRunRequest`. Entries that are not objects, or have no known role, are
skipped, as the flattening skips them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, cast

from .host import ChatMessage, ContentPart, ImageInput, ImagePart, MessageRole, TextPart, ToolCall
from .prompt import active_turn, message_role

__all__ = ("structured_messages",)

_ROLES: Final[frozenset[str]] = frozenset({"system", "developer", "user", "assistant", "tool"})
_TEXT_PART_TYPES: Final = ("text", "input_text")  # a tuple: a client may send an unhashable "type"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _tool_calls(message: Mapping[str, object]) -> tuple[ToolCall, ...]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return ()
    result: list[ToolCall] = []
    for call in calls:
        if not isinstance(call, Mapping):
            continue
        function = call.get("function")
        call_id, name = call.get("id"), function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
            continue
        assert isinstance(function, Mapping)
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            # Some clients send the arguments as an object; the wire form is JSON text.
            arguments = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        result.append(ToolCall(id=call_id, name=name, arguments=arguments))
    return tuple(result)


def _parts(content: list[object], images: Iterator[ImageInput] | None) -> tuple[ContentPart, ...]:
    parts: list[ContentPart] = []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind in _TEXT_PART_TYPES:
            text = _text(part.get("text")) or _text(part.get("input_text"))
            if text is not None:
                parts.append(TextPart(text))
        elif kind == "image_url" and images is not None:
            # The active turn's images were checked in order, one per image_url part.
            image = next(images, None)
            if image is not None:
                parts.append(ImagePart(image))
    return tuple(parts)


def structured_messages(messages: Sequence[object], images: Sequence[ImageInput] = ()) -> tuple[ChatMessage, ...]:
    """The conversation as :class:`~.host.ChatMessage` values, in the client's order.

    Args:
        messages: the request's ``messages`` array, as parsed.
        images: the active turn's images, checked (:func:`~.images.collect_images`), in the
            order of its ``image_url`` parts; images of other turns are dropped (never checked).
    """
    # Only the active turn's image parts take images; with none, no need to find it.
    active = active_turn(messages) if images else None
    result: list[ChatMessage] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message_role(message)
        if role not in _ROLES:
            continue
        raw = message.get("content")
        content: str | tuple[ContentPart, ...] | None
        if isinstance(raw, str):
            content = raw
        elif isinstance(raw, list):
            content = _parts(raw, iter(images) if message is active else None)
        else:
            content = None
        name = _text(message.get("name"))
        result.append(
            ChatMessage(
                role=cast(MessageRole, role),
                content=content,
                tool_calls=_tool_calls(message) if role == "assistant" else (),
                tool_call_id=_text(message.get("tool_call_id")) if role == "tool" else None,
                name=name or None,
            )
        )
    return tuple(result)
