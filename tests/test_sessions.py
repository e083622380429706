"""Which requests get a session minted for them (and so no history to load)."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import ScriptedRunner


@pytest.mark.parametrize(
    ("extra", "headers", "new_session"),
    [
        ({}, {}, True),
        ({"user": "alice"}, {}, False),
        ({"user": "   "}, {}, True),
        ({"user": {"id": "x"}}, {}, True),
        ({}, {"x-openclaw-session-key": "agent:main:openai:custom"}, False),
    ],
    ids=["stateless", "user", "blank-user", "object-user", "session-header"],
)
async def test_new_session_flag(
    gateway_client: Any, runner: ScriptedRunner, auth_headers: dict[str, str], extra: dict[str, Any],
    headers: dict[str, str], new_session: bool
) -> None:
    """A run is marked new_session exactly when its key was minted for the request."""
    client = await gateway_client()
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "messages": [{"role": "user", "content": "hi"}], **extra},
        headers={**auth_headers, **headers},
    )
    assert resp.status == 200
    assert runner.requests[0].new_session is new_session
    assert runner.requests[0].session_key.startswith("agent:main:openai")
