"""The one outbound HTTP stack: an ``aiohttp.ClientSession`` owned by the gateway.

Every outbound call of the package and of its reference gateway (provider calls, image
fetches) goes through one session the gateway opens and closes with its application, stored
under :data:`~openclaw_http_compat.keys.CLIENT_SESSION_KEY` on its root app. A gateway that
stores none gets one the plugin opens on first use and closes with its sub-application.

aiohttp's ``ClientError`` tree is mapped into :class:`~openclaw_http_compat.errors.TransportError`
here, once (:func:`transport_errors`), the way httpx's transports map theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Final

import aiohttp
from aiohttp import web

from .errors import TransportError
from .keys import CLIENT_SESSION_KEY

__all__ = (
    "DEFAULT_POOL_LIMIT",
    "client_session_context",
    "open_client_session",
    "transport_errors",
)

#: Connections the pool keeps open at most, across all hosts.
DEFAULT_POOL_LIMIT: Final = 256
#: How long a resolved host name is reused; upstreams are few and stable.
DNS_CACHE_TTL_S: Final = 10
#: How long an idle pooled connection is kept for the next call.
KEEPALIVE_S: Final = 30.0


def open_client_session(*, limit: int = DEFAULT_POOL_LIMIT) -> aiohttp.ClientSession:
    """A session tuned for a gateway's outbound calls; call inside the running loop.

    * one pool of at most ``limit`` connections (``0``: no cap), keep-alive, a DNS cache;
    * no cookie jar: upstream cookies must never leak from one user's run into another's;
    * ``trust_env``: ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` are honoured, as the
      ``openai`` SDK (httpx) honours them; a call may still pass its own ``proxy=``;
    * no session-wide timeout: each call says its own with an ``aiohttp.ClientTimeout``.

    The caller owns the session and must ``await session.close()``.
    """
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=DNS_CACHE_TTL_S, keepalive_timeout=KEEPALIVE_S)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=True,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def client_session_context(
    *, limit: int = DEFAULT_POOL_LIMIT
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that opens the gateway's session and closes it with the app.

    Example::

        app.cleanup_ctx.append(client_session_context(limit=256))

    The session is stored under :data:`~openclaw_http_compat.keys.CLIENT_SESSION_KEY`, where the
    plugin (through ``request.config_dict``) and the gateway's own code find it.
    """

    async def context(app: web.Application) -> AsyncIterator[None]:
        session = open_client_session(limit=limit)
        app[CLIENT_SESSION_KEY] = session
        try:
            yield
        finally:
            await session.close()

    return context


@contextmanager
def transport_errors() -> Iterator[None]:
    """Map aiohttp's client errors (and timeouts) raised inside the block to :class:`TransportError`.

    Statuses are not errors here: a response with any status is returned to the caller, who
    maps it. The message names the failure's class, never a URL or a body.

    Raises:
        TransportError: the call failed, with ``reason`` one of ``timeout``, ``unreachable``,
            ``connection``, ``invalid_url`` or ``protocol``.
    """
    try:
        yield
    except (asyncio.TimeoutError, TimeoutError) as exc:
        # aiohttp's ServerTimeoutError (sock_connect, sock_read) is a TimeoutError too.
        raise TransportError("timeout", f"timed out ({type(exc).__name__})") from exc
    except (aiohttp.ClientConnectorError, aiohttp.ClientProxyConnectionError) as exc:
        # DNS failure, connection refused, unreachable proxy, TLS handshake refused.
        raise TransportError("unreachable", f"cannot connect ({type(exc).__name__})") from exc
    except aiohttp.InvalidURL as exc:
        raise TransportError("invalid_url", f"unusable URL ({type(exc).__name__})") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # The peer closed or reset mid-exchange, or the body broke off.
        raise TransportError("connection", f"connection failed ({type(exc).__name__})") from exc
    except (aiohttp.ClientResponseError, aiohttp.ClientError) as exc:
        # Malformed HTTP from the peer, a proxy refusing CONNECT, too many redirects.
        raise TransportError("protocol", f"HTTP exchange failed ({type(exc).__name__})") from exc
    except OSError as exc:
        raise TransportError("connection", f"connection failed ({type(exc).__name__})") from exc
