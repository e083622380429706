"""The reference gateway's own configuration: what a gateway reads and the plugin does not.

Listening (``gateway.port``, ``bind``, ``customBindHost``), state
(``gateway.stateDir``, ``gateway.sessionStore``), the model providers with their models'
context sizes (``models.providers``) and the default context budget
(``agents.defaults.contextTokens``) are the gateway's business. The plugin's part of the same file is an
:class:`~openclaw_http_compat.HttpCompatConfig`, kept as :attr:`GatewayConfig.plugin`, so
one OpenClaw config file gives both. Fields validate themselves, as the plugin's do.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

import attrs

from openclaw_http_compat import AuthConfig, HttpCompatConfig
from openclaw_http_compat.config import ModelRef, read_config_file
from openclaw_http_compat.config_fields import (
    KEY,
    FieldError,
    Reader,
    boolean,
    choice,
    describe,
    fail,
    integer,
    meta,
    string,
    to_int,
)

__all__ = (
    "DEFAULT_PORT",
    "AgentDefaultsConfig",
    "BindMode",
    "GatewayConfig",
    "LogFormat",
    "LoggingConfig",
    "MetricsConfig",
    "ModelEntry",
    "ProviderConfig",
    "SessionStoreConfig",
    "ShutdownConfig",
    "load_gateway_config",
)

DEFAULT_PORT: Final = 18789

BindMode = Literal["auto", "lan", "loopback", "tailnet", "custom"]

_BIND_MODES: Final = ("auto", "lan", "loopback", "tailnet", "custom")

LogFormat = Literal["text", "json"]


def _headers(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise fail(instance, "headers", f"expected an object, got {describe(value)}")
    for name, header in value:
        if not isinstance(header, str):
            # Header values are often credentials: name the type, never the value.
            raise fail(instance, f"headers.{name}", f"expected a string, got {type(header).__name__}")


def _to_headers(value: Any) -> Any:
    return tuple((str(k), v) for k, v in value.items() if v is not None) if isinstance(value, Mapping) else value


def _optional_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        integer(minimum=1)(instance, attribute, value)


def _model_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    string(optional=False)(instance, attribute, value)
    if not value:
        raise fail(instance, "id", "expected a non-empty string")


def _token_count(key: str) -> Any:
    """An optional token count (at least 1) under the OpenClaw ``key``."""
    return attrs.field(default=None, converter=to_int, validator=_optional_count, metadata=meta(key))


@attrs.frozen(kw_only=True)
class ModelEntry:
    """One item of ``models.providers.<id>.models[]``: a model and its context sizes.

    OpenClaw's other keys of the entry (``name``, ``input``, ``cost``, ...) are not read here.
    """

    SECTION: ClassVar[str] = "models.providers.*.models[]"

    id: str = attrs.field(validator=_model_id, metadata=meta("id"))
    #: The model's context window, in tokens.
    context_window: int | None = _token_count("contextWindow")
    #: A tighter budget than the window (OpenClaw's own cap on what a run sends).
    context_tokens: int | None = _token_count("contextTokens")
    #: The longest reply the model gives, in tokens.
    max_tokens: int | None = _token_count("maxTokens")

    @property
    def context_limit(self) -> int | None:
        """The context a run may fill: ``contextTokens`` capped by ``contextWindow``; ``None`` if neither is set."""
        sizes = [size for size in (self.context_window, self.context_tokens) if size is not None]
        return min(sizes) if sizes else None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ModelEntry:
        """The entry from its OpenClaw object (absent or ``null`` keys take their defaults).

        Raises:
            FieldError: a value failed its check; ``key`` names it within the entry.
        """
        # No id is an error to name ("expected a string, got null"), not a missing argument.
        given: dict[str, Any] = {"id": raw.get("id")}
        for field in attrs.fields(cls):
            value = raw.get(str(field.metadata[KEY]))
            if value is not None:
                given[field.name] = value
        return cls(**given)


@attrs.frozen
class _BadModel:
    """A ``models[]`` item that is no model entry, with its index in the file, for the field's
    validator to name (a converter cannot raise the error: it does not know the section)."""

    index: int
    raw: object


def _to_models(value: Any) -> Any:
    # OpenClaw lists models as objects ({id, name, contextWindow, ...}); one without an id is
    # skipped, as before. A bare id string (what a config built in code holds) names a model
    # with no sizes.
    if not isinstance(value, (list, tuple)):
        return value
    models: list[object] = []
    for index, item in enumerate(value):
        if isinstance(item, ModelEntry):
            models.append(item)
        elif isinstance(item, str) and item:
            models.append(ModelEntry(id=item))
        elif isinstance(item, Mapping) and not item.get("id"):
            continue
        else:
            try:
                models.append(ModelEntry.from_mapping(item) if isinstance(item, Mapping) else _BadModel(index, item))
            except FieldError:
                models.append(_BadModel(index, item))
    return tuple(models)


def _models(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise fail(instance, "models", f"expected an array, got {describe(value)}")
    for item in value:
        if not isinstance(item, _BadModel):
            continue
        key = f"models[{item.index}]"
        if isinstance(item.raw, Mapping):
            try:
                ModelEntry.from_mapping(item.raw)
            except FieldError as exc:
                raise fail(instance, f"{key}.{exc.key}", exc.problem) from None
        raise fail(instance, key, f"expected an object with an 'id' string, got {describe(item.raw)}")


def _proxy_url(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    string()(instance, attribute, value)
    if isinstance(value, str):
        parts = urlsplit(value)
        # aiohttp speaks to HTTP proxies only (CONNECT for https upstreams); a socks5:// URL
        # would only fail at the first call. The URL may hold credentials: never echo it.
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise fail(instance, "proxy", "expected an http:// or https:// proxy URL")


@attrs.frozen(kw_only=True)
class ProviderConfig:
    """``models.providers.<id>``: an upstream model provider."""

    SECTION: ClassVar[str] = "models.providers.{id}"

    id: str = attrs.field(validator=string(optional=False))
    api: str = attrs.field(default="openai-completions", validator=string(optional=False), metadata=meta("api"))
    base_url: str | None = attrs.field(default=None, validator=string(), metadata=meta("baseUrl"))
    api_key: str | None = attrs.field(
        default=None, repr=False, validator=string(), metadata=meta("apiKey", secret=True)
    )
    headers: tuple[tuple[str, str], ...] = attrs.field(
        default=(), repr=False, converter=_to_headers, validator=_headers, metadata=meta("headers")
    )
    #: The provider's models; a bare id string stands for an entry with no sizes.
    models: tuple[ModelEntry, ...] = attrs.field(
        default=(), converter=_to_models, validator=_models, metadata=meta("models")
    )
    timeout_ms: int = attrs.field(
        default=600_000, converter=to_int, validator=integer(minimum=1), metadata=meta("timeoutMs")
    )
    #: An outbound proxy URL for this provider's calls; ``None``: the environment's
    #: ``HTTP(S)_PROXY`` / ``NO_PROXY``, as the ``openai`` SDK does.
    proxy: str | None = attrs.field(default=None, repr=False, validator=_proxy_url, metadata=meta("proxy", secret=True))

    def model(self, model_id: str) -> ModelEntry | None:
        """The entry of ``model_id`` in :attr:`models`, if listed."""
        for entry in self.models:
            if entry.id == model_id:
                return entry
        return None


def _store_url(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    string()(instance, attribute, value)
    if isinstance(value, str) and urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise fail(instance, "url", "expected a postgresql:// URL")


@attrs.frozen(kw_only=True)
class SessionStoreConfig:
    """``gateway.sessionStore``: how the reference gateway keeps transcripts."""

    SECTION: ClassVar[str] = "gateway.sessionStore"

    #: Sync every committed turn to disk (survives power loss); false: WAL with
    #: ``synchronous=NORMAL``, a committed turn survives a killed process.
    fsync: bool = attrs.field(default=False, validator=boolean, metadata=meta("fsync"))
    #: A PostgreSQL URL (``postgresql://user@host:port/db``) for a store shared by several
    #: gateway processes; ``None``: the embedded SQLite store in ``gateway.stateDir``. It may
    #: hold a password, so it never appears in ``repr`` or in an error.
    url: str | None = attrs.field(default=None, repr=False, validator=_store_url, metadata=meta("url", secret=True))
    #: PostgreSQL: how long a run's lease on its session lasts unless renewed (a third of it
    #: is the renewal period); a process that dies mid-run frees its sessions after this.
    lease_ms: int = attrs.field(
        default=30_000, converter=to_int, validator=integer(minimum=300), metadata=meta("leaseMs")
    )
    #: How long a run waits for another run on its session before it is answered 429
    #: ``session_busy`` (0: not at all).
    wait_ms: int = attrs.field(
        default=120_000, converter=to_int, validator=integer(minimum=0), metadata=meta("waitMs")
    )
    #: PostgreSQL: the most connections one process's pool opens.
    pool_size: int = attrs.field(
        default=10, converter=to_int, validator=integer(minimum=1), metadata=meta("poolSize")
    )


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """``gateway.metrics``: the Prometheus ``GET /metrics`` route on the gateway's port."""

    SECTION: ClassVar[str] = "gateway.metrics"

    #: Serve ``GET /metrics`` (needs the ``[metrics]`` extra, ``prometheus-client``).
    enabled: bool = attrs.field(default=False, validator=boolean, metadata=meta("enabled"))
    #: The route is behind the gateway's auth; false: open to anyone who reaches the port.
    auth: bool = attrs.field(default=True, validator=boolean, metadata=meta("auth"))


@attrs.frozen(kw_only=True)
class AgentDefaultsConfig:
    """``agents.defaults``: the keys of it the gateway reads (the plugin reads the others)."""

    SECTION: ClassVar[str] = "agents.defaults"

    #: The context budget of a model whose entry sets no ``contextWindow``/``contextTokens``;
    #: ``None``: such a model's runs send the whole history.
    context_tokens: int | None = _token_count("contextTokens")


@attrs.frozen(kw_only=True)
class ShutdownConfig:
    """``gateway.shutdown``: how the gateway stops on SIGTERM/SIGINT."""

    SECTION: ClassVar[str] = "gateway.shutdown"

    #: How long runs already going may take to finish once a drain starts; what still runs
    #: then is ended (error frame and ``[DONE]``, or 503). Under the 30 s that systemd and
    #: Kubernetes give by default before SIGKILL, with room for that ending.
    grace_ms: int = attrs.field(default=25_000, converter=to_int, validator=integer(minimum=0), metadata=meta("graceMs"))


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``gateway.logging``: how the gateway writes its log (and its access log) to stderr."""

    SECTION: ClassVar[str] = "gateway.logging"

    #: ``text``: one human-readable line per record; ``json``: one JSON object per line.
    format: LogFormat = attrs.field(default="text", validator=choice(("text", "json")), metadata=meta("format"))


def _path(value: Any) -> Any:
    return Path(value).expanduser() if isinstance(value, str) and value else value


def _optional_path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, Path):
        raise fail(instance, "stateDir", f"expected a string, got {describe(value)}")


def _no_auth() -> HttpCompatConfig:
    return HttpCompatConfig(auth=AuthConfig(mode="none"))


def _providers(value: Iterable[ProviderConfig]) -> tuple[ProviderConfig, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """The reference gateway's config, with the plugin's part as :attr:`plugin`.

    Build it with :meth:`from_mapping` or :func:`load_gateway_config`, or directly (each
    value is checked either way).
    """

    SECTION: ClassVar[str] = "gateway"

    port: int = attrs.field(
        default=DEFAULT_PORT, converter=to_int, validator=integer(minimum=0, maximum=65535), metadata=meta("port")
    )
    bind: BindMode = attrs.field(default="loopback", validator=choice(_BIND_MODES), metadata=meta("bind"))
    custom_bind_host: str | None = attrs.field(default=None, validator=string(), metadata=meta("customBindHost"))
    state_dir: Path | None = attrs.field(
        default=None, converter=_path, validator=_optional_path, metadata=meta("stateDir")
    )
    session_store: SessionStoreConfig = attrs.field(
        factory=SessionStoreConfig, validator=attrs.validators.instance_of(SessionStoreConfig)
    )
    providers: tuple[ProviderConfig, ...] = attrs.field(default=(), converter=_providers)
    agent_defaults: AgentDefaultsConfig = attrs.field(
        factory=AgentDefaultsConfig, validator=attrs.validators.instance_of(AgentDefaultsConfig)
    )
    shutdown: ShutdownConfig = attrs.field(
        factory=ShutdownConfig, validator=attrs.validators.instance_of(ShutdownConfig)
    )
    logging: LoggingConfig = attrs.field(factory=LoggingConfig, validator=attrs.validators.instance_of(LoggingConfig))
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig, validator=attrs.validators.instance_of(MetricsConfig))
    #: What the plugin reads (endpoint, auth, trusted proxies, agents). The default turns
    #: auth off, for configs built in code; a file without auth settings is refused.
    plugin: HttpCompatConfig = attrs.field(factory=_no_auth, validator=attrs.validators.instance_of(HttpCompatConfig))

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

    def model_entry(self, ref: ModelRef) -> ModelEntry | None:
        """The entry of model ``ref`` in its provider's ``models``, if listed."""
        provider = self.provider(ref.provider)
        return provider.model(ref.model) if provider is not None else None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], *, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Build the gateway's and the plugin's config from one parsed OpenClaw config.

        Args:
            raw: the parsed config file (json5 or JSON).
            env: environment for secret and state-dir fallbacks; ``os.environ`` by default.

        Raises:
            ConfigError: a key either config uses has a wrong type or value; the message names it.
        """
        env = os.environ if env is None else env
        plugin = HttpCompatConfig.from_mapping(raw, env=env)
        root = Reader(raw, "")
        gateway = root.section("gateway")
        providers = root.section("models").section("providers")
        return gateway.build(
            cls,
            state_dir=gateway.raw("stateDir") or env.get("OPENCLAW_STATE_DIR") or None,
            session_store=gateway.section("sessionStore").build(
                SessionStoreConfig, url=gateway.section("sessionStore").raw("url") or env.get("OPENCLAW_SESSION_STORE_URL") or None
            ),
            providers=tuple(providers.section(p).build(ProviderConfig, id=p) for p in providers.names()),
            agent_defaults=root.section("agents").section("defaults").build(AgentDefaultsConfig),
            shutdown=gateway.section("shutdown").build(ShutdownConfig),
            logging=gateway.section("logging").build(LoggingConfig),
            metrics=gateway.section("metrics").build(MetricsConfig),
            plugin=plugin,
        )


def load_gateway_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a json5 config file: the gateway's config, with the plugin's inside.

    Blocking file I/O: call it at start-up.

    Raises:
        ConfigError: the file is unreadable, not json5, or has a bad value.
    """
    return GatewayConfig.from_mapping(read_config_file(path), env=env)

