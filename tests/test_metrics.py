"""The plugin's metrics seam: what a gateway's :class:`Metrics` receives, through a real app.

:class:`RecordingMetrics` is a real implementation of the protocol that keeps every call, in
order; the gateway around the plugin is the same stand-in the other plugin tests use.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat import (
    NO_METRICS,
    AgentEvent,
    AgentRunRequest,
    Host,
    HttpCompatConfig,
    Metrics,
    NoMetrics,
    RunEnd,
    RunError,
    RunOutcome,
    RunUsage,
    SharedSecretAuthenticator,
    TextDelta,
    ToolCall,
    auth_middleware,
    instrumentation_middleware,
    setup,
)

from .conftest import (
    COMPLETIONS,
    GatewayClient,
    ProductionLikeServer,
    ScriptedRunner,
    chat_body,
    events_script,
    failing_script,
    make_config,
    health,
    stalled_script,
    wait_for,
)


@attrs.define
class RecordingMetrics:
    """A :class:`Metrics` that keeps every call as ``(method, keyword arguments)``, in order."""

    calls: list[tuple[str, dict[str, Any]]] = attrs.field(factory=list)

    def of(self, name: str) -> list[dict[str, Any]]:
        """The arguments of every call to ``name``."""
        return [kwargs for method, kwargs in self.calls if method == name]

    def request_finished(self, *, route: str, method: str, status: int, duration_s: float) -> None:
        assert duration_s >= 0
        self.calls.append(("request_finished", {"route": route, "method": method, "status": status}))

    def run_started(self, *, agent: str, stream: bool) -> None:
        self.calls.append(("run_started", {"agent": agent, "stream": stream}))

    def first_token(self, *, agent: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("first_token", {"agent": agent}))

    def tokens_used(self, *, agent: str, prompt: int, completion: int, cached: int) -> None:
        self.calls.append(("tokens_used", {"agent": agent, "prompt": prompt, "completion": completion, "cached": cached}))

    def run_finished(self, *, agent: str, stream: bool, outcome: RunOutcome) -> None:
        self.calls.append(("run_finished", {"agent": agent, "stream": stream, "outcome": outcome}))

    def auth_failed(self) -> None:
        self.calls.append(("auth_failed", {}))

    def auth_locked_out(self) -> None:
        self.calls.append(("auth_locked_out", {}))

    def idempotent_replay(self) -> None:
        self.calls.append(("idempotent_replay", {}))


def _conforms(metrics: Metrics) -> Metrics:
    return metrics


AUTH = {"Authorization": "Bearer test-token"}
Build = Callable[..., Awaitable[GatewayClient]]


@pytest.fixture
def recorder() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def build(aiohttp_client: AiohttpClient, runner: ScriptedRunner, recorder: RecordingMetrics) -> Build:
    """A gateway whose Host carries ``recorder``; ``root=True`` also installs the middleware on the root app."""

    async def make(
        *, root: bool = False, config: HttpCompatConfig | None = None, handler_cancellation: bool = True
    ) -> GatewayClient:
        config = config or make_config()
        authenticator = SharedSecretAuthenticator(config.auth)
        middlewares = [auth_middleware(authenticator, is_public=lambda r: r.path == "/health", metrics=recorder)]
        if root:
            middlewares.insert(0, instrumentation_middleware(recorder))
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/health", health)
        setup(app, config, Host(runner=runner, authenticator=authenticator, roster=config.agents, metrics=recorder))
        return await aiohttp_client(app if handler_cancellation else ProductionLikeServer(app))

    return make


def test_the_defaults_are_no_ops() -> None:
    """A Host without metrics gets the shared NoMetrics, which satisfies the protocol."""
    host = Host(runner=ScriptedRunner(), authenticator=SharedSecretAuthenticator(make_config().auth),
                roster=make_config().agents)
    assert host.metrics is NO_METRICS
    assert isinstance(_conforms(NoMetrics()), NoMetrics)
    assert isinstance(_conforms(RecordingMetrics()), RecordingMetrics)


async def test_json_run_is_counted(build: Build, runner: ScriptedRunner, recorder: RecordingMetrics) -> None:
    """A JSON completion: one request, one run started and completed, its tokens; no time to first token."""
    runner.script = events_script(TextDelta("Hi"), RunUsage(input=7, output=2, cache_read=3), RunEnd())
    client = await build()
    resp = await client.post(COMPLETIONS, json=chat_body(), headers=AUTH)
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "Hi"
    assert recorder.calls == [
        ("run_started", {"agent": "main", "stream": False}),
        ("tokens_used", {"agent": "main", "prompt": 7, "completion": 2, "cached": 3}),
        ("run_finished", {"agent": "main", "stream": False, "outcome": "completed"}),
        ("request_finished", {"route": "/v1/chat/completions", "method": "POST", "status": 200}),
    ]


async def test_streamed_run_reports_its_first_token_once(
    build: Build, runner: ScriptedRunner, recorder: RecordingMetrics
) -> None:
    """A stream: the first content is reported once, the stream counted as a stream, completed."""
    runner.script = events_script(TextDelta("a"), TextDelta("b"), RunEnd())
    client = await build()
    resp = await client.post(COMPLETIONS, json=chat_body(stream=True), headers={**AUTH, "x-openclaw-agent-id": "beta"})
    assert resp.status == 200
    assert (await resp.text()).endswith("data: [DONE]\n\n")
    assert recorder.calls == [
        ("run_started", {"agent": "beta", "stream": True}),
        ("first_token", {"agent": "beta"}),
        ("run_finished", {"agent": "beta", "stream": True, "outcome": "completed"}),
        ("request_finished", {"route": "/v1/chat/completions", "method": "POST", "status": 200}),
    ]


async def test_a_tool_call_is_a_first_token(build: Build, runner: ScriptedRunner, recorder: RecordingMetrics) -> None:
    """A stream whose first output is a tool call has its time to first token too."""
    runner.script = events_script(ToolCall(id="c1", name="f", arguments="{}"), RunEnd("tool_calls"))
    client = await build()
    resp = await client.post(COMPLETIONS, json=chat_body(stream=True), headers=AUTH)
    assert resp.status == 200
    await resp.read()
    assert recorder.of("first_token") == [{"agent": "main"}]
    assert recorder.of("run_finished") == [{"agent": "main", "stream": True, "outcome": "completed"}]


@pytest.mark.parametrize("stream", [False, True])
async def test_failed_runs_are_errors(
    build: Build, runner: ScriptedRunner, recorder: RecordingMetrics, stream: bool
) -> None:
    """A RunError before any output: answered with its status, counted as an error, never as a first token."""
    runner.script = events_script(RunError(message="slow down", reason="rate_limit", status=429))
    client = await build()
    resp = await client.post(COMPLETIONS, json=chat_body(stream=stream), headers=AUTH)
    assert resp.status == 429
    assert recorder.of("run_finished") == [{"agent": "main", "stream": stream, "outcome": "error"}]
    assert recorder.of("first_token") == []
    assert recorder.of("request_finished") == [{"route": "/v1/chat/completions", "method": "POST", "status": 429}]


async def test_in_band_failure_is_an_error(build: Build, runner: ScriptedRunner, recorder: RecordingMetrics) -> None:
    """A runner that raises after the head went out: an error frame on a 200 stream, counted as an error."""
    runner.script = failing_script(TextDelta("partial"))
    client = await build()
    resp = await client.post(COMPLETIONS, json=chat_body(stream=True), headers=AUTH)
    assert resp.status == 200
    assert '"internal error"' in await resp.text()
    assert recorder.of("run_finished") == [{"agent": "main", "stream": True, "outcome": "error"}]
    assert recorder.of("first_token") == [{"agent": "main"}]


@pytest.mark.parametrize("handler_cancellation", [True, False], ids=["cancelling-server", "polling-server"])
@pytest.mark.parametrize("stream", [False, True])
async def test_client_gone(
    build: Build, runner: ScriptedRunner, recorder: RecordingMetrics, stream: bool, handler_cancellation: bool
) -> None:
    """A client that leaves mid-run: the run ends as client_gone, whether aiohttp cancels the
    handler or the plugin's run registry notices."""
    runner.script = stalled_script(TextDelta("thinking"))
    client = await build(handler_cancellation=handler_cancellation)
    if stream:
        resp = await client.post(COMPLETIONS, json=chat_body(stream=True), headers=AUTH)
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")
        resp.close()
    else:
        # A JSON answer never comes: the client gives up while the agent thinks.
        request = asyncio.create_task(client.post(COMPLETIONS, json=chat_body(), headers=AUTH))
        await wait_for(lambda: len(runner.requests) == 1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await wait_for(lambda: bool(recorder.of("run_finished")))
    assert recorder.of("run_finished") == [{"agent": "main", "stream": stream, "outcome": "client_gone"}]


async def test_refused_credentials(build: Build, recorder: RecordingMetrics) -> None:
    """A wrong token is an auth failure; a locked-out client's request is a lockout."""
    config = make_config(auth={"mode": "token", "token": "test-token",
                               "rateLimit": {"maxAttempts": 2, "exemptLoopback": False}})
    client = await build(root=True, config=config)
    statuses = [(await client.post(COMPLETIONS, json=chat_body(), headers={"Authorization": "Bearer no"})).status
                for _ in range(3)]
    assert statuses == [401, 401, 429]
    assert [m for m, _ in recorder.calls if m.startswith("auth")] == ["auth_failed", "auth_failed", "auth_locked_out"]
    # The root's middleware counted them once each, with the route they were for.
    assert recorder.of("request_finished") == [
        {"route": "/v1/chat/completions", "method": "POST", "status": status} for status in statuses
    ]
    assert recorder.of("run_started") == []


async def test_routes_are_templates_and_counted_once(build: Build, recorder: RecordingMetrics) -> None:
    """With the middleware on the root too, each request is counted once, by its route's template.

    A path no route serves is ``unmatched``, never its path; the gateway's own routes are counted too.
    """
    client = await build(root=True)
    assert (await client.get("/v1/models/openclaw%2Fmain", headers=AUTH)).status == 200
    assert (await client.get("/v1/models", headers=AUTH)).status == 200
    assert (await client.get("/v1/no-such-thing/secret-id", headers=AUTH)).status == 404
    assert (await client.get("/health")).status == 200
    assert recorder.of("request_finished") == [
        {"route": "/v1/models/{model_id}", "method": "GET", "status": 200},
        {"route": "/v1/models", "method": "GET", "status": 200},
        {"route": "unmatched", "method": "GET", "status": 404},
        {"route": "/health", "method": "GET", "status": 200},
    ]


async def test_the_plugin_counts_its_routes_alone(build: Build, recorder: RecordingMetrics) -> None:
    """Without the root's middleware the sub-application counts its own routes (and only those)."""
    client = await build()
    assert (await client.get("/v1/models", headers=AUTH)).status == 200
    assert (await client.get("/health")).status == 200
    assert recorder.of("request_finished") == [{"route": "/v1/models", "method": "GET", "status": 200}]


def test_the_plugin_never_imports_a_metrics_library() -> None:
    """Importing the package and mounting the plugin loads neither prometheus_client nor an OpenTelemetry SDK."""
    code = (
        "import sys\n"
        "from aiohttp import web\n"
        "import openclaw_http_compat as p\n"
        "config = p.HttpCompatConfig.from_mapping({'gateway': {'auth': {'mode': 'none'},"
        " 'http': {'endpoints': {'chatCompletions': {'enabled': True}}}}}, env={})\n"
        "auth = p.SharedSecretAuthenticator(config.auth)\n"
        "p.setup(web.Application(), config, p.Host(runner=None, authenticator=auth, roster=config.agents))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry.sdk'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


@pytest.mark.parametrize("stream", [False, True])
async def test_shutdown_aborts(build: Build, runner: ScriptedRunner, recorder: RecordingMetrics, stream: bool) -> None:
    """A run the gateway's shutdown ends is ``aborted``: a 503 before any output, an error frame after it."""
    runner.script = stalled_script(TextDelta("thinking")) if stream else stalled_script()
    client = await build()
    pending = asyncio.ensure_future(client.post(COMPLETIONS, json=chat_body(stream=stream), headers=AUTH))
    await wait_for(lambda: bool(runner.requests))
    closing = asyncio.ensure_future(client.server.close())
    resp = await asyncio.wait_for(pending, 1)
    text = await asyncio.wait_for(resp.text(), 1)
    await asyncio.wait_for(closing, 1)
    assert resp.status == (200 if stream else 503)
    assert '"shutting_down"' in text
    assert recorder.of("run_finished") == [{"agent": "main", "stream": stream, "outcome": "aborted"}]
    assert recorder.of("request_finished") == [
        {"route": "/v1/chat/completions", "method": "POST", "status": 200 if stream else 503}
    ]


async def test_an_idempotent_replay_is_counted_as_replayed(
    build: Build, runner: ScriptedRunner, recorder: RecordingMetrics
) -> None:
    """A repeat of a finished ``Idempotency-Key`` request runs no agent: one replay, and a run
    counted with outcome ``replayed`` next to the first one's ``completed``."""
    runner.script = events_script(TextDelta("Hi"), RunEnd())
    client = await build()
    headers = {**AUTH, "Idempotency-Key": "order-1"}
    first = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
    assert first.status == 200
    again = await client.post(COMPLETIONS, json=chat_body(), headers=headers)
    assert (again.status, again.headers["Idempotent-Replayed"]) == (200, "true")
    assert await again.json() == await first.json()
    assert len(runner.requests) == 1
    assert recorder.of("idempotent_replay") == [{}]
    assert recorder.of("run_finished") == [
        {"agent": "main", "stream": False, "outcome": "completed"},
        {"agent": "main", "stream": False, "outcome": "replayed"},
    ]


async def test_a_run_finished_without_its_client_is_detached(
    build: Build, runner: ScriptedRunner, recorder: RecordingMetrics
) -> None:
    """``onDisconnect: finish``: the client leaves, the run goes on to its end: ``detached``."""
    gate = asyncio.Event()

    async def script(request: AgentRunRequest) -> AsyncIterator[AgentEvent]:
        yield TextDelta("thinking")
        await gate.wait()
        yield TextDelta(" done")
        yield RunEnd()

    runner.script = script
    client = await build(config=make_config(endpoint={"onDisconnect": "finish"}))
    request = asyncio.create_task(client.post(COMPLETIONS, json=chat_body(), headers=AUTH))
    await wait_for(lambda: len(runner.requests) == 1)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.sleep(0.05)
    assert recorder.of("run_finished") == []
    gate.set()
    await wait_for(lambda: bool(recorder.of("run_finished")))
    assert recorder.of("run_finished") == [{"agent": "main", "stream": False, "outcome": "detached"}]
