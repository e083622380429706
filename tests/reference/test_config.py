"""The reference gateway's own config: listening, state and providers, with the plugin's part inside."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from openclaw_http_compat import ConfigError, HttpCompatConfig
from openclaw_http_compat.config import ModelRef
from openclaw_http_compat.reference.config import (
    AgentDefaultsConfig,
    GatewayConfig,
    ModelEntry,
    ProviderConfig,
    SessionStoreConfig,
    load_gateway_config,
)

from ..test_config import FULL_CONFIG, parse


def test_full_config_gives_gateway_and_plugin(tmp_path: pathlib.Path) -> None:
    """One OpenClaw file gives the gateway's keys and, as ``plugin``, exactly the plugin's config."""
    path = tmp_path / "openclaw.json5"
    path.write_text(FULL_CONFIG, encoding="utf-8")
    config = load_gateway_config(path, env={})
    assert config == GatewayConfig(
        port=18800,
        bind="lan",
        providers=(
            ProviderConfig(
                id="openai",
                api="openai-completions",
                base_url="https://api.openai.example/v1",
                api_key="sk-provider-secret",
                headers=(("X-Org", "org-secret"),),
                models=(ModelEntry(id="gpt-5.4", context_window=1000),),
            ),
        ),
        plugin=parse(FULL_CONFIG),
    )
    assert config.bind_host == "0.0.0.0"


def test_minimal_gateway_defaults() -> None:
    """With only auth set, the gateway listens on OpenClaw's default port on loopback."""
    config = GatewayConfig.from_mapping({"gateway": {"auth": {"token": "t"}}}, env={})
    assert (config.port, config.bind, config.bind_host) == (18789, "loopback", "127.0.0.1")
    assert config.state_dir is None
    assert config.session_store == SessionStoreConfig(fsync=False)
    assert config.providers == ()
    assert config.plugin == HttpCompatConfig.from_mapping({"gateway": {"auth": {"token": "t"}}}, env={})


def test_default_constructed_equals_empty_mapping() -> None:
    """Defaults are written once: a gateway config built with no arguments equals one read
    from a file that only turns auth off (the default built in code)."""
    assert GatewayConfig() == GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}}, env={})
    assert ProviderConfig(id="p") == GatewayConfig.from_mapping(
        {"gateway": {"auth": {"mode": "none"}}, "models": {"providers": {"p": {}}}}, env={}
    ).providers[0]


def test_state_dir_from_config_or_env(tmp_path: pathlib.Path) -> None:
    """``stateDir`` wins over ``OPENCLAW_STATE_DIR``; ``~`` is expanded."""
    raw: dict[str, Any] = {"gateway": {"auth": {"mode": "none"}}}
    assert GatewayConfig.from_mapping(raw, env={"OPENCLAW_STATE_DIR": str(tmp_path)}).state_dir == tmp_path
    raw["gateway"]["stateDir"] = "~/state"
    assert GatewayConfig.from_mapping(raw, env={"OPENCLAW_STATE_DIR": "/x"}).state_dir == pathlib.Path("~/state").expanduser()


@pytest.mark.parametrize(
    ("gateway", "host"),
    [
        ({"bind": "loopback"}, "127.0.0.1"),
        ({"bind": "lan"}, "0.0.0.0"),
        ({"bind": "auto"}, "127.0.0.1"),
        ({"bind": "custom", "customBindHost": "192.168.1.5"}, "192.168.1.5"),
        ({"bind": "custom"}, "127.0.0.1"),
    ],
)
def test_bind_host(gateway: dict[str, Any], host: str) -> None:
    """``gateway.bind`` maps to the address to listen on."""
    config = GatewayConfig.from_mapping({"gateway": {**gateway, "auth": {"mode": "none"}}}, env={})
    assert config.bind_host == host


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gateway": {"port": "18789"}}, "gateway.port: expected an integer, got the string '18789'"),
        ({"gateway": {"port": True}}, "gateway.port: expected an integer, got a boolean"),
        ({"gateway": {"port": 1.5}}, "gateway.port: expected an integer, got 1.5"),
        ({"gateway": {"port": -1}}, "gateway.port: must be at least 0, got -1"),
        ({"gateway": {"port": 70000}}, "gateway.port: must be at most 65535, got 70000"),
        ({"gateway": {"bind": "everywhere"}},
         "gateway.bind: expected one of 'auto', 'lan', 'loopback', 'tailnet', 'custom', got 'everywhere'"),
        ({"gateway": {"customBindHost": 5}}, "gateway.customBindHost: expected a string, got the number 5"),
        ({"gateway": {"stateDir": 5}}, "gateway.stateDir: expected a string, got the number 5"),
        ({"gateway": {"sessionStore": {"fsync": "yes"}}},
         "gateway.sessionStore.fsync: expected a boolean, got the string 'yes'"),
        ({"gateway": {"sessionStore": 1}}, "gateway.sessionStore: expected an object, got the number 1"),
        ({"models": {"providers": {"openai": {"models": "gpt"}}}},
         "models.providers.openai.models: expected an array, got the string 'gpt'"),
        ({"models": {"providers": {"openai": {"models": [5]}}}},
         "models.providers.openai.models[0]: expected an object with an 'id' string, got the number 5"),
        ({"models": {"providers": {"openai": {"models": [{"name": "skipped"}, {"id": "m", "contextWindow": 0}]}}}},
         "models.providers.openai.models[1].contextWindow: must be at least 1, got 0"),
        ({"models": {"providers": {"openai": {"models": [{"id": "m", "contextTokens": "8k"}]}}}},
         "models.providers.openai.models[0].contextTokens: expected an integer, got the string '8k'"),
        ({"models": {"providers": {"openai": {"models": [{"id": "m", "maxTokens": 1.5}]}}}},
         "models.providers.openai.models[0].maxTokens: expected an integer, got 1.5"),
        ({"models": {"providers": {"openai": {"models": [{"id": 7}]}}}},
         "models.providers.openai.models[0].id: expected a string, got the number 7"),
        ({"agents": {"defaults": {"contextTokens": 0}}}, "agents.defaults.contextTokens: must be at least 1, got 0"),
        ({"agents": {"defaults": {"contextTokens": True}}},
         "agents.defaults.contextTokens: expected an integer, got a boolean"),
        ({"models": {"providers": {"openai": {"timeoutMs": 0}}}},
         "models.providers.openai.timeoutMs: must be at least 1, got 0"),
        ({"models": {"providers": {"openai": {"apiKey": 42}}}}, "models.providers.openai.apiKey: expected a string, got int"),
        ({"models": {"providers": {"openai": {"headers": {"X-Key": 42}}}}},
         "models.providers.openai.headers.X-Key: expected a string, got int"),
        ({"models": {"providers": {"openai": {"headers": "x"}}}},
         "models.providers.openai.headers: expected an object, got the string 'x'"),
        ({"models": {"providers": 3}}, "models.providers: expected an object, got the number 3"),
        ({"models": {"providers": {"up": {"proxy": "socks5://u:secret@127.0.0.1:1080"}}}},
         "models.providers.up.proxy: expected an http:// or https:// proxy URL"),
        ({"models": {"providers": {"up": {"proxy": "http://"}}}},
         "models.providers.up.proxy: expected an http:// or https:// proxy URL"),
        ({"models": {"providers": {"up": {"proxy": 8080}}}}, "models.providers.up.proxy: expected a string, got int"),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"maxBodyBytes": 0}}}}},
         "gateway.http.endpoints.chatCompletions.maxBodyBytes: must be at least 1, got 0"),
    ],
)
def test_wrong_type_or_value_names_the_dotted_key(raw: dict[str, Any], message: str) -> None:
    """Each wrong type or value of a gateway key (or a plugin key in the same file) names its dotted key."""
    gateway = raw.setdefault("gateway", {})
    gateway.setdefault("auth", {"mode": "none"})
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_mapping(raw, env={})
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GatewayConfig(port=99999), "gateway.port: must be at most 65535, got 99999"),
        (lambda: GatewayConfig(bind="everywhere"),  # type: ignore[arg-type]
         "gateway.bind: expected one of 'auto', 'lan', 'loopback', 'tailnet', 'custom', got 'everywhere'"),
        (lambda: SessionStoreConfig(fsync=1), "gateway.sessionStore.fsync: expected a boolean, got the number 1"),  # type: ignore[arg-type]
        (lambda: ProviderConfig(id="up", timeout_ms=0), "models.providers.up.timeoutMs: must be at least 1, got 0"),
        (lambda: ProviderConfig(id="up", api_key=b"k"), "models.providers.up.apiKey: expected a string, got bytes"),  # type: ignore[arg-type]
        (lambda: GatewayConfig(plugin={"gateway": {}}), "'plugin' must be <class"),  # type: ignore[arg-type]
        (lambda: ProviderConfig(id="up", models=[{"id": "m", "maxTokens": -1}]),
         "models.providers.up.models[0].maxTokens: must be at least 1, got -1"),
        (lambda: ModelEntry(id="m", context_window=0), "models.providers.*.models[].contextWindow: must be at least 1"),
        (lambda: ModelEntry(id=""), "models.providers.*.models[].id: expected a non-empty string"),
        (lambda: AgentDefaultsConfig(context_tokens="1"),  # type: ignore[arg-type]
         "agents.defaults.contextTokens: expected an integer, got the string '1'"),
    ],
    ids=("port", "bind", "fsync", "provider-timeout", "secret-type-only", "plugin-type", "model-in-provider",
         "model-entry", "model-id", "default-context"),
)
def test_direct_construction_is_validated(build: Any, message: str) -> None:
    """A gateway config built in Python is refused with the same message as a file."""
    with pytest.raises((ConfigError, TypeError)) as info:
        build()
    # attrs' TypeError carries the field and value in its args: the message is the first.
    assert str(info.value.args[0]).startswith(message)


def test_provider_headers_and_models_convert() -> None:
    """Headers given as a mapping become pairs; model objects become entries (id-less ones
    skipped), a bare id string an entry with no sizes."""
    provider = ProviderConfig(
        id="up", headers={"X-A": "1"}, models=[{"id": "m1", "contextWindow": 8, "name": "M1"}, {"name": "x"}, "m2"]
    )
    assert provider.headers == (("X-A", "1"),)
    assert provider.models == (ModelEntry(id="m1", context_window=8), ModelEntry(id="m2"))
    assert (provider.model("m2"), provider.model("m3")) == (ModelEntry(id="m2"), None)


def test_model_context_sizes_and_default_budget() -> None:
    """A model entry's contextWindow, contextTokens and maxTokens are read (integral floats too);
    contextTokens is a budget the window caps; agents.defaults.contextTokens is the gateway's."""
    raw: dict[str, Any] = {
        "gateway": {"auth": {"mode": "none"}},
        "agents": {"defaults": {"model": "up/small", "contextTokens": 4096.0}},
        "models": {"providers": {"up": {"models": [
            {"id": "small", "contextWindow": 256},
            {"id": "big", "contextWindow": 128000, "contextTokens": 32000, "maxTokens": 4096},
            {"id": "loose", "contextWindow": 1000, "contextTokens": 5000},
            {"id": "bare"},
        ]}}},
    }
    config = GatewayConfig.from_mapping(raw, env={})
    assert config.agent_defaults == AgentDefaultsConfig(context_tokens=4096)
    assert config.providers[0].models == (
        ModelEntry(id="small", context_window=256),
        ModelEntry(id="big", context_window=128000, context_tokens=32000, max_tokens=4096),
        ModelEntry(id="loose", context_window=1000, context_tokens=5000),
        ModelEntry(id="bare"),
    )
    limits = [config.model_entry(ModelRef("up", m)) for m in ("small", "big", "loose", "bare", "ghost")]
    assert [e.context_limit if e else "none" for e in limits] == [256, 32000, 1000, None, "none"]
    assert config.model_entry(ModelRef("nowhere", "small")) is None
    assert GatewayConfig().agent_defaults == AgentDefaultsConfig(context_tokens=None)


def test_session_store_url_from_config_or_env() -> None:
    """``gateway.sessionStore.url`` wins over ``OPENCLAW_SESSION_STORE_URL``; unset, SQLite (None)."""
    raw: dict[str, Any] = {"gateway": {"auth": {"mode": "none"}}}
    assert GatewayConfig.from_mapping(raw, env={}).session_store.url is None
    env = {"OPENCLAW_SESSION_STORE_URL": "postgresql://gw@127.0.0.1:5432/env"}
    assert GatewayConfig.from_mapping(raw, env=env).session_store.url == "postgresql://gw@127.0.0.1:5432/env"
    raw["gateway"]["sessionStore"] = {"url": "postgres://gw:pw@db/file"}
    config = GatewayConfig.from_mapping(raw, env=env)
    assert config.session_store.url == "postgres://gw:pw@db/file"
    assert "pw" not in repr(config)


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://gw:secret@db/x", "gateway.sessionStore.url: expected a postgresql:// URL"),
     (5, "gateway.sessionStore.url: expected a string, got int")],
)
def test_session_store_url_is_checked_without_echoing_it(url: object, message: str) -> None:
    """A wrong store URL names the key, never the value (it may hold a password)."""
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_mapping({"gateway": {"auth": {"mode": "none"}, "sessionStore": {"url": url}}}, env={})
    assert str(info.value) == message
