"""What one upstream provider call reports: its ``CLIENT`` span, its ``traceparent``, its metrics.

The span is a child of whatever span is current when the call starts (the plugin's
``invoke_agent`` span of the run), and carries the GenAI semantic-convention attributes of a
``chat`` call. It is never made current: a provider streams from an async generator, and a
context attached there would leak into its consumer at every ``yield``. Instead the span's
context is injected into the outbound request's headers as a W3C ``traceparent``, so the
upstream continues the client's trace. Without ``opentelemetry-api``, without a configured
SDK, or under a run whose span does not record, there is no span and no header.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from openclaw_http_compat import RunError, RunUsage
from openclaw_http_compat.tracing import TRACING_AVAILABLE, mark_error, recording, set_attributes

from .metrics import UpstreamMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import Span

if TRACING_AVAILABLE:
    from opentelemetry import propagate, trace

    _tracer = trace.get_tracer("openclaw_http_compat.reference")

__all__ = ("UpstreamCall",)


class UpstreamCall:
    """One call to ``provider`` for ``model``; :meth:`end` it exactly once, however it ends.

    Args:
        provider: the configured provider id (``gen_ai.provider.name``, the metrics' label).
        model: the model id at the provider.
        metrics: where the call's duration and failure are counted, if anywhere.
    """

    __slots__ = ("provider", "_metrics", "_started", "_span")

    def __init__(self, provider: str, model: str, metrics: UpstreamMetrics | None) -> None:
        self.provider = provider
        self._metrics = metrics
        self._started = time.perf_counter()
        self._span: Span | None = None
        if recording():
            self._span = _tracer.start_span(
                f"chat {model}",
                kind=trace.SpanKind.CLIENT,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider,
                    "gen_ai.system": provider,
                    "gen_ai.request.model": model,
                },
                record_exception=False,
                set_status_on_exception=False,
            )

    def headers(self, base: Mapping[str, str]) -> Mapping[str, str]:
        """``base`` with this call's ``traceparent`` (and ``tracestate``) added, when there is a trace to continue."""
        if self._span is None or not self._span.get_span_context().is_valid:
            return base
        headers = dict(base)
        propagate.inject(headers, context=trace.set_span_in_context(self._span))
        return headers

    def usage(self, usage: RunUsage) -> None:
        """Record the call's token usage on its span."""
        set_attributes(
            self._span, {"gen_ai.usage.input_tokens": usage.input, "gen_ai.usage.output_tokens": usage.output}
        )

    def end(self, error: RunError | None) -> None:
        """The call is over: failed with ``error``, or not (answered, or abandoned by its run)."""
        if self._metrics is not None:
            self._metrics.upstream_finished(
                provider=self.provider,
                duration_s=time.perf_counter() - self._started,
                error=None if error is None else error.reason or "unknown",
            )
        if self._span is not None:
            if error is not None:
                set_attributes(self._span, {"error.type": error.reason or "unknown"})
                mark_error(self._span, error.reason or "unknown")
            self._span.end()
