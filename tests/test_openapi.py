"""The OpenAPI document shipped in the package, and live servers checked against it.

``openclaw_http_compat/openapi.json`` describes the plugin's routes. It must be a valid
OpenAPI 3.1 document, ship in the installed package, and be what the servers really do:
schemathesis generates requests from it (schema-valid and schema-invalid ones) and checks
every answer for a 5xx, an undocumented status, an undocumented content type, a body or
SSE event that breaks the documented schema, and documented headers of the wrong type.

The servers listen on 127.0.0.1 ephemeral ports in a background thread (schemathesis calls
them synchronously with ``requests``) and are always shut down.
"""

from __future__ import annotations

import asyncio
import configparser
import copy
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from urllib.parse import quote
from typing import Any, Final

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import openclaw_http_compat
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.app import build_gateway_app

from .conftest import TOKEN, ScriptedRunner, make_config, make_gateway
from .test_properties import tool_or_echo

ROOT: Final = Path(__file__).resolve().parent.parent
AUTH: Final = {"Authorization": f"Bearer {TOKEN}"}
OPERATIONS: Final = (
    "POST /v1/chat/completions",
    "GET /v1/models",
    "GET /v1/models/{model_id}",
    "GET /v1/chat/completions",
    "GET /v1/chat/completions/{completion_id}",
    "POST /v1/chat/completions/{completion_id}",
    "DELETE /v1/chat/completions/{completion_id}",
    "GET /v1/chat/completions/{completion_id}/messages",
)
AGENT_HEADERS: Final = ("x-openclaw-agent-id", "x-openclaw-agent", "x-openclaw-model")
STATUSES: Final = ("400", "401", "404", "405", "408", "413", "429", "500", "502", "503", "504")
CHECKS: Final[list[CheckFunction]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Examples per operation and generation mode: 3 operations x 2 modes x this, per server.
EXAMPLES_PER_OPERATION: Final = 25


def load_document() -> dict[str, Any]:
    """The OpenAPI document, read the way an installed package's user reads it."""
    text = resources.files(openclaw_http_compat).joinpath("openapi.json").read_text(encoding="utf-8")
    document = json.loads(text)
    assert isinstance(document, dict)
    return document


# --------------------------------------------------------------------------------------------
# The document itself
# --------------------------------------------------------------------------------------------


def test_document_ships_in_the_package() -> None:
    """openapi.json is a package resource and setup.cfg lists it as package data."""
    assert resources.files(openclaw_http_compat).joinpath("openapi.json").is_file()
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    package_data = parser["options.package_data"]["openclaw_http_compat"].split()
    assert "openapi.json" in package_data
    assert "py.typed" in package_data


def test_document_is_a_valid_openapi_31_document() -> None:
    """The document passes the OpenAPI 3.1 meta-schema (schemathesis' validator)."""
    document = load_document()
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()


def test_validator_rejects_a_broken_document() -> None:
    """The validator used above is live: a document with a malformed response object fails it."""
    broken = copy.deepcopy(load_document())
    broken["paths"]["/v1/models"]["get"]["responses"]["200"] = {"content": "nope"}
    with pytest.raises(Exception, match="(?i)valid"):
        schemathesis.openapi.from_dict(broken).validate()


def test_document_version_matches_the_package() -> None:
    """info.version is the package's __version__."""
    assert load_document()["info"]["version"] == openclaw_http_compat.__version__


def test_document_lists_the_plugin_routes_and_their_statuses() -> None:
    """Chat completions documents JSON and SSE successes and every error status with the error envelope."""
    document = load_document()
    schema = schemathesis.openapi.from_dict(document)
    labels = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        labels.append(result.ok().label)
    assert sorted(labels) == sorted(OPERATIONS)
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    responses = document["components"]["responses"]
    for status in STATUSES:
        name = chat["responses"][status]["$ref"].rsplit("/", 1)[-1]
        assert responses[name]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    retrieve = document["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert {"200", "404"} <= set(retrieve)
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerAuth": []}]


def test_request_schema_is_lenient_about_unknown_fields() -> None:
    """The request schema allows unknown fields, as the plugin does."""
    request = load_document()["components"]["schemas"]["ChatCompletionRequest"]
    assert request["additionalProperties"] is True
    assert request["required"] == ["messages"]


def test_error_envelope_schema_is_exact() -> None:
    """ErrorResponse is exactly {"error": {message, type, param, code}}, nothing more."""
    envelope = load_document()["components"]["schemas"]["ErrorResponse"]
    assert envelope["additionalProperties"] is False and envelope["required"] == ["error"]
    inner = envelope["properties"]["error"]
    assert inner["additionalProperties"] is False
    assert inner["required"] == ["message", "type", "param", "code"]


# --------------------------------------------------------------------------------------------
# Live servers
# --------------------------------------------------------------------------------------------


@contextmanager
def serve_in_thread(app: web.Application) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (ephemeral port) in a thread of its own; yield its base URL.

    The app runs its startup and cleanup (``cleanup_ctx``, ``on_shutdown``) like under
    ``run_app``; leaving the block shuts it down and joins the thread.
    """
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, shutdown_timeout=5)
    ready = threading.Event()
    failure: list[BaseException] = []
    port: list[int] = []

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.append(runner.addresses[0][1])

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, name="openapi-live-server", daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the server did not start"
        if failure:
            raise failure[0]
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        assert not thread.is_alive(), "the server did not shut down"
        loop.close()


def _forces_a_tool(body: object) -> bool:
    choice = body.get("tool_choice") if isinstance(body, dict) else None
    return choice == "required" or isinstance(choice, dict)


def not_a_server_error_but_unmet_tool_choice(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """``not_a_server_error``, except the documented 502 of a forced tool_choice the agent ignored.

    The reference gateway's echo provider never calls tools, so ``tool_choice: "required"``
    is rightly answered 502 there.
    """
    if response.status_code == 502 and _forces_a_tool(case.body):
        message = json.loads(response.content)["error"]["message"]
        if message.startswith("tool_choice"):
            return None
    return not_a_server_error(ctx, response, case)


REFERENCE_CHECKS: Final[list[CheckFunction]] = [not_a_server_error_but_unmet_tool_choice, *CHECKS[1:]]


def run_schemathesis(
    base_url: str, operation_label: str, mode: GenerationMode, checks: list[CheckFunction] = CHECKS
) -> list[tuple[int, str]]:
    """Generate cases for one operation and check every answer; return (status, media type) of each."""
    schema = schemathesis.openapi.from_dict(load_document())
    method, path = operation_label.split(" ", 1)
    operation = schema[path][method]
    answers: list[tuple[int, str]] = []

    with requests.Session() as session:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            # Reproducible in CI: the same cases on every run of the same document.
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode), tweak=st.integers(0, 3))
        def check(case: schemathesis.Case[Any], tweak: int) -> None:
            if tweak and case.headers:
                # A random agent id is almost never a configured agent: most cases go without
                # the agent headers, so that schema-valid requests reach the success path.
                for name in AGENT_HEADERS:
                    case.headers.pop(name, None)
            if tweak == 3 and mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
                # Optional fields are rarely drawn; make sure schema-valid streams are sent too.
                case.body["stream"] = True
            if tweak and case.path_parameters and "completion_id" in case.path_parameters:
                # A random id is never stored: most cases name a completion stored just now.
                case.path_parameters["completion_id"] = stored_completion_id(base_url, session)
            response = case.call_and_validate(
                base_url=base_url, session=session, headers=AUTH, checks=checks, timeout=10
            )
            media_type = response.headers.get("content-type", [""])[0].partition(";")[0]
            answers.append((response.status_code, media_type))

        check()
    return answers


def stored_completion_id(base_url: str, session: requests.Session) -> str:
    """The id of a completion created now with ``store: true``."""
    response = session.post(
        f"{base_url}/v1/chat/completions",
        json={"store": True, "metadata": {"k": "v"}, "messages": [{"role": "user", "content": "keep"}]},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    completion_id = response.json()["id"]
    assert isinstance(completion_id, str)
    return completion_id


def assert_conforms(
    base_url: str, operation_label: str, mode: GenerationMode, checks: list[CheckFunction] = CHECKS
) -> None:
    """Run schemathesis on one operation; schema-valid requests must reach the success path too."""
    answers = run_schemathesis(base_url, operation_label, mode, checks)
    seen = sorted(Counter(answers).items())
    assert len(answers) >= 10, f"only {len(answers)} cases were generated for {operation_label} ({mode})"
    if mode is GenerationMode.POSITIVE:
        assert (200, "application/json") in answers, seen
        if operation_label == "POST /v1/chat/completions":
            assert (200, "text/event-stream") in answers, seen


@pytest.fixture(scope="module")
def plugin_server() -> Iterator[str]:
    """The stand-in gateway with the plugin (instant echo/tool runner), served on loopback."""
    with serve_in_thread(make_gateway(make_config(), ScriptedRunner(tool_or_echo))) as base_url:
        yield base_url


MODES: Final = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@pytest.mark.parametrize("mode", MODES, ids=("valid", "invalid"))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_plugin_on_stand_in_gateway_conforms_to_document(plugin_server: str, operation: str, mode: GenerationMode) -> None:
    """Generated requests to the plugin get no 5xx and only documented statuses, content types and bodies."""
    assert_conforms(plugin_server, operation, mode)


def validate_exchange(
    base_url: str,
    method: str,
    template: str,
    *,
    model_id: str | None = None,
    checks: list[CheckFunction] = CHECKS,
    **kwargs: Any,
) -> requests.Response:
    """Send one request with requests and validate the answer against the document."""
    operation = schemathesis.openapi.from_dict(load_document())[template][method]
    path = template if model_id is None else template.replace("{model_id}", quote(model_id, safe=""))
    response = requests.request(method, f"{base_url}{path}", timeout=10, **kwargs)
    body = kwargs.get("json")
    path_parameters = {"model_id": model_id} if model_id is not None else None
    case = operation.Case(path_parameters=path_parameters) if body is None else operation.Case(body=body)
    case.validate_response(response, checks=checks)
    return response


@pytest.mark.parametrize(
    ("request_body", "content_type"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "application/json"),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": True,
          "stream_options": {"include_usage": True}}, "text/event-stream"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": "required"}, "application/json"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}],
          "stream": True}, "text/event-stream"),
        ({"messages": []}, "application/json"),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}, "application/json"),
    ],
    ids=("json", "sse with usage", "json tool call", "sse tool call", "400 missing message", "400 bad model"),
)
def test_plugin_answers_match_document(plugin_server: str, request_body: dict[str, Any], content_type: str) -> None:
    """Completions, streams (every SSE event), tool calls and errors all validate against the document."""
    response = validate_exchange(plugin_server, "POST", "/v1/chat/completions", json=request_body, headers=AUTH)
    assert response.headers["Content-Type"].startswith(content_type)


@pytest.mark.parametrize(
    ("method", "template", "model_id", "headers", "status"),
    [
        ("GET", "/v1/models", None, AUTH, 200),
        ("GET", "/v1/models/{model_id}", "openclaw/main", AUTH, 200),
        ("GET", "/v1/models/{model_id}", "openclaw", AUTH, 200),
        ("GET", "/v1/models/{model_id}", "openclaw/ghost", AUTH, 404),
        ("GET", "/v1/models/{model_id}", " ", AUTH, 400),
        ("GET", "/v1/models/{model_id}", "openclaw", {}, 401),
        ("POST", "/v1/chat/completions", None, {"Authorization": "Bearer nope"}, 401),
    ],
    ids=("list", "retrieve with slash", "retrieve", "404 unknown", "400 blank id", "401 no token", "401 wrong token"),
)
def test_plugin_model_routes_and_auth_match_document(
    plugin_server: str, method: str, template: str, model_id: str | None, headers: dict[str, str], status: int
) -> None:
    """Model listing, retrieval, unknown ids and auth refusals validate against the document."""
    body = {"messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None
    response = validate_exchange(plugin_server, method, template, model_id=model_id, headers=headers, json=body)
    assert response.status_code == status


def test_live_server_answers_and_stops(plugin_server: str) -> None:
    """The thread-served gateway really listens on loopback and needs the bearer token."""
    assert plugin_server.startswith("http://127.0.0.1:")
    assert requests.get(f"{plugin_server}/v1/models", timeout=5).status_code == 401
    assert requests.get(f"{plugin_server}/v1/models", headers=AUTH, timeout=5).status_code == 200


# The reference gateway (openclaw_http_compat.reference) with its built-in offline echo provider.


def reference_config(state_dir: Path) -> GatewayConfig:
    return GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(state_dir),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True}, {"id": "beta"}]},
        },
        env={},
    )


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reference gateway (echo provider, session store in a temp dir), served on loopback."""
    app = build_gateway_app(reference_config(tmp_path_factory.mktemp("reference-state")))
    with serve_in_thread(app) as base_url:
        yield base_url


@pytest.mark.parametrize("mode", MODES, ids=("valid", "invalid"))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_reference_gateway_conforms_to_document(reference_server: str, operation: str, mode: GenerationMode) -> None:
    """Generated requests to the reference gateway get no 5xx and only documented answers."""
    assert_conforms(reference_server, operation, mode, REFERENCE_CHECKS)


def test_reference_gateway_streams_documented_events(reference_server: str) -> None:
    """A streamed completion from the echo provider is SSE whose events all match the document."""
    response = requests.post(
        f"{reference_server}/v1/chat/completions",
        json={"model": "openclaw", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "hello there"}]},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    schema = schemathesis.openapi.from_dict(load_document())
    case = schema["/v1/chat/completions"]["POST"].Case(body={"messages": []})
    case.validate_response(response, checks=REFERENCE_CHECKS)
    content = "".join(
        json.loads(line[len("data: "):])["choices"][0]["delta"].get("content", "")
        for line in response.text.split("\n\n")
        if line.startswith("data: {") and json.loads(line[len("data: "):])["choices"]
    )
    assert content == "echo: hello there"


@pytest.mark.parametrize("server", ["plugin_server", "reference_server"])
def test_stored_completion_answers_match_document(server: str, request: pytest.FixtureRequest) -> None:
    """Every stored-completions route, its 404 and a named 400, validate against the document."""
    base_url = request.getfixturevalue(server)
    schema = schemathesis.openapi.from_dict(load_document())
    with requests.Session() as session:
        completion_id = stored_completion_id(base_url, session)
        exchanges: list[tuple[str, str, dict[str, Any], int]] = [
            ("GET", "/v1/chat/completions", {"params": {"metadata[k]": "v", "limit": 1}}, 200),
            ("GET", "/v1/chat/completions", {"params": {"limit": 0}}, 400),
            ("GET", "/v1/chat/completions/{completion_id}", {}, 200),
            ("GET", "/v1/chat/completions/{completion_id}/messages", {"params": {"order": "desc"}}, 200),
            ("POST", "/v1/chat/completions/{completion_id}", {"json": {"metadata": {"k": "w"}}}, 200),
            ("DELETE", "/v1/chat/completions/{completion_id}", {}, 200),
            ("GET", "/v1/chat/completions/{completion_id}", {}, 404),
        ]
        for method, template, kwargs, status in exchanges:
            path = template.replace("{completion_id}", completion_id)
            response = session.request(method, f"{base_url}{path}", headers=AUTH, timeout=10, **kwargs)
            assert response.status_code == status, response.text
            operation = schema[template][method]
            path_parameters = {"completion_id": completion_id} if "{completion_id}" in template else None
            body = kwargs.get("json")
            case = (operation.Case(path_parameters=path_parameters) if body is None
                    else operation.Case(path_parameters=path_parameters, body=body))
            case.validate_response(response, checks=CHECKS)
