"""OpenTelemetry traces of the reference gateway, recorded by the SDK's in-memory exporter.

The SDK's ``TracerProvider`` is global and can be set once per process: the fixture sets it
the first time and clears the exporter for each test. The gateway is the real app, its agent
calling the mock upstream, which records the headers it received.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
from collections.abc import Iterator
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pytest_aiohttp import AiohttpClient
import aiohttp

from openclaw_http_compat.reference.app import build_gateway_app
from openclaw_http_compat.reference.config import GatewayConfig

from .mock_upstream import ErrorReply, MockUpstream, StreamReply
from .test_faults import TOKEN
from .test_shutdown import LISTENING, gateway_env, write_gateway_config

TRACE_ID: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID: Final = "00f067aa0ba902b7"
TRACEPARENT: Final = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
USAGE: Final = {"prompt_tokens": 9, "completion_tokens": 2}
BODY: Final = {"model": "openclaw", "stream": True, "messages": [{"role": "user", "content": "hi"}]}

Client = TestClient[web.Request, web.Application]
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def gateway(aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, upstream: MockUpstream) -> Client:
    config = GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "none"},
                "stateDir": str(tmp_path),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
            },
            "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
            "models": {"providers": {"mock": {"baseUrl": upstream.url, "api": "openai-completions", "models": ["m"]}}},
        },
        env={},
    )
    return await aiohttp_client(build_gateway_app(config))


def by_kind(exporter: InMemorySpanExporter) -> dict[SpanKind, ReadableSpan]:
    finished = exporter.get_finished_spans()
    kinds = {span.kind: span for span in finished}
    assert len(kinds) == len(finished) == 3, [s.name for s in finished]
    return kinds


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return None if span.parent is None else format(span.parent.span_id, "016x")


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_request_run_and_upstream_spans_continue_the_clients_trace(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream, spans: InMemorySpanExporter
) -> None:
    """One SERVER span (child of the client's traceparent), an invoke_agent span under it, a
    chat CLIENT span under that; the upstream receives a traceparent naming the CLIENT span."""
    mock_upstream.reply(StreamReply(deltas=("Hi",), usage=USAGE))
    client = await gateway(aiohttp_client, tmp_path, mock_upstream)
    resp = await client.post("/v1/chat/completions", json=BODY, headers={"traceparent": TRACEPARENT})
    assert resp.status == 200
    assert (await resp.text()).endswith("data: [DONE]\n\n")

    kinds = by_kind(spans)
    server, run, call = kinds[SpanKind.SERVER], kinds[SpanKind.INTERNAL], kinds[SpanKind.CLIENT]
    assert {hex_ids(s)[0] for s in (server, run, call)} == {TRACE_ID}
    assert parent_id(server) == CLIENT_SPAN_ID
    assert parent_id(run) == hex_ids(server)[1]
    assert parent_id(call) == hex_ids(run)[1]

    assert server.name == "POST /v1/chat/completions"
    assert attributes(server) == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
    }
    assert run.name == "invoke_agent main"
    run_attributes = attributes(run)
    assert run_attributes.pop("gen_ai.response.id").startswith("chatcmpl_")
    assert run_attributes == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "main",
        "gen_ai.request.model": "openclaw",
        "gen_ai.usage.input_tokens": 9,
        "gen_ai.usage.output_tokens": 2,
        "openclaw.run.outcome": "completed",
    }
    assert call.name == "chat m"
    assert attributes(call) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "mock",
        "gen_ai.system": "mock",
        "gen_ai.request.model": "m",
        "gen_ai.usage.input_tokens": 9,
        "gen_ai.usage.output_tokens": 2,
    }
    assert all(s.status.status_code is StatusCode.UNSET for s in (server, run, call))
    # The upstream continues the same trace, under the gateway's CLIENT span.
    assert mock_upstream.requests[0].headers["traceparent"] == f"00-{TRACE_ID}-{hex_ids(call)[1]}-01"


async def test_without_a_traceparent_the_gateway_starts_the_trace(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream, spans: InMemorySpanExporter
) -> None:
    """A client that sends no traceparent gets a new trace, rooted at the SERVER span, still propagated."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream)
    resp = await client.post("/v1/chat/completions", json={**BODY, "stream": False})
    assert resp.status == 200
    kinds = by_kind(spans)
    server, call = kinds[SpanKind.SERVER], kinds[SpanKind.CLIENT]
    assert server.parent is None
    trace_id = hex_ids(server)[0]
    assert hex_ids(call)[0] == trace_id != TRACE_ID
    # The flags may mark the trace id as random (W3C trace context level 2) as well as sampled.
    assert mock_upstream.requests[0].headers["traceparent"].startswith(f"00-{trace_id}-{hex_ids(call)[1]}-")


async def test_a_failed_upstream_call_marks_its_spans(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream, spans: InMemorySpanExporter
) -> None:
    """An upstream 503: the CLIENT span and the run's span are errors, with the reason; the request's is a 503."""
    mock_upstream.reply(ErrorReply(status=503, body={"error": {"message": "busy"}}))
    client = await gateway(aiohttp_client, tmp_path, mock_upstream)
    resp = await client.post("/v1/chat/completions", json=BODY, headers={"traceparent": TRACEPARENT})
    assert resp.status == 503
    kinds = by_kind(spans)
    server, run, call = kinds[SpanKind.SERVER], kinds[SpanKind.INTERNAL], kinds[SpanKind.CLIENT]
    assert attributes(call)["error.type"] == "overloaded"
    assert call.status.status_code is StatusCode.ERROR
    assert attributes(run)["openclaw.run.outcome"] == "error"
    assert run.status.status_code is StatusCode.ERROR
    assert attributes(server)["http.response.status_code"] == 503
    assert server.status.status_code is StatusCode.ERROR


async def test_a_refused_request_is_traced_without_a_run(
    aiohttp_client: AiohttpClient, tmp_path: pathlib.Path, mock_upstream: MockUpstream, spans: InMemorySpanExporter
) -> None:
    """A 404 is one SERVER span on the ``unmatched`` route, not an error, and nothing is sent upstream."""
    client = await gateway(aiohttp_client, tmp_path, mock_upstream)
    assert (await client.get("/v1/nothing-here", headers={"traceparent": TRACEPARENT})).status == 404
    (server,) = spans.get_finished_spans()
    assert server.name == "GET unmatched"
    assert parent_id(server) == CLIENT_SPAN_ID
    assert attributes(server)["http.response.status_code"] == 404
    assert server.status.status_code is StatusCode.UNSET
    assert mock_upstream.requests == []


#: Runs the gateway command; with "absent", in a Python that cannot import opentelemetry at all.
_GATEWAY = (
    "import sys\n"
    "if sys.argv[1] == 'absent':\n"
    "    sys.modules['opentelemetry'] = None  # every import of it fails, as if not installed\n"
    "from openclaw_http_compat.reference.cli import main\n"
    "sys.exit(main(['gateway', '--config', sys.argv[2], '--port', '0']))\n"
)


@pytest.mark.parametrize("otel", ["absent", "unconfigured"])
async def test_no_op_without_an_sdk(mock_upstream: MockUpstream, tmp_path: pathlib.Path, otel: str) -> None:
    """A real gateway process without OpenTelemetry, or with the API and no SDK configured,
    answers as always and does no tracing at all: no traceparent reaches the upstream, whether
    the client sent one or not."""
    state = tmp_path / "state"
    config = write_gateway_config(tmp_path / "openclaw.json", state, mock_upstream.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _GATEWAY, otel, str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=gateway_env(state),
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            match = LISTENING.search(await proc.stdout.readline())
        assert match is not None
        url = f"http://127.0.0.1:{int(match.group(1))}/v1/chat/completions"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            for headers in ({"traceparent": TRACEPARENT}, {}):
                async with session.post(url, json=BODY, headers=headers) as resp:
                    assert resp.status == 200
                    assert (await resp.text()).endswith("data: [DONE]\n\n")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    received = [request.headers.get("traceparent") for request in mock_upstream.requests]
    assert received == [None, None]
