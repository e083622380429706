"""Shared-secret authentication, the failed-attempt limiter, and the auth middleware.

The limiter keeps its counts in an :class:`AuthLimiterState`: this process's memory by
default, or a store every process of a fleet shares.

The gateway installs :func:`auth_middleware` on its root application with the same
:class:`~openclaw_http_compat.host.Authenticator` it gives the plugin, so every route shares
one auth. The plugin's sub-application checks again only when the gateway did not (the
request carries no :data:`PRINCIPAL_KEY`), so it is never left open by accident.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from .config import AuthConfig, RateLimitConfig
from .errors import ApiError, AuthenticationError, HttpCompatError, RateLimitedError
from .host import Authenticator, Principal
from .keys import PRINCIPAL_KEY
from .log import log
from .metrics import NO_METRICS, Metrics
from .wire import json_error_response

__all__ = (
    "AUTH_UNAVAILABLE",
    "AuthFailureLimiter",
    "AuthLimiterState",
    "AuthStateUnavailable",
    "InMemoryAuthLimiterState",
    "SharedSecretAuthenticator",
    "auth_middleware",
    "bearer_credential",
    "client_ip",
)

# Both sides go through a keyed hash so compare_digest always sees equal-length inputs, and
# the key is random per process so nobody can precompute digests. BLAKE2b is CPython's own
# code: hmac.digest() goes through OpenSSL 3, which cost 13-40 µs per call in the gateway
# process (its algorithm fetch) against under 1 µs here.
_DIGEST_KEY: Final = secrets.token_bytes(32)
_MAX_TRACKED: Final = 10_000
#: The message of the 503 answered while the limiter's shared state cannot be reached
#: (``onStoreError: closed``).
AUTH_UNAVAILABLE: Final = "authentication temporarily unavailable"
# Retry-After of that 503: a shared state reconnects within about a second.
_UNAVAILABLE_RETRY_S: Final = 1
_WARN_EVERY_S: Final = 60.0


def _digest(value: str) -> bytes:
    # surrogatepass: a header byte that is not UTF-8 arrives as a lone surrogate.
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), key=_DIGEST_KEY, digest_size=32).digest()


def secrets_equal(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two secrets; a missing side never matches."""
    if not given or not expected:
        # Still do the work so a missing secret costs the same as a wrong one.
        hmac.compare_digest(_digest(given or ""), _digest("\0"))
        return False
    return hmac.compare_digest(_digest(given), _digest(expected))


def bearer_credential(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <secret>`` header, or ``None``.

    The scheme is compared case-insensitively and exactly; the secret is trimmed.
    """
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip() or None


def _is_loopback(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class AuthStateUnavailable(HttpCompatError):
    """Raised by an :class:`AuthLimiterState` that cannot reach its shared store (or cannot
    vouch for what it knows of it). The limiter then does what
    ``gateway.auth.rateLimit.onStoreError`` says; the message is for the log only."""


class AuthLimiterState(Protocol):
    """Where the failed-auth limiter keeps its counts: in this process, or in a store that every
    process of a fleet shares, so that N replicas do not give a client N times the attempts.

    A state applies the window, attempt limit and lockout of the
    :class:`~openclaw_http_compat.config.RateLimitConfig` it was built with (build it from the
    same ``gateway.auth.rateLimit`` the authenticator gets). Keys are opaque strings (the
    client's IP, or ``unknown``); loopback exemption is the limiter's, so exempt clients never
    reach the state. Every method may raise :class:`AuthStateUnavailable`.

    ``lockout`` runs on every authenticated request: a shared state should answer it without
    a round trip (:mod:`openclaw_http_compat.reference.pgauthstate` keeps a local mirror).
    """

    async def lockout(self, key: str) -> float | None:
        """Seconds left of ``key``'s lockout, or ``None`` when it is not locked out."""
        ...

    async def record_failure(self, key: str) -> float | None:
        """Count a failed attempt of ``key``; at the attempt limit within the window, lock it out.

        Returns:
            ``None`` once counted (whether or not it locked ``key`` out). The seconds left of
            a lockout already in force when ``key`` was locked out meanwhile (by another
            process): that attempt is not counted, it is refused as locked.
        """
        ...

    async def record_success(self, key: str) -> None:
        """Forget ``key``'s failed attempts. A lockout in force is not lifted."""
        ...


class InMemoryAuthLimiterState:
    """The default :class:`AuthLimiterState`: a sliding window of failed attempts per key, and
    the lockouts, in this process only (right for a gateway that is one process).

    At most 10,000 keys with failures are tracked; the oldest that are not locked out are
    dropped first. A lockout is forgotten once it has expired, with the failures behind it.
    """

    def __init__(self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    async def lockout(self, key: str) -> float | None:
        """Seconds left of ``key``'s lockout, or ``None``."""
        return self._lockout(key)

    async def record_failure(self, key: str) -> float | None:
        """Count a failed attempt; see :meth:`AuthLimiterState.record_failure`."""
        remaining = self._lockout(key)
        if remaining is not None:
            return remaining
        now = self._clock()
        window = self._config.window_ms / 1000
        attempts = self._failures.setdefault(key, deque())
        while attempts and attempts[0] <= now - window:
            attempts.popleft()
        attempts.append(now)
        if len(attempts) >= self._config.max_attempts:
            self._locked_until[key] = now + self._config.lockout_ms / 1000
        self._prune()
        return None

    async def record_success(self, key: str) -> None:
        """Forget ``key``'s failed attempts."""
        self._failures.pop(key, None)

    def _lockout(self, key: str) -> float | None:
        until = self._locked_until.get(key)
        if until is None:
            return None
        remaining = until - self._clock()
        if remaining > 0:
            return remaining
        del self._locked_until[key]
        self._failures.pop(key, None)
        return None

    def _prune(self) -> None:
        while len(self._failures) > _MAX_TRACKED:
            oldest = next(k for k in self._failures if k not in self._locked_until)
            del self._failures[oldest]


class AuthFailureLimiter:
    """OpenClaw's failed-authentication limiter over an :class:`AuthLimiterState`.

    A client is keyed by its IP (``unknown`` when there is none: those callers share one
    bucket, failing closed). Loopback clients are exempt unless ``exempt_loopback`` is false.
    Without a ``state``, counts are kept in this process (:class:`InMemoryAuthLimiterState`).

    When the state raises :class:`AuthStateUnavailable`, ``config.on_store_error`` decides:
    ``closed`` answers the attempt 503 with ``Retry-After`` (so a fleet never quietly grants
    each process its own budget), ``open`` lets it through without limiting. Either way a
    warning is logged, at most once a minute. A success whose reset cannot be written is
    still served: the failures left behind only make the limiter stricter, and they leave
    the window.
    """

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        state: AuthLimiterState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._state: AuthLimiterState = state if state is not None else InMemoryAuthLimiterState(config, clock=clock)
        self._warned_at = -math.inf

    def _key(self, client_ip: str | None) -> str | None:
        key = client_ip or "unknown"
        return None if self._config.exempt_loopback and _is_loopback(key) else key

    async def check(self, client_ip: str | None) -> None:
        """Raise :class:`RateLimitedError` while the client is locked out.

        Raises:
            RateLimitedError: locked out.
            ApiError: 503, the state cannot be reached and ``onStoreError`` is ``closed``.
        """
        key = self._key(client_ip)
        if key is None:
            return
        try:
            remaining = await self._state.lockout(key)
        except AuthStateUnavailable as exc:
            self._unavailable(exc)
            return
        if remaining is not None:
            raise RateLimitedError(_retry_after(remaining))

    async def record_failure(self, client_ip: str | None) -> None:
        """Count a wrong credential; the client is locked out at ``max_attempts``.

        Raises:
            RateLimitedError: another process locked the client out meanwhile.
            ApiError: 503, as :meth:`check`.
        """
        key = self._key(client_ip)
        if key is None:
            return
        try:
            remaining = await self._state.record_failure(key)
        except AuthStateUnavailable as exc:
            self._unavailable(exc)
            return
        if remaining is not None:
            raise RateLimitedError(_retry_after(remaining))

    async def record_success(self, client_ip: str | None) -> None:
        """A correct credential resets the client's failures."""
        key = self._key(client_ip)
        if key is None:
            return
        try:
            await self._state.record_success(key)
        except AuthStateUnavailable as exc:
            self._warn("could not reset a client's failures after a success (%s)", exc)

    def _unavailable(self, exc: AuthStateUnavailable) -> None:
        if self._config.on_store_error == "closed":
            self._warn("refusing authentication with 503 until it is back (onStoreError: closed): %s", exc)
            raise ApiError(
                AUTH_UNAVAILABLE, status=503, code="auth_unavailable", headers={"Retry-After": str(_UNAVAILABLE_RETRY_S)}
            ) from None
        self._warn("authenticating without the failed-attempt limit until it is back (onStoreError: open): %s", exc)

    def _warn(self, message: str, exc: AuthStateUnavailable) -> None:
        # One line a minute, not one per request: an outage under load would flood the log.
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning("gateway.auth.rateLimit: the limiter's store cannot be reached; " + message, exc)


def _retry_after(remaining_s: float) -> int:
    return max(1, math.ceil(remaining_s))


class SharedSecretAuthenticator:
    """The gateway's shared-secret auth (``token``, ``password`` or ``none`` mode).

    The bearer credential is tried against the secret of the configured mode. A missing
    credential is refused without counting as a failed attempt; a wrong one counts.

    Failed attempts are limited only when ``config.rate_limit`` is set (as in OpenClaw), in
    ``limiter_state``: by default this process's memory; a gateway of several processes
    passes a state they share (see :class:`AuthLimiterState`). ``clock`` drives the default
    state's window and lockouts.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        limiter_state: AuthLimiterState | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        rate = config.rate_limit
        self._limiter = AuthFailureLimiter(rate, state=limiter_state, clock=clock) if rate else None
        expected = config.token if config.mode == "token" else config.password
        # Digested once: each request then costs one keyed hash, compared in constant time.
        self._expected = _digest(expected) if expected else None

    @property
    def mode(self) -> str:
        """The configured auth mode."""
        return self._config.mode

    async def authenticate(self, credential: str | None, *, client_ip: str | None) -> Principal:
        """Check ``credential``; see :class:`~openclaw_http_compat.host.Authenticator`.

        Raises:
            AuthenticationError: missing or wrong credential.
            RateLimitedError: the client is locked out (checked before the credential).
            ApiError: 503 ``auth_unavailable``, the limiter's shared state cannot be reached
                and ``gateway.auth.rateLimit.onStoreError`` is ``closed``.
        """
        mode = self._config.mode
        if mode == "none":
            return Principal(subject="none")
        limiter = self._limiter
        if limiter is not None:
            await limiter.check(client_ip)
        if credential is None:
            raise AuthenticationError()
        given = _digest(credential)
        if self._expected is None or not hmac.compare_digest(given, self._expected):
            if limiter is not None:
                await limiter.record_failure(client_ip)
            raise AuthenticationError()
        if limiter is not None:
            await limiter.record_success(client_ip)
        return Principal(subject=mode)


@functools.lru_cache(maxsize=64)
def _parse_networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


def _strip_port(hop: str) -> str | None:
    hop = hop.strip()
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def client_ip(
    request: web.BaseRequest,
    trusted_proxies: Iterable[str] = (),
    *,
    allow_real_ip_fallback: bool = False,
) -> str | None:
    """The caller's IP, honouring ``X-Forwarded-For`` only from trusted proxies.

    The forwarded chain is walked right to left and the first hop that is not itself a
    trusted proxy wins; with no usable hop the result is ``None`` (fail closed).
    """
    peer = request.remote
    networks = _parse_networks(tuple(trusted_proxies))
    if not networks or peer is None:
        return peer

    def trusted(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in networks)

    if not trusted(peer):
        return peer
    forwarded = request.headers.get("X-Forwarded-For", "")
    hops = [h for h in (_strip_port(p) for p in forwarded.split(",")) if h]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    if allow_real_ip_fallback:
        real = _strip_port(request.headers.get("X-Real-IP", ""))
        if real:
            return real
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(
    authenticator: Authenticator,
    *,
    trusted_proxies: Iterable[str] = (),
    allow_real_ip_fallback: bool = False,
    is_public: Callable[[web.Request], bool] = lambda request: False,
    metrics: Metrics = NO_METRICS,
) -> Middleware:
    """An aiohttp middleware that authenticates bearer credentials with ``authenticator``.

    The gateway installs it on its root application. Requests that do not resolve to a
    route, or resolve with a 405, pass through unauthenticated so the 404 or 405 is
    answered first (as OpenClaw does). Routes for which ``is_public`` returns true (a
    health check, a WebSocket that authenticates in its handshake) pass through too.
    On success the :class:`~openclaw_http_compat.host.Principal` is stored under
    :data:`~openclaw_http_compat.keys.PRINCIPAL_KEY`. Refusals are counted with ``metrics``.
    """
    proxies = tuple(trusted_proxies)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.http_exception is not None or is_public(request):
            return await handler(request)
        await authenticate_request(
            request,
            authenticator,
            trusted_proxies=proxies,
            allow_real_ip_fallback=allow_real_ip_fallback,
            metrics=metrics,
        )
        return await handler(request)

    return middleware


async def authenticate_request(
    request: web.Request,
    authenticator: Authenticator,
    *,
    trusted_proxies: Iterable[str] = (),
    allow_real_ip_fallback: bool = False,
    metrics: Metrics = NO_METRICS,
) -> Principal:
    """Authenticate ``request`` and store its principal; raise an ``HTTPException`` if refused.

    The refusal carries the OpenAI error envelope, and is counted with ``metrics``: a locked-out
    client's as a lockout, any other as an auth failure.
    """
    credential = bearer_credential(request.headers.get(hdrs.AUTHORIZATION))
    ip = client_ip(request, trusted_proxies, allow_real_ip_fallback=allow_real_ip_fallback)
    try:
        principal = await authenticator.authenticate(credential, client_ip=ip)
    except ApiError as exc:
        if isinstance(exc, RateLimitedError):
            metrics.auth_locked_out()
        else:
            metrics.auth_failed()
        raise json_error_response(exc) from None
    request[PRINCIPAL_KEY] = principal
    return principal
