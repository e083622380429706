"""Shared-secret authentication, the failed-attempt limiter and client IPs (behaviour spec section 7)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AuthConfig,
    AuthenticationError,
    ConfigError,
    Host,
    HttpCompatConfig,
    Principal,
    RateLimitedError,
    SharedSecretAuthenticator,
    auth_middleware,
    setup,
)
from openclaw_http_compat.auth import (
    AuthFailureLimiter,
    AuthLimiterState,
    AuthStateUnavailable,
    InMemoryAuthLimiterState,
    bearer_credential,
    client_ip,
)
from openclaw_http_compat.config import RateLimitConfig
from openclaw_http_compat.errors import ApiError
from openclaw_http_compat.auth import secrets_equal

from .conftest import COMPLETIONS, TOKEN, ClientFactory, ScriptedRunner, chat_body, error_body

UNAUTHORIZED = {"error": {"message": "Unauthorized", "type": "unauthorized", "param": None, "code": None}}


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Bearer a b", "a b"),
        ("Bearer", None),
        ("Bearer    ", None),
        ("Basic abc", None),
        ("Bearerabc", None),
        ("Token abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_credential(header: str | None, credential: str | None) -> None:
    """The scheme is matched case-insensitively and exactly; the secret is trimmed; empty is missing."""
    assert bearer_credential(header) == credential


@pytest.mark.parametrize(
    ("given", "expected", "equal"),
    [("abc", "abc", True), ("abc", "abd", False), ("abc", "abcd", False), (None, "abc", False), ("abc", None, False),
     ("", "", False), (None, None, False)],
)
def test_secrets_equal(given: str | None, expected: str | None, equal: bool) -> None:
    """Secrets compare equal only when both are present and identical."""
    assert secrets_equal(given, expected) is equal


async def test_token_mode() -> None:
    """Token mode accepts the token, refuses a missing or wrong one, and ignores the password."""
    auth = SharedSecretAuthenticator(AuthConfig(mode="token", token="tk", password="pw"))
    assert auth.mode == "token"
    assert await auth.authenticate("tk", client_ip="10.0.0.1") == Principal(subject="token")
    for credential in (None, "wrong", "pw"):
        with pytest.raises(AuthenticationError) as info:
            await auth.authenticate(credential, client_ip="10.0.0.1")
        assert (info.value.status, info.value.body()) == (401, UNAUTHORIZED)


async def test_password_mode() -> None:
    """Password mode accepts the password given as a bearer credential, and nothing else."""
    auth = SharedSecretAuthenticator(AuthConfig(mode="password", token="tk", password="pw"))
    assert await auth.authenticate("pw", client_ip=None) == Principal(subject="password")
    with pytest.raises(AuthenticationError):
        await auth.authenticate("tk", client_ip=None)


async def test_none_mode_needs_no_credential() -> None:
    """Mode ``none`` lets every caller in as an owner."""
    auth = SharedSecretAuthenticator(AuthConfig(mode="none"))
    assert await auth.authenticate(None, client_ip=None) == Principal(subject="none", sender_is_owner=True)


async def test_limiter_locks_out_after_max_attempts() -> None:
    """Ports openai-http.test.ts: maxAttempts 1 -> the first wrong bearer is 401, the next 429 with Retry-After."""
    clock = Clock()
    auth = SharedSecretAuthenticator(
        AuthConfig(mode="token", token="tk",
                   rate_limit=RateLimitConfig(max_attempts=1, lockout_ms=300_000, exempt_loopback=False)),
        clock=clock)
    with pytest.raises(AuthenticationError):
        await auth.authenticate("wrong", client_ip="127.0.0.1")
    with pytest.raises(RateLimitedError) as info:
        await auth.authenticate("wrong", client_ip="127.0.0.1")
    assert info.value.headers == {"Retry-After": "300"}
    # While locked out, even the right token is refused before it is compared.
    clock.now += 299.5
    with pytest.raises(RateLimitedError) as info:
        await auth.authenticate("tk", client_ip="127.0.0.1")
    assert info.value.retry_after_s == 1
    clock.now += 1
    assert await auth.authenticate("tk", client_ip="127.0.0.1") == Principal(subject="token")


async def test_missing_credential_is_not_a_failed_attempt() -> None:
    """A missing credential is 401 but does not count towards the lockout."""
    limit = RateLimitConfig(max_attempts=1, exempt_loopback=False)
    auth = SharedSecretAuthenticator(AuthConfig(mode="token", token="tk", rate_limit=limit))
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(None, client_ip="10.0.0.1")
    assert await auth.authenticate("tk", client_ip="10.0.0.1") == Principal(subject="token")


async def test_limiter_window_slides_and_success_resets() -> None:
    """Failures older than the window are forgotten; a success resets the count."""
    clock = Clock()
    limiter = AuthFailureLimiter(RateLimitConfig(max_attempts=3, window_ms=1000, lockout_ms=5000,
                                                 exempt_loopback=False), clock=clock)
    await limiter.record_failure("10.0.0.1")
    await limiter.record_failure("10.0.0.1")
    clock.now += 1.5
    await limiter.record_failure("10.0.0.1")
    await limiter.check("10.0.0.1")  # two failures fell out of the window
    await limiter.record_failure("10.0.0.1")
    await limiter.record_success("10.0.0.1")
    await limiter.record_failure("10.0.0.1")
    await limiter.check("10.0.0.1")
    await limiter.record_failure("10.0.0.1")
    await limiter.record_failure("10.0.0.1")
    with pytest.raises(RateLimitedError) as info:
        await limiter.check("10.0.0.1")
    assert info.value.retry_after_s == 5
    await limiter.check("10.0.0.2")  # other clients are unaffected


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
async def test_loopback_is_exempt_by_default(ip: str) -> None:
    """Loopback clients (IPv4, IPv6, IPv4-mapped) are never locked out unless exemptLoopback is false."""
    limiter = AuthFailureLimiter(RateLimitConfig(max_attempts=1))
    await limiter.record_failure(ip)
    await limiter.record_failure(ip)
    await limiter.check(ip)


async def test_unknown_client_ip_shares_one_bucket() -> None:
    """Callers whose IP is unknown share the ``unknown`` bucket (fail closed)."""
    limiter = AuthFailureLimiter(RateLimitConfig(max_attempts=1))
    await limiter.record_failure(None)
    with pytest.raises(RateLimitedError):
        await limiter.check(None)


def request_from(peer: str, **headers: str) -> web.Request:
    return make_mocked_request("GET", "/", headers=headers).clone(remote=peer)


@pytest.mark.parametrize(
    ("peer", "headers", "proxies", "fallback", "ip"),
    [
        ("203.0.113.9", {}, (), False, "203.0.113.9"),
        ("203.0.113.9", {"X-Forwarded-For": "1.2.3.4"}, (), False, "203.0.113.9"),
        ("203.0.113.9", {"X-Forwarded-For": "1.2.3.4"}, ("10.0.0.0/8",), False, "203.0.113.9"),
        ("10.0.0.5", {"X-Forwarded-For": "1.2.3.4"}, ("10.0.0.0/8",), False, "1.2.3.4"),
        ("10.0.0.5", {"X-Forwarded-For": "1.2.3.4, 5.6.7.8, 10.0.0.7"}, ("10.0.0.0/8",), False, "5.6.7.8"),
        ("10.0.0.5", {"X-Forwarded-For": "1.2.3.4:5555, [2001:db8::1]:443"}, ("10.0.0.0/8",), False, "2001:db8::1"),
        ("10.0.0.5", {"X-Forwarded-For": "garbage, 1.2.3.4, nonsense"}, ("10.0.0.0/8",), False, "1.2.3.4"),
        ("10.0.0.5", {"X-Forwarded-For": "10.0.0.9"}, ("10.0.0.0/8",), False, None),
        ("10.0.0.5", {}, ("10.0.0.0/8",), False, None),
        ("10.0.0.5", {"X-Real-IP": "9.9.9.9"}, ("10.0.0.0/8",), False, None),
        ("10.0.0.5", {"X-Real-IP": "9.9.9.9"}, ("10.0.0.0/8",), True, "9.9.9.9"),
        ("10.0.0.5", {"X-Forwarded-For": "1.2.3.4", "X-Real-IP": "9.9.9.9"}, ("10.0.0.0/8",), True, "1.2.3.4"),
        ("127.0.0.1", {"X-Forwarded-For": "1.2.3.4"}, ("127.0.0.1", "not-a-network"), False, "1.2.3.4"),
    ],
    ids=("no-proxies", "xff-ignored-without-proxies", "untrusted-peer", "trusted-peer", "rightmost-untrusted-hop",
         "ports-and-brackets", "invalid-hops-dropped", "all-hops-trusted", "no-xff", "real-ip-not-trusted",
         "real-ip-fallback", "xff-before-real-ip", "bad-entries-skipped"),
)
def test_client_ip(peer: str, headers: dict[str, str], proxies: tuple[str, ...], fallback: bool,
                   ip: str | None) -> None:
    """X-Forwarded-For counts only from trusted proxies, walked right to left; no usable hop is None."""
    assert client_ip(request_from(peer, **headers), proxies, allow_real_ip_fallback=fallback) == ip


# --- over HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "},
     {"Authorization": TOKEN}],
    ids=("missing", "wrong", "basic-scheme", "empty", "no-scheme"),
)
@pytest.mark.parametrize("gateway_auth", [True, False], ids=("gateway-auth", "plugin-auth"))
async def test_token_mode_refuses_bad_bearer_with_401(gateway_client: ClientFactory, runner: ScriptedRunner,
                                                      headers: dict[str, str], gateway_auth: bool) -> None:
    """Ports openai-http.e2e.test.ts: missing or wrong token -> 401 with the exact OpenAI envelope."""
    client = await gateway_client(gateway_auth=gateway_auth)
    resp = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
    assert resp.status == 401
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.json() == UNAUTHORIZED
    assert runner.requests == []


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_token_mode_accepts_the_token(gateway_client: ClientFactory, runner: ScriptedRunner,
                                            scheme: str) -> None:
    """Ports openai-http.test.ts: a headerless bearer (no x-openclaw-scopes) is 200, as an owner."""
    client = await gateway_client()
    resp = await client.post(COMPLETIONS, json=chat_body(), headers={"Authorization": f"{scheme}  {TOKEN} "})
    assert resp.status == 200
    assert runner.requests[0].sender_is_owner is True


@pytest.mark.parametrize(
    ("credential", "status"),
    [(None, 401), ("wrong", 401), ("tk", 401), ("pw", 200)],
)
@pytest.mark.parametrize("gateway_auth", [True, False], ids=("gateway-auth", "plugin-auth"))
async def test_password_mode_over_http(gateway_client: ClientFactory, credential: str | None, status: int,
                                       gateway_auth: bool) -> None:
    """In password mode the bearer credential must be the password; anything else is 401."""
    client = await gateway_client(auth={"mode": "password", "password": "pw", "token": "tk"},
                                  gateway_auth=gateway_auth)
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    resp = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
    assert resp.status == status
    if status == 401:
        assert await resp.json() == UNAUTHORIZED


async def test_none_mode_over_http(gateway_client: ClientFactory, runner: ScriptedRunner) -> None:
    """Ports openai-http.test.ts: auth ``none`` -> 200 without a header; the channel is ``webchat``."""
    client = await gateway_client(auth={"mode": "none"})
    resp = await client.post(COMPLETIONS, json=chat_body())
    assert resp.status == 200
    assert runner.requests[0].message_channel == "webchat"


@pytest.mark.parametrize("gateway_auth", [True, False], ids=("gateway-auth", "plugin-auth"))
async def test_rate_limited_over_http(gateway_client: ClientFactory, gateway_auth: bool) -> None:
    """Ports openai-http.test.ts: maxAttempts 1, exemptLoopback false -> 401 then 429 with numeric Retry-After."""
    client = await gateway_client(
        auth={"mode": "token", "token": TOKEN, "rateLimit": {"maxAttempts": 1, "exemptLoopback": False}},
        gateway_auth=gateway_auth)
    headers = {"Authorization": "Bearer wrong"}
    first = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
    assert (first.status, await first.json()) == (401, UNAUTHORIZED)
    second = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
    assert second.status == 429
    assert second.headers["Retry-After"] == "300"
    assert await second.json() == error_body(
        "Too many failed authentication attempts. Please try again later.", "rate_limited")
    locked = await client.post(COMPLETIONS, json=chat_body(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert locked.status == 429


async def test_loopback_is_exempt_over_http(gateway_client: ClientFactory) -> None:
    """With the default exemptLoopback, a loopback caller is never locked out."""
    client = await gateway_client(auth={"mode": "token", "token": TOKEN, "rateLimit": {"maxAttempts": 1}})
    for _ in range(3):
        resp = await client.post(COMPLETIONS, json=chat_body(), headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401
    ok = await client.post(COMPLETIONS, json=chat_body(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200


async def test_models_need_auth_too(gateway_client: ClientFactory, auth_headers: dict[str, str]) -> None:
    """``GET /v1/models`` is behind the same auth as completions."""
    client = await gateway_client()
    refused = await client.get("/v1/models")
    assert (refused.status, await refused.json()) == (401, UNAUTHORIZED)
    ok = await client.get("/v1/models", headers=auth_headers)
    assert ok.status == 200




# --- the limiter's state ------------------------------------------------------------------------

UNAVAILABLE = error_body("authentication temporarily unavailable", "api_error", code="auth_unavailable")
RATE_LIMITED = error_body("Too many failed authentication attempts. Please try again later.", "rate_limited")
Client = TestClient[web.Request, web.Application]


class SwitchableState:
    """A shared state a test can cut off: the in-memory state behind a switch, as a store that
    becomes unreachable would be. Counts which methods reached the state."""

    def __init__(self, config: RateLimitConfig, clock: Clock | None = None) -> None:
        self.inner = InMemoryAuthLimiterState(config, clock=clock or Clock())
        self.down = False
        self.calls: list[str] = []

    def _reach(self, method: str) -> None:
        self.calls.append(method)
        if self.down:
            raise AuthStateUnavailable("the test store is down")

    async def lockout(self, key: str) -> float | None:
        self._reach("lockout")
        return await self.inner.lockout(key)

    async def record_failure(self, key: str) -> float | None:
        self._reach("record_failure")
        return await self.inner.record_failure(key)

    async def record_success(self, key: str) -> None:
        self._reach("record_success")
        await self.inner.record_success(key)


def limited_config(**rate_limit: Any) -> HttpCompatConfig:
    limit = {"maxAttempts": 3, "windowMs": 60_000, "lockoutMs": 300_000, "exemptLoopback": False, **rate_limit}
    return HttpCompatConfig.from_mapping(
        {"gateway": {"auth": {"mode": "token", "token": TOKEN, "rateLimit": limit},
                     "http": {"endpoints": {"chatCompletions": {"enabled": True}}}}},
        env={},
    )


def replica(config: HttpCompatConfig, state: AuthLimiterState, *, gateway_auth: bool = True) -> web.Application:
    """One gateway process: its own authenticator on the limiter state it is given."""
    authenticator = SharedSecretAuthenticator(config.auth, limiter_state=state)
    app = web.Application(middlewares=[auth_middleware(authenticator)] if gateway_auth else [])
    setup(app, config, Host(runner=ScriptedRunner(), authenticator=authenticator, roster=config.agents))
    return app


async def answer(client: Client, credential: str | None) -> tuple[int, object, str | None]:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    async with client.post(COMPLETIONS, json=chat_body(), headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body, resp.headers.get("Retry-After")


def test_on_store_error_defaults_to_closed_and_reads_open() -> None:
    """``onStoreError`` is ``closed`` unless the file says ``open``."""
    assert RateLimitConfig().on_store_error == "closed"
    assert limited_config().auth.rate_limit == RateLimitConfig(
        max_attempts=3, window_ms=60_000, lockout_ms=300_000, exempt_loopback=False, on_store_error="closed")
    rate_limit = limited_config(onStoreError="open").auth.rate_limit
    assert rate_limit is not None and rate_limit.on_store_error == "open"


@pytest.mark.parametrize(
    ("value", "problem"),
    [("fallback", "expected one of 'closed', 'open', got 'fallback'"),
     ("Closed", "expected one of 'closed', 'open', got 'Closed'"),
     (True, "expected one of 'closed', 'open', got a boolean"),
     (0, "expected one of 'closed', 'open', got the number 0")],
)
def test_on_store_error_is_validated(value: object, problem: str) -> None:
    """A wrong ``onStoreError`` stops start-up naming the dotted key, from a file or from Python."""
    with pytest.raises(ConfigError) as from_file:
        limited_config(onStoreError=value)
    assert str(from_file.value) == f"gateway.auth.rateLimit.onStoreError: {problem}"
    with pytest.raises(ConfigError) as from_python:
        RateLimitConfig(on_store_error=value)  # type: ignore[arg-type]
    assert str(from_python.value) == f"gateway.auth.rateLimit.onStoreError: {problem}"


async def test_replicas_sharing_one_state_count_together(aiohttp_client: AiohttpClient) -> None:
    """Two gateway replicas on one state: maxAttempts 3 failures in total, split over both,
    lock the client out on both (each alone would still allow attempts)."""
    config = limited_config()
    state = InMemoryAuthLimiterState(config.auth.rate_limit or RateLimitConfig())
    a = await aiohttp_client(replica(config, state))
    b = await aiohttp_client(replica(config, state))
    assert [(await answer(c, "wrong"))[0] for c in (a, b, a)] == [401, 401, 401]
    assert await answer(b, TOKEN) == (429, RATE_LIMITED, "300")
    assert await answer(a, TOKEN) == (429, RATE_LIMITED, "300")


async def test_a_success_resets_the_shared_count(aiohttp_client: AiohttpClient) -> None:
    """A success at one replica resets failures counted at the other."""
    config = limited_config()
    state = InMemoryAuthLimiterState(config.auth.rate_limit or RateLimitConfig())
    a = await aiohttp_client(replica(config, state))
    b = await aiohttp_client(replica(config, state))
    assert [(await answer(a, "wrong"))[0] for _ in range(2)] == [401, 401]
    assert (await answer(b, TOKEN))[0] == 200
    assert [(await answer(a, "wrong"))[0] for _ in range(2)] == [401, 401]
    assert (await answer(a, TOKEN))[0] == 200


@pytest.mark.parametrize("gateway_auth", [True, False], ids=("gateway-auth", "plugin-auth"))
async def test_state_down_closed_is_a_clean_503_then_recovers(aiohttp_client: AiohttpClient,
                                                              gateway_auth: bool) -> None:
    """onStoreError closed: while the state cannot be reached, every attempt (right, wrong or no
    credential, since the lockout check comes first) is 503 auth_unavailable with Retry-After 1,
    in the OpenAI envelope; nothing is counted meanwhile; then it works again by itself."""
    config = limited_config()
    state = SwitchableState(config.auth.rate_limit or RateLimitConfig())
    client = await aiohttp_client(replica(config, state, gateway_auth=gateway_auth))
    assert (await answer(client, "wrong"))[0] == 401
    state.down = True
    for credential in (TOKEN, "wrong", None):
        assert await answer(client, credential) == (503, UNAVAILABLE, "1")
    state.down = False
    assert [(await answer(client, "wrong"))[0] for _ in range(2)] == [401, 401]
    assert await answer(client, TOKEN) == (429, RATE_LIMITED, "300")


async def test_state_down_open_authenticates_without_limiting(aiohttp_client: AiohttpClient,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """onStoreError open: the right token gets in and wrong ones stay 401 however many, with
    one warning line for the whole outage; nothing is counted in the process meanwhile."""
    caplog.set_level(logging.WARNING, logger="openclaw_http_compat")
    config = limited_config(onStoreError="open")
    state = SwitchableState(config.auth.rate_limit or RateLimitConfig())
    client = await aiohttp_client(replica(config, state))
    state.down = True
    assert [(await answer(client, "wrong"))[0] for _ in range(10)] == [401] * 10
    assert (await answer(client, TOKEN))[0] == 200
    assert [r.getMessage() for r in caplog.records] == [
        "gateway.auth.rateLimit: the limiter's store cannot be reached; authenticating without the failed-attempt"
        " limit until it is back (onStoreError: open): the test store is down"
    ]
    state.down = False
    assert [(await answer(client, "wrong"))[0] for _ in range(3)] == [401, 401, 401]
    assert await answer(client, TOKEN) == (429, RATE_LIMITED, "300")


async def test_closed_refusal_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """onStoreError closed logs one warning for many refused attempts."""
    caplog.set_level(logging.WARNING, logger="openclaw_http_compat")
    state = SwitchableState(RateLimitConfig(exempt_loopback=False))
    state.down = True
    auth = SharedSecretAuthenticator(AuthConfig(token="tk", rate_limit=RateLimitConfig()), limiter_state=state)
    for _ in range(5):
        with pytest.raises(ApiError) as info:
            await auth.authenticate("tk", client_ip="10.0.0.1")
        assert (info.value.status, info.value.body(), info.value.headers) == (503, UNAVAILABLE, {"Retry-After": "1"})
    assert [r.getMessage() for r in caplog.records] == [
        "gateway.auth.rateLimit: the limiter's store cannot be reached; refusing authentication with 503 until it"
        " is back (onStoreError: closed): the test store is down"
    ]


async def test_a_success_is_served_when_its_reset_cannot_be_written(caplog: pytest.LogCaptureFixture) -> None:
    """The right credential is served even if the state fails just after the check (closed
    mode too): leftover failures only make the limiter stricter. The failure is logged."""
    caplog.set_level(logging.WARNING, logger="openclaw_http_compat")

    class ResetFails(SwitchableState):
        async def record_success(self, key: str) -> None:
            raise AuthStateUnavailable("cannot write the reset")

    state = ResetFails(RateLimitConfig())
    auth = SharedSecretAuthenticator(AuthConfig(token="tk", rate_limit=RateLimitConfig()), limiter_state=state)
    assert await auth.authenticate("tk", client_ip="10.0.0.1") == Principal(subject="token")
    assert [r.getMessage() for r in caplog.records] == [
        "gateway.auth.rateLimit: the limiter's store cannot be reached; could not reset a client's failures after a"
        " success (cannot write the reset)"
    ]


async def test_loopback_and_none_mode_never_reach_the_state() -> None:
    """Exempt loopback clients and mode ``none`` need no limiter: a state that is down changes
    nothing for them, and it is never called."""
    state = SwitchableState(RateLimitConfig())
    state.down = True
    auth = SharedSecretAuthenticator(AuthConfig(token="tk", rate_limit=RateLimitConfig()), limiter_state=state)
    assert await auth.authenticate("tk", client_ip="127.0.0.1") == Principal(subject="token")
    with pytest.raises(AuthenticationError):
        await auth.authenticate("wrong", client_ip="::1")
    open_auth = SharedSecretAuthenticator(AuthConfig(mode="none", rate_limit=RateLimitConfig()), limiter_state=state)
    assert await open_auth.authenticate(None, client_ip="10.0.0.1") == Principal(subject="none")
    assert state.calls == []


async def test_state_is_unused_without_rate_limit_config() -> None:
    """Without gateway.auth.rateLimit there is no limiter (as in OpenClaw), whatever state is given."""
    state = SwitchableState(RateLimitConfig(max_attempts=1, exempt_loopback=False))
    auth = SharedSecretAuthenticator(AuthConfig(token="tk"), limiter_state=state)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await auth.authenticate("wrong", client_ip="10.0.0.1")
    assert await auth.authenticate("tk", client_ip="10.0.0.1") == Principal(subject="token")
    assert state.calls == []


async def test_a_failure_racing_another_replicas_lockout_is_429() -> None:
    """A failure the state refuses because the key was locked out meanwhile (by another
    process, after this one checked) is answered 429 with what is left, and not counted."""
    clock = Clock()
    limit = RateLimitConfig(max_attempts=2, exempt_loopback=False)
    shared = InMemoryAuthLimiterState(limit, clock=clock)

    class LockedMeanwhile:
        """Another replica locks the key out between this one's check and its failure."""

        async def lockout(self, key: str) -> float | None:
            return None

        async def record_failure(self, key: str) -> float | None:
            await shared.record_failure(key)
            await shared.record_failure(key)
            clock.now += 10
            return await shared.record_failure(key)

        async def record_success(self, key: str) -> None:
            await shared.record_success(key)

    auth = SharedSecretAuthenticator(AuthConfig(token="tk", rate_limit=limit), limiter_state=LockedMeanwhile())
    with pytest.raises(RateLimitedError) as info:
        await auth.authenticate("wrong", client_ip="10.0.0.1")
    assert (info.value.status, info.value.headers) == (429, {"Retry-After": "290"})


async def test_in_memory_state_does_not_count_while_locked_out() -> None:
    """The in-memory state's record_failure on a locked-out key returns what is left and counts
    nothing; once the lockout has run out, counting starts over."""
    clock = Clock()
    state = InMemoryAuthLimiterState(RateLimitConfig(max_attempts=2, lockout_ms=5000), clock=clock)
    assert await state.record_failure("k") is None
    assert await state.record_failure("k") is None
    assert await state.lockout("k") == 5.0
    clock.now += 1
    assert await state.record_failure("k") == 4.0
    clock.now += 4
    assert await state.lockout("k") is None
    assert await state.record_failure("k") is None
    assert await state.lockout("k") is None
