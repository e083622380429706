"""Mounting the endpoint on a gateway's ``web.Application``.

:func:`setup` is the one entry point; :func:`gateway_plugin` is the same callable, published
under the setuptools entry-point group ``openclaw.gateway.plugins`` for gateways that load
their plugins from a config flag.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware

from .attach import LiveRuns
from .auth import authenticate_request
from .config import HttpCompatConfig
from .cors import cors_middleware, cors_response_headers
from .errors import INTERNAL_ERROR, ApiError, InvalidRequestError, ShuttingDown, UpstreamError, shutting_down_error
from .handlers import REQUEST_ID, chat_completions, client_closed
from .host import Host
from .images import ImageFetcher
from .idempotency import MemoryIdempotencyStore
from .keys import CONFIG_KEY, HOST_KEY, IMAGES_KEY, LIVE_RUNS_KEY, PRINCIPAL_KEY, RUNS_KEY
from .log import log
from .models import get_model, list_models
from .observe import instrumentation_middleware
from .registry import RunRegistry
from .stored_routes import install_stored_routes
from .wire import json_error_response

__all__ = ("BASE_PATH", "create_app", "gateway_plugin", "setup", "start_drain", "wait_drained")

#: The narrowest prefix that holds every route we serve. A prefixed sub-app answers its
#: whole prefix, so gateway routes under /v1 must be longer static paths (they win).
BASE_PATH: Final = "/v1"
#: How long shutdown waits for the runs it ended to write their last frame. Short: ending a
#: run is a cancellation and one write; the drain before it (:func:`wait_drained`) is where a
#: gateway lets runs finish.
_SHUTDOWN_GRACE_S: Final = 3.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_middleware(config: HttpCompatConfig) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # Every answer carries x-request-id (a completion's is its id, set by the handler).
        registry = request.app[RUNS_KEY]
        registry.request_started()
        try:
            exc = request.match_info.http_exception
            if exc is not None:
                # Method and path checks come before auth, as in OpenClaw.
                raise _http_error(exc)
            if registry.draining and request.method == "POST":
                # New work while the gateway drains: elsewhere (or here, after the restart).
                raise shutting_down_error()
            if PRINCIPAL_KEY not in request:
                # The gateway did not authenticate this request: never serve it open.
                host = request.app[HOST_KEY]
                await authenticate_request(
                    request,
                    host.authenticator,
                    trusted_proxies=config.trusted_proxies,
                    allow_real_ip_fallback=config.allow_real_ip_fallback,
                    metrics=host.metrics,
                )
            response = await handler(request)
        except ApiError as api_error:
            log.debug("request refused: %s %s", api_error.status, api_error.message)
            raise _stamped(json_error_response(api_error)) from None
        except web.HTTPException as http_error:
            raise _stamped(http_error) from None
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            # The client left (mid-body, or before the answer): not a server error.
            log.debug("client went away: %s %s", request.method, request.path)
            return client_closed()
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            raise _stamped(json_error_response(UpstreamError(INTERNAL_ERROR))) from None
        finally:
            registry.request_ended()
        if not response.prepared and REQUEST_ID not in response.headers:
            _stamped(response)
        elif response.prepared and _gone(request):
            return _gone_answer(response)
        return response

    return middleware


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _gone_answer(response: web.StreamResponse) -> web.StreamResponse:
    # A stream whose client left: handed back to aiohttp, aiohttp-sse's prepare() raises
    # CancelledError for it (its check for a lost transport, see aio-libs/aiohttp#3105), and
    # aiohttp then skips the access log. The 499 stand-in fails to write like any answer to
    # a closed connection, and is logged; it keeps the stream's request id.
    gone = client_closed()
    gone.headers[REQUEST_ID] = response.headers.get(REQUEST_ID) or f"req_{uuid.uuid4().hex}"
    return gone


_R = TypeVar("_R", bound=web.StreamResponse)


def _stamped(response: _R) -> _R:
    response.headers[REQUEST_ID] = f"req_{uuid.uuid4().hex}"
    return response


def _http_error(exc: web.HTTPException) -> ApiError:
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return InvalidRequestError("Method Not Allowed", status=405, code="method_not_allowed", headers=headers)
    if exc.status == 404:
        return InvalidRequestError("Not Found", status=404, code="not_found")
    return InvalidRequestError(exc.reason, status=exc.status)


async def _end_runs_on_shutdown(app: web.Application) -> None:
    # Ends every open response properly (error frame and [DONE], or 503) and fails bodies
    # still arriving; without this, open requests hold shutdown up for the runner's
    # shutdown_timeout (60 s by default).
    tasks = app[RUNS_KEY].end_all(ShuttingDown())
    if tasks:
        await asyncio.wait(tasks, timeout=_SHUTDOWN_GRACE_S)


def start_drain(subapp: web.Application) -> None:
    """Start draining the endpoint mounted as ``subapp``: refuse new work, let what runs finish.

    From now on every new ``POST`` (a chat completion) is answered 503 ``shutting_down``
    with ``Retry-After``; requests already going, streamed or not, carry on. A gateway calls
    this when it is told to stop (SIGTERM), then :func:`wait_drained`, then shuts its
    runner down, which ends whatever is still running (error frame and ``[DONE]``, or 503).
    An application this package did not build is left alone.
    """
    registry = subapp.get(RUNS_KEY)
    if registry is not None:
        registry.start_draining()


async def wait_drained(subapp: web.Application, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until no request or run of ``subapp`` is in flight.

    Returns:
        True when the endpoint is idle (at once for an application this package did not
        build), false when ``timeout`` passed first.
    """
    registry = subapp.get(RUNS_KEY)
    return True if registry is None else await registry.wait_idle(timeout)


async def _image_fetcher(app: web.Application) -> AsyncIterator[None]:
    # The fetcher opens its guarded pool on the first remote fetch (images.allowUrl), and the
    # pool closes with our sub-app.
    async with ImageFetcher() as fetcher:
        app[IMAGES_KEY] = fetcher
        yield


def create_app(config: HttpCompatConfig, host: Host) -> web.Application:
    """Build the sub-application (routes, middleware, shutdown hook), fully, unmounted.

    Its routes are relative to :data:`BASE_PATH`.
    """
    middlewares = [instrumentation_middleware(host.metrics), _error_middleware(config)]
    if config.cors.enabled:
        # Before the error middleware, which would turn a preflight into a 405.
        middlewares.insert(1, cors_middleware(config.cors))
    subapp = web.Application(middlewares=middlewares)
    if config.cors.enabled:
        subapp.on_response_prepare.append(cors_response_headers(config.cors))
    subapp[CONFIG_KEY] = config
    subapp[HOST_KEY] = host
    subapp[RUNS_KEY] = RunRegistry(config.chat_completions.max_concurrent_runs)
    store = host.idempotency if host.idempotency is not None else MemoryIdempotencyStore()
    subapp[LIVE_RUNS_KEY] = LiveRuns(
        config.chat_completions, subapp[RUNS_KEY], store, roster=host.roster, metrics=host.metrics
    )
    subapp.router.add_post("/chat/completions", chat_completions)
    install_stored_routes(subapp, config.chat_completions, host.completions)
    subapp.router.add_get("/models", list_models, allow_head=False)
    # Ids hold a slash (openclaw/main); clients send it raw or percent-encoded.
    subapp.router.add_get("/models/{model_id:.+}", get_model, allow_head=False)
    subapp.on_shutdown.append(_end_runs_on_shutdown)
    subapp.cleanup_ctx.append(_image_fetcher)
    return subapp


def setup(app: web.Application, config: HttpCompatConfig, host: Host) -> web.Application | None:
    """Mount the OpenAI-compatible endpoint on the gateway's application.

    Nothing is added when ``gateway.http.endpoints.chatCompletions.enabled`` is false.
    Otherwise a sub-application serving ``/v1/chat/completions`` and ``/v1/models`` is
    mounted under ``/v1``; the gateway's middlewares (its auth among them) wrap it.

    Example::

        app = web.Application(middlewares=[auth_middleware(authenticator)])
        setup(app, config, Host(runner=runner, authenticator=authenticator, roster=config.agents))
        web.run_app(app)

    Args:
        app: the gateway's root application, not yet started.
        config: the gateway config.
        host: the gateway's runner, authenticator and roster.

    Returns:
        The mounted sub-application, or ``None`` when the endpoint is disabled.

    Raises:
        RuntimeError: the application has already started (it is frozen).
    """
    if not config.chat_completions.enabled:
        return None
    if app.frozen:
        raise RuntimeError(
            "openclaw_http_compat.setup() must be called before the gateway application starts "
            "(before runner.setup() or web.run_app())"
        )
    subapp = create_app(config, host)
    app.add_subapp(BASE_PATH, subapp)
    return subapp


def gateway_plugin(app: web.Application, config: HttpCompatConfig, host: Host) -> web.Application | None:
    """The ``openclaw.gateway.plugins`` entry point; the same as :func:`setup`."""
    return setup(app, config, host)
