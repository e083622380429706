"""Which agent runs a request, and in which session (OpenClaw's rules, sections 2 and 3)."""

from __future__ import annotations

import os
import re
from typing import Final

from .config import is_valid_agent_id, normalize_agent_id
from .errors import InvalidRequestError
from .host import AgentRoster

__all__ = ("resolve_agent_id", "resolve_session_key")

_MODEL_TARGET: Final = re.compile(r"^(?:openclaw[:/]|agent:)([a-z0-9][a-z0-9_-]{0,63})$", re.IGNORECASE)
_DEFAULT_MODELS: Final = frozenset({"openclaw", "openclaw/default"})
_RESERVED_PREFIXES: Final = ("subagent:", "cron:", "acp:")
_RESERVED_AGENT_SCOPED: Final = re.compile(r"^agent:[^:]+:(?:subagent|cron|acp|harness):", re.IGNORECASE)
INVALID_MODEL: Final = "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`."


def resolve_agent_id(model: str | None, header_agent: str | None, roster: AgentRoster) -> str:
    """The agent for a request: the header wins, then the ``model`` target, then the default.

    ``model`` may be ``openclaw``, ``openclaw/default``, ``openclaw/<id>``, ``openclaw:<id>``
    or ``agent:<id>`` (case-insensitive). Explicit ids must be configured agents.

    Raises:
        InvalidRequestError: ``model`` is not an agent target, or the id is unknown.
    """
    model_id: str | None = None
    if model is not None and model.strip():
        value = model.strip()
        if value.lower() not in _DEFAULT_MODELS:
            match = _MODEL_TARGET.match(value)
            if match is None:
                raise InvalidRequestError(INVALID_MODEL, param="model", code="model_not_found")
            model_id = match.group(1)
    header = (header_agent or "").strip()
    if header:
        if not is_valid_agent_id(header):
            raise InvalidRequestError(f"Unknown agent '{header}'.", code="model_not_found")
        return _known(normalize_agent_id(header), roster, param=None)
    if model_id is not None:
        return _known(normalize_agent_id(model_id), roster, param="model")
    return roster.default_agent_id


def _known(agent_id: str, roster: AgentRoster, *, param: str | None) -> str:
    if agent_id not in roster.agent_ids:
        raise InvalidRequestError(f"Unknown agent '{agent_id}'.", param=param, code="model_not_found")
    return agent_id


# The variant nibble of a random UUID: binary 10xx, one of 8, 9, a, b.
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def random_uuid() -> str:
    """A random (version 4) UUID in its text form, like ``str(uuid.uuid4())``.

    Every request mints two (its run id and, stateless, its session key); building the
    text directly costs about 2 µs against 6 µs through :class:`uuid.UUID`.
    """
    digits = os.urandom(16).hex()
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{_VARIANT[digits[16]]}{digits[17:20]}-{digits[20:]}"


def resolve_session_key(agent_id: str, header_key: str | None, user: str | None) -> str:
    """The session key (section 3.1).

    An ``x-openclaw-session-key`` header is used verbatim; a ``user`` string gives
    ``agent:<id>:openai-user:<user>`` (lower-cased); otherwise a fresh
    ``agent:<id>:openai:<uuid4>``, so requests are stateless by default.

    Raises:
        InvalidRequestError: the header names a reserved internal session namespace.
    """
    explicit = (header_key or "").strip()
    if explicit:
        lowered = explicit.lower()
        if lowered.startswith(_RESERVED_PREFIXES) or _RESERVED_AGENT_SCOPED.match(explicit):
            raise InvalidRequestError(
                "`x-openclaw-session-key` cannot use reserved internal session namespaces."
            )
        return explicit
    user_key = (user or "").strip()
    if user_key:
        return f"agent:{agent_id}:openai-user:{user_key.lower()}"
    return f"agent:{agent_id}:openai:{random_uuid()}"
