"""Smoke: the seed's two requests through a stand-in gateway."""

from __future__ import annotations

from typing import Any

from .conftest import ScriptedRunner


async def test_non_streaming_completion(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """A plain request returns a chat.completion with the agent's reply."""
    client = await gateway_client()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]},
        headers={**auth_headers, "x-openclaw-agent-id": "main"},
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: hi"}
    assert runner.requests[0].agent_id == "main"


async def test_streaming_completion(gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str]) -> None:
    """A streamed request returns role, content, finish chunks and [DONE]."""
    client = await gateway_client()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers=auth_headers,
    )
    assert resp.status == 200
    text = await resp.text()
    print(text)
    assert text.endswith("data: [DONE]\n\n")
