"""Frozen configuration built from an OpenClaw gateway config mapping.

The gateway parses its config file (json5) at the edge and hands the resulting mapping to
:meth:`GatewayConfig.from_mapping`. Key names are OpenClaw's own, so an existing OpenClaw
config loads as is. Keys we do not use are ignored; a key we use with a wrong type or value
raises one :class:`~openclaw_http_compat.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Literal, TypeVar, cast

import attrs

from .errors import ConfigError

__all__ = (
    "DEFAULT_AGENT_ID",
    "DEFAULT_PORT",
    "AgentConfig",
    "AgentsConfig",
    "AuthConfig",
    "AuthMode",
    "BindMode",
    "ChatCompletionsConfig",
    "GatewayConfig",
    "ImagesConfig",
    "ModelRef",
    "ProviderConfig",
    "RateLimitConfig",
    "load_config_file",
    "normalize_agent_id",
)

DEFAULT_PORT: Final = 18789
DEFAULT_AGENT_ID: Final = "main"
MIB: Final = 1024 * 1024

AuthMode = Literal["none", "token", "password", "trusted-proxy"]
BindMode = Literal["auto", "lan", "loopback", "tailnet", "custom"]

_AUTH_MODES: Final = ("none", "token", "password", "trusted-proxy")
_BIND_MODES: Final = ("auto", "lan", "loopback", "tailnet", "custom")
_AGENT_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$", re.IGNORECASE)
_AGENT_ID_INVALID_RUN: Final = re.compile(r"[^a-z0-9_-]+")
_DEFAULT_MIMES: Final = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/heic",
    "image/heif",
)

_T = TypeVar("_T")


def normalize_agent_id(raw: str) -> str:
    """Normalise an agent id the way OpenClaw does.

    Well-formed ids are lower-cased; anything else has runs of characters outside
    ``[a-z0-9_-]`` replaced by ``-``, is trimmed of ``-``, cut to 64 characters, and falls
    back to ``main`` when nothing is left.
    """
    value = raw.strip()
    if _AGENT_ID_RE.match(value):
        return value.lower()
    value = _AGENT_ID_INVALID_RUN.sub("-", value.lower()).strip("-")[:64]
    return value or DEFAULT_AGENT_ID


def is_valid_agent_id(raw: str) -> bool:
    """Whether ``raw`` is a well-formed agent id (``[a-z0-9][a-z0-9_-]{0,63}``)."""
    return _AGENT_ID_RE.match(raw) is not None


class _Reader:
    """Typed access to one nested mapping of the raw config, naming dotted keys in errors."""

    __slots__ = ("_data", "_path")

    def __init__(self, data: object, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or '<root>'}: expected an object, got {_kind(data)}")
        self._data: Mapping[str, object] = data
        self._path = path

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def raw(self, name: str) -> object:
        return self._data.get(name)

    def section(self, name: str) -> _Reader:
        return _Reader(self._data.get(name), self.key(name))

    def _typed(
        self, name: str, kinds: tuple[type, ...], label: str, default: _T, *, secret: bool = False
    ) -> object:
        value = self._data.get(name)
        if value is None:
            return default
        # bool is an int subclass; a flag must never pass as a number.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            # A mistyped secret is still a secret: name its type, never its value.
            got = type(value).__name__ if secret else _kind(value)
            raise ConfigError(f"{self.key(name)}: expected {label}, got {got}")
        return value

    def string(self, name: str, default: str | None = None, *, secret: bool = False) -> str | None:
        return cast("str | None", self._typed(name, (str,), "a string", default, secret=secret))

    def boolean(self, name: str, default: bool) -> bool:
        return cast(bool, self._typed(name, (bool,), "a boolean", default))

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self._typed(name, (int, float), "an integer", default)
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{self.key(name)}: expected an integer, got {value!r}")
            value = int(value)
        assert isinstance(value, int)
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum}, got {value}")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.string(name, default)
        assert value is not None
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{self.key(name)}: expected one of {allowed}, got {value!r}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._data.get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected an array of strings, got {_kind(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{self.key(name)}[{index}]: expected a string, got {_kind(item)}")
        return tuple(cast("list[str]", value))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


@attrs.frozen(kw_only=True)
class RateLimitConfig:
    """``gateway.auth.rateLimit``: the failed-authentication limiter."""

    max_attempts: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    window_ms: int = attrs.field(default=60_000, validator=attrs.validators.ge(1))
    lockout_ms: int = attrs.field(default=300_000, validator=attrs.validators.ge(0))
    exempt_loopback: bool = True

    @classmethod
    def from_reader(cls, r: _Reader) -> RateLimitConfig:
        return cls(
            max_attempts=r.integer("maxAttempts", 10, minimum=1),
            window_ms=r.integer("windowMs", 60_000, minimum=1),
            lockout_ms=r.integer("lockoutMs", 300_000, minimum=0),
            exempt_loopback=r.boolean("exemptLoopback", True),
        )


@attrs.frozen(kw_only=True)
class AuthConfig:
    """``gateway.auth``: how callers prove they may use the gateway.

    ``token`` and ``password`` fall back to ``OPENCLAW_GATEWAY_TOKEN`` and
    ``OPENCLAW_GATEWAY_PASSWORD``. Secrets never appear in ``repr``.
    """

    mode: AuthMode = "token"
    token: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    rate_limit: RateLimitConfig | None = None

    @classmethod
    def from_reader(cls, r: _Reader, env: Mapping[str, str]) -> AuthConfig:
        token = r.string("token", secret=True) or env.get("OPENCLAW_GATEWAY_TOKEN") or None
        password = r.string("password", secret=True) or env.get("OPENCLAW_GATEWAY_PASSWORD") or None
        # OpenClaw defaults to token mode unless only a password is configured.
        default_mode = "password" if password and not token else "token"
        mode = r.choice("mode", _AUTH_MODES, default_mode)
        if mode == "token" and not token:
            raise ConfigError(
                f"{r.key('token')}: token auth needs a token "
                "(set it or OPENCLAW_GATEWAY_TOKEN)"
            )
        if mode == "password" and not password:
            raise ConfigError(
                f"{r.key('password')}: password auth needs a password "
                "(set it or OPENCLAW_GATEWAY_PASSWORD)"
            )
        if mode == "trusted-proxy":
            raise ConfigError(f"{r.key('mode')}: 'trusted-proxy' is not supported yet")
        rate = r.raw("rateLimit")
        return cls(
            mode=cast(AuthMode, mode),
            token=token,
            password=password,
            rate_limit=RateLimitConfig.from_reader(r.section("rateLimit")) if rate is not None else None,
        )


@attrs.frozen(kw_only=True)
class ImagesConfig:
    """``gateway.http.endpoints.chatCompletions.images``: image input limits."""

    allow_url: bool = False
    url_allowlist: tuple[str, ...] = ()
    allowed_mimes: tuple[str, ...] = _DEFAULT_MIMES
    max_bytes: int = 10 * MIB
    max_redirects: int = 3
    timeout_ms: int = 10_000

    @classmethod
    def from_reader(cls, r: _Reader) -> ImagesConfig:
        mimes = r.strings("allowedMimes") or _DEFAULT_MIMES
        return cls(
            allow_url=r.boolean("allowUrl", False),
            url_allowlist=tuple(h.strip().lower() for h in r.strings("urlAllowlist") if h.strip()),
            allowed_mimes=tuple(m.strip().lower() for m in mimes if m.strip()),
            max_bytes=r.integer("maxBytes", 10 * MIB, minimum=1),
            max_redirects=r.integer("maxRedirects", 3, minimum=0),
            timeout_ms=r.integer("timeoutMs", 10_000, minimum=1),
        )


@attrs.frozen(kw_only=True)
class ChatCompletionsConfig:
    """``gateway.http.endpoints.chatCompletions``: the endpoint this package serves.

    ``enabled`` is the master switch for ``/v1/chat/completions`` and ``/v1/models``.
    """

    enabled: bool = False
    max_body_bytes: int = 20 * MIB
    max_image_parts: int = 8
    max_total_image_bytes: int = 20 * MIB
    body_timeout_ms: int = 30_000
    keepalive_ms: int = 15_000
    max_concurrent_runs: int = 256
    images: ImagesConfig = ImagesConfig()

    @classmethod
    def from_reader(cls, r: _Reader) -> ChatCompletionsConfig:
        return cls(
            enabled=r.boolean("enabled", False),
            max_body_bytes=r.integer("maxBodyBytes", 20 * MIB, minimum=1),
            max_image_parts=r.integer("maxImageParts", 8, minimum=0),
            max_total_image_bytes=r.integer("maxTotalImageBytes", 20 * MIB, minimum=1),
            body_timeout_ms=r.integer("bodyTimeoutMs", 30_000, minimum=1),
            keepalive_ms=r.integer("keepaliveMs", 15_000, minimum=0),
            max_concurrent_runs=r.integer("maxConcurrentRuns", 256, minimum=0),
            images=ImagesConfig.from_reader(r.section("images")),
        )


@attrs.frozen
class ModelRef:
    """A ``provider/model`` reference."""

    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"

    @classmethod
    def parse(cls, raw: str, *, default_provider: str | None = None) -> ModelRef | None:
        """Parse ``provider/model`` (or a bare model id with ``default_provider``)."""
        value = raw.strip()
        if "/" in value:
            provider, _, model = value.partition("/")
            provider, model = provider.strip(), model.strip()
            if not provider or not model:
                return None
            return cls(provider, model)
        if value and default_provider:
            return cls(default_provider, value)
        return None


def _model_ref(r: _Reader, name: str) -> ModelRef | None:
    raw = r.raw(name)
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        primary = r.section(name).string("primary")
        if primary is None:
            return None
        raw, key = primary, f"{r.key(name)}.primary"
    else:
        key = r.key(name)
    if not isinstance(raw, str):
        raise ConfigError(f"{key}: expected a 'provider/model' string, got {_kind(raw)}")
    ref = ModelRef.parse(raw)
    if ref is None:
        raise ConfigError(f"{key}: expected a 'provider/model' string, got {raw!r}")
    return ref


@attrs.frozen(kw_only=True)
class AgentConfig:
    """One configured agent (``agents.entries.<id>`` or an ``agents.list`` item)."""

    id: str
    name: str | None = None
    default: bool = False
    model: ModelRef | None = None
    system_prompt: str | None = None

    @classmethod
    def from_reader(cls, r: _Reader, agent_id: str) -> AgentConfig:
        return cls(
            id=normalize_agent_id(agent_id),
            name=r.string("name"),
            default=r.boolean("default", False),
            model=_model_ref(r, "model"),
            system_prompt=r.string("systemPrompt"),
        )


@attrs.frozen(kw_only=True)
class AgentsConfig:
    """``agents``: the roster and the defaults every agent inherits."""

    entries: tuple[AgentConfig, ...] = ()
    default_model: ModelRef | None = None
    default_system_prompt: str | None = None
    allowed_models: tuple[ModelRef, ...] = ()

    @property
    def default_agent_id(self) -> str:
        """The default agent: the first flagged ``default``, else the first, else ``main``."""
        for agent in self.entries:
            if agent.default:
                return agent.id
        return self.entries[0].id if self.entries else DEFAULT_AGENT_ID

    @property
    def agent_ids(self) -> tuple[str, ...]:
        """Configured agent ids; just ``main`` when none are configured."""
        return tuple(a.id for a in self.entries) or (DEFAULT_AGENT_ID,)

    def get(self, agent_id: str) -> AgentConfig:
        """The agent's config, or a bare one inheriting the defaults."""
        for agent in self.entries:
            if agent.id == agent_id:
                return agent
        return AgentConfig(id=agent_id)

    @classmethod
    def from_reader(cls, r: _Reader) -> AgentsConfig:
        entries: list[AgentConfig] = []
        raw_entries = r.raw("entries")
        if raw_entries is not None:
            section = r.section("entries")
            for agent_id in cast("Mapping[str, object]", raw_entries):
                entries.append(AgentConfig.from_reader(section.section(agent_id), agent_id))
        raw_list = r.raw("list")
        if raw_list is not None:
            if not isinstance(raw_list, list):
                raise ConfigError(f"{r.key('list')}: expected an array, got {_kind(raw_list)}")
            for index, item in enumerate(raw_list):
                item_reader = _Reader(item, f"{r.key('list')}[{index}]")
                list_id = item_reader.string("id")
                if not list_id:
                    raise ConfigError(f"{item_reader.key('id')}: expected a non-empty string")
                entries.append(AgentConfig.from_reader(item_reader, list_id))
        seen: set[str] = set()
        for agent in entries:
            if agent.id in seen:
                raise ConfigError(f"{r.key('entries')}: agent id {agent.id!r} is configured twice")
            seen.add(agent.id)
        defaults = r.section("defaults")
        allowed: list[ModelRef] = []
        raw_models = defaults.raw("models")
        if raw_models is not None:
            models = defaults.section("models")
            for ref_text in cast("Mapping[str, object]", raw_models):
                ref = ModelRef.parse(ref_text)
                if ref is None:
                    raise ConfigError(f"{models.key(ref_text)}: expected a 'provider/model' key")
                allowed.append(ref)
        return cls(
            entries=tuple(entries),
            default_model=_model_ref(defaults, "model"),
            default_system_prompt=defaults.string("systemPrompt"),
            allowed_models=tuple(allowed),
        )


@attrs.frozen(kw_only=True)
class ProviderConfig:
    """``models.providers.<id>``: an upstream model provider."""

    id: str
    api: str = "openai-completions"
    base_url: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), repr=False)
    models: tuple[str, ...] = ()
    timeout_ms: int = 600_000
    #: An outbound proxy URL for this provider's calls; ``None``: the environment's
    #: ``HTTP(S)_PROXY`` / ``NO_PROXY``, as the ``openai`` SDK does.
    proxy: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_reader(cls, r: _Reader, provider_id: str) -> ProviderConfig:
        model_ids: list[str] = []
        raw_models = r.raw("models")
        if raw_models is not None:
            if not isinstance(raw_models, list):
                raise ConfigError(f"{r.key('models')}: expected an array, got {_kind(raw_models)}")
            for index, item in enumerate(raw_models):
                model_id = _Reader(item, f"{r.key('models')}[{index}]").string("id")
                if model_id:
                    model_ids.append(model_id)
        headers: list[tuple[str, str]] = []
        raw_headers = r.raw("headers")
        if raw_headers is not None:
            section = r.section("headers")
            for name in cast("Mapping[str, object]", raw_headers):
                value = section.string(name, secret=True)
                if value is not None:
                    headers.append((name, value))
        return cls(
            id=provider_id,
            api=r.string("api", "openai-completions") or "openai-completions",
            base_url=r.string("baseUrl"),
            api_key=r.string("apiKey", secret=True),
            headers=tuple(headers),
            models=tuple(model_ids),
            timeout_ms=r.integer("timeoutMs", 600_000, minimum=1),
            proxy=r.string("proxy", secret=True),
        )


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """The whole gateway config, as far as this package and its reference gateway use it.

    Build it with :meth:`from_mapping`; never with ``**raw``.
    """

    port: int = DEFAULT_PORT
    bind: BindMode = "loopback"
    custom_bind_host: str | None = None
    auth: AuthConfig = attrs.field(factory=lambda: AuthConfig(mode="none"))
    trusted_proxies: tuple[str, ...] = ()
    allow_real_ip_fallback: bool = False
    chat_completions: ChatCompletionsConfig = ChatCompletionsConfig()
    agents: AgentsConfig = AgentsConfig()
    providers: tuple[ProviderConfig, ...] = ()
    state_dir: Path | None = None
    session_fsync: bool = False

    @property
    def bind_host(self) -> str:
        """The address to listen on for ``bind``."""
        if self.bind == "custom" and self.custom_bind_host:
            return self.custom_bind_host
        if self.bind == "lan":
            return "0.0.0.0"
        return "127.0.0.1"

    def provider(self, provider_id: str) -> ProviderConfig | None:
        """The configured provider with this id, if any."""
        for provider in self.providers:
            if provider.id == provider_id:
                return provider
        return None

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, object], *, env: Mapping[str, str] | None = None
    ) -> GatewayConfig:
        """Build the config from a parsed OpenClaw config mapping.

        Args:
            raw: the parsed config file (json5 or JSON).
            env: environment for secret and state-dir fallbacks; ``os.environ`` by default.

        Raises:
            ConfigError: a key we use has a wrong type or value; the message names it.
        """
        env = os.environ if env is None else env
        root = _Reader(raw, "")
        gateway = root.section("gateway")
        endpoints = gateway.section("http").section("endpoints")
        port = gateway.integer("port", DEFAULT_PORT, minimum=0)
        if port > 65535:
            raise ConfigError(f"gateway.port: must be at most 65535, got {port}")
        providers_raw = root.section("models").raw("providers")
        providers: list[ProviderConfig] = []
        if providers_raw is not None:
            section = root.section("models").section("providers")
            for provider_id in cast("Mapping[str, object]", providers_raw):
                providers.append(ProviderConfig.from_reader(section.section(provider_id), provider_id))
        state_dir: str | None = gateway.string("stateDir") or env.get("OPENCLAW_STATE_DIR") or None
        return cls(
            port=port,
            bind=cast(BindMode, gateway.choice("bind", _BIND_MODES, "loopback")),
            custom_bind_host=gateway.string("customBindHost"),
            auth=AuthConfig.from_reader(gateway.section("auth"), env),
            trusted_proxies=gateway.strings("trustedProxies"),
            allow_real_ip_fallback=gateway.boolean("allowRealIpFallback", False),
            chat_completions=ChatCompletionsConfig.from_reader(endpoints.section("chatCompletions")),
            agents=AgentsConfig.from_reader(root.section("agents")),
            providers=tuple(providers),
            state_dir=Path(state_dir).expanduser() if state_dir else None,
            session_fsync=gateway.section("sessionStore").boolean("fsync", False),
        )


def load_config_file(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a json5 config file and build a :class:`GatewayConfig`.

    This does blocking file I/O: call it at start-up, before the event loop serves requests.

    Raises:
        ConfigError: the file is unreadable, not json5, or has a bad value.
    """
    import json5

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from None
    try:
        data = json5.loads(text)
    except ValueError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid json5: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {os.fspath(path)!r}: expected an object at the top level")
    return GatewayConfig.from_mapping(data, env=env)
