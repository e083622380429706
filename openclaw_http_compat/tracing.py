"""OpenTelemetry spans for requests and agent runs, when ``opentelemetry-api`` is installed.

The plugin imports only the API (the ``[otel]`` extra). Without it, or while no SDK
``TracerProvider`` is set, every function here does nothing at all: even the API's no-op
tracer costs some 20 µs a request, a tenth of the plugin's own. A gateway that sets one gets a
``SERVER`` span per request (continuing the client's W3C ``traceparent``) and, under it, an
``invoke_agent`` span per run carrying the GenAI semantic-convention attributes. The
reference gateway adds a ``CLIENT`` span per upstream call under the run's span.

Attributes never carry a session key, a user, a credential or message text.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = (
    "TRACING_AVAILABLE",
    "mark_error",
    "recording",
    "request_span",
    "run_span",
    "set_attributes",
    "tracing_enabled",
)

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - the [otel] extra is not installed
    TRACING_AVAILABLE: Final = False
else:
    TRACING_AVAILABLE = True  # type: ignore[misc]
    # A proxy: it follows whatever TracerProvider the gateway sets, even later.
    _tracer = trace.get_tracer("openclaw_http_compat")

_configured = False


def tracing_enabled() -> bool:
    """Whether a real ``TracerProvider`` is set (the API's default proxy and no-op ones are not)."""
    global _configured
    if not _configured and TRACING_AVAILABLE:
        # The global provider can be set once only, so once real it stays real.
        provider = trace.get_tracer_provider()
        _configured = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return _configured


def recording() -> bool:
    """Whether the current span records: the spans of a run and of its upstream calls are made only then."""
    return _configured and trace.get_current_span().is_recording()


def set_attributes(span: Span | None, attributes: Mapping[str, Any]) -> None:
    """Set ``attributes`` on ``span`` when there is a recording one."""
    if span is not None and span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def mark_error(span: Span | None, description: str) -> None:
    """Set ``span``'s status to error, when there is a recording one."""
    if span is not None and span.is_recording():
        span.set_status(trace.StatusCode.ERROR, description)


#: What the span functions return when there is nothing to trace (reusable, and cheaper to
#: enter than a generator-based context manager).
_NO_SPAN: Final[AbstractContextManager[None]] = nullcontext()


def request_span(request: web.BaseRequest, route: str) -> AbstractContextManager[Span | None]:
    """A ``SERVER`` span for ``request``, current while it is served; ``None`` without tracing.

    The client's ``traceparent`` (and ``tracestate``), when it sent one, becomes the parent.
    """
    return _request_span(request, route) if tracing_enabled() else _NO_SPAN


@contextmanager
def _request_span(request: web.BaseRequest, route: str) -> Iterator[Span]:
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


def run_span(*, agent: str, model: str, run_id: str) -> AbstractContextManager[Span | None]:
    """An ``invoke_agent`` span for one agent run, current while it runs; ``None`` when the
    request is not traced (no tracing, or a span that does not record)."""
    return _run_span(agent, model, run_id) if recording() else _NO_SPAN


@contextmanager
def _run_span(agent: str, model: str, run_id: str) -> Iterator[Span]:
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
