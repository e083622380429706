"""A session's transcript as structured turns, and what one run adds to a conversation.

A :class:`Turn` is one stored entry, kept in OpenAI's own structure: a user message, an
assistant reply with the tools it called, or a tool's result answering one of those calls.
So a session replays to the upstream as the conversation it was (:func:`turn_message`).

:func:`exchange` decides, for one run, which messages come before its new entries (the
stored transcript, or the client's own earlier messages), which ones are new (what the agent
has not seen yet, which the run always sends), and which turns the run stores once it
completes. Pure functions over values: the store keeps turns, the runtime sends messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from openclaw_http_compat import (
    AgentRunRequest,
    ChatMessage,
    ContentPart,
    ImageInput,
    ImagePart,
    TextPart,
    ToolCall,
)
from openclaw_http_compat.prompt import IMAGE_PLACEHOLDER

from .openai_api import Message

__all__ = ("ROLES", "Exchange", "Turn", "exchange", "turn_message")

#: The roles a stored turn may have (system text is the agent's, never stored).
ROLES: Final = ("user", "assistant", "tool")
# The client's system and developer entries reach the model in the system prompt
# (AgentRunRequest.extra_system_prompt), so they are no part of the conversation sent.
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def _only_for(role: str) -> Callable[[Turn, attrs.Attribute[Any], object], None]:
    def check(instance: Turn, attribute: attrs.Attribute[Any], value: object) -> None:
        if value and instance.role != role:
            raise ValueError(f"'{attribute.name}' is for {role} turns only, not {instance.role!r}")

    return check


@attrs.frozen
class Turn:
    """One persisted transcript entry.

    Attributes:
        role: ``user``, ``assistant`` or ``tool``.
        content: the text (an assistant turn that only called tools has ``""``).
        tool_calls: the tools an assistant turn called.
        tool_call_id: the call a ``tool`` turn answers.
    """

    role: str = attrs.field(validator=attrs.validators.in_(ROLES))
    content: str
    tool_calls: tuple[ToolCall, ...] = attrs.field(default=(), kw_only=True, validator=_only_for("assistant"))
    tool_call_id: str | None = attrs.field(default=None, kw_only=True, validator=_only_for("tool"))


def _call_object(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _image_object(image: ImageInput) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": f"data:{image.mime_type};base64,{image.data}"}}


def _message(role: str, content: object, calls: Sequence[ToolCall], call_id: str | None) -> Message:
    """The OpenAI message; an assistant turn that only called tools has ``content: null``."""
    if calls and not content:
        content = None
    message: Message = {"role": role, "content": content}
    if calls:
        message["tool_calls"] = [_call_object(call) for call in calls]
    if call_id is not None:
        message["tool_call_id"] = call_id
    return message


def turn_message(turn: Turn) -> Message:
    """The stored turn as the OpenAI message it was."""
    return _message(turn.role, turn.content, turn.tool_calls, turn.tool_call_id)


def _part_object(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, ImagePart):
        return _image_object(part.image)
    return {"type": "text", "text": part.text}


def _chat_message(message: ChatMessage) -> Message:
    """The client's entry as it sent it: a string stays a string, parts become OpenAI parts."""
    content: object
    if isinstance(message.content, tuple):
        # An array whose parts were all dropped (images of earlier turns are not carried)
        # would be an empty array, which upstreams refuse: it becomes empty text.
        content = [_part_object(part) for part in message.content] or ""
    else:
        content = message.content if message.content is not None else ""
    return _message(message.role, content, message.tool_calls, message.tool_call_id)


def _one_message(request: AgentRunRequest) -> ChatMessage:
    """The run's one user message (OpenClaw's form), with its images as parts."""
    if not request.images:
        return ChatMessage(role="user", content=request.message)
    return ChatMessage(role="user", content=(TextPart(request.message), *map(ImagePart, request.images)))


def _chat_turn(message: ChatMessage) -> Turn:
    """The client's entry as a stored turn: its text, calls and call id (images are not kept)."""
    content = message.content
    if isinstance(content, tuple):
        text = "\n".join(part.text for part in content if isinstance(part, TextPart))
        if not text and message.role == "user" and content:
            # The model saw images only; the transcript says so, as OpenClaw's flattening does.
            text = IMAGE_PLACEHOLDER
    else:
        text = content or ""
    return Turn(message.role, text, tool_calls=message.tool_calls, tool_call_id=message.tool_call_id)


def _split_conversation(messages: Sequence[ChatMessage]) -> tuple[list[ChatMessage], list[ChatMessage]]:
    """The client's conversation without system entries, split after its last assistant message:
    what the agent has answered already, and what it has not seen."""
    entries = [message for message in messages if message.role not in _SYSTEM_ROLES]
    last = max((index for index, message in enumerate(entries) if message.role == "assistant"), default=-1)
    return entries[: last + 1], entries[last + 1 :]


@attrs.frozen
class Exchange:
    """What one run sends and stores.

    Attributes:
        earlier: the conversation before the new entries, oldest first; a context budget may
            send only its newest part.
        new: what the agent has not seen; always sent, after ``earlier``.
        turns: what the run stores before its reply, once it completes.
    """

    earlier: list[Message]
    new: list[Message]
    turns: tuple[Turn, ...]


def exchange(request: AgentRunRequest, transcript: Sequence[Turn]) -> Exchange:
    """The run's exchange, given the session's stored ``transcript``.

    * A run built from one message (``request.messages`` empty: the CLI, the WebSocket) sends
      the transcript, then that message with its images, and stores the message.
    * A session that holds turns sends its transcript, then only the client's entries after
      its last assistant message: a client that resends its whole history never makes the
      model read it twice. Those entries are stored.
    * A session with no turns sends the client's conversation as it came. A named session
      stores all of it, so its next run replays the whole conversation; a key minted for
      this request (``new_session``) is never read again, so it stores only the new entries.
    """
    if request.messages:
        seen, new = _split_conversation(request.messages)
    else:
        seen, new = [], [_one_message(request)]
    if transcript:
        earlier = [turn_message(turn) for turn in transcript]
        stored = new
    else:
        earlier = [_chat_message(message) for message in seen]
        stored = new if request.new_session else [*seen, *new]
    return Exchange(earlier=earlier, new=[_chat_message(m) for m in new], turns=tuple(map(_chat_turn, stored)))
