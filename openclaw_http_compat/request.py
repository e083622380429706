"""Validating a Chat Completions request body.

Lenient where real clients are (unknown fields, ``content: null``, part arrays, a non-string
``user``, ``stream_options`` without streaming), strict on every field we act on: a wrong
type or value is a 400 that names the field in ``param``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, cast

import attrs

from .errors import InvalidRequestError
from .host import ClientTool, GenerationOptions, ToolChoice
from .stored import parse_metadata

__all__ = ("ChatRequest", "ToolChoice", "parse_chat_request")

_MAX_SAFE_INTEGER: Final = 2**53 - 1
_RESPONSE_FORMATS: Final = ("text", "json_object", "json_schema")  # a tuple: "type" may be unhashable
_TOOLS_PREFIX: Final = "Invalid tools/tool_choice: "


@attrs.frozen(kw_only=True)
class ChatRequest:
    """A validated ``POST /v1/chat/completions`` body."""

    model: str = "openclaw"
    messages: tuple[object, ...] = ()
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    tools: tuple[ClientTool, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    options: GenerationOptions | None = None
    #: ``store: true``: keep the completion (see :mod:`.stored`), with this ``metadata``.
    store: bool = False
    metadata: Mapping[str, str] = attrs.field(factory=dict, hash=False)


def _type_error(field: str, expected: str) -> InvalidRequestError:
    return InvalidRequestError(f"{field}: expected {expected}", param=field)


def _optional_bool(body: Mapping[str, Any], field: str) -> bool | None:
    value = body.get(field)
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(field, "a boolean")


def _is_finite_number(value: object) -> bool:
    # math.isfinite would raise OverflowError on a huge JSON integer; ints are finite anyway.
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _number(body: Mapping[str, Any], field: str, low: float, high: float, label: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if not _is_finite_number(value):
        raise InvalidRequestError(f"`{field}` must be a finite number.", param=field)
    if not low <= value <= high:
        raise InvalidRequestError(f"`{field}` must be between {label}.", param=field)
    return float(value)


def _max_tokens(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
        or not 0 < value <= _MAX_SAFE_INTEGER
    ):
        raise InvalidRequestError(f"{field} must be a positive safe integer", param=field)
    return int(value)


def _seed(body: Mapping[str, Any]) -> int | None:
    value = body.get("seed")
    if value is None:
        return None
    if not _is_finite_number(value):
        raise InvalidRequestError("`seed` must be a finite number.", param="seed")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidRequestError("`seed` must be an integer.", param="seed")
    return int(value)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = body.get("stop")
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list):
        raise InvalidRequestError("Invalid stop: stop must be a string or array of strings", param="stop")
    if len(value) > 4:
        raise InvalidRequestError("Invalid stop: stop supports at most 4 sequences", param="stop")
    if not all(isinstance(item, str) and item for item in value):
        raise InvalidRequestError("Invalid stop: stop entries must be non-empty strings", param="stop")
    return tuple(value) or None


def _response_format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(
            "Invalid response_format: response_format must be an object", param="response_format"
        )
    if value.get("type") not in _RESPONSE_FORMATS:
        raise InvalidRequestError(
            "Invalid response_format: response_format.type must be text, json_object, or json_schema",
            param="response_format",
        )
    return cast("Mapping[str, Any]", value)


_OPTION_FIELDS: Final = frozenset(
    {"max_completion_tokens", "max_tokens", "temperature", "top_p", "frequency_penalty", "presence_penalty",
     "seed", "stop", "response_format"}
)


def _options(body: Mapping[str, Any]) -> GenerationOptions | None:
    if _OPTION_FIELDS.isdisjoint(body):
        return None
    # Both caps are validated even when the other one would win.
    completion_cap = _max_tokens(body, "max_completion_tokens")
    legacy_cap = _max_tokens(body, "max_tokens")
    options = GenerationOptions(
        max_tokens=completion_cap if completion_cap is not None else legacy_cap,
        temperature=_number(body, "temperature", 0, 2, "0 and 2"),
        top_p=_number(body, "top_p", 0, 1, "0 and 1"),
        frequency_penalty=_number(body, "frequency_penalty", -2, 2, "-2.0 and 2.0"),
        presence_penalty=_number(body, "presence_penalty", -2, 2, "-2.0 and 2.0"),
        seed=_seed(body),
        stop=_stop(body),
        response_format=_response_format(body),
    )
    return None if options == GenerationOptions() else options


def _tools(body: Mapping[str, Any]) -> tuple[ClientTool, ...]:
    value = body.get("tools")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequestError(_TOOLS_PREFIX + "tools must be an array", param="tools")
    tools = []
    for item in value:
        if not isinstance(item, Mapping):
            raise InvalidRequestError(_TOOLS_PREFIX + "each tool must be an object", param="tools")
        if item.get("type") != "function":
            raise InvalidRequestError(_TOOLS_PREFIX + "only function tools are supported", param="tools")
        function = item.get("function")
        if not isinstance(function, Mapping):
            raise InvalidRequestError(_TOOLS_PREFIX + "tool.function is required", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError(_TOOLS_PREFIX + "tool.function.name is required", param="tools")
        description = function.get("description")
        parameters = function.get("parameters")
        strict = function.get("strict")
        tools.append(
            ClientTool(
                name=name.strip(),
                description=description if isinstance(description, str) else None,
                parameters=parameters if isinstance(parameters, Mapping) else None,
                strict=strict if isinstance(strict, bool) else None,
            )
        )
    return tuple(tools)


def _tool_choice(body: Mapping[str, Any], tools: tuple[ClientTool, ...]) -> ToolChoice:
    value = body.get("tool_choice")
    if value is None or value == "auto":
        return ToolChoice()
    if value == "none":
        return ToolChoice(mode="none")
    if value == "required":
        if not tools:
            raise InvalidRequestError(
                _TOOLS_PREFIX + "tool_choice=required but no tools were provided", param="tool_choice"
            )
        return ToolChoice(mode="required")
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind != "function":
            raise InvalidRequestError(
                _TOOLS_PREFIX + f"tool_choice {kind} is not supported", param="tool_choice"
            )
        function = value.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError(_TOOLS_PREFIX + "tool_choice.function.name is required", param="tool_choice")
        if name.strip() not in {t.name for t in tools}:
            raise InvalidRequestError(
                _TOOLS_PREFIX + f"tool_choice names unknown tool {name.strip()!r}", param="tool_choice"
            )
        return ToolChoice(mode="function", name=name.strip())
    raise InvalidRequestError(_TOOLS_PREFIX + "tool_choice must be a string or object", param="tool_choice")


def parse_chat_request(body: object) -> ChatRequest:
    """Validate a decoded JSON body.

    Raises:
        InvalidRequestError: a field we act on has a wrong type or value.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("Request body must be a JSON object.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _type_error("model", "a string")
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise _type_error("messages", "an array")
    stream = _optional_bool(body, "stream") or False
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, Mapping):
        raise _type_error("stream_options", "an object")
    include_usage = bool(stream and stream_options and stream_options.get("include_usage") is True)
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, float)) or n != 1):
        raise InvalidRequestError("Only one choice is supported: `n` must be 1.", param="n")
    user = body.get("user")
    tools = _tools(body)
    # Without store, metadata stays ignored as before (OpenClaw ignores it).
    store = _optional_bool(body, "store") or False
    return ChatRequest(
        model=model or "openclaw",
        messages=tuple(messages or ()),
        stream=stream,
        include_usage=include_usage,
        # Some clients (Open WebUI pipelines) send an object here: ignore it.
        user=user if isinstance(user, str) else None,
        tools=tools,
        tool_choice=_tool_choice(body, tools),
        options=_options(body),
        store=store,
        metadata=parse_metadata(body.get("metadata")) if store else {},
    )
