"""The openai Python SDK against the reference gateway, over a real socket."""

from __future__ import annotations

import asyncio
import pathlib

import openai
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.app import build_gateway_app

TOKEN = "sdk-token"


@pytest.fixture
async def base_url(aiohttp_server: AiohttpServer, tmp_path: pathlib.Path) -> str:
    """The ``/v1`` URL of a running reference gateway (echo runtime, agents main and beta)."""
    config = GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(tmp_path),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True}, {"id": "beta"}]},
        },
        env={},
    )
    server: TestServer = await aiohttp_server(build_gateway_app(config), host="127.0.0.1")
    return str(server.make_url("/v1"))


async def test_sync_client(base_url: str) -> None:
    """The blocking OpenAI client (run in a thread) gets the echo completion."""

    def call() -> openai.types.chat.ChatCompletion:
        with openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
            return client.chat.completions.create(
                model="openclaw", messages=[{"role": "user", "content": "hi from sync"}]
            )

    completion = await asyncio.to_thread(call)
    assert completion.id.startswith("chatcmpl_")
    assert completion.model == "openclaw"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "echo: hi from sync"
    assert completion.choices[0].finish_reason == "stop"


async def test_sync_client_streaming(base_url: str) -> None:
    """The blocking client's stream yields the echo as deltas and ends with finish_reason stop."""

    def call() -> tuple[str, list[str | None]]:
        with openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
            stream = client.chat.completions.create(
                model="openclaw/beta", messages=[{"role": "user", "content": "streamed"}], stream=True
            )
            with stream:
                chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, [c.choices[0].finish_reason for c in chunks if c.choices]

    text, finish_reasons = await asyncio.to_thread(call)
    assert text == "echo: streamed"
    assert finish_reasons[-1] == "stop"
    assert set(finish_reasons[:-1]) == {None}


async def test_async_client(base_url: str) -> None:
    """The AsyncOpenAI client gets the echo completion with usage."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
        completion = await client.chat.completions.create(
            model="openclaw",
            messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi async"}],
            user="sdk-user",
        )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "echo: hi async"
    assert completion.usage is not None


async def test_async_client_streaming(base_url: str) -> None:
    """AsyncOpenAI streaming with include_usage yields deltas, a stop chunk and a usage chunk."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="openclaw",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


async def test_models_list(base_url: str) -> None:
    """models.list() returns the agent targets; models.retrieve() finds one."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
        models = [m async for m in client.models.list()]
        beta = await client.models.retrieve("openclaw/beta")
    assert [m.id for m in models] == ["openclaw", "openclaw/default", "openclaw/main", "openclaw/beta"]
    assert {m.owned_by for m in models} == {"openclaw"}
    assert beta.id == "openclaw/beta"


async def test_wrong_key(base_url: str) -> None:
    """A wrong API key raises openai.AuthenticationError (401) for completions and models."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.chat.completions.create(model="openclaw", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()


async def test_unknown_agent(base_url: str) -> None:
    """A model naming an unconfigured agent raises openai.BadRequestError (400)."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="openclaw/ghost", messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 400
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    assert info.value.message.endswith("Unknown agent 'ghost'.")
