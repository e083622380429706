"""Security: constant-time secret comparison, the failed-auth limiter, client IPs behind
proxies, and secrets kept out of logs, bodies, headers and reprs.

Every HTTP test goes through a gateway built like a real one: the package's auth middleware
on the root app (with ``gateway.trustedProxies``), the plugin mounted with ``setup``, and
one :class:`SharedSecretAuthenticator` shared by both. Where time matters the limiter's
injectable clock is used; one test waits out a real 300 ms lockout.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import inspect
import logging
import textwrap
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    auth_middleware,
    AuthConfig,
    ConfigError,
    Host,
    HttpCompatConfig,
    setup,
    SharedSecretAuthenticator,
)
from openclaw_http_compat.auth import bearer_credential, client_ip
from openclaw_http_compat.reference.config import GatewayConfig, ProviderConfig
from openclaw_http_compat import auth as auth_module
from openclaw_http_compat.auth import secrets_equal

from .conftest import ScriptedRunner

Client = TestClient[web.Request, web.Application]

TOKEN: Final = "tok-3f9c1e7b-5a1d-secret"
PASSWORD: Final = "pw-9d2a-correct-horse-battery"
API_KEY: Final = "sk-live-8c4e2f0a9b7d6e5f"
HEADER_SECRET: Final = "hdr-secret-1a2b3c"
WRONG: Final = "wrong-guess-7781"
CHAT: Final = "/v1/chat/completions"
BODY: Final = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}
RATE_LIMITED: Final = {
    "error": {
        "message": "Too many failed authentication attempts. Please try again later.",
        "type": "rate_limited",
        "param": None,
        "code": None,
    }
}
UNAUTHORIZED: Final = {"error": {"message": "Unauthorized", "type": "unauthorized", "param": None, "code": None}}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def gateway_config(
    *,
    auth: Mapping[str, Any] | None = None,
    rate_limit: Mapping[str, Any] | None = None,
    trusted_proxies: list[str] | None = None,
    real_ip_fallback: bool = False,
) -> HttpCompatConfig:
    auth_section: dict[str, Any] = dict(auth) if auth is not None else {"mode": "token", "token": TOKEN}
    if rate_limit is not None:
        auth_section["rateLimit"] = dict(rate_limit)
    gateway: dict[str, Any] = {
        "auth": auth_section,
        "allowRealIpFallback": real_ip_fallback,
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    }
    if trusted_proxies is not None:
        gateway["trustedProxies"] = trusted_proxies
    return HttpCompatConfig.from_mapping({"gateway": gateway}, env={})


def build_gateway(
    config: HttpCompatConfig, *, clock: Callable[[], float] = time.monotonic, root_auth: bool = True
) -> web.Application:
    """A gateway root app: the package's auth middleware (unless ``root_auth`` is false) and the plugin."""
    authenticator = SharedSecretAuthenticator(config.auth, clock=clock)
    middlewares = (
        [
            auth_middleware(
                authenticator,
                trusted_proxies=config.trusted_proxies,
                allow_real_ip_fallback=config.allow_real_ip_fallback,
            )
        ]
        if root_auth
        else []
    )
    app = web.Application(middlewares=middlewares)
    setup(app, config, Host(runner=ScriptedRunner(), authenticator=authenticator, roster=config.agents))
    return app


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def status_of(client: Client, headers: Mapping[str, str]) -> int:
    async with client.post(CHAT, json=BODY, headers=headers) as resp:
        await resp.read()
        return resp.status


LIMIT_3: Final = {"maxAttempts": 3, "windowMs": 60_000, "lockoutMs": 300_000, "exemptLoopback": False}


# --------------------------------------------------------------------------------------------
# Constant-time comparison
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_secret", "expected", "result"),
    [
        (TOKEN, TOKEN, True),
        (TOKEN + "x", TOKEN, False),
        (TOKEN[:-1], TOKEN, False),
        (TOKEN.upper(), TOKEN, False),
        ("", TOKEN, False),
        (None, TOKEN, False),
        (TOKEN, None, False),
        (TOKEN, "", False),
        (None, None, False),
        ("", "", False),
        ("pässwörd-ü", "pässwörd-ü", True),
    ],
    ids=("equal", "longer", "shorter", "other case", "empty given", "missing given", "missing expected",
         "empty expected", "both missing", "both empty", "non-ascii equal"),
)
def test_secrets_equal_matches_only_equal_present_secrets(given_secret: str | None, expected: str | None, result: bool) -> None:
    """secrets_equal is true only for two equal, non-empty secrets; a missing side never matches."""
    assert secrets_equal(given_secret, expected) is result


@settings(max_examples=200, deadline=None)
@given(a=st.text(min_size=1, max_size=200), b=st.text(min_size=1, max_size=200))
def test_secrets_equal_is_compare_digest_of_fixed_length_macs(a: str, b: str) -> None:
    """Both sides go through keyed BLAKE2b to 32 bytes, so compare_digest never sees the secrets' lengths."""
    digest_a, digest_b = auth_module._digest(a), auth_module._digest(b)
    assert len(digest_a) == len(digest_b) == 32
    assert len(auth_module._DIGEST_KEY) == 32
    assert digest_a == hashlib.blake2b(a.encode(), key=auth_module._DIGEST_KEY, digest_size=32).digest()
    assert secrets_equal(a, b) is hmac.compare_digest(digest_a, digest_b) is (a == b)


def _function_ast(func: Callable[..., Any]) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(func)))


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names.add(ast.unparse(node.func))
    return names


def test_secrets_equal_decides_only_with_compare_digest() -> None:
    """secrets_equal's only comparison of secret material is hmac.compare_digest (no == or !=)."""
    tree = _function_ast(secrets_equal)
    assert "hmac.compare_digest" in _calls(tree)
    comparisons = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    assert comparisons == [], [ast.unparse(c) for c in comparisons]
    # Even a missing secret costs one digest comparison, like a wrong one.
    missing_branch = next(node for node in ast.walk(tree) if isinstance(node, ast.If))
    assert "hmac.compare_digest" in _calls(ast.Module(body=missing_branch.body, type_ignores=[]))


def test_authenticator_compares_credentials_only_in_constant_time() -> None:
    """The authenticator never compares a credential with == or !=; compare_digest over HMACs decides."""
    tree = _function_ast(SharedSecretAuthenticator.authenticate)
    assert {"_digest", "hmac.compare_digest"} <= _calls(tree)
    def is_secret(operand: ast.expr) -> bool:
        text = ast.unparse(operand)
        return text in ("credential", "expected") or text.endswith((".token", ".password"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            assert not any(is_secret(operand) for operand in (node.left, *node.comparators)), ast.unparse(node)


async def test_authenticator_accepts_only_the_exact_secret() -> None:
    """The exact token passes; near misses, other cases and the password of another mode do not."""
    authenticator = SharedSecretAuthenticator(AuthConfig(mode="token", token=TOKEN, password=PASSWORD))
    principal = await authenticator.authenticate(TOKEN, client_ip="203.0.113.1")
    assert principal.subject == "token"
    for wrong in (TOKEN[:-1], TOKEN + " x", TOKEN.upper(), PASSWORD, "x" * 100_000):
        with pytest.raises(Exception, match="Unauthorized"):
            await authenticator.authenticate(wrong, client_ip="203.0.113.1")


@pytest.mark.parametrize(
    ("header", "credential"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer {TOKEN}", TOKEN),
        (f"  BEARER   {TOKEN}  ", TOKEN),
        ("Bearer", None),
        ("Bearer   ", None),
        (f"Basic {TOKEN}", None),
        (f"Bearer{TOKEN}", None),
        ("", None),
        (None, None),
    ],
    ids=("canonical", "lower-case scheme", "padded", "no secret", "blank secret", "other scheme", "no space", "empty",
         "absent"),
)
def test_bearer_credential_parsing(header: str | None, credential: str | None) -> None:
    """Authorization parsing: any-case Bearer scheme, trimmed secret; anything else is no credential."""
    assert bearer_credential(header) == credential


# --------------------------------------------------------------------------------------------
# The failed-attempt limiter
# --------------------------------------------------------------------------------------------


async def test_lockout_after_max_attempts_refuses_even_the_right_token(aiohttp_client: AiohttpClient) -> None:
    """After maxAttempts wrong tokens the client gets 429 + numeric Retry-After, even with the right token."""
    clock = FakeClock()
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=LIMIT_3), clock=clock))
    assert [await status_of(client, bearer(WRONG)) for _ in range(3)] == [401, 401, 401]
    async with client.post(CHAT, json=BODY, headers=bearer(TOKEN)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "300"
        assert resp.content_type == "application/json"
        assert await resp.json() == RATE_LIMITED
    clock.now += 100.5
    async with client.post(CHAT, json=BODY, headers=bearer(WRONG)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "200"  # 199.5 s left, rounded up
    clock.now += 200
    assert await status_of(client, bearer(TOKEN)) == 200


async def test_single_attempt_limit_matches_openclaw_reference(aiohttp_client: AiohttpClient) -> None:
    """maxAttempts 1, exemptLoopback false: the first wrong bearer is 401, the second 429 with a numeric Retry-After."""
    limit = {"maxAttempts": 1, "exemptLoopback": False}
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=limit)))
    assert await status_of(client, bearer(WRONG)) == 401
    async with client.post(CHAT, json=BODY, headers=bearer(WRONG)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"].isdigit() and int(resp.headers["Retry-After"]) >= 1


async def test_right_token_gets_in_after_a_real_short_lockout(aiohttp_client: AiohttpClient) -> None:
    """With lockoutMs 300 the right token is refused while locked and accepted once 300 ms have passed."""
    limit = {"maxAttempts": 2, "windowMs": 60_000, "lockoutMs": 300, "exemptLoopback": False}
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=limit)))
    assert [await status_of(client, bearer(WRONG)) for _ in range(2)] == [401, 401]
    async with client.post(CHAT, json=BODY, headers=bearer(TOKEN)) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "1"  # ceil(0.3 s)
    await asyncio.sleep(0.35)
    assert await status_of(client, bearer(TOKEN)) == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer    "}, {"Authorization": f"Basic {WRONG}"}],
    ids=("no header", "empty bearer", "blank bearer", "other scheme"),
)
async def test_missing_credentials_do_not_count_as_failures(
    aiohttp_client: AiohttpClient, headers: dict[str, str]
) -> None:
    """Requests without a bearer credential get 401 but never lock the client out."""
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=LIMIT_3), clock=FakeClock()))
    for _ in range(10):
        async with client.post(CHAT, json=BODY, headers=headers) as resp:
            assert resp.status == 401
            assert await resp.json() == UNAUTHORIZED
    assert await status_of(client, bearer(TOKEN)) == 200


async def test_success_resets_the_failure_count(aiohttp_client: AiohttpClient) -> None:
    """A correct token clears earlier failures: maxAttempts fresh failures are needed to lock out."""
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=LIMIT_3), clock=FakeClock()))
    assert [await status_of(client, bearer(WRONG)) for _ in range(2)] == [401, 401]
    assert await status_of(client, bearer(TOKEN)) == 200
    assert [await status_of(client, bearer(WRONG)) for _ in range(2)] == [401, 401]
    assert await status_of(client, bearer(TOKEN)) == 200
    assert [await status_of(client, bearer(WRONG)) for _ in range(3)] == [401, 401, 401]
    assert await status_of(client, bearer(TOKEN)) == 429


async def test_failures_outside_the_window_are_forgotten(aiohttp_client: AiohttpClient) -> None:
    """The window slides: failures older than windowMs do not count towards the lockout."""
    clock = FakeClock()
    limit = {"maxAttempts": 2, "windowMs": 1_000, "lockoutMs": 60_000, "exemptLoopback": False}
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=limit), clock=clock))
    assert await status_of(client, bearer(WRONG)) == 401
    clock.now += 1.5
    assert await status_of(client, bearer(WRONG)) == 401
    assert await status_of(client, bearer(TOKEN)) == 200


async def test_loopback_clients_are_exempt_by_default(aiohttp_client: AiohttpClient) -> None:
    """With exemptLoopback true (the default), a loopback client is never locked out."""
    limit = {"maxAttempts": 1, "windowMs": 60_000, "lockoutMs": 300_000}
    client = await aiohttp_client(build_gateway(gateway_config(rate_limit=limit), clock=FakeClock()))
    assert [await status_of(client, bearer(WRONG)) for _ in range(20)] == [401] * 20
    assert await status_of(client, bearer(TOKEN)) == 200


async def test_no_limiter_without_rate_limit_config(aiohttp_client: AiohttpClient) -> None:
    """Without gateway.auth.rateLimit there is no limiter: wrong tokens stay 401 forever."""
    client = await aiohttp_client(build_gateway(gateway_config(), clock=FakeClock()))
    assert [await status_of(client, bearer(WRONG)) for _ in range(30)] == [401] * 30
    assert await status_of(client, bearer(TOKEN)) == 200


async def test_password_mode_counts_wrong_passwords(aiohttp_client: AiohttpClient) -> None:
    """In password mode the bearer secret is the password; the token is not, and wrong ones count."""
    config = gateway_config(auth={"mode": "password", "password": PASSWORD, "token": TOKEN}, rate_limit=LIMIT_3)
    client = await aiohttp_client(build_gateway(config, clock=FakeClock()))
    assert await status_of(client, bearer(PASSWORD)) == 200
    assert [await status_of(client, bearer(TOKEN)) for _ in range(3)] == [401, 401, 401]
    assert await status_of(client, bearer(PASSWORD)) == 429


@pytest.mark.parametrize("root_auth", [True, False], ids=("gateway middleware", "plugin's own check"))
async def test_limiter_applies_to_models_routes_too(aiohttp_client: AiohttpClient, root_auth: bool) -> None:
    """The lockout covers /v1/models as well, whichever middleware authenticates."""
    client = await aiohttp_client(
        build_gateway(gateway_config(rate_limit=LIMIT_3), clock=FakeClock(), root_auth=root_auth)
    )
    for _ in range(3):
        async with client.get("/v1/models", headers=bearer(WRONG)) as resp:
            assert resp.status == 401
    async with client.get("/v1/models", headers=bearer(TOKEN)) as resp:
        assert resp.status == 429
        assert await resp.json() == RATE_LIMITED


# --------------------------------------------------------------------------------------------
# Client IP through trusted proxies
# --------------------------------------------------------------------------------------------


def _request(peer: str, headers: Mapping[str, str] | None = None) -> web.Request:
    return make_mocked_request("POST", CHAT, headers=dict(headers or {})).clone(remote=peer)


@pytest.mark.parametrize(
    ("peer", "headers", "proxies", "expected"),
    [
        ("203.0.113.5", {"X-Forwarded-For": "198.51.100.1"}, [], "203.0.113.5"),
        ("203.0.113.5", {"X-Forwarded-For": "198.51.100.1"}, ["10.0.0.1"], "203.0.113.5"),
        ("10.0.0.1", {"X-Forwarded-For": "198.51.100.1"}, ["10.0.0.1"], "198.51.100.1"),
        ("10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 198.51.100.1"}, ["10.0.0.1"], "198.51.100.1"),
        ("10.0.0.1", {"X-Forwarded-For": "6.6.6.6, 198.51.100.1, 10.0.0.2"}, ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.1", {"X-Forwarded-For": "198.51.100.1:4711, garbage"}, ["10.0.0.1"], "198.51.100.1"),
        ("10.0.0.1", {"X-Forwarded-For": "[2001:db8::7]:443"}, ["10.0.0.1"], "2001:db8::7"),
        ("10.0.0.1", {"X-Forwarded-For": "10.0.0.3"}, ["10.0.0.0/8"], None),
        ("10.0.0.1", {}, ["10.0.0.1"], None),
        ("10.0.0.1", {"X-Real-IP": "198.51.100.9"}, ["10.0.0.1"], None),
    ],
    ids=("no proxies: XFF ignored", "untrusted peer: XFF ignored", "trusted peer: XFF honoured",
         "spoofed left entries ignored", "walk skips trusted hops (CIDR)", "ports and junk stripped",
         "bracketed IPv6", "all hops trusted: unknown", "no XFF: unknown", "X-Real-IP off by default"),
)
def test_client_ip_walks_forwarded_for_right_to_left_from_trusted_peers(
    peer: str, headers: dict[str, str], proxies: list[str], expected: str | None
) -> None:
    """X-Forwarded-For counts only from a trusted peer, read right to left past trusted hops; else fail closed."""
    assert client_ip(_request(peer, headers), proxies) == expected


def test_real_ip_fallback_only_when_enabled() -> None:
    """X-Real-IP is used only with allowRealIpFallback and only when XFF gives no client."""
    request = _request("10.0.0.1", {"X-Real-IP": "198.51.100.9"})
    assert client_ip(request, ["10.0.0.1"], allow_real_ip_fallback=True) == "198.51.100.9"
    assert client_ip(_request("203.0.113.5", {"X-Real-IP": "198.51.100.9"}), ["10.0.0.1"],
                     allow_real_ip_fallback=True) == "203.0.113.5"


@pytest.mark.parametrize("root_auth", [True, False], ids=("gateway middleware", "plugin's own check"))
async def test_forwarded_clients_are_limited_separately_behind_a_trusted_proxy(
    aiohttp_client: AiohttpClient, root_auth: bool
) -> None:
    """Behind a trusted proxy each forwarded client has its own counter; a locked one stays locked."""
    limit = {"maxAttempts": 1, "windowMs": 60_000, "lockoutMs": 300_000, "exemptLoopback": False}
    config = gateway_config(rate_limit=limit, trusted_proxies=["127.0.0.1"])
    client = await aiohttp_client(build_gateway(config, clock=FakeClock(), root_auth=root_auth))
    alice = {"X-Forwarded-For": "203.0.113.5"}
    bob = {"X-Forwarded-For": "198.51.100.7"}
    assert await status_of(client, {**bearer(WRONG), **alice}) == 401
    assert await status_of(client, {**bearer(TOKEN), **alice}) == 429
    assert await status_of(client, {**bearer(TOKEN), **bob}) == 200
    # A spoofed entry on the left does not change who alice is (the proxy appended her address).
    spoofed = {"X-Forwarded-For": "192.0.2.44, 203.0.113.5"}
    assert await status_of(client, {**bearer(TOKEN), **spoofed}) == 429


async def test_spoofed_forwarded_for_from_untrusted_peer_cannot_dodge_the_limiter(aiohttp_client: AiohttpClient) -> None:
    """When the peer is not a trusted proxy, a fresh X-Forwarded-For per request changes nothing."""
    limit = {"maxAttempts": 2, "windowMs": 60_000, "lockoutMs": 300_000, "exemptLoopback": False}
    config = gateway_config(rate_limit=limit, trusted_proxies=["10.9.9.9"])
    client = await aiohttp_client(build_gateway(config, clock=FakeClock()))
    statuses = [
        await status_of(client, {**bearer(WRONG), "X-Forwarded-For": f"198.51.100.{n}"}) for n in range(1, 5)
    ]
    assert statuses == [401, 401, 429, 429]
    assert await status_of(client, {**bearer(TOKEN), "X-Forwarded-For": "198.51.100.200"}) == 429


# --------------------------------------------------------------------------------------------
# Secrets never leak
# --------------------------------------------------------------------------------------------

SECRETS: Final = (TOKEN, PASSWORD, API_KEY, HEADER_SECRET, WRONG, TOKEN[:-1] + "X")


def _rendered(record: logging.LogRecord) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return " ".join([formatter.format(record), repr(record.args), str(record.__dict__)])


@pytest.mark.parametrize("mode", ["token", "password"])
async def test_secrets_never_appear_in_logs_bodies_or_headers(
    aiohttp_client: AiohttpClient, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """Right and wrong tokens and passwords, and provider keys, never show up in any log record or response."""
    caplog.set_level(logging.DEBUG, logger="openclaw_http_compat")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    right = TOKEN if mode == "token" else PASSWORD
    config = HttpCompatConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": mode, "token": TOKEN, "password": PASSWORD,
                         "rateLimit": {"maxAttempts": 3, "lockoutMs": 60_000, "exemptLoopback": False}},
                "trustedProxies": ["127.0.0.1"],
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "models": {"providers": {"up": {"baseUrl": "http://127.0.0.1:9/v1", "apiKey": API_KEY,
                                            "headers": {"X-Upstream-Key": HEADER_SECRET}}}},
        },
        env={},
    )
    client = await aiohttp_client(build_gateway(config, clock=FakeClock()))
    seen: list[str] = []
    attempts: list[tuple[str, str, dict[str, str], bytes]] = [
        ("POST", CHAT, bearer(right), b'{"messages": [{"role": "user", "content": "hi"}]}'),
        ("POST", CHAT, {**bearer(right), "x-openclaw-agent-id": "ghost"}, b'{"messages": []}'),
        ("POST", CHAT, bearer(right), b"{not json"),
        ("POST", CHAT, {**bearer(right), "x-openclaw-model": "up/m"}, b'{"messages": [{"role": "user", "content": "x"}], "stream": true}'),
        ("GET", CHAT, bearer(right), b""),
        ("GET", "/v1/models", bearer(right), b""),
        ("GET", "/v1/nope", bearer(WRONG), b""),
    ]
    for secret in (WRONG, TOKEN[:-1] + "X", TOKEN if mode == "password" else PASSWORD):
        attempts.append(("POST", CHAT, {**bearer(secret), "X-Forwarded-For": "203.0.113.5"}, b"{}"))
    attempts.append(("POST", CHAT, {**bearer(right), "X-Forwarded-For": "203.0.113.5"}, b"{}"))  # locked: 429
    attempts.append(("GET", "/v1/models", {"Authorization": f"Basic {right}"}, b""))
    statuses = []
    for method, path, headers, data in attempts:
        async with client.request(method, path, headers=headers, data=data) as resp:
            statuses.append(resp.status)
            seen.append(await resp.text())
            seen.extend(f"{name}: {value}" for name, value in resp.headers.items())
    assert statuses == [200, 400, 400, 200, 200, 200, 404, 401, 401, 401, 429, 401]
    assert any(r.name.startswith("aiohttp.access") for r in caplog.records), "access log not captured"
    assert any(r.name.startswith("openclaw_http_compat") for r in caplog.records), "plugin log not captured"
    seen.extend(_rendered(record) for record in caplog.records)
    for text in seen:
        for secret in SECRETS:
            assert secret not in text


def test_config_reprs_hide_secrets() -> None:
    """repr() and str() of the config objects never show the token, password, API key or provider headers."""
    config = GatewayConfig.from_mapping(
        {
            "gateway": {"auth": {"mode": "token", "token": TOKEN, "password": PASSWORD}},
            "models": {"providers": {"up": {"apiKey": API_KEY, "headers": {"Authorization": f"Bearer {HEADER_SECRET}"}}}},
        },
        env={},
    )
    provider = config.provider("up")
    assert isinstance(provider, ProviderConfig) and provider.api_key == API_KEY
    auth = config.plugin.auth
    authenticator = SharedSecretAuthenticator(auth)
    for obj in (config, config.plugin, auth, provider, authenticator, config.providers):
        for text in (repr(obj), str(obj)):
            for secret in (TOKEN, PASSWORD, API_KEY, HEADER_SECRET):
                assert secret not in text
    assert "mode='token'" in repr(auth)


def test_env_secrets_are_hidden_too() -> None:
    """Secrets taken from OPENCLAW_GATEWAY_TOKEN / _PASSWORD are hidden in repr like configured ones."""
    config = HttpCompatConfig.from_mapping(
        {"gateway": {}}, env={"OPENCLAW_GATEWAY_TOKEN": TOKEN, "OPENCLAW_GATEWAY_PASSWORD": PASSWORD}
    )
    assert config.auth.token == TOKEN
    assert TOKEN not in repr(config) and PASSWORD not in repr(config)


@pytest.mark.parametrize(
    "raw",
    [
        {"gateway": {"auth": {"mode": "token", "token": 8_675_309_123}}},
        {"gateway": {"auth": {"mode": "password", "password": 8_675_309_123}}},
        {"models": {"providers": {"up": {"apiKey": 8_675_309_123}}}},
        {"models": {"providers": {"up": {"headers": {"X-Key": 8_675_309_123}}}}},
    ],
    ids=("token", "password", "apiKey", "provider header"),
)
def test_config_errors_do_not_echo_secret_values(raw: dict[str, Any]) -> None:
    """A secret of the wrong type (a bare number in json5) is named by key, but its value is not echoed."""
    with pytest.raises(ConfigError) as caught:
        HttpCompatConfig.from_mapping(raw, env={})
    assert "8675309123" not in str(caught.value)
