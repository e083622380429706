"""Mounting: the flag, the frozen-app guard, the /v1 prefix next to gateway routes, inherited auth."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    AgentRoster,
    auth_middleware,
    AuthenticationError,
    create_app,
    Host,
    Principal,
    PRINCIPAL_KEY,
    setup,
    SharedSecretAuthenticator,
)
from openclaw_http_compat.plugin import BASE_PATH, gateway_plugin
from openclaw_http_compat.keys import CONFIG_KEY, HOST_KEY, RUNS_KEY

from .conftest import (
    COMPLETIONS,
    TOKEN,
    ScriptedRunner,
    chat_body,
    error_body,
    health,
    make_config,
    make_gateway,
)

UNAUTHORIZED = error_body("Unauthorized", "unauthorized")
NOT_FOUND = error_body("Not Found", code="not_found")
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def host_for(runner: ScriptedRunner, roster: AgentRoster | None = None) -> Host:
    config = make_config()
    return Host(runner=runner, authenticator=SharedSecretAuthenticator(config.auth),
                roster=roster or config.agents)


def test_flag_off_mounts_nothing() -> None:
    """With chatCompletions.enabled false, setup returns None and leaves the app untouched."""
    app = web.Application()
    app.router.add_get("/health", health)
    before = (list(app.router.resources()), list(app.on_startup), list(app.on_shutdown), list(app.cleanup_ctx))
    assert setup(app, make_config(enabled=False), host_for(ScriptedRunner())) is None
    assert (list(app.router.resources()), list(app.on_startup), list(app.on_shutdown), list(app.cleanup_ctx)) == before
    assert len(app) == 0


def test_flag_off_on_a_frozen_app_is_still_a_no_op() -> None:
    """A disabled endpoint never touches the app, so a frozen app is no error."""
    app = web.Application()
    app.freeze()
    assert setup(app, make_config(enabled=False), host_for(ScriptedRunner())) is None


async def test_flag_off_path_is_404_and_gateway_routes_work(aiohttp_client: AiohttpClient) -> None:
    """Ports openai-http.test.ts: the endpoint is not enabled -> 404; the gateway's own routes still serve."""
    client = await aiohttp_client(make_gateway(make_config(enabled=False), ScriptedRunner()))
    resp = await client.post(COMPLETIONS, json=chat_body(), headers=AUTH)
    assert resp.status == 404
    assert resp.content_type == "text/plain"
    models = await client.get("/v1/models", headers=AUTH)
    assert models.status == 404
    assert (await client.get("/health")).status == 200


def test_flag_on_mounts_a_built_subapp() -> None:
    """With the flag on, setup mounts a fully built sub-app under /v1 and returns it."""
    app = web.Application()
    runner = ScriptedRunner()
    config = make_config()
    host = host_for(runner)
    subapp = setup(app, config, host)
    assert subapp is not None
    assert subapp[CONFIG_KEY] is config
    assert subapp[HOST_KEY] is host
    assert subapp[RUNS_KEY].in_flight == 0
    assert subapp.pre_frozen  # add_subapp pre-freezes it: it was complete before mounting
    prefixes = [r.canonical for r in app.router.resources()]
    assert prefixes == [BASE_PATH] == ["/v1"]
    sub_routes = sorted((r.method, r.resource.canonical) for r in subapp.router.routes() if r.resource is not None)
    assert sub_routes == [
        ("DELETE", "/v1/chat/completions/{completion_id}"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions/{completion_id}"),
        ("GET", "/v1/chat/completions/{completion_id}/messages"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions/{completion_id}"),
    ]
    assert len(app) == 0  # nothing stored on the gateway's own app


def test_mount_after_freeze_raises() -> None:
    """Mounting on a started (frozen) gateway app is a RuntimeError that says what to do."""
    app = web.Application()
    app.freeze()
    with pytest.raises(RuntimeError, match=re.escape(
            "openclaw_http_compat.setup() must be called before the gateway application starts "
            "(before runner.setup() or web.run_app())")):
        setup(app, make_config(), host_for(ScriptedRunner()))


async def test_mount_after_the_server_started_raises(aiohttp_client: AiohttpClient) -> None:
    """Calling setup on an app that is already serving raises instead of half-mounting."""
    app = web.Application()
    app.router.add_get("/health", health)
    client = await aiohttp_client(app)
    with pytest.raises(RuntimeError, match=r"must be called before the gateway application starts"):
        setup(app, make_config(), host_for(ScriptedRunner()))
    assert (await client.get("/health")).status == 200


def test_create_app_is_standalone() -> None:
    """create_app builds the sub-app without any parent."""
    subapp = create_app(make_config(), host_for(ScriptedRunner()))
    assert not subapp.frozen
    assert {r.canonical for r in subapp.router.resources()} == {
        "/chat/completions", "/chat/completions/{completion_id}", "/chat/completions/{completion_id}/messages",
        "/models", "/models/{model_id}",
    }


def test_gateway_plugin_entry_point() -> None:
    """The ``openclaw.gateway.plugins`` entry point loads ``gateway_plugin``, which is setup."""
    (entry,) = importlib.metadata.entry_points(group="openclaw.gateway.plugins", name="chat-completions")
    assert entry.load() is gateway_plugin
    app = web.Application()
    assert gateway_plugin(app, make_config(), host_for(ScriptedRunner())) is not None
    assert gateway_plugin(web.Application(), make_config(enabled=False), host_for(ScriptedRunner())) is None


async def test_gateway_routes_next_to_v1_still_resolve(aiohttp_client: AiohttpClient) -> None:
    """The gateway's /health and its WebSocket at / keep working beside the /v1 sub-app."""
    client = await aiohttp_client(make_gateway(make_config(), ScriptedRunner()))
    resp = await client.get("/health")
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    async with client.ws_connect("/") as ws:
        await ws.send_str("ping")
        assert await ws.receive_str() == "ping"
    completion = await client.post(COMPLETIONS, json=chat_body(), headers=AUTH)
    assert completion.status == 200


@pytest.mark.parametrize("order", ["before", "after"])
async def test_longer_static_gateway_route_wins_over_the_subapp(aiohttp_client: AiohttpClient, order: str) -> None:
    """A root static route such as /v1/responses is served by the gateway, registered before or after setup."""

    async def responses(request: web.Request) -> web.Response:
        return web.Response(text="gateway responses endpoint")

    app = web.Application()
    if order == "before":
        app.router.add_post("/v1/responses", responses)
    setup(app, make_config(), host_for(ScriptedRunner()))
    if order == "after":
        app.router.add_post("/v1/responses", responses)
    client = await aiohttp_client(app)
    resp = await client.post("/v1/responses", json={})
    assert (resp.status, await resp.text()) == (200, "gateway responses endpoint")
    completion = await client.post(COMPLETIONS, json=chat_body(), headers=AUTH)
    assert completion.status == 200


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions/", "/v1/chat", "/v1/completions", "/v1/nothing", "/v1/models/"],
)
async def test_other_paths_under_the_prefix_are_json_404(aiohttp_client: AiohttpClient, path: str) -> None:
    """The sub-app answers its whole prefix: unknown paths are a JSON 404, before auth."""
    client = await aiohttp_client(make_gateway(make_config(), ScriptedRunner()))
    resp = await client.post(path, json=chat_body())
    assert resp.status == 404
    assert await resp.json() == NOT_FOUND
    assert re.fullmatch(r"req_[0-9a-f]{32}", resp.headers["x-request-id"])


async def test_query_string_is_tolerated(aiohttp_client: AiohttpClient) -> None:
    """The path must match exactly, but a query string does not matter."""
    client = await aiohttp_client(make_gateway(make_config(), ScriptedRunner()))
    resp = await client.post(f"{COMPLETIONS}?api-version=2024-01-01", json=chat_body(), headers=AUTH)
    assert resp.status == 200


@pytest.mark.parametrize("gateway_auth", [True, False], ids=("gateway-auth", "plugin-auth"))
async def test_without_gateway_auth_the_plugin_still_authenticates(aiohttp_client: AiohttpClient,
                                                                   gateway_auth: bool) -> None:
    """If the gateway has no auth middleware, the sub-app authenticates by itself: never open by accident."""
    runner = ScriptedRunner()
    client = await aiohttp_client(make_gateway(make_config(), runner, gateway_auth=gateway_auth))
    refused = await client.post(COMPLETIONS, json=chat_body())
    assert (refused.status, await refused.json()) == (401, UNAUTHORIZED)
    ok = await client.post(COMPLETIONS, json=chat_body(), headers=AUTH)
    assert ok.status == 200
    assert len(runner.requests) == 1


class CountingAuthenticator:
    """A hand-written Authenticator that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def authenticate(self, credential: str | None, *, client_ip: str | None) -> Principal:
        self.calls += 1
        if credential != TOKEN:
            raise AuthenticationError()
        return Principal(subject="counted")


async def test_gateway_auth_middleware_runs_once(aiohttp_client: AiohttpClient) -> None:
    """With the gateway's auth_middleware in front, the plugin reuses its principal and does not re-check."""
    authenticator = CountingAuthenticator()
    config = make_config()
    app = web.Application(middlewares=[auth_middleware(authenticator)])
    setup(app, config, Host(runner=ScriptedRunner(), authenticator=authenticator, roster=config.agents))
    client = await aiohttp_client(app)
    resp = await client.post(COMPLETIONS, json=chat_body(), headers=AUTH)
    assert resp.status == 200
    assert authenticator.calls == 1


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def test_auth_is_inherited_from_the_gateway_middleware(aiohttp_client: AiohttpClient) -> None:
    """A gateway middleware that sets PRINCIPAL_KEY decides auth; the plugin trusts it and forwards the owner flag."""

    @web.middleware
    async def gateway_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        user = request.headers.get("X-Gateway-User")
        if user is None:
            raise web.HTTPUnauthorized(text="gateway login required")
        request[PRINCIPAL_KEY] = Principal(subject=user, sender_is_owner=user == "owner")
        return await handler(request)

    runner = ScriptedRunner()
    config = make_config()  # token mode: the plugin would refuse these requests on its own
    app = web.Application(middlewares=[gateway_auth])
    setup(app, config, host_for(runner))
    client = await aiohttp_client(app)

    refused = await client.post(COMPLETIONS, json=chat_body())
    assert (refused.status, await refused.text()) == (401, "gateway login required")
    guest = await client.post(COMPLETIONS, json=chat_body(), headers={"X-Gateway-User": "guest"})
    assert guest.status == 200
    owner = await client.post(COMPLETIONS, json=chat_body(), headers={"X-Gateway-User": "owner"})
    assert owner.status == 200
    assert [r.sender_is_owner for r in runner.requests] == [False, True]


@pytest.mark.parametrize("gateway_auth", [True, False], ids=("gateway-auth", "plugin-auth"))
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405_before_auth(aiohttp_client: AiohttpClient, gateway_auth: bool,
                                               method: str) -> None:
    """Ports openai-http.e2e.test.ts: a method the route lacks is 405 with ``Allow``, even
    unauthenticated (GET lists stored completions, as OpenAI's API does)."""
    client = await aiohttp_client(make_gateway(make_config(), ScriptedRunner(), gateway_auth=gateway_auth))
    resp = await client.request(method, COMPLETIONS)
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET,POST"
    assert await resp.json() == error_body("Method Not Allowed", code="method_not_allowed")


async def test_models_route_is_get_only(aiohttp_client: AiohttpClient) -> None:
    """A POST to /v1/models is 405 with ``Allow: GET``."""
    client = await aiohttp_client(make_gateway(make_config(), ScriptedRunner()))
    resp = await client.post("/v1/models", headers=AUTH)
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET"
