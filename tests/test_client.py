"""The outbound HTTP stack (``client.py``): the session factory, env proxies, the stale-connection
retry, and the one mapping of aiohttp's errors, each against real failures on 127.0.0.1.

Where exact bytes matter the server is a raw ``asyncio.start_server`` server (:class:`RawServer`);
elsewhere an aiohttp application. Every server is stopped at the end of its test.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Final, Self

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from pytest_aiohttp import AiohttpServer

from openclaw_http_compat.client import env_proxy, open_client_session, send_request, transport_errors
from openclaw_http_compat.errors import TransportError, TransportReason

#: A timeout meant to fire.
SHORT: Final = aiohttp.ClientTimeout(total=5, sock_read=0.05)
#: A call that must end on its own.
BOUNDED: Final = aiohttp.ClientTimeout(total=5)
PROXY_VARIABLES: Final = tuple(
    name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for name in (base, base.upper())
)


def ok(body: bytes) -> bytes:
    """A keep-alive response with a ``Content-Length`` body."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


Connection = Callable[["RawServer", int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server on 127.0.0.1 running ``handle`` per connection (numbered from 1), then closing it.

    Attributes:
        connections: how many connections it accepted.
        requests: ``(connection number, request head)`` of each request :meth:`next_request` read.
    """

    def __init__(self, handle: Connection) -> None:
        self._handle = handle
        self._server: asyncio.Server | None = None
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    async def next_request(self, number: int, reader: asyncio.StreamReader) -> bool:
        """Read one request (head and ``Content-Length`` body); ``False`` once the client closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        await reader.readexactly(length)
        self.requests.append((number, head.split(b"\r\n")[0]))
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handle(self, self.connections, reader, writer)
        finally:
            writer.close()


async def post(session: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout = BOUNDED) -> bytes:
    """The body of a ``POST`` through :func:`send_request`, failures mapped by :func:`transport_errors`."""
    with transport_errors():
        resp = await send_request(session, "POST", url, data=b"{}", headers={}, timeout=timeout)
        try:
            return await resp.read()
        finally:
            resp.release()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with open_client_session() as client_session:
        yield client_session


# --- env_proxy ---------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No proxy variable set; the test sets its own through the returned ``monkeypatch``."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


@pytest.mark.parametrize(
    ("environment", "url", "proxy"),
    [
        ({}, "http://api.example.com/v1", None),
        ({"HTTP_PROXY": "http://proxy:3128"}, "http://api.example.com/v1", "http://proxy:3128"),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://api.example.com/v1", None),
        ({"HTTPS_PROXY": "http://tls-proxy:3128"}, "https://api.example.com/v1", "http://tls-proxy:3128"),
        ({"http_proxy": "http://lower:1", "HTTP_PROXY": "http://upper:1"}, "http://a.example/", "http://lower:1"),
        ({"HTTP_PROXY": ""}, "http://api.example.com/v1", None),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "api.example.com"}, "http://api.example.com:8080/v1", None),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, "http://api.example.com/v1", None),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "http://api.example.com/v1", None),
        ({"HTTP_PROXY": "http://p:1", "no_proxy": "*"}, "http://anything/v1", None),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "other.com"}, "http://api.example.com/v1", "http://p:1"),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "http://badexample.com/v1", "http://p:1"),
    ],
    ids=["none", "http", "http-only-for-http", "https", "lower-case-wins", "empty", "no-proxy-host",
         "no-proxy-dot-suffix", "no-proxy-suffix", "no-proxy-star", "no-proxy-other", "no-proxy-not-a-suffix"],
)
def test_env_proxy(clean_environment: pytest.MonkeyPatch, environment: dict[str, str], url: str, proxy: str | None) -> None:
    """HTTP_PROXY / HTTPS_PROXY by the URL's scheme, NO_PROXY hosts and domain suffixes bypass them."""
    for name, value in environment.items():
        clean_environment.setenv(name, value)
    assert env_proxy(url) == proxy


# --- the session factory ----------------------------------------------------------------------


async def test_session_keeps_no_cookies(aiohttp_server: AiohttpServer, session: aiohttp.ClientSession) -> None:
    """An upstream's Set-Cookie is never sent back: one user's run must not carry another's cookies."""
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="ok")
        response.set_cookie("sid", "secret")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    url = str(server.make_url("/v1/chat/completions"))
    assert [await post(session, url), await post(session, url)] == [b"ok", b"ok"]
    assert seen == [None, None]


async def test_session_ignores_the_environment_proxy(
    aiohttp_server: AiohttpServer, session: aiohttp.ClientSession, clean_environment: pytest.MonkeyPatch
) -> None:
    """The session itself never reads HTTP_PROXY (a call passes ``proxy=``): a dead one set there changes nothing."""
    clean_environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="direct")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    assert await post(session, str(server.make_url("/v1/chat/completions"))) == b"direct"


class CountingResolver(AbstractResolver):
    """Resolves ``upstream.test`` to 127.0.0.1, counting the lookups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        assert host == "upstream.test"
        self.lookups += 1
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


async def test_session_with_a_resolver_asks_it_for_every_new_connection() -> None:
    """With a resolver (the image guard's case) answers are not cached: each new connection is resolved anew."""

    async def answer_and_close(server: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await server.next_request(number, reader):
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    resolver = CountingResolver()
    async with RawServer(answer_and_close) as server, open_client_session(resolver=resolver) as session:
        url = f"http://upstream.test:{server.port}/v1/chat/completions"
        assert [await post(session, url), await post(session, url)] == [b"ok", b"ok"]
    assert (resolver.lookups, server.connections) == (2, 2)


# --- send_request: the stale keep-alive connection ----------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_stale_pooled_connection_is_retried_once_on_a_new_one(session: aiohttp.ClientSession, how: str) -> None:
    """The server closes (or resets) a kept-alive connection when the second request arrives, unanswered:
    it is sent again on a new one."""

    async def handler(server: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(number, reader)
        if number == 1:
            writer.write(ok(b"first"))
            await writer.drain()
            await server.next_request(number, reader)
            if how == "reset":
                # Linger 0: the close sends RST, which the client reads as ECONNRESET.
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            return  # closes without answering
        writer.write(ok(b"second"))
        await writer.drain()
        await server.next_request(number, reader)

    async with RawServer(handler) as server:
        assert await post(session, server.url) == b"first"
        assert await post(session, server.url) == b"second"
    assert server.connections == 2
    assert [number for number, _ in server.requests] == [1, 1, 2]


async def test_new_connection_closed_before_responding_is_not_retried(session: aiohttp.ClientSession) -> None:
    """A new connection closed before any response byte: the server may have acted, so no second attempt."""

    async def handler(server: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(number, reader)

    async with RawServer(handler) as server:
        with pytest.raises(TransportError) as failed:
            await post(session, server.url)
    assert (failed.value.reason, str(failed.value)) == ("connection", "connection failed (ServerDisconnectedError)")
    assert (server.connections, len(server.requests)) == (1, 1)


async def test_pooled_connection_closed_mid_response_is_not_retried(session: aiohttp.ClientSession) -> None:
    """A kept-alive connection closed after part of the response head: a failure, and no second attempt."""

    async def handler(server: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(number, reader)
        writer.write(ok(b"first"))
        await server.next_request(number, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()

    async with RawServer(handler) as server:
        assert await post(session, server.url) == b"first"
        with pytest.raises(TransportError) as failed:
            await post(session, server.url)
    assert failed.value.reason == "connection"
    assert (server.connections, len(server.requests)) == (1, 2)


# --- transport_errors: aiohttp's tree, mapped once --------------------------------------------


def reply_with(data: bytes, *, then_wait: bool = False) -> Connection:
    """A handler reading one request, writing ``data``, then closing (or waiting for the client to)."""

    async def handler(server: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.next_request(number, reader)
        writer.write(data)
        await writer.drain()
        if then_wait:
            await reader.read()

    return handler


@pytest.mark.parametrize(
    ("reply", "timeout", "reason", "message"),
    [
        (reply_with(b"", then_wait=True), SHORT, "timeout", "timed out (SocketTimeoutError)"),
        (reply_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", then_wait=True), SHORT, "timeout",
         "timed out (SocketTimeoutError)"),
        (reply_with(b"", then_wait=True), aiohttp.ClientTimeout(total=0.05), "timeout", "timed out (TimeoutError)"),
        (reply_with(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"), BOUNDED, "connection",
         "connection failed (ClientPayloadError)"),
        (reply_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n wor"), BOUNDED,
         "connection", "connection failed (ClientPayloadError)"),
        (reply_with(b"HELLO\r\n\r\n"), BOUNDED, "protocol", "HTTP exchange failed (ClientResponseError)"),
    ],
    ids=["read-idle-before-head", "read-idle-mid-body", "total", "body-cut", "chunked-cut", "malformed-head"],
)
async def test_failures_against_a_raw_server(
    session: aiohttp.ClientSession, reply: Connection, timeout: aiohttp.ClientTimeout, reason: TransportReason,
    message: str,
) -> None:
    """Each way a server can fail a call maps to its reason; the message names aiohttp's class, never the URL."""
    async with RawServer(reply) as server:
        with pytest.raises(TransportError) as failed:
            await post(session, server.url, timeout)
    assert (failed.value.reason, str(failed.value)) == (reason, message)
    assert isinstance(failed.value.__cause__, aiohttp.ClientError | TimeoutError)


async def test_refused_connection_and_proxy_are_unreachable(session: aiohttp.ClientSession) -> None:
    """A refused connection, to the upstream or to its proxy, and a proxy refusing CONNECT are ``unreachable``."""
    dead = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TransportError) as refused, transport_errors():
        await send_request(session, "POST", f"{dead}/v1", data=b"", headers={}, timeout=BOUNDED)
    assert (refused.value.reason, str(refused.value)) == ("unreachable", "cannot connect (ClientConnectorError)")
    with pytest.raises(TransportError) as no_proxy, transport_errors():
        await send_request(session, "POST", "http://upstream.test/v1", data=b"", headers={}, timeout=BOUNDED, proxy=dead)
    assert (no_proxy.value.reason, str(no_proxy.value)) == ("unreachable", "cannot connect (ClientProxyConnectionError)")
    async with RawServer(reply_with(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")) as proxy:
        with pytest.raises(TransportError) as forbidden, transport_errors():
            await send_request(session, "POST", "https://upstream.test/v1", data=b"", headers={}, timeout=BOUNDED,
                               proxy=f"http://127.0.0.1:{proxy.port}")
    assert (forbidden.value.reason, str(forbidden.value)) == ("unreachable", "cannot connect (ClientHttpProxyError)")


@pytest.mark.parametrize(
    ("url", "message"),
    [("http:///v1", "unusable URL (InvalidUrlClientError)"), ("ftp://127.0.0.1/v1", "unusable URL (NonHttpUrlClientError)")],
    ids=["no-host", "not-http"],
)
async def test_unusable_url(session: aiohttp.ClientSession, url: str, message: str) -> None:
    """A URL aiohttp cannot call is ``invalid_url``."""
    with pytest.raises(TransportError) as failed, transport_errors():
        await send_request(session, "POST", url, data=b"", headers={}, timeout=BOUNDED)
    assert (failed.value.reason, str(failed.value)) == ("invalid_url", message)


async def test_asyncio_timeout_inside_the_block_is_a_timeout() -> None:
    """A timeout the caller sets around a read (the provider's idle limit) maps like aiohttp's own."""
    with pytest.raises(TransportError) as failed, transport_errors():
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()
    assert (failed.value.reason, str(failed.value)) == ("timeout", "timed out (TimeoutError)")


async def test_other_exceptions_and_cancellation_pass_through() -> None:
    """Only transport failures are mapped: a bug stays a bug, and cancellation stays cancellation."""
    with pytest.raises(KeyError), transport_errors():
        raise KeyError("bug")
    task = asyncio.ensure_future(asyncio.sleep(10))

    async def wait_in_block() -> None:
        with transport_errors():
            await task

    waiter = asyncio.ensure_future(wait_in_block())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    task.cancel()
