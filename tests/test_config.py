"""HttpCompatConfig.from_mapping: OpenClaw key names, defaults, env fallbacks, dotted-key errors."""

from __future__ import annotations

import pathlib
from typing import Any

import json5
import pytest

from openclaw_http_compat import (
    AuthConfig,
    ChatCompletionsConfig,
    ConfigError,
    HttpCompatConfig,
    load_config_file,
)
from openclaw_http_compat.config import (
    AgentConfig,
    AgentsConfig,
    ImagesConfig,
    ModelRef,
    RateLimitConfig,
    normalize_agent_id,
    read_config_file,
)

MIB = 1024 * 1024

FULL_CONFIG = """
// An OpenClaw gateway config, json5 as OpenClaw writes it.
{
  gateway: {
    port: 18800,
    bind: 'lan',
    auth: {
      mode: 'token',
      token: 's3cret-token',
      password: 'hunter2',
      rateLimit: { maxAttempts: 3, windowMs: 1000, lockoutMs: 5000, exemptLoopback: false },
      trustedProxy: { userHeader: 'x-forwarded-user' },  // not used by us: ignored
    },
    trustedProxies: ['10.0.0.0/8', '127.0.0.1'],
    allowRealIpFallback: true,
    controlUi: { enabled: true },  // unknown to us: ignored
    http: {
      securityHeaders: { strictTransportSecurity: 'max-age=1' },
      endpoints: {
        responses: { enabled: true },
        chatCompletions: {
          enabled: true,
          maxBodyBytes: 1048576,
          maxImageParts: 4,
          maxTotalImageBytes: 2097152,
          bodyTimeoutMs: 5000,
          keepaliveMs: 250,
          images: {
            allowUrl: true,
            urlAllowlist: [' CDN.example.com ', '', '*.example.org'],
            allowedMimes: ['Image/PNG', 'image/jpeg'],
            maxBytes: 1024,
            maxRedirects: 1,
            timeoutMs: 2000,
          },
        },
      },
    },
  },
  agents: {
    defaults: {
      model: { primary: 'openai/gpt-5.4', fallbacks: ['anthropic/claude'] },
      systemPrompt: 'Be helpful.',
      models: { 'openai/gpt-5.4': {}, 'anthropic/claude': { alias: 'c' } },
      workspace: '~/agents',
    },
    entries: {
      main: { name: 'Main', model: 'openai/gpt-5.4-mini' },
      Research: { default: true, systemPrompt: 'Cite sources.' },
    },
    list: [
      { id: 'beta', name: 'Beta', model: { primary: 'anthropic/claude' }, workspace: '/tmp/beta' },
    ],
  },
  models: {
    mode: 'merge',
    providers: {
      openai: {
        baseUrl: 'https://api.openai.example/v1',
        apiKey: 'sk-provider-secret',
        api: 'openai-completions',
        headers: { 'X-Org': 'org-secret' },
        models: [{ id: 'gpt-5.4', contextWindow: 1000 }, { name: 'no id' }],
      },
    },
  },
  channels: { telegram: { token: 'ignored' } },
}
"""


def parse(text: str, env: dict[str, str] | None = None) -> HttpCompatConfig:
    data = json5.loads(text)
    assert isinstance(data, dict)
    return HttpCompatConfig.from_mapping(data, env=env or {})


def test_full_openclaw_config_from_json5() -> None:
    """Every key we use is read under OpenClaw's name; unknown keys are ignored."""
    config = parse(FULL_CONFIG)
    assert config == HttpCompatConfig(
        auth=AuthConfig(
            mode="token",
            token="s3cret-token",
            password="hunter2",
            rate_limit=RateLimitConfig(max_attempts=3, window_ms=1000, lockout_ms=5000, exempt_loopback=False),
        ),
        trusted_proxies=("10.0.0.0/8", "127.0.0.1"),
        allow_real_ip_fallback=True,
        chat_completions=ChatCompletionsConfig(
            enabled=True,
            max_body_bytes=MIB,
            max_image_parts=4,
            max_total_image_bytes=2 * MIB,
            body_timeout_ms=5000,
            keepalive_ms=250,
            images=ImagesConfig(
                allow_url=True,
                url_allowlist=("cdn.example.com", "*.example.org"),
                allowed_mimes=("image/png", "image/jpeg"),
                max_bytes=1024,
                max_redirects=1,
                timeout_ms=2000,
            ),
        ),
        agents=AgentsConfig(
            entries=(
                AgentConfig(id="main", name="Main", model=ModelRef("openai", "gpt-5.4-mini")),
                AgentConfig(id="research", default=True, system_prompt="Cite sources."),
                AgentConfig(id="beta", name="Beta", model=ModelRef("anthropic", "claude")),
            ),
            default_model=ModelRef("openai", "gpt-5.4"),
            default_system_prompt="Be helpful.",
            allowed_models=(ModelRef("openai", "gpt-5.4"), ModelRef("anthropic", "claude")),
        ),
    )
    assert config.agents.default_agent_id == "research"
    assert config.agents.agent_ids == ("main", "research", "beta")


def test_minimal_config_defaults() -> None:
    """With only a token, every other value is OpenClaw's default and the endpoint is off."""
    config = HttpCompatConfig.from_mapping({"gateway": {"auth": {"token": "t"}}}, env={})
    assert config == HttpCompatConfig(auth=AuthConfig(mode="token", token="t"))
    assert config.chat_completions.enabled is False
    assert config.chat_completions.max_body_bytes == 20 * MIB
    assert config.chat_completions.keepalive_ms == 15_000
    assert config.chat_completions.images.allow_url is False
    assert config.auth.rate_limit is None
    assert config.agents.agent_ids == ("main",)
    assert config.agents.default_agent_id == "main"


def test_rate_limit_block_present_but_empty_uses_defaults() -> None:
    """An empty ``rateLimit`` block creates the limiter with OpenClaw's defaults."""
    config = HttpCompatConfig.from_mapping({"gateway": {"auth": {"token": "t", "rateLimit": {}}}}, env={})
    assert config.auth.rate_limit == RateLimitConfig(
        max_attempts=10, window_ms=60_000, lockout_ms=300_000, exempt_loopback=True
    )


def test_legacy_agents_list_only() -> None:
    """The legacy ``agents.list`` array alone configures the roster, ids normalised."""
    config = HttpCompatConfig.from_mapping(
        {"gateway": {"auth": {"mode": "none"}}, "agents": {"list": [{"id": " Alpha "}, {"id": "My Agent!"}]}},
        env={},
    )
    assert config.agents.agent_ids == ("alpha", "my-agent")
    assert config.agents.default_agent_id == "alpha"


@pytest.mark.parametrize(
    ("agents", "default"),
    [
        ([], "main"),
        ([{"id": "alpha"}, {"id": "beta"}], "alpha"),
        ([{"id": "alpha"}, {"id": "beta", "default": True}], "beta"),
        ([{"id": "alpha", "default": True}, {"id": "beta", "default": True}], "alpha"),
        ([{"id": "alpha", "default": False}, {"id": "beta"}], "alpha"),
    ],
    ids=("none-is-main", "first", "flagged", "first-flagged", "false-flag"),
)
def test_default_agent_rules(agents: list[dict[str, Any]], default: str) -> None:
    """Default agent: the first flagged ``default``, else the first, else ``main``."""
    config = HttpCompatConfig.from_mapping({"gateway": {"auth": {"mode": "none"}}, "agents": {"list": agents}}, env={})
    assert config.agents.default_agent_id == default


def test_unknown_agent_gets_a_bare_config() -> None:
    """Looking up an unconfigured agent gives a bare config that inherits the defaults."""
    assert AgentsConfig().get("ghost") == AgentConfig(id="ghost")


@pytest.mark.parametrize(
    ("auth", "env", "expected"),
    [
        ({}, {"OPENCLAW_GATEWAY_TOKEN": "from-env"}, AuthConfig(mode="token", token="from-env")),
        ({"token": "from-config"}, {"OPENCLAW_GATEWAY_TOKEN": "from-env"},
         AuthConfig(mode="token", token="from-config")),
        ({"mode": "password"}, {"OPENCLAW_GATEWAY_PASSWORD": "pw-env"}, AuthConfig(mode="password", password="pw-env")),
        ({"mode": "password", "password": "pw"}, {"OPENCLAW_GATEWAY_PASSWORD": "pw-env"},
         AuthConfig(mode="password", password="pw")),
        ({}, {"OPENCLAW_GATEWAY_PASSWORD": "pw-env"}, AuthConfig(mode="password", password="pw-env")),
        ({}, {"OPENCLAW_GATEWAY_PASSWORD": "pw", "OPENCLAW_GATEWAY_TOKEN": "tk"},
         AuthConfig(mode="token", token="tk", password="pw")),
        ({"mode": "none"}, {}, AuthConfig(mode="none")),
        ({"token": ""}, {"OPENCLAW_GATEWAY_TOKEN": "from-env"}, AuthConfig(mode="token", token="from-env")),
    ],
    ids=("token-env", "config-wins", "password-env", "password-config-wins", "only-password-means-password-mode",
         "both-means-token-mode", "none", "empty-token-falls-back"),
)
def test_auth_secrets_and_env_fallbacks(auth: dict[str, Any], env: dict[str, str], expected: AuthConfig) -> None:
    """Secrets fall back to OPENCLAW_GATEWAY_TOKEN / _PASSWORD; the config value wins."""
    config = HttpCompatConfig.from_mapping({"gateway": {"auth": auth}}, env=env)
    assert config.auth == expected


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``env=``, the process environment supplies the fallbacks."""
    monkeypatch.setenv("OPENCLAW_GATEWAY_TOKEN", "process-token")
    assert HttpCompatConfig.from_mapping({}).auth == AuthConfig(mode="token", token="process-token")


def test_secrets_are_absent_from_repr() -> None:
    """Neither the gateway secrets nor provider keys and headers appear in ``repr``."""
    text = repr(parse(FULL_CONFIG))
    for secret in ("s3cret-token", "hunter2", "sk-provider-secret", "org-secret"):
        assert secret not in text
    assert "mode='token'" in text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gateway": 5}, "gateway: expected an object, got the number 5"),
        ({"gateway": {"auth": []}}, "gateway.auth: expected an object, got an array"),
        ({"gateway": {"auth": {"mode": "magic"}}}, "gateway.auth.mode: expected one of 'none', 'token', 'password', "
                                                    "'trusted-proxy', got 'magic'"),
        ({"gateway": {"auth": {"mode": "token"}}}, "gateway.auth.token: token auth needs a token"),
        ({"gateway": {"auth": {"mode": "password"}}}, "gateway.auth.password: password auth needs a password"),
        ({"gateway": {"auth": {"mode": "trusted-proxy", "token": "t"}}},
         "gateway.auth.mode: 'trusted-proxy' is not supported yet"),
        ({"gateway": {"auth": {"token": 123}}}, "gateway.auth.token: expected a string, got int"),
        ({"gateway": {"auth": {"token": "t", "rateLimit": {"maxAttempts": 0}}}},
         "gateway.auth.rateLimit.maxAttempts: must be at least 1, got 0"),
        ({"gateway": {"auth": {"token": "t", "rateLimit": {"exemptLoopback": "yes"}}}},
         "gateway.auth.rateLimit.exemptLoopback: expected a boolean, got the string 'yes'"),
        ({"gateway": {"auth": {"token": "t", "rateLimit": True}}},
         "gateway.auth.rateLimit: expected an object, got a boolean"),
        ({"gateway": {"trustedProxies": "127.0.0.1"}},
         "gateway.trustedProxies: expected an array of strings, got the string '127.0.0.1'"),
        ({"gateway": {"trustedProxies": ["127.0.0.1", 1]}}, "gateway.trustedProxies[1]: expected a string"),
        ({"gateway": {"allowRealIpFallback": 1}}, "gateway.allowRealIpFallback: expected a boolean"),
        ({"gateway": {"http": "on"}}, "gateway.http: expected an object"),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"enabled": "true"}}}}},
         "gateway.http.endpoints.chatCompletions.enabled: expected a boolean, got the string 'true'"),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"maxBodyBytes": 0}}}}},
         "gateway.http.endpoints.chatCompletions.maxBodyBytes: must be at least 1, got 0"),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"keepaliveMs": -5}}}}},
         "gateway.http.endpoints.chatCompletions.keepaliveMs: must be at least 0, got -5"),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"images": {"allowUrl": 1}}}}}},
         "gateway.http.endpoints.chatCompletions.images.allowUrl: expected a boolean"),
        ({"gateway": {"http": {"endpoints": {"chatCompletions": {"images": {"allowedMimes": "image/png"}}}}}},
         "gateway.http.endpoints.chatCompletions.images.allowedMimes: expected an array of strings"),
        ({"agents": []}, "agents: expected an object, got an array"),
        ({"agents": {"list": {}}}, "agents.list: expected an array, got an object"),
        ({"agents": {"list": ["main"]}}, "agents.list[0]: expected an object, got the string 'main'"),
        ({"agents": {"list": [{"name": "no id"}]}}, "agents.list[0].id: expected a non-empty string"),
        ({"agents": {"list": [{"id": "a"}, {"id": "b", "default": "yes"}]}},
         "agents.list[1].default: expected a boolean"),
        ({"agents": {"list": [{"id": "a", "model": 5}]}},
         "agents.list[0].model: expected a 'provider/model' string, got the number 5"),
        ({"agents": {"list": [{"id": "main"}, {"id": "MAIN"}]}}, "agents.entries: agent id 'main' is configured twice"),
        ({"agents": {"entries": ["main"]}}, "agents.entries: expected an object, got an array"),
        ({"agents": {"entries": {"main": 5}}}, "agents.entries.main: expected an object, got the number 5"),
        ({"agents": {"entries": {"main": {"name": 5}}}}, "agents.entries.main.name: expected a string"),
        ({"agents": {"defaults": {"model": {"primary": "no-slash"}}}},
         "agents.defaults.model.primary: expected a 'provider/model' string, got 'no-slash'"),
        ({"agents": {"defaults": {"model": "openai/"}}},
         "agents.defaults.model: expected a 'provider/model' string, got 'openai/'"),
        ({"agents": {"defaults": {"models": {"bare-model": {}}}}},
         "agents.defaults.models.bare-model: expected a 'provider/model' key"),
        ({"agents": {"defaults": {"systemPrompt": ["x"]}}}, "agents.defaults.systemPrompt: expected a string"),
    ],
)
def test_wrong_type_or_value_names_the_dotted_key(raw: dict[str, Any], message: str) -> None:
    """Each wrong type or value raises one ConfigError whose message starts with the dotted key."""
    gateway = raw.setdefault("gateway", {})
    if isinstance(gateway, dict):
        # Cases about other keys get a valid auth block, so that is not what fails.
        gateway.setdefault("auth", {"mode": "none"})
    with pytest.raises(ConfigError) as info:
        HttpCompatConfig.from_mapping(raw, env={})
    assert str(info.value).startswith(message)


def test_root_must_be_a_mapping() -> None:
    """A config that is not an object is refused, naming the root."""
    with pytest.raises(ConfigError, match=r"^<root>: expected an object, got an array$"):
        HttpCompatConfig.from_mapping([], env={})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("main", "main"),
        ("Beta", "beta"),
        ("  Beta  ", "beta"),
        ("agent_1-x", "agent_1-x"),
        ("My Agent!", "my-agent"),
        ("--weird--", "weird"),
        ("a.b/c", "a-b-c"),
        ("!!!", "main"),
        ("", "main"),
        ("x" * 70, "x" * 64),
        ("Ünïcode", "n-code"),
    ],
)
def test_normalize_agent_id(raw: str, normalised: str) -> None:
    """Agent ids are lower-cased, invalid runs become ``-``, cut to 64, ``main`` when empty."""
    assert normalize_agent_id(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "default_provider", "expected"),
    [
        ("openai/gpt-5.4", None, ModelRef("openai", "gpt-5.4")),
        (" openai / gpt-5.4 ", None, ModelRef("openai", "gpt-5.4")),
        ("openrouter/meta/llama", None, ModelRef("openrouter", "meta/llama")),
        ("gpt-5.4", "openai", ModelRef("openai", "gpt-5.4")),
        ("gpt-5.4", None, None),
        ("openai/", None, None),
        ("/gpt", None, None),
        ("", "openai", None),
    ],
)
def test_model_ref_parse(raw: str, default_provider: str | None, expected: ModelRef | None) -> None:
    """``provider/model`` refs parse; bare ids need a default provider; halves must be non-empty."""
    assert ModelRef.parse(raw, default_provider=default_provider) == expected


def test_model_ref_str() -> None:
    """A model ref prints as ``provider/model``."""
    assert str(ModelRef("openai", "gpt-5.4")) == "openai/gpt-5.4"


def test_load_config_file(tmp_path: pathlib.Path) -> None:
    """A json5 file on disk loads the same as its parsed mapping."""
    path = tmp_path / "openclaw.json5"
    path.write_text(FULL_CONFIG, encoding="utf-8")
    assert load_config_file(path, env={}) == parse(FULL_CONFIG)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read config file"),
        ("{ gateway: ", "is not valid json5"),
        ("[1, 2]", "expected an object at the top level"),
    ],
    ids=("missing", "bad-json5", "not-an-object"),
)
def test_load_config_file_errors(tmp_path: pathlib.Path, content: str | None, message: str) -> None:
    """An unreadable, malformed or non-object file raises ConfigError naming the file."""
    path = tmp_path / "openclaw.json5"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path, env={})
    assert str(path) in str(info.value)
    assert message in str(info.value)


# --- a config built in Python is checked like one read from a file ---------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ChatCompletionsConfig(max_body_bytes=-5),
         "gateway.http.endpoints.chatCompletions.maxBodyBytes: must be at least 1, got -5"),
        (lambda: ChatCompletionsConfig(keepalive_ms="15000"),
         "gateway.http.endpoints.chatCompletions.keepaliveMs: expected an integer, got the string '15000'"),
        (lambda: ChatCompletionsConfig(max_concurrent_runs=True),
         "gateway.http.endpoints.chatCompletions.maxConcurrentRuns: expected an integer, got a boolean"),
        (lambda: ChatCompletionsConfig(enabled="yes"),  # type: ignore[arg-type]
         "gateway.http.endpoints.chatCompletions.enabled: expected a boolean, got the string 'yes'"),
        (lambda: ImagesConfig(max_redirects=-1),
         "gateway.http.endpoints.chatCompletions.images.maxRedirects: must be at least 0, got -1"),
        (lambda: ImagesConfig(allowed_mimes="image/png"),
         "gateway.http.endpoints.chatCompletions.images.allowedMimes: expected an array of strings, "
         "got the string 'image/png'"),
        (lambda: ImagesConfig(url_allowlist=["ok.example", 5]),
         "gateway.http.endpoints.chatCompletions.images.urlAllowlist[1]: expected a string, got the number 5"),
        (lambda: RateLimitConfig(window_ms=0), "gateway.auth.rateLimit.windowMs: must be at least 1, got 0"),
        (lambda: AuthConfig(mode="magic", token="t"),  # type: ignore[arg-type]
         "gateway.auth.mode: expected one of 'none', 'token', 'password', 'trusted-proxy', got 'magic'"),
        (lambda: AuthConfig(), "gateway.auth.token: token auth needs a token"),
        (lambda: AuthConfig(mode="password"), "gateway.auth.password: password auth needs a password"),
        (lambda: AuthConfig(token=123), "gateway.auth.token: expected a string, got int"),
        (lambda: HttpCompatConfig(auth=AuthConfig(mode="none"), trusted_proxies="10.0.0.1"),
         "gateway.trustedProxies: expected an array of strings, got the string '10.0.0.1'"),
        (lambda: HttpCompatConfig(), "gateway.auth.token: token auth needs a token"),
        (lambda: AgentConfig(id="a", default="yes"), "agents.entries.a.default: expected a boolean, got the string 'yes'"),  # type: ignore[arg-type]
        (lambda: AgentConfig(id="a", model="no-slash"),
         "agents.entries.a.model: expected a 'provider/model' string, got 'no-slash'"),
        (lambda: AgentsConfig(entries=(AgentConfig(id="x"), AgentConfig(id="X"))),
         "agents.entries: agent id 'x' is configured twice"),
        (lambda: AgentsConfig(default_model="openai/"),
         "agents.defaults.model: expected a 'provider/model' string, got 'openai/'"),
    ],
    ids=("int-minimum", "int-type", "int-not-bool", "bool", "int-zero-minimum", "strings-type", "strings-item",
         "rate-limit", "choice", "token-needed", "password-needed", "secret-type-only", "proxies",
         "default-auth-refused", "agent-bool", "agent-model", "duplicate-agents", "default-model"),
)
def test_direct_construction_is_validated(build: Any, message: str) -> None:
    """Each kind of field refuses a bad value with the dotted key a file would get."""
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value).startswith(message)


def test_direct_construction_converts_like_the_file() -> None:
    """Lists become tuples, ids and MIME types are normalised, model strings become refs."""
    images = ImagesConfig(url_allowlist=[" CDN.example.com ", ""], allowed_mimes=[])
    assert images == ImagesConfig(url_allowlist=("cdn.example.com",))
    assert images.allowed_mimes == ImagesConfig().allowed_mimes
    agent = AgentConfig(id=" My Agent! ", model="openai/gpt-5.4")
    assert (agent.id, agent.model) == ("my-agent", ModelRef("openai", "gpt-5.4"))
    assert ChatCompletionsConfig(max_body_bytes=1024.0).max_body_bytes == 1024
    assert HttpCompatConfig(auth=AuthConfig(mode="none"), trusted_proxies=["10.0.0.1"]).trusted_proxies == ("10.0.0.1",)


def test_default_constructed_equals_empty_mapping() -> None:
    """Defaults are written once: each section built with no arguments equals one read from nothing."""
    no_auth = {"gateway": {"auth": {"mode": "none"}}}
    assert HttpCompatConfig.from_mapping(no_auth, env={}) == HttpCompatConfig(auth=AuthConfig(mode="none"))
    config = HttpCompatConfig.from_mapping({"gateway": {"auth": {"token": "t"}}}, env={})
    assert config.chat_completions == ChatCompletionsConfig()
    assert config.chat_completions.images == ImagesConfig()
    assert config.agents == AgentsConfig()
    rate = HttpCompatConfig.from_mapping({"gateway": {"auth": {"token": "t", "rateLimit": {}}}}, env={})
    assert rate.auth.rate_limit == RateLimitConfig()
    with pytest.raises(ConfigError) as from_file:
        HttpCompatConfig.from_mapping({}, env={})
    with pytest.raises(ConfigError) as built:
        HttpCompatConfig()
    assert str(from_file.value) == str(built.value)


def test_read_config_file_gives_the_mapping(tmp_path: pathlib.Path) -> None:
    """read_config_file returns the parsed mapping that both configs are built from."""
    path = tmp_path / "openclaw.json5"
    path.write_text(FULL_CONFIG, encoding="utf-8")
    assert read_config_file(path) == json5.loads(FULL_CONFIG)
