"""CORS on the endpoint's routes: exact headers, off by default, preflights without credentials.

The stand-in gateway (``make_gateway``: its own auth middleware on the root app) serves the
plugin over a real socket; ``gateway.http.cors.allowOrigins`` is set per test.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import pytest
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat.config import CorsConfig, HttpCompatConfig
from openclaw_http_compat.errors import ConfigError

from .conftest import (
    COMPLETIONS,
    DONE,
    ClientFactory,
    GatewayClient,
    ScriptedRunner,
    chat_body,
    error_body,
    make_config,
    make_gateway,
)

PAGE: Final = "http://127.0.0.1:8123"
OTHER: Final = "http://127.0.0.1:8124"
CORS_HEADERS: Final = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Max-Age",
    "Access-Control-Allow-Credentials",
)
#: What a browser asks before the openai SDK's streamed call.
REQUESTED: Final = "authorization, content-type, x-stainless-os, x-stainless-retry-count, x-openclaw-agent-id, x-custom"


@pytest.fixture
def cors_client(aiohttp_client: AiohttpClient, runner: ScriptedRunner) -> Any:
    """A client of the stand-in gateway with ``gateway.http.cors.allowOrigins`` set to ``origins``."""

    async def build(origins: object) -> GatewayClient:
        config = attrs.evolve(make_config(), cors=CorsConfig(allow_origins=origins))
        return await aiohttp_client(make_gateway(config, runner))

    return build


def preflight_headers(origin: str, method: str = "POST", requested: str = REQUESTED) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": requested}


def cors_of(headers: Any) -> dict[str, str]:
    return {name: headers[name] for name in (*CORS_HEADERS, "Vary") if name in headers}


async def test_off_by_default_no_cors_header_at_all(gateway_client: ClientFactory, auth_headers: dict[str, str]) -> None:
    """Without allowOrigins: a preflight is the plain 405, and no answer has any CORS header or Vary."""
    client = await gateway_client()
    pre = await client.options(COMPLETIONS, headers=preflight_headers(PAGE))
    assert (pre.status, await pre.json()) == (405, error_body("Method Not Allowed", code="method_not_allowed"))
    assert cors_of(pre.headers) == {}
    answer = await client.post(COMPLETIONS, json=chat_body(), headers={**auth_headers, "Origin": PAGE})
    assert answer.status == 200
    assert cors_of(answer.headers) == {}


async def test_preflight_from_an_allowed_origin_needs_no_credentials(cors_client: Any) -> None:
    """An allowed origin's preflight (no Authorization) is 204 with the origin, Vary, POST and the
    requested headers this API knows, each reflected (x-custom is not among them). The route also
    lists stored completions, so GET is allowed too."""
    client = await cors_client([PAGE])
    pre = await client.options(COMPLETIONS, headers=preflight_headers(PAGE))
    assert pre.status == 204
    assert cors_of(pre.headers) == {
        "Access-Control-Allow-Origin": PAGE,
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count, x-openclaw-agent-id",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    assert await pre.read() == b""


async def test_preflight_of_a_stored_completion_allows_its_methods(cors_client: Any) -> None:
    """/v1/chat/completions/{id}: read, update and delete are allowed from an allowed origin."""
    client = await cors_client([PAGE])
    pre = await client.options("/v1/chat/completions/chatcmpl-1", headers=preflight_headers(PAGE, "DELETE", "authorization"))
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == PAGE
    assert pre.headers["Access-Control-Allow-Methods"] == "DELETE, GET, POST"


async def test_preflight_of_the_models_routes_allows_get(cors_client: Any) -> None:
    """GET /v1/models and /v1/models/{id}: the preflight allows GET; a POST preflight there is refused."""
    client = await cors_client([PAGE])
    for path in ("/v1/models", "/v1/models/openclaw%2Fmain"):
        pre = await client.options(path, headers=preflight_headers(PAGE, "GET", "authorization"))
        assert pre.status == 204
        assert pre.headers["Access-Control-Allow-Methods"] == "GET"
        assert pre.headers["Access-Control-Allow-Headers"] == "authorization"
    refused = await client.options("/v1/models", headers=preflight_headers(PAGE, "POST"))
    assert refused.status == 405
    assert "Access-Control-Allow-Origin" not in refused.headers


@pytest.mark.parametrize("path", [COMPLETIONS, "/v1/nowhere"])
async def test_preflight_from_another_origin_or_path_gets_no_allow_origin(cors_client: Any, path: str) -> None:
    """Another origin's preflight (or one for a path we do not serve) gets no Access-Control-Allow-Origin."""
    client = await cors_client([PAGE])
    pre = await client.options(path, headers=preflight_headers(OTHER if path == COMPLETIONS else PAGE))
    assert pre.status in (404, 405)
    assert "Access-Control-Allow-Origin" not in pre.headers
    assert "Access-Control-Allow-Headers" not in pre.headers


async def test_answers_to_an_allowed_origin_expose_request_id_and_retry_after(
    cors_client: Any, auth_headers: dict[str, str]
) -> None:
    """The JSON answer, the stream's head and the gateway's own 401 carry the origin and the exposed headers."""
    client = await cors_client([PAGE])
    expected = {
        "Access-Control-Allow-Origin": PAGE,
        "Access-Control-Expose-Headers": "x-request-id, retry-after",
        "Vary": "Origin",
    }
    answer = await client.post(COMPLETIONS, json=chat_body(), headers={**auth_headers, "Origin": PAGE})
    assert answer.status == 200
    assert cors_of(answer.headers) == expected
    stream = await client.post(COMPLETIONS, json=chat_body(stream=True), headers={**auth_headers, "Origin": PAGE})
    assert (await stream.text()).endswith(DONE)
    assert cors_of(stream.headers) == expected
    refused = await client.post(COMPLETIONS, json=chat_body(), headers={"Origin": PAGE})
    assert refused.status == 401
    assert cors_of(refused.headers) == expected


async def test_answers_to_another_origin_vary_but_allow_nothing(
    cors_client: Any, auth_headers: dict[str, str]
) -> None:
    """Another origin (or none) gets the answer with Vary: Origin and no other CORS header."""
    client = await cors_client([PAGE])
    for headers in ({**auth_headers, "Origin": OTHER}, auth_headers):
        answer = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
        assert answer.status == 200
        assert cors_of(answer.headers) == {"Vary": "Origin"}


async def test_any_origin_is_star_without_vary(cors_client: Any, auth_headers: dict[str, str]) -> None:
    """allowOrigins "*": the preflight and the answer say *, never with credentials."""
    client = await cors_client("*")
    pre = await client.options(COMPLETIONS, headers=preflight_headers(OTHER, requested="content-type"))
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "*"
    assert pre.headers["Access-Control-Allow-Headers"] == "content-type"
    answer = await client.post(COMPLETIONS, json=chat_body(), headers={**auth_headers, "Origin": OTHER})
    assert cors_of(answer.headers) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Expose-Headers": "x-request-id, retry-after",
    }


@pytest.mark.parametrize(
    ("value", "origins"),
    [("*", ("*",)), (["HTTP://Page.Example:8080"], ("http://page.example:8080",)), ([], ())],
)
def test_allow_origins_config(value: object, origins: tuple[str, ...]) -> None:
    """allowOrigins takes "*" or a list of origins (lower-cased as browsers send them)."""
    raw = {"gateway": {"auth": {"mode": "none"}, "http": {"cors": {"allowOrigins": value}}}}
    assert HttpCompatConfig.from_mapping(raw, env={}).cors == CorsConfig(allow_origins=origins)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["https://app.example.com/"], "gateway.http.cors.allowOrigins[0]: expected an origin like "
         "'https://app.example.com' (scheme://host[:port], no path), got 'https://app.example.com/'"),
        (["*", "https://a.example"], "gateway.http.cors.allowOrigins[0]: '*' allows any origin: give it alone, as a string"),
        ("https://a.example", "gateway.http.cors.allowOrigins: expected an array of strings, got the string 'https://a.example'"),
    ],
)
def test_bad_allow_origins_are_refused(value: object, message: str) -> None:
    """A path, "*" among origins, or a bare string that is not "*" is a config error naming the key."""
    raw = {"gateway": {"auth": {"mode": "none"}, "http": {"cors": {"allowOrigins": value}}}}
    with pytest.raises(ConfigError) as error:
        HttpCompatConfig.from_mapping(raw, env={})
    assert str(error.value) == message
