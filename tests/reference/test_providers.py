"""Providers (``reference/providers.py``): the echo provider and choosing a provider.

What an OpenAI-compatible provider sends and how it reads every kind of answer is tested
against the real mock upstream in ``test_runtime.py``, ``test_faults.py`` and ``test_proxy.py``.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from openclaw_http_compat import (
    AgentRunRequest,
    RunEnd,
    RunError,
    RunUsage,
    TextDelta,
)
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.providers import EchoProvider, OpenAICompletionsProvider, make_provider


def _request(**kwargs: Any) -> AgentRunRequest:
    fields: dict[str, Any] = {"run_id": "run-1", "agent_id": "main", "session_key": "s", "message": "hi"}
    fields.update(kwargs)
    return AgentRunRequest(**fields)


async def test_echo_streams_word_by_word() -> None:
    """Echo answers 'echo: <message>', one word and its trailing space per delta, then usage and RunEnd."""
    events = [e async for e in EchoProvider().stream("echo", [], _request(message="hello  big world"))]
    assert events == [
        TextDelta("echo: "),
        TextDelta("hello  "),
        TextDelta("big "),
        TextDelta("world"),
        RunUsage(input=3, output=4),
        RunEnd("stop"),
    ]


def _config(providers: dict[str, Any]) -> GatewayConfig:
    return GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}, "models": {"providers": providers}}, env={})


async def test_make_provider(client_session: aiohttp.ClientSession) -> None:
    """Configured ids give their provider, 'echo' is built in, anything else explains the failure."""
    config = _config(
        {
            "up": {"api": "openai-completions", "baseUrl": "http://127.0.0.1:9/v1/"},
            "claude": {"api": "anthropic-messages", "baseUrl": "http://127.0.0.1:9"},
            "nourl": {"api": "openai-completions"},
        }
    )
    up = make_provider(config, "up", client_session)
    assert isinstance(up, OpenAICompletionsProvider)
    assert up.url == "http://127.0.0.1:9/v1/chat/completions"
    assert isinstance(make_provider(config, "echo", client_session), EchoProvider)
    assert make_provider(config, "ghost", client_session) == RunError(
        message="Unknown provider 'ghost'", reason="model_not_found"
    )
    assert make_provider(config, "claude", client_session) == RunError(
        message="Provider 'claude' uses the unsupported api 'anthropic-messages'"
    )
    assert make_provider(config, "nourl", client_session) == RunError(message="Provider 'nourl' has no baseUrl")


async def test_configured_echo_wins_over_builtin(client_session: aiohttp.ClientSession) -> None:
    """A provider configured under the id 'echo' replaces the built-in one."""
    config = _config({"echo": {"baseUrl": "http://127.0.0.1:9/v1"}})
    assert isinstance(make_provider(config, "echo", client_session), OpenAICompletionsProvider)

