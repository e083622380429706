"""The plugin's frozen configuration, read from an OpenClaw gateway config.

The plugin reads only what it uses: its endpoint section
(``gateway.http.endpoints.chatCompletions``), the browsers it answers (``gateway.http.cors``), the gateway auth it falls back on
(``gateway.auth``), the trusted proxies and the agent roster (``agents``). Keys only a
gateway uses (port, bind, state directory, session store, model providers) belong to that
gateway's config; the reference gateway's is :mod:`openclaw_http_compat.reference.config`.

Every field validates itself (attrs validators), so a config built directly in Python
(``ChatCompletionsConfig(max_body_bytes=-5)``) fails with the same
:class:`~openclaw_http_compat.errors.ConfigError` as a file with that value; defaults are
written once, on the fields. :meth:`HttpCompatConfig.from_mapping` only renames OpenClaw's
keys and says where each section sits. Key names are OpenClaw's own, so an existing OpenClaw
config loads as is; keys we do not use are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, cast

import attrs

from .config_fields import (
    KEY,
    Reader,
    boolean,
    choice,
    describe,
    fail,
    integer,
    meta,
    string,
    strings,
    to_int,
    to_lowered,
    to_tuple,
)
from .errors import ConfigError

__all__ = (
    "DEFAULT_AGENT_ID",
    "AgentConfig",
    "AgentsConfig",
    "AuthConfig",
    "AuthMode",
    "ChatCompletionsConfig",
    "CorsConfig",
    "HttpCompatConfig",
    "IdempotencyConfig",
    "ImagesConfig",
    "ModelRef",
    "OnStoreError",
    "RateLimitConfig",
    "StoreConfig",
    "load_config_file",
    "normalize_agent_id",
    "read_config_file",
)

DEFAULT_AGENT_ID: Final = "main"
MIB: Final = 1024 * 1024

AuthMode = Literal["none", "token", "password", "trusted-proxy"]
#: What the failed-auth limiter does while its shared state cannot be reached.
OnStoreError = Literal["closed", "open"]

_AUTH_MODES: Final = ("none", "token", "password", "trusted-proxy")
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


@attrs.frozen(kw_only=True)
class RateLimitConfig:
    """``gateway.auth.rateLimit``: the failed-authentication limiter."""

    SECTION: ClassVar[str] = "gateway.auth.rateLimit"

    max_attempts: int = attrs.field(
        default=10, converter=to_int, validator=integer(minimum=1), metadata=meta("maxAttempts")
    )
    window_ms: int = attrs.field(
        default=60_000, converter=to_int, validator=integer(minimum=1), metadata=meta("windowMs")
    )
    lockout_ms: int = attrs.field(
        default=300_000, converter=to_int, validator=integer(minimum=0), metadata=meta("lockoutMs")
    )
    exempt_loopback: bool = attrs.field(default=True, validator=boolean, metadata=meta("exemptLoopback"))
    #: While the limiter's shared state (a fleet's store) cannot be reached: ``closed`` refuses
    #: the attempts that need it with a temporary 503, ``open`` lets them through unlimited.
    #: Never a silent fall-back to counting in one process. Moot for the in-memory state.
    on_store_error: OnStoreError = attrs.field(
        default="closed", validator=choice(("closed", "open")), metadata=meta("onStoreError")
    )


def _blank_is_none(value: Any) -> Any:
    # An empty secret is no secret: the environment's may stand in for it.
    return None if value == "" else value


@attrs.frozen(kw_only=True)
class AuthConfig:
    """``gateway.auth``: how callers prove they may use the gateway.

    ``mode`` defaults as in OpenClaw: ``password`` when only a password is set, else
    ``token``; token mode needs a token and password mode a password, so an
    ``AuthConfig()`` with neither is refused (OpenClaw refuses to start that way too).
    :meth:`HttpCompatConfig.from_mapping` falls back on ``OPENCLAW_GATEWAY_TOKEN`` and
    ``OPENCLAW_GATEWAY_PASSWORD``. Secrets never appear in ``repr``.
    """

    SECTION: ClassVar[str] = "gateway.auth"

    token: str | None = attrs.field(
        default=None, repr=False, converter=_blank_is_none, validator=string(), metadata=meta("token", secret=True)
    )
    password: str | None = attrs.field(
        default=None,
        repr=False,
        converter=_blank_is_none,
        validator=string(),
        metadata=meta("password", secret=True),
    )
    mode: AuthMode = attrs.field(validator=choice(_AUTH_MODES), metadata=meta("mode"))
    rate_limit: RateLimitConfig | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(RateLimitConfig))
    )

    @mode.default
    def _default_mode(self) -> AuthMode:
        return "password" if self.password and not self.token else "token"

    def __attrs_post_init__(self) -> None:
        if self.mode == "token" and not self.token:
            raise fail(self, "token", "token auth needs a token (set it or OPENCLAW_GATEWAY_TOKEN)")
        if self.mode == "password" and not self.password:
            raise fail(self, "password", "password auth needs a password (set it or OPENCLAW_GATEWAY_PASSWORD)")
        if self.mode == "trusted-proxy":
            raise fail(self, "mode", "'trusted-proxy' is not supported yet")

    @classmethod
    def from_reader(cls, r: Reader, env: Mapping[str, str]) -> AuthConfig:
        """Read ``gateway.auth``, with the environment's secrets as fallbacks."""
        rate = r.raw("rateLimit")
        return r.build(
            cls,
            token=_blank_is_none(r.raw("token")) or env.get("OPENCLAW_GATEWAY_TOKEN") or None,
            password=_blank_is_none(r.raw("password")) or env.get("OPENCLAW_GATEWAY_PASSWORD") or None,
            rate_limit=r.section("rateLimit").build(RateLimitConfig) if rate is not None else None,
        )


def _mimes(value: Any) -> Any:
    converted = to_lowered(value)
    # An empty list means "not set", as in OpenClaw.
    return _DEFAULT_MIMES if converted == () else converted


@attrs.frozen(kw_only=True)
class ImagesConfig:
    """``gateway.http.endpoints.chatCompletions.images``: image input limits."""

    SECTION: ClassVar[str] = "gateway.http.endpoints.chatCompletions.images"

    allow_url: bool = attrs.field(default=False, validator=boolean, metadata=meta("allowUrl"))
    url_allowlist: tuple[str, ...] = attrs.field(
        default=(), converter=to_lowered, validator=strings, metadata=meta("urlAllowlist")
    )
    allowed_mimes: tuple[str, ...] = attrs.field(
        default=_DEFAULT_MIMES, converter=_mimes, validator=strings, metadata=meta("allowedMimes")
    )
    max_bytes: int = attrs.field(
        default=10 * MIB, converter=to_int, validator=integer(minimum=1), metadata=meta("maxBytes")
    )
    max_redirects: int = attrs.field(
        default=3, converter=to_int, validator=integer(minimum=0), metadata=meta("maxRedirects")
    )
    timeout_ms: int = attrs.field(
        default=10_000, converter=to_int, validator=integer(minimum=1), metadata=meta("timeoutMs")
    )


@attrs.frozen(kw_only=True)
class StoreConfig:
    """``gateway.http.endpoints.chatCompletions.store``: completions created with ``store: true``."""

    SECTION: ClassVar[str] = "gateway.http.endpoints.chatCompletions.store"

    #: How long a stored completion is kept, counted from its ``created``.
    retention_days: int = attrs.field(
        default=30, converter=to_int, validator=integer(minimum=1), metadata=meta("retentionDays")
    )


@attrs.frozen(kw_only=True)
class IdempotencyConfig:
    """``gateway.http.endpoints.chatCompletions.idempotency``: ``Idempotency-Key`` records.

    ``ttlMs``: how long a finished run's answer is kept for replay. ``waitMs``: how long a
    repeat waits for a run that another process of the fleet is running, before 409.
    """

    SECTION: ClassVar[str] = "gateway.http.endpoints.chatCompletions.idempotency"

    ttl_ms: int = attrs.field(
        default=86_400_000, converter=to_int, validator=integer(minimum=1), metadata=meta("ttlMs")
    )
    wait_ms: int = attrs.field(default=2_000, converter=to_int, validator=integer(minimum=0), metadata=meta("waitMs"))


@attrs.frozen(kw_only=True)
class ChatCompletionsConfig:
    """``gateway.http.endpoints.chatCompletions``: the endpoint this package serves.

    ``enabled`` is the master switch for ``/v1/chat/completions`` and ``/v1/models``.
    """

    SECTION: ClassVar[str] = "gateway.http.endpoints.chatCompletions"

    enabled: bool = attrs.field(default=False, validator=boolean, metadata=meta("enabled"))
    max_body_bytes: int = attrs.field(
        default=20 * MIB, converter=to_int, validator=integer(minimum=1), metadata=meta("maxBodyBytes")
    )
    max_image_parts: int = attrs.field(
        default=8, converter=to_int, validator=integer(minimum=0), metadata=meta("maxImageParts")
    )
    max_total_image_bytes: int = attrs.field(
        default=20 * MIB, converter=to_int, validator=integer(minimum=1), metadata=meta("maxTotalImageBytes")
    )
    body_timeout_ms: int = attrs.field(
        default=30_000, converter=to_int, validator=integer(minimum=1), metadata=meta("bodyTimeoutMs")
    )
    keepalive_ms: int = attrs.field(
        default=15_000, converter=to_int, validator=integer(minimum=0), metadata=meta("keepaliveMs")
    )
    max_concurrent_runs: int = attrs.field(
        default=256, converter=to_int, validator=integer(minimum=0), metadata=meta("maxConcurrentRuns")
    )
    #: How long a streamed response's head (and role chunk) waits for the run's first event,
    #: at most, so that a run failing before it answers with a real HTTP status. Keep-alives
    #: start with the head; 0 sends the head at once (every failure in-band).
    stream_hold_ms: int = attrs.field(
        default=2_000, converter=to_int, validator=integer(minimum=0), metadata=meta("streamHoldMs")
    )
    images: ImagesConfig = attrs.field(factory=ImagesConfig, validator=attrs.validators.instance_of(ImagesConfig))
    store: StoreConfig = attrs.field(factory=StoreConfig, validator=attrs.validators.instance_of(StoreConfig))
    #: How long a run whose client left keeps going for the client's SDK to retry and attach
    #: (requests carrying ``x-stainless-retry-count``); 0 applies ``onDisconnect`` at once.
    reattach_ms: int = attrs.field(
        default=15_000, converter=to_int, validator=integer(minimum=0), metadata=meta("reattachMs")
    )
    #: What happens to a run nobody waits for any more: ``abort`` it, or ``finish`` it.
    on_disconnect: Literal["abort", "finish"] = attrs.field(
        default="abort", validator=choice(("abort", "finish")), metadata=meta("onDisconnect")
    )
    idempotency: IdempotencyConfig = attrs.field(
        factory=IdempotencyConfig, validator=attrs.validators.instance_of(IdempotencyConfig)
    )

    @classmethod
    def from_reader(cls, r: Reader) -> ChatCompletionsConfig:
        """Read ``gateway.http.endpoints.chatCompletions``."""
        return r.build(
            cls,
            images=r.section("images").build(ImagesConfig),
            store=r.section("store").build(StoreConfig),
            idempotency=r.section("idempotency").build(IdempotencyConfig),
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


def _to_model_ref(value: ModelRef | str | None) -> Any:
    # A string that does not parse is kept for the validator, which names it.
    if isinstance(value, str):
        return ModelRef.parse(value) or value
    return value


def _model_ref(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, ModelRef):
        got = repr(value) if isinstance(value, str) else describe(value)
        raise fail(instance, str(attribute.metadata[KEY]), f"expected a 'provider/model' string, got {got}")


def _build_with_model(r: Reader, cls: type[Any], key: str, **given: Any) -> Any:
    """``cls`` from ``r`` where ``key`` is a model ref or OpenClaw's ``{primary: ref}``."""
    raw = r.raw(key)
    if isinstance(raw, Mapping):
        field = next(f.name for f in attrs.fields(cls) if f.metadata.get(KEY) == key)
        given[field] = r.section(key).raw("primary")
        return r.build(cls, rekey={key: f"{key}.primary"}, **given)
    return r.build(cls, **given)


def _agent_id(value: Any) -> Any:
    return normalize_agent_id(value) if isinstance(value, str) else value


@attrs.frozen(kw_only=True)
class AgentConfig:
    """One configured agent (``agents.entries.<id>`` or an ``agents.list`` item)."""

    SECTION: ClassVar[str] = "agents.entries.{id}"

    id: str = attrs.field(converter=_agent_id, validator=string(optional=False), metadata=meta("id"))
    name: str | None = attrs.field(default=None, validator=string(), metadata=meta("name"))
    default: bool = attrs.field(default=False, validator=boolean, metadata=meta("default"))
    model: ModelRef | None = attrs.field(
        default=None, converter=_to_model_ref, validator=_model_ref, metadata=meta("model")
    )
    system_prompt: str | None = attrs.field(default=None, validator=string(), metadata=meta("systemPrompt"))


def _unique_ids(instance: object, attribute: attrs.Attribute[Any], value: tuple[AgentConfig, ...]) -> None:
    seen: set[str] = set()
    for agent in value:
        if agent.id in seen:
            raise fail(instance, "entries", f"agent id {agent.id!r} is configured twice")
        seen.add(agent.id)


def _agents(value: Iterable[AgentConfig]) -> tuple[AgentConfig, ...]:
    return tuple(value)


def _refs(value: Iterable[ModelRef]) -> tuple[ModelRef, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class AgentsConfig:
    """``agents``: the roster and the defaults every agent inherits."""

    SECTION: ClassVar[str] = "agents"

    entries: tuple[AgentConfig, ...] = attrs.field(default=(), converter=_agents, validator=_unique_ids)
    default_model: ModelRef | None = attrs.field(
        default=None, converter=_to_model_ref, validator=_model_ref, metadata=meta("defaults.model")
    )
    default_system_prompt: str | None = attrs.field(
        default=None, validator=string(), metadata=meta("defaults.systemPrompt")
    )
    allowed_models: tuple[ModelRef, ...] = attrs.field(default=(), converter=_refs)

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
    def from_reader(cls, r: Reader) -> AgentsConfig:
        """Read ``agents``: ``entries.<id>`` and the legacy ``list[]``, then ``defaults``."""
        entries: list[AgentConfig] = []
        section = r.section("entries")
        for agent_id in section.names():
            entries.append(_build_with_model(section.section(agent_id), AgentConfig, "model", id=agent_id))
        raw_list = r.raw("list")
        if raw_list is not None:
            if not isinstance(raw_list, list):
                raise ConfigError(f"{r.key('list')}: expected an array, got {describe(raw_list)}")
            for index, item in enumerate(raw_list):
                item_reader = Reader(item, f"{r.key('list')}[{index}]")
                list_id = item_reader.raw("id")
                if not isinstance(list_id, str) or not list_id:
                    raise ConfigError(f"{item_reader.key('id')}: expected a non-empty string")
                entries.append(_build_with_model(item_reader, AgentConfig, "model"))
        defaults = r.section("defaults")
        allowed: list[ModelRef] = []
        models = defaults.section("models")
        for ref_text in models.names():
            ref = ModelRef.parse(ref_text)
            if ref is None:
                raise ConfigError(f"{models.key(ref_text)}: expected a 'provider/model' key")
            allowed.append(ref)
        raw_model = defaults.raw("model")
        if isinstance(raw_model, Mapping):
            model_key, raw_model = "defaults.model.primary", defaults.section("model").raw("primary")
        else:
            model_key = "defaults.model"
        return r.build(
            cls,
            rekey={"defaults.model": model_key},
            entries=tuple(entries),
            default_model=raw_model,
            default_system_prompt=defaults.raw("systemPrompt"),
            allowed_models=tuple(allowed),
        )


_ORIGIN_RE: Final = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#\s@]+$")


def _to_origins(value: Any) -> Any:
    # "*" alone stands for any origin; origins compare as browsers send them: lower-cased.
    if value == "*":
        return ("*",)
    if isinstance(value, list):
        return tuple(v.strip().lower() if isinstance(v, str) else v for v in value)
    return value


def _origins(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    strings(instance, attribute, value)
    assert isinstance(value, tuple)
    for index, origin in enumerate(value):
        if origin == "*":
            if len(value) > 1:
                raise fail(instance, f"allowOrigins[{index}]", "'*' allows any origin: give it alone, as a string")
        elif not _ORIGIN_RE.match(origin):
            raise fail(
                instance,
                f"allowOrigins[{index}]",
                f"expected an origin like 'https://app.example.com' (scheme://host[:port], no path), got {origin!r}",
            )


@attrs.frozen(kw_only=True)
class CorsConfig:
    """``gateway.http.cors``: which web origins may call the endpoint from a browser.

    Off (no CORS header at all) unless ``allowOrigins`` lists origins, or is ``"*"`` (any
    origin). Credentials (cookies) are never allowed, so ``"*"`` is safe to send as is.
    """

    SECTION: ClassVar[str] = "gateway.http.cors"

    allow_origins: tuple[str, ...] = attrs.field(
        default=(), converter=_to_origins, validator=_origins, metadata=meta("allowOrigins")
    )

    @property
    def enabled(self) -> bool:
        """Whether any origin is allowed at all."""
        return bool(self.allow_origins)

    @property
    def any_origin(self) -> bool:
        """``allowOrigins`` is ``"*"``."""
        return self.allow_origins == ("*",)

    def allows(self, origin: str) -> bool:
        """Whether a request with this ``Origin`` header may read the answer."""
        return self.any_origin or origin in self.allow_origins


def _default_auth() -> AuthConfig:
    return AuthConfig()


@attrs.frozen(kw_only=True)
class HttpCompatConfig:
    """Everything the plugin reads from the gateway config.

    Build it with :meth:`from_mapping` (or :func:`load_config_file`), or directly; either
    way every value is checked. ``auth`` has no usable default: OpenClaw's default mode is
    ``token`` and needs a token.
    """

    SECTION: ClassVar[str] = "gateway"

    auth: AuthConfig = attrs.field(factory=_default_auth, validator=attrs.validators.instance_of(AuthConfig))
    trusted_proxies: tuple[str, ...] = attrs.field(
        default=(), converter=to_tuple, validator=strings, metadata=meta("trustedProxies")
    )
    allow_real_ip_fallback: bool = attrs.field(default=False, validator=boolean, metadata=meta("allowRealIpFallback"))
    chat_completions: ChatCompletionsConfig = attrs.field(
        factory=ChatCompletionsConfig, validator=attrs.validators.instance_of(ChatCompletionsConfig)
    )
    agents: AgentsConfig = attrs.field(factory=AgentsConfig, validator=attrs.validators.instance_of(AgentsConfig))
    cors: CorsConfig = attrs.field(factory=CorsConfig, validator=attrs.validators.instance_of(CorsConfig))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], *, env: Mapping[str, str] | None = None) -> HttpCompatConfig:
        """Build the config from a parsed OpenClaw config mapping.

        Args:
            raw: the parsed config file (json5 or JSON).
            env: environment for the secret fallbacks; ``os.environ`` by default.

        Raises:
            ConfigError: a key we use has a wrong type or value; the message names it.
        """
        env = os.environ if env is None else env
        root = Reader(raw, "")
        gateway = root.section("gateway")
        endpoints = gateway.section("http").section("endpoints")
        return gateway.build(
            cls,
            auth=AuthConfig.from_reader(gateway.section("auth"), env),
            chat_completions=ChatCompletionsConfig.from_reader(endpoints.section("chatCompletions")),
            agents=AgentsConfig.from_reader(root.section("agents")),
            cors=gateway.section("http").section("cors").build(CorsConfig),
        )


def read_config_file(path: str | os.PathLike[str]) -> Mapping[str, object]:
    """Read and parse a json5 config file, as a mapping for the ``from_mapping`` builders.

    This does blocking file I/O: call it at start-up, before the event loop serves requests.

    Raises:
        ConfigError: the file is unreadable, not json5, or not an object.
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
    return cast("Mapping[str, object]", data)


def load_config_file(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> HttpCompatConfig:
    """Read a json5 config file and build the plugin's :class:`HttpCompatConfig`.

    Blocking file I/O, like :func:`read_config_file`.

    Raises:
        ConfigError: the file is unreadable, not json5, or has a bad value.
    """
    return HttpCompatConfig.from_mapping(read_config_file(path), env=env)
