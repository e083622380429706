"""The reference gateway's own configuration: what a gateway reads and the plugin does not.

Listening (``gateway.port``, ``bind``, ``customBindHost``), state
(``gateway.stateDir``, ``gateway.sessionStore``) and the model providers
(``models.providers``) are the gateway's business. The plugin's part of the same file is an
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
from openclaw_http_compat.config import read_config_file
from openclaw_http_compat.config_fields import (
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
    "BindMode",
    "GatewayConfig",
    "ProviderConfig",
    "SessionStoreConfig",
    "load_gateway_config",
)

DEFAULT_PORT: Final = 18789

BindMode = Literal["auto", "lan", "loopback", "tailnet", "custom"]

_BIND_MODES: Final = ("auto", "lan", "loopback", "tailnet", "custom")


def _headers(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise fail(instance, "headers", f"expected an object, got {describe(value)}")
    for name, header in value:
        if not isinstance(header, str):
            # Header values are often credentials: name the type, never the value.
            raise fail(instance, f"headers.{name}", f"expected a string, got {type(header).__name__}")


def _to_headers(value: Any) -> Any:
    return tuple((str(k), v) for k, v in value.items() if v is not None) if isinstance(value, Mapping) else value


def _model_ids(value: Any) -> Any:
    # OpenClaw lists models as objects ({id, name, contextWindow, ...}); the id is what we use.
    # A bare id string (what a config built in code holds) is taken as it is.
    if not isinstance(value, list):
        return value
    return tuple(m.get("id") if isinstance(m, Mapping) else m for m in value if not isinstance(m, Mapping) or m.get("id"))


def _models(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, tuple):
        raise fail(instance, "models", f"expected an array, got {describe(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise fail(instance, f"models[{index}]", f"expected an object with an 'id' string, got {describe(item)}")


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
    models: tuple[str, ...] = attrs.field(default=(), converter=_model_ids, validator=_models, metadata=meta("models"))
    timeout_ms: int = attrs.field(
        default=600_000, converter=to_int, validator=integer(minimum=1), metadata=meta("timeoutMs")
    )
    #: An outbound proxy URL for this provider's calls; ``None``: the environment's
    #: ``HTTP(S)_PROXY`` / ``NO_PROXY``, as the ``openai`` SDK does.
    proxy: str | None = attrs.field(default=None, repr=False, validator=_proxy_url, metadata=meta("proxy", secret=True))


@attrs.frozen(kw_only=True)
class SessionStoreConfig:
    """``gateway.sessionStore``: how the reference gateway keeps transcripts."""

    SECTION: ClassVar[str] = "gateway.sessionStore"

    #: Sync every committed turn to disk (survives power loss); false: WAL with
    #: ``synchronous=NORMAL``, a committed turn survives a killed process.
    fsync: bool = attrs.field(default=False, validator=boolean, metadata=meta("fsync"))


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
            session_store=gateway.section("sessionStore").build(SessionStoreConfig),
            providers=tuple(providers.section(p).build(ProviderConfig, id=p) for p in providers.names()),
            plugin=plugin,
        )


def load_gateway_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a json5 config file: the gateway's config, with the plugin's inside.

    Blocking file I/O: call it at start-up.

    Raises:
        ConfigError: the file is unreadable, not json5, or has a bad value.
    """
    return GatewayConfig.from_mapping(read_config_file(path), env=env)

