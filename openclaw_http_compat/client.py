"""The outbound HTTP stack: aiohttp client sessions, and the one mapping of their errors.

Every outbound call of the package and of its reference gateway goes through an
``aiohttp.ClientSession`` made by :func:`open_client_session`, and every failure of such a
call is mapped into :class:`~openclaw_http_compat.errors.TransportError` here, by
:func:`transport_errors`, once (the way httpx's transports map theirs).

**Two pools, one factory.** Provider calls and remote image fetches never share a session:

* *Provider calls* (the reference gateway) go to URLs the operator configured. They share
  one session the gateway opens and closes with its application: pooled keep-alive
  connections, a DNS cache, and the environment's proxy (see below).
* *Remote images* (the plugin) come from URLs a user sent, so they are SSRF-guarded: a
  resolver refuses a host when any of its addresses is blocked, and the connector connects
  only to the addresses that resolver returned. They get a session of their own, from the
  same factory, owned by the plugin's sub-application, because sharing the providers'
  session would let a user's URL get past the guard three ways:

  - a pooled connection is reused by host and port alone, so a keep-alive connection a
    provider call opened to an internal host would carry a user's request to that host
    without the resolver ever being asked;
  - a cached DNS answer is likewise reused without being checked, so the image pool has
    no DNS cache: every new connection is resolved, and so checked, afresh;
  - a proxy resolves the target's name itself, beyond the guard, so image fetches use no
    proxy at all.

**Proxies.** Sessions never read the environment themselves (``trust_env`` stays off). In
aiohttp 3.14 ``trust_env=True`` looks up the proxy and reads ``~/.netrc`` in a worker
thread on every request (about 0.4 ms per call on the benchmark machine, more than the
rest of the call), and a ``~/.netrc`` entry for a provider's host makes every call that
sends an ``Authorization`` header fail with ``ValueError``. Instead :func:`env_proxy` reads
``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` the way ``trust_env`` would (and the
``openai`` SDK's httpx does), once per provider, which passes the result as ``proxy=``.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from .errors import TransportError

__all__ = (
    "DEFAULT_POOL_LIMIT",
    "DNS_CACHE_TTL_S",
    "KEEPALIVE_S",
    "env_proxy",
    "open_client_session",
    "send_request",
    "transport_errors",
)

#: Connections a pool keeps open at most, across all hosts (``0``: no cap).
DEFAULT_POOL_LIMIT: Final = 256
#: How long a resolved host name is reused; upstreams are few and stable.
DNS_CACHE_TTL_S: Final = 10
#: How long an idle pooled connection is kept for the next call.
KEEPALIVE_S: Final = 30.0


class _Attempt:
    """One try of :func:`send_request`; the session's trace config marks a reused connection."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_connection_reuse(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceConnectionReuseconnParams
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


def open_client_session(
    *,
    limit: int = DEFAULT_POOL_LIMIT,
    resolver: AbstractResolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> aiohttp.ClientSession:
    """A session tuned for a gateway's outbound calls; call it inside the running loop.

    * one pool of at most ``limit`` connections (``0``: no cap), kept alive
      :data:`KEEPALIVE_S` between calls;
    * no cookie jar: an upstream's cookies must never pass from one user's run to another's;
    * no proxy from the environment (see the module docstring); a call passes ``proxy=``;
    * no session-wide timeout: each call gives its own ``aiohttp.ClientTimeout``.

    Args:
        limit: the most connections open at once.
        resolver: resolves every host name (e.g. one refusing blocked addresses). Its
            answers are never cached, so that every new connection goes through it. Without
            one, aiohttp's resolver is used and its answers are cached :data:`DNS_CACHE_TTL_S`.
        ssl_context: how ``https`` upstreams are verified (e.g. a private CA); ``None``:
            aiohttp's default, the system's trust store.

    The caller owns the session and must ``await session.close()`` (or use ``async with``).
    """
    connector = aiohttp.TCPConnector(
        limit=limit,
        keepalive_timeout=KEEPALIVE_S,
        resolver=resolver,
        use_dns_cache=resolver is None,
        ttl_dns_cache=DNS_CACHE_TTL_S,
        ssl=ssl_context if ssl_context is not None else True,
    )
    reuse = aiohttp.TraceConfig()
    reuse.on_connection_reuseconn.append(_on_connection_reuse)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        trace_configs=[reuse],
    )


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, or ``None`` to connect directly.

    ``HTTP_PROXY`` for ``http`` URLs and ``HTTPS_PROXY`` for ``https`` ones (lower-case names
    win, as in curl); ``NO_PROXY`` lists hosts and domain suffixes reached directly (``*``:
    all). This is what aiohttp's ``trust_env`` reads, without its worker thread.
    ``ALL_PROXY`` is not read: its usual scheme, SOCKS, is one aiohttp cannot speak.
    """
    target = urlsplit(url)
    proxy = urllib.request.getproxies_environment().get(target.scheme)
    if not proxy or not target.hostname:
        return None
    # With a proxy in the environment, this reads NO_PROXY only, on every platform.
    if urllib.request.proxy_bypass(target.hostname):
        return None
    return proxy


async def send_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    data: bytes,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    proxy: str | None = None,
) -> aiohttp.ClientResponse:
    """Send a request and wait for its response head; the caller releases or closes it.

    When a reused keep-alive connection turns out to be closed before any byte of the
    response arrived, the request is sent once more on a new connection. That is the race
    every pooled client meets (the server's idle timer closes the connection just as the
    request goes out), and the server processed nothing. aiohttp retries only idempotent
    methods on its own; a chat completion is a ``POST``, and a failure on a *new*
    connection is never retried, since the server may have acted on it. The retry gets the
    whole ``timeout`` again: a stale connection fails within moments.

    Raises:
        aiohttp.ClientError: the call failed (map it with :func:`transport_errors`).
        TimeoutError: ``timeout`` ran out.
    """
    attempt = _Attempt()
    try:
        return await session.request(
            method, url, data=data, headers=headers, timeout=timeout, proxy=proxy, trace_request_ctx=attempt
        )
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        # A close that cut a response head short carries that head: the server did answer.
        answered = isinstance(exc, aiohttp.ServerDisconnectedError) and not isinstance(exc.message, str)
        if not attempt.reused or answered:
            raise
    return await session.request(method, url, data=data, headers=headers, timeout=timeout, proxy=proxy)


@contextmanager
def transport_errors() -> Iterator[None]:
    """Map aiohttp's client errors (and timeouts) raised inside the block to :class:`TransportError`.

    A status is no error here: a response with any status is returned to the caller, who
    maps it. The message names the failure's class, never a URL or a body.

    Raises:
        TransportError: with ``reason`` ``timeout`` (any ``TimeoutError``: aiohttp's
            ``ServerTimeoutError`` family and ``asyncio.timeout`` alike), ``unreachable``
            (DNS, refused, TLS handshake, an unreachable or refusing proxy), ``invalid_url``,
            ``connection`` (reset or closed mid-exchange, a broken body) or ``protocol``
            (malformed HTTP from the peer).
    """
    try:
        yield
    except TimeoutError as exc:
        raise TransportError("timeout", f"timed out ({type(exc).__name__})") from exc
    except (aiohttp.ClientConnectorError, aiohttp.ClientHttpProxyError) as exc:
        # ClientConnectorError covers ClientConnectorDNSError, ClientProxyConnectionError and
        # the TLS errors; ClientHttpProxyError is a proxy answering CONNECT with an error.
        raise TransportError("unreachable", f"cannot connect ({type(exc).__name__})") from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise TransportError("invalid_url", f"unusable URL ({type(exc).__name__})") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.UploadAbortedError, OSError) as exc:
        # The peer closed or reset mid-exchange, the response body broke off, the request body
        # could not be sent, or the socket failed in a way aiohttp left unwrapped.
        raise TransportError("connection", f"connection failed ({type(exc).__name__})") from exc
    except aiohttp.ClientError as exc:
        # ClientResponseError (malformed HTTP from the peer), TooManyRedirects and the rest.
        raise TransportError("protocol", f"HTTP exchange failed ({type(exc).__name__})") from exc
