"""``GET /metrics`` of the reference gateway: exact names, labels and values after known requests.

The gateway is the real app over a real SQLite store, its agent calling the mock upstream;
the scrape is parsed with ``prometheus_client``'s own parser.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from openclaw_http_compat.reference.app import build_gateway_app
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference.metrics import MULTIPROC_DIR_ENV

from .mock_upstream import ErrorReply, MockUpstream, StreamReply
from .pg import pg_cluster as pg_cluster, pg_url as pg_url

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET_USER = "user-alice-4c1d"
SECRET_TEXT = "the-secret-message-text"
USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}}

Client = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def gateway_config(
    state: pathlib.Path, upstream: str, metrics: dict[str, Any] | None, *, store_url: str | None = None
) -> GatewayConfig:
    gateway: dict[str, Any] = {
        "auth": {"mode": "token", "token": TOKEN},
        "stateDir": str(state),
        "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
    }
    if metrics is not None:
        gateway["metrics"] = metrics
    if store_url is not None:
        gateway["sessionStore"] = {"url": store_url}
    return GatewayConfig.from_mapping(
        {
            "gateway": gateway,
            "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
            "models": {"providers": {"mock": {"baseUrl": upstream, "api": "openai-completions", "models": ["m"]}}},
        },
        env={},
    )


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture(autouse=True)
def single_process() -> None:
    # A developer's shell may have it set; these tests read one process's own values.
    assert MULTIPROC_DIR_ENV not in os.environ


async def gateway(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, upstream: MockUpstream, metrics: dict[str, Any] | None
) -> Client:
    return await aiohttp_client(build_gateway_app(gateway_config(tmp_path, upstream.url, metrics)))


async def scrape(client: Client) -> tuple[str, Samples]:
    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await resp.text()
    return text, parse(text)


async def test_known_requests_give_exact_values(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """A streamed and a JSON completion, an upstream failure, a refused credential and a model
    listing: every metric the issue names has the value those requests give it."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream, {"enabled": True})
    mock_upstream.reply(
        StreamReply(deltas=("Hi", "!"), usage=USAGE),
        StreamReply(deltas=("Hello",), usage=USAGE),
        ErrorReply(status=503, body={"error": {"message": "busy"}}),
    )
    body = {"model": "openclaw", "user": SECRET_USER, "messages": [{"role": "user", "content": SECRET_TEXT}]}
    streamed = await client.post("/v1/chat/completions", json={**body, "stream": True}, headers=AUTH)
    assert streamed.status == 200
    assert (await streamed.text()).endswith("data: [DONE]\n\n")
    whole = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert whole.status == 200
    assert (await whole.json())["choices"][0]["message"]["content"] == "Hello"
    failed = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert failed.status == 503
    refused = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer wrong-token-9f2"})
    assert refused.status == 401
    assert (await client.get("/v1/models", headers=AUTH)).status == 200

    text, samples = await scrape(client)
    chat = "/v1/chat/completions"
    assert value(samples, "openclaw_http_requests_total", route=chat, method="POST", status="200") == 2
    assert value(samples, "openclaw_http_requests_total", route=chat, method="POST", status="503") == 1
    assert value(samples, "openclaw_http_requests_total", route=chat, method="POST", status="401") == 1
    assert value(samples, "openclaw_http_requests_total", route="/v1/models", method="GET", status="200") == 1
    assert value(samples, "openclaw_http_request_duration_seconds_count", route=chat) == 4
    assert value(samples, "openclaw_http_request_duration_seconds_count", route="/v1/models") == 1
    assert value(samples, "openclaw_time_to_first_token_seconds_count", agent="main") == 1
    assert value(samples, "openclaw_active_streams") == 0
    assert value(samples, "openclaw_agent_runs_in_flight") == 0
    assert value(samples, "openclaw_agent_runs_total", agent="main", outcome="completed") == 2
    assert value(samples, "openclaw_agent_runs_total", agent="main", outcome="error") == 1
    # 11 prompt tokens of which 3 were cached: 8 uncached, 3 cached, per completed run.
    assert value(samples, "openclaw_tokens_total", agent="main", kind="prompt") == 16
    assert value(samples, "openclaw_tokens_total", agent="main", kind="cached") == 6
    assert value(samples, "openclaw_tokens_total", agent="main", kind="completion") == 8
    assert value(samples, "openclaw_upstream_request_duration_seconds_count", provider="mock") == 3
    assert value(samples, "openclaw_upstream_errors_total", provider="mock", reason="overloaded") == 1
    assert value(samples, "openclaw_auth_failures_total") == 1
    assert value(samples, "openclaw_auth_lockouts_total") == 0
    assert value(samples, "openclaw_idempotent_replays_total") == 0
    # Each run took its turn and read the transcript; the two completed ones appended to it.
    assert value(samples, "openclaw_store_operation_duration_seconds_count", engine="sqlite", op="open") == 1
    assert value(samples, "openclaw_store_operation_duration_seconds_count", engine="sqlite", op="take_turn") == 3
    assert value(samples, "openclaw_store_operation_duration_seconds_count", engine="sqlite", op="append") == 2
    # No label carries a user, a session key, a credential or message text.
    for secret in (SECRET_USER, SECRET_TEXT, TOKEN, "wrong-token-9f2", "agent:main"):
        assert secret not in text
    names = {name for name, _ in samples}
    assert {n for n in names if n.startswith("openclaw_") and not n.endswith(("_bucket", "_count", "_sum", "_created"))} == {
        "openclaw_http_requests_total",
        "openclaw_active_streams",
        "openclaw_agent_runs_in_flight",
        "openclaw_agent_runs_total",
        "openclaw_tokens_total",
        "openclaw_upstream_errors_total",
        "openclaw_auth_failures_total",
        "openclaw_auth_lockouts_total",
        "openclaw_idempotent_replays_total",
    }


async def test_postgres_store_operations_are_timed(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream, pg_url: str
) -> None:
    """On the PostgreSQL store the same operations are timed, under ``engine="postgresql"``."""
    config = gateway_config(tmp_path, mock_upstream.url, {"enabled": True}, store_url=pg_url)
    client = await aiohttp_client(build_gateway_app(config))
    body = {"model": "openclaw", "user": SECRET_USER, "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=body, headers=AUTH)).status == 200
    text, samples = await scrape(client)
    timed = {
        dict(labels)["op"]: count
        for (name, labels), count in samples.items()
        if name == "openclaw_store_operation_duration_seconds_count"
    }
    assert {op: timed[op] for op in ("open", "take_turn", "append")} == {"open": 1, "take_turn": 2, "append": 2}
    assert all(dict(labels).get("engine", "postgresql") == "postgresql" for _, labels in samples)
    assert pg_url not in text and SECRET_USER not in text


async def test_gauges_count_what_is_in_flight(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """While a stream is open, the stream and the run are in flight; after it, neither is."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream, {"enabled": True})
    release = asyncio.Event()
    mock_upstream.reply(StreamReply(deltas=("one",), hold=release))
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "openclaw", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
    )
    assert resp.status == 200
    assert b'"role":"assistant"' in await resp.content.readline()
    _, during = await scrape(client)
    assert value(during, "openclaw_active_streams") == 1
    assert value(during, "openclaw_agent_runs_in_flight") == 1
    release.set()
    assert (await resp.text()).endswith("data: [DONE]\n\n")
    _, after = await scrape(client)
    assert value(after, "openclaw_active_streams") == 0
    assert value(after, "openclaw_agent_runs_in_flight") == 0
    assert value(after, "openclaw_agent_runs_total", agent="main", outcome="completed") == 1


async def test_the_route_is_behind_auth(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """By default /metrics asks for the gateway's credential, like every other route."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream, {"enabled": True})
    resp = await client.get("/metrics")
    assert resp.status == 401
    assert await resp.json() == {"error": {"message": "Unauthorized", "type": "unauthorized", "param": None, "code": None}}
    _, samples = await scrape(client)
    # The refused scrape was itself counted, under its route.
    assert value(samples, "openclaw_http_requests_total", route="/metrics", method="GET", status="401") == 1
    assert value(samples, "openclaw_auth_failures_total") == 1


async def test_the_route_can_be_open(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """``gateway.metrics.auth: false``: anyone who reaches the port may scrape."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream, {"enabled": True, "auth": False})
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert value(parse(await resp.text()), "openclaw_auth_failures_total") == 0


@pytest.mark.parametrize("metrics", [None, {"enabled": False}], ids=["absent", "disabled"])
async def test_no_route_when_disabled(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream, metrics: dict[str, Any] | None
) -> None:
    """Metrics are off by default: there is no /metrics route, and completions still work."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream, metrics)
    assert (await client.get("/metrics", headers=AUTH)).status == 404
    resp = await client.post(
        "/v1/chat/completions", json={"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}, headers=AUTH
    )
    assert resp.status == 200


def test_enabled_without_prometheus_client_fails_at_start(tmp_path: pathlib.Path) -> None:
    """A real ``gateway`` process whose Python cannot import prometheus_client refuses to start
    with metrics enabled: exit 2 and one line saying what to install."""
    config = tmp_path / "openclaw.json5"
    config.write_text(
        '{gateway: {auth: {mode: "none"}, stateDir: "%s", metrics: {enabled: true}}}' % (tmp_path / "state")
    )
    # None in sys.modules makes every import of the package fail, as if it were not installed.
    code = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from openclaw_http_compat.reference.cli import main; "
        f"sys.exit(main(['gateway', '--config', {str(config)!r}, '--port', '0']))"
    )
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_DIR_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: gateway.metrics.enabled: the /metrics route needs prometheus-client: "
        "pip install 'openclaw-http-compat[metrics]'\n"
    )
    assert done.stdout == ""


def test_disabled_without_prometheus_client_serves(tmp_path: pathlib.Path) -> None:
    """In a Python that cannot import prometheus_client, a gateway without metrics builds and
    serves as always, and has no /metrics route."""
    code = (
        "import asyncio, sys\n"
        "sys.modules['prometheus_client'] = None  # every import of it fails, as if not installed\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from openclaw_http_compat.reference.app import build_gateway_app\n"
        "from openclaw_http_compat.reference.config import GatewayConfig\n"
        "from openclaw_http_compat.reference.metrics import METRICS_AVAILABLE\n"
        "async def main():\n"
        f"    config = GatewayConfig.from_mapping({{'gateway': {{'auth': {{'mode': 'none'}}, 'stateDir': {str(tmp_path)!r}}}}}, env={{}})\n"
        "    async with TestClient(TestServer(build_gateway_app(config))) as client:\n"
        "        statuses = [(await client.get(path)).status for path in ('/health', '/metrics')]\n"
        "    print(METRICS_AVAILABLE, statuses)\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_DIR_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stdout) == (0, "False [200, 404]\n"), done.stderr


def test_single_process_counts_expose_as_prometheus_client_would() -> None:
    """In one process the per-request metrics are counted in plain numbers: scraped, they read
    exactly as prometheus-client's own Counter and Histogram with the same updates (``_created``
    series aside), bucket bounds inclusive."""
    import prometheus_client

    from openclaw_http_compat.reference.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    own = prometheus_client.CollectorRegistry()
    bounds = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
    duration = prometheus_client.Histogram(
        "openclaw_http_request_duration_seconds", "d", ["route"], buckets=bounds, registry=own
    )
    requests = prometheus_client.Counter("openclaw_http_requests_total", "r", ["route", "method", "status"], registry=own)
    tokens = prometheus_client.Counter("openclaw_tokens_total", "t", ["agent", "kind"], registry=own)
    for seconds, status in ((0.001, 200), (0.005, 200), (0.0051, 429), (0.3, 200), (7.0, 200), (1000.0, 502)):
        metrics.request_finished(route="/v1/chat/completions", method="POST", status=status, duration_s=seconds)
        duration.labels("/v1/chat/completions").observe(seconds)
        requests.labels("/v1/chat/completions", "POST", str(status)).inc()
    metrics.tokens_used(agent="main", prompt=7, completion=2, cached=0)
    for kind, count in (("prompt", 7), ("completion", 2), ("cached", 0)):
        tokens.labels("main", kind).inc(count)

    def lines(registry: prometheus_client.CollectorRegistry) -> set[str]:
        text = prometheus_client.generate_latest(registry).decode()
        return {
            line for line in text.splitlines()
            if line.startswith(("openclaw_http_request", "openclaw_tokens")) and "_created" not in line
        }

    assert lines(metrics.registry) == lines(own)
    assert 'openclaw_http_request_duration_seconds_bucket{le="0.005",route="/v1/chat/completions"} 2.0' in lines(own)
