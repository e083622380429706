"""How much of a conversation a run sends: the model's context budget and the history that fits it.

The budget is the model's context (its ``contextTokens``, capped by its ``contextWindow``;
else ``agents.defaults.contextTokens``) less what the reply may take. A run fits the newest
part of its earlier conversation into what its system prompt, tools and new entries leave of
it (:func:`fit_history`), dropping the oldest turns first (a trimmed history starts at a user
turn); the new entries are always sent.
Tool calls travel with their results: an assistant turn that called tools is kept or dropped
together with the ``tool`` turns answering it, and a call or result whose partner is missing
is left out, so the upstream never gets a conversation it must refuse.

Estimates come from :mod:`.tokens`; they can be wrong, so a run whose upstream still answers
``context_length_exceeded`` (:func:`is_context_overflow`) tries once more with half its history.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import attrs

from openclaw_http_compat import ClientTool, GenerationOptions, RunError
from openclaw_http_compat.config import ModelRef

from .config import GatewayConfig
from .openai_api import Message
from .tokens import MESSAGE_OVERHEAD, estimate_json, estimate_message, estimate_messages, estimate_text
from .transcript import Turn

__all__ = (
    "FIRST_PAGE",
    "MAX_REPLY_RESERVE",
    "TURN_TOKENS",
    "Budget",
    "context_budget",
    "fit_history",
    "history_tokens",
    "is_context_overflow",
    "load_history",
)

#: With no ``max_tokens`` from the request or the model entry, the reply keeps a quarter of
#: the context, and at most this many tokens.
MAX_REPLY_RESERVE: Final = 4096
_RESERVE_FRACTION: Final = 4

# How OpenAI-compatible servers word an overflow when they send no code: OpenAI and vLLM
# ("maximum context length"), llama.cpp's server ("exceeds the available context size"),
# LiteLLM and Anthropic ("context window", "prompt is too long").
_OVERFLOW_TEXT: Final = re.compile(
    r"context[ _](length|window|size)|maximum context|prompt is too long|too many tokens", re.IGNORECASE
)
_OVERFLOW_CODES: Final = frozenset({"context_length_exceeded", "exceed_context_size_error"})
#: The size of a short chat turn, in tokens: a run first reads as many of the newest turns as
#: the prompt holds of those (at least :data:`FIRST_PAGE`), which is enough for most sessions;
#: a session of shorter turns reads on, four times as many each time.
TURN_TOKENS: Final = 32
#: The fewest turns a first read asks for: small contexts still read in one query.
FIRST_PAGE: Final = 16
_PAGE_GROWTH: Final = 4


@attrs.frozen
class Budget:
    """A model's context budget for one run.

    Attributes:
        context: tokens the model reads and writes in one call.
        reply: tokens kept for the reply.
    """

    context: int
    reply: int

    @property
    def prompt(self) -> int:
        """Tokens the request (messages and tools) may take."""
        return self.context - self.reply

    @property
    def max_messages(self) -> int:
        """How many of a transcript's newest turns to load: one more than can fit (each message
        costs at least the per-message overhead).

        Loading more is wasted work; the one more tells :func:`fit_history` that the loaded
        tail was cut, so it trims it to a user turn. At least 1, so a load also tells whether
        the session holds any turn.
        """
        return max(0, self.prompt // MESSAGE_OVERHEAD) + 1

    def for_history(self, fixed: Sequence[Message], tools: Sequence[ClientTool]) -> int:
        """Tokens left for the earlier conversation and the new entries, once the ``fixed``
        messages (the system prompt), the tool definitions and the reply's priming are counted."""
        return self.prompt - estimate_messages(fixed) - _tools_tokens(tools)


def _tools_tokens(tools: Sequence[ClientTool]) -> int:
    # The upstream reads the tool definitions too; their JSON is a fair measure.
    if not tools:
        return 0
    return estimate_json([[tool.name, tool.description, tool.parameters] for tool in tools])


def context_budget(config: GatewayConfig, ref: ModelRef, options: GenerationOptions | None) -> Budget | None:
    """The budget of a run on model ``ref``; ``None`` when no context size is configured.

    The reply keeps the request's ``max_tokens``, else the model entry's ``maxTokens``, else a
    quarter of the context up to :data:`MAX_REPLY_RESERVE`.
    """
    entry = config.model_entry(ref)
    context = entry.context_limit if entry is not None else None
    if context is None:
        context = config.agent_defaults.context_tokens
    if context is None:
        return None
    reply = options.max_tokens if options is not None else None
    if reply is None and entry is not None:
        reply = entry.max_tokens
    if reply is None:
        reply = min(MAX_REPLY_RESERVE, context // _RESERVE_FRACTION)
    return Budget(context=context, reply=reply)


class _Tail(Protocol):
    # What load_history reads: a session's newest turns (a SessionTurn).
    async def load(self, *, limit: int | None = None) -> list[Turn]: ...


async def load_history(session: _Tail, budget: Budget | None) -> list[Turn]:
    """The newest turns of ``session`` a run with ``budget`` could send.

    :attr:`Budget.max_messages` bounds the read by the context, but a wide context (128k
    tokens allows 30,000 turns of bare overhead) would still read a long session whole. So the
    tail is read a page at a time, the first as many turns as the prompt holds of
    :data:`TURN_TOKENS`-token turns, and reading stops once a page is all there is, or already
    holds more tokens than the prompt may take (counting each turn's text and overhead only, a
    lower bound of what :func:`fit_history` counts, so nothing that could fit is left unread).
    A run's cost then follows its context and its turns' size, not its session's age.
    ``budget`` ``None``: the whole transcript, in one read.
    """
    if budget is None:
        return await session.load()
    cap = budget.max_messages
    limit = min(cap, max(FIRST_PAGE, budget.prompt // TURN_TOKENS))
    while True:
        turns = await session.load(limit=limit)
        if len(turns) < limit or limit >= cap:
            return turns
        if sum(MESSAGE_OVERHEAD + estimate_text(turn.content) for turn in turns) > budget.prompt:
            return turns
        limit = min(cap, limit * _PAGE_GROWTH)


def history_tokens(messages: Iterable[Message]) -> int:
    """Tokens ``messages`` cost as part of a request (no reply priming)."""
    return sum(map(estimate_message, messages))


def _paired(unit: list[Message], answered_after: set[str]) -> list[Message]:
    """``unit`` (an assistant turn and the tool turns after it) with each call kept only when a
    result answers it (in the unit, or among ``answered_after``), and each result only when it
    answers a call, once; ``[]`` if nothing is left."""
    head, results = unit[0], unit[1:]
    if head.get("role") != "assistant" or not head.get("tool_calls"):
        return unit
    calls = {call["id"] for call in head["tool_calls"]}
    answered: set[str] = set()
    kept_results: list[Message] = []
    for result in results:
        call_id = result.get("tool_call_id")
        if isinstance(call_id, str) and call_id in calls and call_id not in answered:
            answered.add(call_id)
            kept_results.append(result)
    answered |= answered_after
    kept_calls = [call for call in head["tool_calls"] if call["id"] in answered]
    if len(kept_calls) == len(head["tool_calls"]):
        return [head, *kept_results]
    assistant: dict[str, Any] = {k: v for k, v in head.items() if k != "tool_calls"}
    if kept_calls:
        assistant["tool_calls"] = kept_calls
    elif not assistant.get("content"):
        return []  # only unanswered calls: nothing left to say
    return [assistant, *kept_results]


def _units(history: Sequence[Message], answered_after: set[str]) -> list[list[Message]]:
    """``history`` in the pieces it is trimmed by: each turn alone, except that an assistant
    turn that called tools holds the ``tool`` turns answering it. A ``tool`` turn with no
    calling turn before it (its caller was trimmed away, or never stored) is left out."""
    units: list[list[Message]] = []
    for message in history:
        if message.get("role") != "tool":
            units.append([message])
        elif units and units[-1][0].get("tool_calls"):
            units[-1].append(message)
    paired = [_paired(unit, answered_after if index == len(units) - 1 else set()) for index, unit in enumerate(units)]
    return [unit for unit in paired if unit]


def fit_history(earlier: Sequence[Message], new: Sequence[Message], budget: int | None) -> list[Message]:
    """The newest part of ``earlier`` that fits ``budget`` tokens together with ``new``.

    Oldest turns go first, and a trimmed history starts at a user turn. ``new`` is always
    sent, so it is never cut; when it starts with tool results, the assistant turn that called
    those tools is kept whatever it costs.
    ``budget=None`` keeps everything (still pairing calls with results).
    """
    answered_by_new: set[str] = set()
    for message in new:
        if message.get("role") != "tool":
            break
        answered_by_new.add(message.get("tool_call_id") or "")
    units = _units(earlier, answered_by_new)
    pinned: list[Message] = []
    if answered_by_new and units and units[-1][0].get("tool_calls"):
        pinned = units.pop()
    if budget is None:
        return [message for unit in units for message in unit] + pinned
    remaining = budget - history_tokens(new) - history_tokens(pinned)
    start = len(units)
    while start > 0:
        cost = history_tokens(units[start - 1])
        if cost > remaining:
            break
        remaining -= cost
        start -= 1
    if start > 0:
        # A trimmed history starts at a user turn: chat templates that insist on alternating
        # roles (Mistral's, Llama 2's) refuse a conversation opening with the assistant.
        while start < len(units) and units[start][0].get("role") != "user":
            start += 1
    return [message for unit in units[start:] for message in unit] + pinned


def is_context_overflow(error: RunError) -> bool:
    """Whether the upstream refused the call because the request exceeds the model's context."""
    if error.code in _OVERFLOW_CODES:
        return True
    return error.status in (400, 413) and bool(_OVERFLOW_TEXT.search(error.message))
