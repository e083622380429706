"""The examples: the json5 config loads as documented, the custom gateway serves completions."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys
from types import ModuleType

import json5
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    load_config_file,
)
from openclaw_http_compat.config import ModelRef
from openclaw_http_compat.reference.config import GatewayConfig, ModelEntry, load_gateway_config, ProviderConfig

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
AUTH = {"Authorization": "Bearer YOUR_TOKEN"}


def uncomment_models_block(text: str) -> str:
    """The example config with its commented-out ``models:`` block switched on."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"  // models: \{", line))
    end = next(i for i in range(start, len(lines)) if lines[i] == "  // },")
    for i in range(start, end + 1):
        lines[i] = lines[i].replace("// ", "", 1)
    return "\n".join(lines)


def load_custom_gateway() -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_gateway_example", EXAMPLES / "custom_gateway.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def custom_gateway() -> ModuleType:
    return load_custom_gateway()


def test_example_config_loads() -> None:
    """examples/openclaw.json5 loads with load_gateway_config into the documented offline setup,
    and with load_config_file into the same plugin config."""
    config = load_gateway_config(EXAMPLES / "openclaw.json5", env={})
    assert load_config_file(EXAMPLES / "openclaw.json5", env={}) == config.plugin
    assert (config.port, config.bind, config.bind_host) == (18789, "loopback", "127.0.0.1")
    plugin = config.plugin
    assert (plugin.auth.mode, plugin.auth.token) == ("token", "YOUR_TOKEN")
    assert plugin.chat_completions.enabled is True
    assert plugin.agents.agent_ids == ("main", "beta")
    assert plugin.agents.default_agent_id == "main"
    main, beta = plugin.agents.entries
    assert main.model == beta.model == ModelRef("echo", "echo")
    assert main.system_prompt and beta.system_prompt and main.system_prompt != beta.system_prompt
    assert config.state_dir is None
    assert config.providers == ()


def test_example_config_state_dir_from_env(tmp_path: pathlib.Path) -> None:
    """The example leaves stateDir unset, so OPENCLAW_STATE_DIR decides where state goes."""
    config = load_gateway_config(EXAMPLES / "openclaw.json5", env={"OPENCLAW_STATE_DIR": str(tmp_path)})
    assert config.state_dir == tmp_path


def test_example_provider_block_is_valid() -> None:
    """Uncommented, the example's models.providers block describes a working Ollama provider."""
    raw = json5.loads(uncomment_models_block((EXAMPLES / "openclaw.json5").read_text(encoding="utf-8")))
    config = GatewayConfig.from_mapping(raw, env={})
    assert config.provider("ollama") == ProviderConfig(
        id="ollama", api="openai-completions", base_url="http://127.0.0.1:11434/v1",
        models=(ModelEntry(id="llama3.2", context_window=8192),),
    )
    assert ModelRef.parse("ollama/llama3.2") == ModelRef("ollama", "llama3.2")


async def test_custom_gateway_serves_a_completion(aiohttp_client: AiohttpClient, custom_gateway: ModuleType) -> None:
    """The custom gateway's make_app() answers the seed request with the reversed message."""
    app: web.Application = custom_gateway.make_app()
    client = await aiohttp_client(app)
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "messages": [{"role": "user", "content": "hello world"}]},
        headers=AUTH,
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "dlrow olleh"}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


async def test_custom_gateway_streams(aiohttp_client: AiohttpClient, custom_gateway: ModuleType) -> None:
    """The custom gateway streams the reversed message in pieces, ending with [DONE]."""
    client = await aiohttp_client(custom_gateway.make_app())
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw/mirror", "stream": True, "messages": [{"role": "user", "content": "abcdefghij"}]},
        headers=AUTH,
    )
    assert resp.status == 200
    frames = [f for f in (await resp.text()).split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    pieces = [json.loads(f.removeprefix("data: "))["choices"][0]["delta"].get("content") for f in frames[:-1]]
    assert [p for p in pieces if p] == ["jihg", "fedc", "ba"]


async def test_custom_gateway_auth_and_health(aiohttp_client: AiohttpClient, custom_gateway: ModuleType) -> None:
    """The custom gateway's own auth middleware guards /v1 while its /health stays public."""
    client = await aiohttp_client(custom_gateway.make_app())
    assert (await client.get("/health")).status == 200
    assert (await client.get("/v1/models")).status == 401
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer nope"})).status == 401
    resp = await client.get("/v1/models", headers=AUTH)
    assert [m["id"] for m in (await resp.json())["data"]] == ["openclaw", "openclaw/default", "openclaw/main", "openclaw/mirror"]
