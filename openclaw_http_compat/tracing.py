"""OpenTelemetry spans for requests and agent runs, when ``opentelemetry-api`` is installed.

The plugin imports only the API (the ``[otel]`` extra). Without it every function here is a
no-op; with it but without an SDK configured, the API's own default tracer is, so nothing
is recorded and nothing is sent. A gateway that configures an SDK ``TracerProvider`` gets a
``SERVER`` span per request (continuing the client's W3C ``traceparent``) and, under it, an
``invoke_agent`` span per run carrying the GenAI semantic-convention attributes. The
reference gateway adds a ``CLIENT`` span per upstream call under the run's span.

Attributes never carry a session key, a user, a credential or message text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ("TRACING_AVAILABLE", "mark_error", "request_span", "run_span", "set_attributes")

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the [otel] extra is not installed
    TRACING_AVAILABLE: Final = False
else:
    TRACING_AVAILABLE = True  # type: ignore[misc]
    # A proxy: it follows whatever TracerProvider the gateway sets, even later.
    _tracer = trace.get_tracer("openclaw_http_compat")


def set_attributes(span: Span | None, attributes: Mapping[str, Any]) -> None:
    """Set ``attributes`` on ``span`` when there is a recording one."""
    if span is not None and span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def mark_error(span: Span | None, description: str) -> None:
    """Set ``span``'s status to error, when there is a recording one."""
    if span is not None and span.is_recording():
        span.set_status(trace.StatusCode.ERROR, description)


@contextmanager
def request_span(request: web.BaseRequest, route: str) -> Iterator[Span | None]:
    """A ``SERVER`` span for ``request``, current while it is served; ``None`` without OpenTelemetry.

    The client's ``traceparent`` (and ``tracestate``), when it sent one, becomes the parent.
    """
    if not TRACING_AVAILABLE:
        yield None
        return
    parent = propagate.extract(request.headers)
    with _tracer.start_as_current_span(
        f"{request.method} {route}",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": request.method, "http.route": route},
        # A 4xx travels as an HTTPException: the status, set by the caller, says what failed.
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


@contextmanager
def run_span(*, agent: str, model: str, run_id: str) -> Iterator[Span | None]:
    """An ``invoke_agent`` span for one agent run, current while it runs; ``None`` without OpenTelemetry."""
    if not TRACING_AVAILABLE:
        yield None
        return
    with _tracer.start_as_current_span(
        f"invoke_agent {agent}",
        kind=trace.SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.request.model": model,
            "gen_ai.response.id": run_id,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span
