"""Where requests and agent runs meet :mod:`.metrics` and :mod:`.tracing`.

:func:`instrumentation_middleware` counts and traces each request; :func:`observe_run` each
agent run. The plugin's sub-application carries the middleware itself; a gateway that
installs it on its root application as well (first, before its auth) has every route
counted, its own 401s included, and the sub-application's copy then steps aside, so no
request is counted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from .metrics import Metrics, RunOutcome
from .tracing import mark_error, request_span, run_span, set_attributes

if TYPE_CHECKING:
    from .run import Run

__all__ = ("UNMATCHED_ROUTE", "instrumentation_middleware", "observe_run", "route_of")

#: The ``route`` of a request no route serves (a 404, a 405): never its path, which is unbounded.
UNMATCHED_ROUTE: Final = "unmatched"
#: The status recorded for a request whose client left (or whose task was cancelled) before its answer.
_CLIENT_CLOSED: Final = 499

_OBSERVED: Final = web.RequestKey("openclaw_http_compat.observed", bool)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The template of the route ``request`` matched (``/v1/models/{model_id}``), or :data:`UNMATCHED_ROUTE`."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def instrumentation_middleware(metrics: Metrics) -> Middleware:
    """A middleware that counts every request with ``metrics`` and wraps it in a ``SERVER`` span.

    Install it first, so that the time and the status it sees are the client's.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if _OBSERVED in request:
            return await handler(request)
        request[_OBSERVED] = True
        route = route_of(request)
        started = time.perf_counter()
        status = 500
        with request_span(request, route) as span:
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except asyncio.CancelledError:
                status = _CLIENT_CLOSED
                raise
            finally:
                metrics.request_finished(
                    route=route, method=request.method, status=status, duration_s=time.perf_counter() - started
                )
                set_attributes(span, {"http.response.status_code": status})
                if status >= 500 and status != _CLIENT_CLOSED:
                    mark_error(span, str(status))

    return middleware


@contextmanager
def observe_run(metrics: Metrics, run: Run, request: web.BaseRequest | None) -> Iterator[None]:
    """Count and trace ``run`` while the block answers ``request`` with it, in this task
    (``None``: a run in a task of its own, which marks its outcome itself).

    The outcome is what the handler marked on :attr:`Run.outcome`; otherwise ``error`` when
    the run failed or the block raised, else ``completed``. A cancellation from outside (aiohttp's
    ``handler_cancellation``, the gateway) is ``client_gone`` when the client's connection is
    gone, else ``aborted``.
    """
    agent = run.request.agent_id
    stream = run.chat.stream
    metrics.run_started(agent=agent, stream=stream)
    started = time.perf_counter()
    outcome: RunOutcome = "error"
    with run_span(agent=agent, model=run.chat.model, run_id=run.request.run_id) as span:
        try:
            yield
            outcome = run.outcome or ("error" if run.error is not None else "completed")
        except asyncio.CancelledError:
            transport = request.transport if request is not None else None
            gone = transport is None or transport.is_closing()
            outcome = run.outcome or ("client_gone" if gone else "aborted")
            raise
        except BaseException:
            outcome = run.outcome or "error"
            raise
        finally:
            if stream and run.first_token_at is not None:
                metrics.first_token(agent=agent, seconds=run.first_token_at - started)
            usage = run.usage
            if usage is not None:
                metrics.tokens_used(agent=agent, prompt=usage.input, completion=usage.output, cached=usage.cache_read)
                set_attributes(
                    span, {"gen_ai.usage.input_tokens": usage.input, "gen_ai.usage.output_tokens": usage.output}
                )
            # Final from here on: the access log reads it when the request ends.
            run.outcome = outcome
            metrics.run_finished(agent=agent, stream=stream, outcome=outcome)
            set_attributes(span, {"openclaw.run.outcome": outcome})
            if outcome == "error":
                mark_error(span, "agent run failed")
