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
from .errors import INTERNAL_ERROR, ApiError, InvalidRequestError, ShuttingDown, UpstreamError
from .handlers import REQUEST_ID, chat_completions, client_closed
from .host import Host
from .images import ImageFetcher
from .idempotency import MemoryIdempotencyStore
from .keys import CONFIG_KEY, HOST_KEY, IMAGES_KEY, LIVE_RUNS_KEY, PRINCIPAL_KEY, RUNS_KEY
from .log import log
from .models import get_model, list_models
from .registry import RunRegistry
from .wire import json_error_response

__all__ = ("BASE_PATH", "create_app", "gateway_plugin", "setup")

#: The narrowest prefix that holds every route we serve. A prefixed sub-app answers its
#: whole prefix, so gateway routes under /v1 must be longer static paths (they win).
BASE_PATH: Final = "/v1"
_SHUTDOWN_GRACE_S: Final = 5.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_middleware(config: HttpCompatConfig) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # Every answer carries x-request-id (a completion's is its id, set by the handler).
        try:
            exc = request.match_info.http_exception
            if exc is not None:
                # Method and path checks come before auth, as in OpenClaw.
                raise _http_error(exc)
            if PRINCIPAL_KEY not in request:
                # The gateway did not authenticate this request: never serve it open.
                await authenticate_request(
                    request,
                    request.app[HOST_KEY].authenticator,
                    trusted_proxies=config.trusted_proxies,
                    allow_real_ip_fallback=config.allow_real_ip_fallback,
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
        if not response.prepared and REQUEST_ID not in response.headers:
            _stamped(response)
        return response

    return middleware


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
    subapp = web.Application(middlewares=[_error_middleware(config)])
    subapp[CONFIG_KEY] = config
    subapp[HOST_KEY] = host
    subapp[RUNS_KEY] = RunRegistry(config.chat_completions.max_concurrent_runs)
    store = host.idempotency if host.idempotency is not None else MemoryIdempotencyStore()
    subapp[LIVE_RUNS_KEY] = LiveRuns(config.chat_completions, subapp[RUNS_KEY], store)
    subapp.router.add_post("/chat/completions", chat_completions)
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
