"""`x-openclaw-model`: a backend model override within the agents' allow-list."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    Host,
    HttpCompatConfig,
    setup,
    SharedSecretAuthenticator,
)

from .conftest import ScriptedRunner


def _config(allowed: list[str] | None) -> HttpCompatConfig:
    defaults: dict[str, Any] = {"model": "openai/gpt-5.4"}
    if allowed is not None:
        defaults["models"] = {ref: {} for ref in allowed}
    return HttpCompatConfig.from_mapping(
        {
            "gateway": {"auth": {"mode": "none"}, "http": {"endpoints": {"chatCompletions": {"enabled": True}}}},
            "agents": {"defaults": defaults, "list": [{"id": "main"}, {"id": "beta", "model": "local/small"}]},
        },
        env={},
    )


async def _post(aiohttp_client: AiohttpClient, runner: ScriptedRunner, config: HttpCompatConfig, headers: dict[str, str]) -> Any:
    app = web.Application()
    setup(app, config, Host(runner=runner, authenticator=SharedSecretAuthenticator(config.auth), roster=config.agents))
    client = await aiohttp_client(app)
    return await client.post(
        "/v1/chat/completions", json={"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}, headers=headers
    )


@pytest.mark.parametrize(
    ("allowed", "header", "agent", "expected"),
    [
        (None, "openai/gpt-5.4", "main", "openai/gpt-5.4"),
        (None, "anything/else", "main", "anything/else"),
        (["openai/gpt-5.4"], "gpt-5.4", "main", "gpt-5.4"),
        (["openai/gpt-5.5"], "openai/gpt-5.5", "main", "openai/gpt-5.5"),
        (["openai/gpt-5.5"], "local/small", "beta", "local/small"),
    ],
    ids=["no-allowlist", "no-allowlist-any", "bare-id-allowed", "listed", "agents-own-model"],
)
async def test_override_passed_to_run(
    aiohttp_client: AiohttpClient, runner: ScriptedRunner, allowed: list[str] | None, header: str, agent: str, expected: str
) -> None:
    """Ports openai-http.test.ts: an allowed override reaches the run as the raw header."""
    resp = await _post(aiohttp_client, runner, _config(allowed), {"x-openclaw-model": header, "x-openclaw-agent-id": agent})
    assert resp.status == 200
    assert runner.requests[0].model_override == expected


async def test_unparsable_override_is_400(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: `x-openclaw-model: openai/` -> 400 Invalid `x-openclaw-model`."""
    resp = await _post(aiohttp_client, runner, _config(None), {"x-openclaw-model": "openai/"})
    assert resp.status == 400
    assert await resp.json() == {"error": {"message": "Invalid `x-openclaw-model`.", "type": "invalid_request_error",
                                           "param": "x-openclaw-model", "code": None}}
    assert runner.requests == []


async def test_override_outside_allowlist_is_400(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> None:
    """A model outside agents.defaults.models is refused, naming model and agent."""
    resp = await _post(aiohttp_client, runner, _config(["openai/gpt-5.4"]), {"x-openclaw-model": "openai/o9"})
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "Model 'openai/o9' is not allowed for agent 'main'."
    assert runner.requests == []


async def test_no_header_means_no_override(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> None:
    """Without the header the run uses the agent's configured model."""
    resp = await _post(aiohttp_client, runner, _config(["openai/gpt-5.4"]), {})
    assert resp.status == 200
    assert runner.requests[0].model_override is None
