"""A JSON object or array where the request has a string it compares against a set of names
(a content part's ``type``, ``response_format.type``) is an ordinary bad value: ignored or a 400,
never a 500 (schemathesis found the content part one)."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import ClientFactory, chat_body, error_body
from .test_handlers import post


@pytest.mark.parametrize("kind", [{"k": "v"}, ["text"]], ids=("object", "array"))
async def test_unhashable_content_part_type_is_ignored(gateway_client: ClientFactory, kind: Any) -> None:
    client = await gateway_client()
    parts = [{"type": kind, "text": "lost"}, {"type": "text", "text": "hi"}]
    resp = await post(client, chat_body(parts))
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "echo: hi"


@pytest.mark.parametrize("kind", [{"k": "v"}, ["text"]], ids=("object", "array"))
async def test_unhashable_response_format_type_is_a_400(gateway_client: ClientFactory, kind: Any) -> None:
    client = await gateway_client()
    resp = await post(client, chat_body("hi", response_format={"type": kind}))
    assert resp.status == 400
    assert await resp.json() == error_body(
        "Invalid response_format: response_format.type must be text, json_object, or json_schema",
        param="response_format",
    )
