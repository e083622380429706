"""The plugin's drain API: ``start_drain`` refuses new work, ``wait_drained`` waits for what runs.

A stand-in gateway (``make_gateway``) serves the plugin over a real socket; a run is held open
by an event the test sets, so that the drain can be seen waiting for it and then ending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from openclaw_http_compat import AgentEvent, AgentRunRequest, RunEnd, TextDelta
from openclaw_http_compat.plugin import start_drain, wait_drained

from .conftest import (
    COMPLETIONS,
    DONE,
    ClientFactory,
    ScriptedRunner,
    chat_body,
    content_chunk,
    error_body,
    finish_chunk,
    identity_of,
    role_chunk,
)

SHUTTING_DOWN = error_body("The gateway is shutting down.", "api_error", code="shutting_down")


def plugin_app(app: web.Application) -> web.Application:
    """The plugin's sub-app, found through the router's public resource info."""
    for resource in app.router.resources():
        sub = resource.get_info().get("app")
        if isinstance(sub, web.Application):
            return sub
    raise AssertionError("the plugin is not mounted")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_drain_refuses_new_work_and_waits_for_the_running_request(
    gateway_client: ClientFactory, runner: ScriptedRunner, auth_headers: dict[str, str], stream: bool
) -> None:
    """While draining: a new POST is 503 shutting_down with Retry-After 1, GET /v1/models still 200;
    wait_drained is false while a run holds on, true once it has ended normally."""
    release = asyncio.Event()

    async def held(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        yield TextDelta("first")
        await release.wait()
        yield TextDelta(" last")
        yield RunEnd()

    runner.script = held
    client = await gateway_client()
    subapp = plugin_app(client.app)
    running = asyncio.ensure_future(client.post(COMPLETIONS, json=chat_body(stream=stream), headers=auth_headers))
    async with asyncio.timeout(2):
        while not runner.requests:
            await asyncio.sleep(0.01)
    start_drain(subapp)
    refused = await client.post(COMPLETIONS, json=chat_body(stream=stream), headers=auth_headers)
    assert (refused.status, await refused.json(), refused.headers["Retry-After"]) == (503, SHUTTING_DOWN, "1")
    assert refused.headers["x-request-id"].startswith("req_")
    models = await client.get("/v1/models", headers=auth_headers)
    assert models.status == 200
    assert await wait_drained(subapp, 0.05) is False
    release.set()
    assert await wait_drained(subapp, 2) is True
    answer = await running
    assert answer.status == 200
    if stream:
        text = await answer.text()
        ident = identity_of(text)
        assert text == (
            role_chunk(ident) + content_chunk(ident, "first") + content_chunk(ident, " last")
            + finish_chunk(ident) + DONE
        )
    else:
        assert (await answer.json())["choices"][0]["message"]["content"] == "first last"
    assert len(runner.requests) == 1


async def test_drain_of_an_idle_endpoint_is_done_at_once(gateway_client: ClientFactory) -> None:
    """Nothing in flight: wait_drained is true at once."""
    client = await gateway_client()
    subapp = plugin_app(client.app)
    start_drain(subapp)
    assert await wait_drained(subapp, 0) is True


async def test_drain_leaves_a_foreign_application_alone() -> None:
    """An application the package did not build is neither changed nor waited for."""
    app = web.Application()
    start_drain(app)
    assert await wait_drained(app, 0) is True
    assert len(app) == 0
