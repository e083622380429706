"""Agent and session resolution (behaviour spec sections 2 and 3), as pure functions."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import attrs
import pytest

from openclaw_http_compat.config import AgentsConfig
from openclaw_http_compat.errors import InvalidRequestError
from openclaw_http_compat.routing import INVALID_MODEL, random_uuid, resolve_agent_id, resolve_session_key

from .conftest import UUID4


@attrs.frozen
class Roster:
    """A hand-written AgentRoster."""

    agent_ids: Sequence[str] = ("main", "beta", "alpha", "research")
    default_agent_id: str = "main"


ROSTER = Roster()


@pytest.mark.parametrize(
    ("model", "header", "agent"),
    [
        (None, None, "main"),
        ("", None, "main"),
        ("openclaw", None, "main"),
        ("OpenClaw", None, "main"),
        ("openclaw/default", None, "main"),
        ("OPENCLAW/Default", None, "main"),
        ("openclaw/beta", None, "beta"),
        ("openclaw:beta", None, "beta"),
        ("agent:alpha", None, "alpha"),
        ("OpenClaw:BETA", None, "beta"),
        (" openclaw/research ", None, "research"),
        (None, "beta", "beta"),
        (None, " Beta ", "beta"),
        ("openclaw:beta", "alpha", "alpha"),
        ("openclaw/ghost", "alpha", "alpha"),
        ("openclaw/default", "beta", "beta"),
    ],
    ids=lambda v: repr(v),
)
def test_agent_resolution(model: str | None, header: str | None, agent: str) -> None:
    """Header wins, then the model target, then the roster's default agent."""
    assert resolve_agent_id(model, header, ROSTER) == agent


def test_header_agent_wins_over_model() -> None:
    """Ports openai-http.e2e.test.ts: header ``alpha`` plus model ``openclaw:beta`` runs ``alpha``."""
    assert resolve_agent_id("openclaw:beta", "alpha", ROSTER) == "alpha"


def test_default_model_means_the_configured_default() -> None:
    """Ports openai-http.test.ts: ``openclaw/default`` runs the configured default agent."""
    assert resolve_agent_id("openclaw/default", None, Roster(default_agent_id="beta")) == "beta"
    assert resolve_agent_id("openclaw", None, Roster(default_agent_id="beta")) == "beta"


@pytest.mark.parametrize(
    "model",
    ["gpt-4o", "openai/", "openai/gpt-5.4", "openclaw/", "openclaw:", "agent:", "openclaw/Bad Id", "openclaw/a/b",
     "openclaw-beta", "openclaw/" + "x" * 65],
)
def test_non_agent_model_is_400(model: str) -> None:
    """Ports openai-http.test.ts: a ``model`` that is not an agent target is 400 Invalid `model`."""
    with pytest.raises(InvalidRequestError) as info:
        resolve_agent_id(model, None, ROSTER)
    assert (info.value.status, info.value.message, info.value.param, info.value.code) == (
        400, "Invalid `model`. Use `openclaw` or `openclaw/<agentId>`.", "model", "model_not_found")
    assert INVALID_MODEL == info.value.message


def test_invalid_model_is_rejected_even_with_an_agent_header() -> None:
    """As in V3/V4 (issue #30381 open): the body ``model`` is validated even when the header picks the agent."""
    with pytest.raises(InvalidRequestError, match="Invalid `model`"):
        resolve_agent_id("gpt-4o", "beta", ROSTER)


@pytest.mark.parametrize(
    ("model", "header", "message", "param"),
    [
        ("openclaw/missing-agent", None, "Unknown agent 'missing-agent'.", "model"),
        ("agent:Ghost", None, "Unknown agent 'ghost'.", "model"),
        (None, "missing-agent", "Unknown agent 'missing-agent'.", None),
        (None, "bad id!", "Unknown agent 'bad id!'.", None),
        ("openclaw/beta", "ghost", "Unknown agent 'ghost'.", None),
    ],
)
def test_unknown_agent_is_400(model: str | None, header: str | None, message: str, param: str | None) -> None:
    """Ports openai-http.test.ts: unknown agents from the header or model are 400 ``Unknown agent '<id>'.``."""
    with pytest.raises(InvalidRequestError) as info:
        resolve_agent_id(model, header, ROSTER)
    assert (info.value.status, info.value.message, info.value.param, info.value.code) == (
        400, message, param, "model_not_found")


def test_empty_roster_knows_only_main() -> None:
    """With no agents configured, ``main`` exists and every other id is unknown."""
    roster = AgentsConfig()
    assert resolve_agent_id("openclaw/main", None, roster) == "main"
    with pytest.raises(InvalidRequestError, match="Unknown agent 'beta'."):
        resolve_agent_id("openclaw/beta", None, roster)


@pytest.mark.parametrize(
    ("agent", "header", "user", "key"),
    [
        ("main", None, "alice", "agent:main:openai-user:alice"),
        ("beta", None, "Conv:ABC-1", "agent:beta:openai-user:conv:abc-1"),
        ("research", None, "u1", "agent:research:openai-user:u1"),
        ("main", None, "  Bob  ", "agent:main:openai-user:bob"),
        ("beta", "agent:beta:openai:custom", "alice", "agent:beta:openai:custom"),
        ("beta", "  agent:beta:openai:custom  ", None, "agent:beta:openai:custom"),
        ("main", "myapp-thread-9", None, "myapp-thread-9"),
        ("beta", "MixedCase:Key", None, "MixedCase:Key"),
        ("main", "agent:main:subagentish:x", None, "agent:main:subagentish:x"),
    ],
)
def test_session_key_formulas(agent: str, header: str | None, user: str | None, key: str) -> None:
    """Header key verbatim (trimmed); else ``agent:<id>:openai-user:<user>`` lower-cased (section 3.2)."""
    assert resolve_session_key(agent, header, user) == key


def test_random_uuid_is_a_version_4_uuid_in_canonical_form() -> None:
    """random_uuid() reads back as a version 4, RFC 4122 UUID whose text is its own canonical form; no repeats."""
    seen = set()
    for _ in range(2_000):
        text = random_uuid()
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        seen.add(text)
    assert len(seen) == 2_000


@pytest.mark.parametrize(("header", "user"), [(None, None), ("", ""), ("   ", "   ")])
def test_session_key_without_hints_is_a_fresh_uuid(header: str | None, user: str | None) -> None:
    """No header and no user: ``agent:<id>:openai:<uuid4>``, a new session every time."""
    first = resolve_session_key("beta", header, user)
    second = resolve_session_key("beta", header, user)
    assert re.fullmatch(f"agent:beta:openai:{UUID4}", first)
    assert re.fullmatch(f"agent:beta:openai:{UUID4}", second)
    assert first != second


@pytest.mark.parametrize(
    "header",
    ["subagent:x", "cron:nightly", "acp:thread", "SubAgent:X", "agent:main:subagent:spoofed",
     "agent:main:cron:job", "agent:beta:acp:1", "agent:main:harness:codex:abc", "AGENT:Main:Harness:codex:1"],
)
def test_reserved_session_keys_are_400(header: str) -> None:
    """Ports openai-http.test.ts: reserved internal session namespaces are refused with 400."""
    with pytest.raises(InvalidRequestError) as info:
        resolve_session_key("main", header, None)
    assert (info.value.status, info.value.message) == (
        400, "`x-openclaw-session-key` cannot use reserved internal session namespaces.")
