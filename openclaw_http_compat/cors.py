"""CORS for the endpoint's routes (``gateway.http.cors.allowOrigins``), so web pages can call it.

Off unless origins are configured: then no response carries any CORS header. On:

* A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) for one of
  our routes, from an allowed origin, for a method the route serves, is answered 204 with
  ``Access-Control-Allow-Origin`` (the origin, or ``*``), ``Vary``, the route's methods, the
  requested headers that clients of this API send (``authorization``, ``content-type``,
  ``idempotency-key``, ``x-openclaw-*``, ``x-stainless-*``: reflected one by one, because a
  header prefix cannot be written in ``Access-Control-Allow-Headers``) and a max age. It
  needs no credentials: our routes have no ``OPTIONS`` route, so the gateway's auth
  middleware lets the preflight through as a 405, which this middleware answers first.
  Any other preflight falls through to that 405, without CORS headers, and the browser
  refuses the call.
* Every other response to an allowed origin carries ``Access-Control-Allow-Origin``,
  ``Vary: Origin`` and ``Access-Control-Expose-Headers: x-request-id, retry-after``, errors
  and the gateway's own 401s included (set in ``on_response_prepare``, so a stream's head
  has them too). Credentials are never allowed.

aiohttp-cors was weighed and not used: it answers preflights from ``OPTIONS`` routes it
adds, which the gateway's auth middleware would then guard (a preflight carries no
credentials, so every one would be a 401); it can list header names or allow any, not a
prefix; and it reads its config through ``request.app``, which breaks in a sub-application
(aio-libs/aiohttp-cors#219).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from .config import CorsConfig

__all__ = ("ALLOWED_HEADERS", "ALLOWED_HEADER_PREFIXES", "EXPOSED_HEADERS", "cors_middleware", "cors_response_headers")

#: Request headers a browser may send, by exact name.
ALLOWED_HEADERS: Final = frozenset({"authorization", "content-type", "idempotency-key"})
#: Request headers a browser may send, by prefix (the gateway's own and the openai SDK's).
ALLOWED_HEADER_PREFIXES: Final = ("x-openclaw-", "x-stainless-")
#: Response headers a page may read.
EXPOSED_HEADERS: Final = "x-request-id, retry-after"
#: How long a browser may cache a preflight's answer, in seconds.
_MAX_AGE: Final = "600"

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _allowed_header(name: str) -> bool:
    return name in ALLOWED_HEADERS or name.startswith(ALLOWED_HEADER_PREFIXES)


def _is_preflight(request: web.Request) -> bool:
    return request.method == hdrs.METH_OPTIONS and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers


def _add_vary(response: web.StreamResponse, *names: str) -> None:
    present = [v.strip() for v in response.headers.get(hdrs.VARY, "").split(",") if v.strip()]
    lowered = {v.lower() for v in present}
    present += [name for name in names if name.lower() not in lowered]
    response.headers[hdrs.VARY] = ", ".join(present)


def _preflight(request: web.Request, config: CorsConfig, origin: str) -> web.Response | None:
    method = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_METHOD, "").strip().upper()
    refused = request.match_info.http_exception
    # Our routes have no OPTIONS route: a route that exists answers OPTIONS with a 405.
    if not isinstance(refused, web.HTTPMethodNotAllowed) or method not in refused.allowed_methods:
        return None
    if not config.allows(origin):
        return None
    requested = request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "")
    names = [name.strip().lower() for name in requested.split(",") if name.strip()]
    response = web.Response(status=204)
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*" if config.any_origin else origin
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ", ".join(sorted(refused.allowed_methods))
    allowed = [name for name in names if _allowed_header(name)]
    if allowed:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ", ".join(allowed)
    response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = _MAX_AGE
    _add_vary(response, "Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
    return response


def cors_middleware(config: CorsConfig) -> Middleware:
    """The sub-app middleware answering CORS preflights for its routes (install it first)."""

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and _is_preflight(request):
            answer = _preflight(request, config, origin)
            if answer is not None:
                return answer
        return await handler(request)

    return middleware


def cors_response_headers(
    config: CorsConfig,
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The sub-app's ``on_response_prepare`` hook adding CORS headers to every answer."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
            return  # a preflight's answer, complete already
        if not config.any_origin:
            # Whether an answer carries the header depends on the Origin: caches must know.
            _add_vary(response, "Origin")
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not config.allows(origin) or _is_preflight(request):
            # A preflight we did not answer 204 is a refusal: nothing in it may read as a yes.
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*" if config.any_origin else origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSED_HEADERS

    return add_headers
