"""A cheap token estimate of OpenAI chat messages, with no tokenizer.

Real tokenizers differ by model; the gateway only needs an estimate that is cheap, never
needs the model's vocabulary, and errs on the high side for ordinary text: about 4 UTF-8
bytes a token (English runs 4-5 bytes a token with GPT and Llama tokenizers), plus a fixed
overhead per message for the chat template's role markers. Text the estimate undercounts
(CJK, long digit runs) is what the run's retry after ``context_length_exceeded`` is for.

Pure functions over plain values: the context budget (:mod:`.budget`) uses them, and so can a
provider estimating usage when the upstream reports none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = (
    "BYTES_PER_TOKEN",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMING",
    "estimate_json",
    "estimate_message",
    "estimate_messages",
    "estimate_text",
)

#: UTF-8 bytes counted as one token.
BYTES_PER_TOKEN: Final = 4
#: Tokens each message costs beyond its content: the template's start, role and end markers
#: (OpenAI's cookbook counts 3; chatml templates such as llama.cpp's use 4-5).
MESSAGE_OVERHEAD: Final = 4
#: Tokens the template adds once per request to start the reply (``<|im_start|>assistant``).
REPLY_PRIMING: Final = 3
#: Tokens counted for one image part: what OpenAI bills a 512x512 tile at high detail (765),
#: rounded up. Its base64 text says nothing about what a vision model reads.
IMAGE_TOKENS: Final = 768


def estimate_text(text: str) -> int:
    """Tokens in ``text``: its UTF-8 bytes divided by :data:`BYTES_PER_TOKEN`, rounded up."""
    return -(-len(text.encode("utf-8", errors="surrogatepass")) // BYTES_PER_TOKEN)


def estimate_json(value: object) -> int:
    """Tokens in ``value`` written as compact JSON (tool definitions, call arguments)."""
    return estimate_text(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _tokens(value: object) -> int:
    return estimate_text(value) if isinstance(value, str) else 0


def _content_tokens(content: object) -> int:
    if not isinstance(content, list):
        return _tokens(content)
    return sum(
        IMAGE_TOKENS if part.get("type") == "image_url" else _tokens(part.get("text"))
        for part in content
        if isinstance(part, Mapping)
    )


def _call_tokens(call: object) -> int:
    if not isinstance(call, Mapping):
        return 0
    function = call.get("function")
    if not isinstance(function, Mapping):
        function = {}
    return _tokens(call.get("id")) + _tokens(function.get("name")) + _tokens(function.get("arguments"))


def estimate_message(message: Mapping[str, Any]) -> int:
    """Tokens one OpenAI chat message costs: overhead, content, tool calls and call id."""
    calls = message.get("tool_calls")
    return (
        MESSAGE_OVERHEAD
        + _content_tokens(message.get("content"))
        + (sum(map(_call_tokens, calls)) if isinstance(calls, list) else 0)
        + _tokens(message.get("tool_call_id"))
    )


def estimate_messages(messages: Iterable[Mapping[str, Any]]) -> int:
    """Tokens a request's ``messages`` cost, the reply's priming included."""
    return REPLY_PRIMING + sum(estimate_message(message) for message in messages)
