"""The reference gateway's HTTP/1.1 client (``reference/http1.py``) against real local servers.

Where framing does not matter the server is an aiohttp application; where it does, a raw
``asyncio.start_server`` server writes exact bytes (whole, or one byte per write) and records
exactly what it received. Every server binds 127.0.0.1 (or ::1) on an ephemeral port and is
stopped at the end of its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import random
import re
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, TypeAlias

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from openclaw_http_compat import (
    __version__,
)
from openclaw_http_compat.reference.http1 import (
    MAX_HEAD_BYTES,
    READ_HIGH_WATER,
    ConnectError,
    HttpClient,
    HttpClientError,
    ProtocolError,
    ServerDisconnected,
    Timeouts,
)

#: How long any one step may take before the test calls it hung.
BOUND_S: Final = 5.0
#: A timeout that is meant to fire.
SHORT_S: Final = 0.05
USER_AGENT: Final = f"User-Agent: openclaw-http-compat/{__version__}"
#: What asyncio's socket transport reads at most per ``recv`` (``_SelectorSocketTransport.max_size``).
ASYNCIO_READ_SIZE: Final = 256 * 1024


@contextlib.asynccontextmanager
async def bounded(seconds: float = BOUND_S) -> AsyncIterator[None]:
    """Fail the test if the block takes longer than ``seconds``.

    The failure is not a ``TimeoutError``, so it cannot pass for a timeout of the client's own.
    """
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            yield
    except TimeoutError:
        if scope.expired():
            pytest.fail(f"did not finish within {seconds} s")
        raise


def ok(body: bytes, *headers: str, status: str = "200 OK", version: str = "1.1") -> bytes:
    """A response with a ``Content-Length`` body."""
    lines = [f"HTTP/{version} {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes) -> bytes:
    """``chunks`` in the chunked coding, ended by the last chunk and no trailers."""
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def get_bytes(port: int, path: str = "/") -> bytes:
    """What the client sends for a bodyless ``GET`` with no caller headers."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{USER_AGENT}\r\nAccept-Encoding: identity\r\n\r\n"
    ).encode()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- raw servers -------------------------------------------------------------------------


class Peer:
    """The server's end of one connection."""

    def __init__(
        self, server: RawServer, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        #: 1 for the server's first connection, 2 for the next, ...
        self.number = number
        self.reader = reader
        self.writer = writer

    async def next_request(self) -> bytes | None:
        """The next request on this connection, recorded in ``server.requests``; ``None`` once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        except ConnectionResetError:
            return None
        match = re.search(rb"\r\ncontent-length: *(\d+)\r\n", head, re.IGNORECASE)
        request = head + (await self.reader.readexactly(int(match[1])) if match else b"")
        self.server.requests.append((self.number, request))
        return request

    async def send(self, data: bytes, *, per_byte: bool = False) -> None:
        """Write ``data`` at once, or one byte per write (yielding to the loop after each)."""
        if not per_byte:
            self.writer.write(data)
            await self.writer.drain()
            return
        for i in range(len(data)):
            self.writer.write(data[i : i + 1])
            await self.writer.drain()
            await asyncio.sleep(0)

    async def client_closed(self) -> None:
        """Return once the client has closed the connection (reading and dropping anything it sends)."""
        with contextlib.suppress(ConnectionResetError):
            while await self.reader.read(65536):
                pass


PeerHandler: TypeAlias = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A TCP server running ``handler`` for each connection, then closing the connection.

    Attributes:
        connections: how many connections it accepted.
        requests: (connection number, request bytes) of each request read by ``Peer.next_request``.
        finished: how many connection handlers have returned.
    """

    def __init__(self, handler: PeerHandler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._progress = asyncio.Event()
        self.host = ""
        self.port = 0
        self.connections = 0
        self.finished = 0
        self.requests: list[tuple[int, bytes]] = []
        self.errors: list[BaseException] = []

    async def start(self, host: str) -> None:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, path: str = "/", scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    async def wait_finished(self, count: int) -> None:
        """Wait until ``count`` connection handlers have returned."""
        async with bounded():
            while self.finished < count:
                await self._progress.wait()

    async def stop(self) -> None:
        """Stop listening, drop the connections left, and wait for their handlers to return."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._tasks:
            # Dropped connections end most handlers; one stuck elsewhere is cancelled.
            _, stuck = await asyncio.wait(set(self._tasks), timeout=BOUND_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            await self._handler(Peer(self, self.connections, reader, writer))
        except Exception as exc:  # surfaced when the server is stopped
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            self.finished += 1
            self._progress.set()
            self._progress = asyncio.Event()


class RawServers:
    """Starts raw servers for one test and stops them all when it ends."""

    def __init__(self) -> None:
        self._servers: list[RawServer] = []

    async def start(self, handler: PeerHandler, *, host: str = "127.0.0.1") -> RawServer:
        server = RawServer(handler)
        await server.start(host)
        self._servers.append(server)
        return server

    async def stop_all(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for server in self._servers:
            await server.stop()
            errors += server.errors
        return errors


@pytest.fixture
async def raw() -> AsyncIterator[RawServers]:
    """Raw servers, stopped at the end; a handler's unexpected exception fails the test."""
    servers = RawServers()
    yield servers
    assert await servers.stop_all() == []


@pytest.fixture
async def client(raw: RawServers) -> AsyncIterator[HttpClient]:
    """An HTTP client with default settings, closed before the raw servers stop."""
    async with HttpClient() as http_client:
        yield http_client


def answer_each(reply_for: Callable[[int], bytes]) -> PeerHandler:
    """A handler answering each request with ``reply_for(n)``, ``n`` counting the server's requests from 1."""

    async def handler(peer: Peer) -> None:
        while await peer.next_request() is not None:
            await peer.send(reply_for(len(peer.server.requests)))

    return handler


def first_then(first: bytes, *, per_byte: bool = False) -> PeerHandler:
    """A handler answering the server's first request with ``first`` and any later one with ``next``."""

    async def handler(peer: Peer) -> None:
        while await peer.next_request() is not None:
            if len(peer.server.requests) == 1:
                await peer.send(first, per_byte=per_byte)
            else:
                await peer.send(ok(b"next"))

    return handler


def reply_then_wait(reply: bytes) -> PeerHandler:
    """A handler reading one request, writing ``reply``, then waiting for the client to close."""

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(reply)
        await peer.client_closed()

    return handler


def reply_then_close(reply: bytes) -> PeerHandler:
    """A handler reading one request, writing ``reply``, then closing the connection."""

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(reply)

    return handler


async def get(client: HttpClient, url: str, timeouts: Timeouts = Timeouts()) -> bytes:
    """The body of a ``GET``, the response released afterwards."""
    async with bounded():
        async with await client.request("GET", url, timeouts=timeouts) as resp:
            return await resp.read()


BYTE_MODES: Final = pytest.mark.parametrize("per_byte", [False, True], ids=["whole", "per-byte"])


# --- 1. framing --------------------------------------------------------------------------


async def test_content_length_body(aiohttp_server: AiohttpServer, client: HttpClient) -> None:
    """A ``Content-Length`` body from an aiohttp server: status, reason, headers, content type, the exact body."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=b"hello world", content_type="text/plain", charset="utf-8", headers={"X-Reply": "yes"})

    app = web.Application()
    app.router.add_get("/hello", hello)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    async with bounded():
        async with await client.request("GET", str(server.make_url("/hello"))) as resp:
            assert (resp.status, resp.reason) == (200, "OK")
            assert resp.headers["X-Reply"] == "yes"
            assert resp.headers["Content-Length"] == "11"
            assert resp.headers["content-type"] == "text/plain; charset=utf-8"
            assert resp.content_type == "text/plain"
            assert client.in_use == 1
            assert await resp.read() == b"hello world"
            assert await resp.readany() == b""
    assert (client.in_use, client.open_connections) == (0, 1)


async def test_json_body(aiohttp_server: AiohttpServer, client: HttpClient) -> None:
    """``Response.json`` parses the body; a body that is not JSON raises ``ValueError``."""

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/json":
            return web.json_response({"ok": True, "n": [1, 2]})
        return web.Response(text="not json")

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    async with bounded():
        async with await client.request("GET", str(server.make_url("/json"))) as resp:
            assert resp.content_type == "application/json"
            assert await resp.json() == {"ok": True, "n": [1, 2]}
        async with await client.request("GET", str(server.make_url("/text"))) as resp:
            with pytest.raises(ValueError):
                await resp.json()


CHUNKED_REPLY: Final = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
    b"5;name=value\r\nhello\r\n"
    b'7 ; quoted="a;b"\r\n, world\r\n'
    b"A\r\n0123456789\r\n"
    b"0;last\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
)


@BYTE_MODES
async def test_chunked_body_with_extensions_and_trailers(raw: RawServers, client: HttpClient, per_byte: bool) -> None:
    """Chunk extensions are ignored, trailers consumed (not exposed), and the connection serves the next request."""
    server = await raw.start(first_then(CHUNKED_REPLY, per_byte=per_byte))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert resp.headers.getall("Transfer-Encoding") == ["chunked"]
            assert await resp.read() == b"hello, world0123456789"
            assert "X-Checksum" not in resp.headers
    assert await get(client, server.url()) == b"next"
    assert server.connections == 1


@BYTE_MODES
async def test_close_delimited_body(raw: RawServers, client: HttpClient, per_byte: bool) -> None:
    """With neither length nor chunking the body ends when the server closes; the connection is not reused."""
    server = await raw.start(reply_then_close(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"))
    assert await get(client, server.url()) == b"until the end"
    assert client.open_connections == 0
    assert await get(client, server.url()) == b"until the end"
    assert server.connections == 2


async def test_chunked_last_transfer_coding_is_chunked(raw: RawServers, client: HttpClient) -> None:
    """``Transfer-Encoding: gzip, chunked`` is framed as chunked; the gzip bytes come through undecoded."""
    payload = gzip.compress(b"compressed text", mtime=0)
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunked(payload[:7], payload[7:])
    server = await raw.start(first_then(reply))
    assert await get(client, server.url()) == payload
    assert await get(client, server.url()) == b"next"
    assert server.connections == 1


async def test_transfer_encoding_overrides_content_length(raw: RawServers, client: HttpClient) -> None:
    """With both ``Transfer-Encoding: chunked`` and ``Content-Length``, the chunked framing is used, and the
    connection, which such a response makes suspect (RFC 9112, 6.3), is not reused."""
    server = await raw.start(
        first_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + chunked(b"hello"))
    )
    assert await get(client, server.url()) == b"hello"
    assert client.open_connections == 0
    assert await get(client, server.url()) == b"next"
    assert server.connections == 2


async def test_reset_ends_a_close_delimited_body_with_an_error(raw: RawServers, client: HttpClient) -> None:
    """Only an orderly close ends a body without framing: a reset is ServerDisconnected, so truncation shows."""

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart")
        sock = peer.writer.get_extra_info("socket")
        # Linger 0: closing sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()

    server = await raw.start(handler)
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert await resp.read(4) == b"part"
            with pytest.raises(ServerDisconnected, match="^the server closed the connection mid-response$"):
                await resp.readany()
    assert (client.in_use, client.open_connections) == (0, 0)


async def test_non_chunked_transfer_coding_reads_until_close(raw: RawServers, client: HttpClient) -> None:
    """A transfer coding other than chunked last: read until the server closes, and not reused."""
    payload = gzip.compress(b"compressed text", mtime=0)
    server = await raw.start(reply_then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + payload))
    assert await get(client, server.url()) == payload
    assert client.open_connections == 0
    assert await get(client, server.url()) == payload
    assert server.connections == 2


@pytest.mark.parametrize(
    ("method", "reply", "status"),
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", 204),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n', 304),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\n", 200),
    ],
    ids=["204", "304", "HEAD"],
)
async def test_responses_without_body(raw: RawServers, client: HttpClient, method: str, reply: bytes, status: int) -> None:
    """204, 304 and the answer to ``HEAD`` end with the head (whatever they say); the connection is reused."""
    server = await raw.start(first_then(reply))
    async with bounded():
        async with await client.request(method, server.url()) as resp:
            assert resp.status == status
            assert await resp.read() == b""
    assert client.open_connections == 1
    assert await get(client, server.url()) == b"next"
    assert server.connections == 1
    assert server.requests[0][1].startswith(f"{method} / HTTP/1.1\r\n".encode())


@BYTE_MODES
async def test_interim_responses_are_skipped(raw: RawServers, client: HttpClient, per_byte: bool) -> None:
    """``100 Continue`` and ``103 Early Hints`` are skipped; the final response's head and body are returned."""
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        + ok(b"ok", "X-Final: yes")
    )
    server = await raw.start(first_then(reply, per_byte=per_byte))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert (resp.status, resp.reason) == (200, "OK")
            assert list(resp.headers.items()) == [("Content-Length", "2"), ("X-Final", "yes")]
            assert await resp.read() == b"ok"
    assert await get(client, server.url()) == b"next"
    assert server.connections == 1


async def test_head_fields_are_parsed_exactly(raw: RawServers, client: HttpClient) -> None:
    """Reason phrase with spaces, repeated and padded fields, a latin-1 byte, a status without reason."""
    reply = (
        b"HTTP/1.1 404 Not Found Here\r\nX-Multi: a\r\nX-Multi:  \tb \r\nX-Latin: caf\xe9\r\nX-Empty:\r\n"
        b"Content-Length: 2\r\n\r\nno"
    )
    server = await raw.start(first_then(reply))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert (resp.status, resp.reason) == (404, "Not Found Here")
            assert list(resp.headers.items()) == [
                ("X-Multi", "a"),
                ("X-Multi", "b"),
                ("X-Latin", "caf\u00e9"),
                ("X-Empty", ""),
                ("Content-Length", "2"),
            ]
            assert resp.headers.getall("x-multi") == ["a", "b"]
            assert await resp.read() == b"no"
    server2 = await raw.start(first_then(b"HTTP/1.0 200\r\nContent-Length: 0\r\n\r\n"))
    async with bounded():
        async with await client.request("GET", server2.url()) as resp:
            assert (resp.status, resp.reason) == (200, "")


async def test_bare_lf_line_endings_are_accepted(raw: RawServers, client: HttpClient) -> None:
    """A head and chunked framing using bare LF line endings parse like CRLF ones; the connection is reused."""
    reply = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n1;x=y\n!\n0\nX-T: 1\n\n"
    server = await raw.start(first_then(reply))
    assert await get(client, server.url()) == b"hello!"
    assert await get(client, server.url()) == b"next"
    assert server.connections == 1


async def test_switching_protocols_is_a_protocol_error(raw: RawServers, client: HttpClient) -> None:
    """A ``101`` is a ProtocolError; the connection is closed and given up."""
    server = await raw.start(
        reply_then_wait(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    )
    with pytest.raises(ProtocolError, match="^unexpected protocol switch$"):
        async with bounded():
            await client.request("GET", server.url())
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


# --- 2. keep-alive -----------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(raw: RawServers, client: HttpClient) -> None:
    """Three requests in a row go over one connection, each answered in turn."""
    server = await raw.start(answer_each(lambda n: ok(f"reply {n}".encode())))
    for n in (1, 2, 3):
        assert await get(client, server.url()) == f"reply {n}".encode()
        assert (client.in_use, client.open_connections) == (0, 1)
    assert server.connections == 1
    assert server.requests == [(1, get_bytes(server.port))] * 3


@pytest.mark.parametrize(
    ("reply", "reused"),
    [
        (ok(b"ok", "Connection: close"), False),
        (ok(b"ok", "Connection: keep-alive, Close"), False),
        (ok(b"ok", version="1.0"), False),
        (ok(b"ok", "Connection: Keep-Alive", version="1.0"), True),
        (ok(b"ok", "Connection: keep-alive"), True),
    ],
    ids=["1.1-close", "1.1-close-in-list", "1.0", "1.0-keep-alive", "1.1-keep-alive"],
)
async def test_connection_reuse_follows_the_response(
    raw: RawServers, client: HttpClient, reply: bytes, reused: bool
) -> None:
    """``Connection: close`` (HTTP/1.1) and HTTP/1.0 without ``keep-alive`` end the connection after the response."""
    server = await raw.start(answer_each(lambda n: reply))
    assert await get(client, server.url()) == b"ok"
    assert client.open_connections == (1 if reused else 0)
    assert await get(client, server.url()) == b"ok"
    assert server.connections == (1 if reused else 2)


@pytest.mark.parametrize("how", ["partly-read", "unread", "closed"])
async def test_body_not_read_to_its_end_closes_the_connection(raw: RawServers, client: HttpClient, how: str) -> None:
    """Leaving a body unread (or calling ``close``) closes the connection: the server sees it and it is not reused."""
    server = await raw.start(reply_then_wait(ok(b"0123456789")))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            if how == "partly-read":
                assert await resp.read(4) == b"0123"
            elif how == "closed":
                assert await resp.read() == b"0123456789"
                resp.close()
                assert client.in_use == 0
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert await resp.read() == b"0123456789"
    assert server.connections == 2


async def test_bytes_in_the_same_write_after_a_response_are_not_reused(raw: RawServers, client: HttpClient) -> None:
    """Bytes arriving with a complete response make its connection untrustworthy: closed on release."""
    server = await raw.start(reply_then_wait(ok(b"ok") + b"HTTP/1.1 200 OK\r\n"))
    assert await get(client, server.url()) == b"ok"
    assert client.open_connections == 0
    await server.wait_finished(1)


async def test_bytes_arriving_on_a_pooled_connection_close_it(raw: RawServers, client: HttpClient) -> None:
    """Unsolicited bytes on an idle pooled connection close it; the next request uses a new connection."""
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(ok(b"ok"))
        if peer.number == 1:
            await go.wait()
            await peer.send(b"HTTP/1.1 200 OK\r\n")
        await peer.client_closed()

    server = await raw.start(handler)
    assert await get(client, server.url()) == b"ok"
    assert client.open_connections == 1
    go.set()
    await server.wait_finished(1)
    assert client.open_connections == 0
    assert await get(client, server.url()) == b"ok"
    assert server.connections == 2


async def test_concurrent_requests_open_connections_then_pool_them(raw: RawServers, client: HttpClient) -> None:
    """Five calls at once take five connections; all five are pooled and reused by the next five."""
    all_arrived = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.next_request() is not None:
            if len(peer.server.requests) == 5:
                all_arrived.set()
            await all_arrived.wait()
            await peer.send(ok(f"conn {peer.number}".encode()))

    server = await raw.start(handler)
    for _ in range(2):
        bodies = await asyncio.gather(*(get(client, server.url()) for _ in range(5)))
        assert sorted(bodies) == [f"conn {n}".encode() for n in range(1, 6)]
        assert (client.in_use, client.open_connections) == (0, 5)
    assert server.connections == 5


async def test_pooled_connection_closed_by_the_server_while_idle(raw: RawServers, client: HttpClient) -> None:
    """The server closes a connection after answering (keep-alive implied): the next call still succeeds, on a new one."""
    server = await raw.start(reply_then_close(ok(b"ok")))
    assert await get(client, server.url()) == b"ok"
    await server.wait_finished(1)
    assert await get(client, server.url()) == b"ok"
    assert server.connections == 2


async def test_idle_connection_expires_after_keepalive(raw: RawServers) -> None:
    """A pooled connection is closed once ``keepalive`` seconds pass unused."""
    server = await raw.start(answer_each(lambda n: ok(b"ok")))
    async with HttpClient(keepalive=SHORT_S) as client:
        assert await get(client, server.url()) == b"ok"
        await server.wait_finished(1)
        assert client.open_connections == 0
        assert await get(client, server.url()) == b"ok"
    assert server.connections == 2


# --- 3. stale pooled connections -------------------------------------------------------------


async def test_stale_pooled_connection_is_retried_on_a_new_one(raw: RawServers, client: HttpClient) -> None:
    """The server drops a kept-alive connection on the second request unanswered: sent again, once, on a new one."""

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        if peer.number == 1:
            await peer.send(ok(b"first"))
            await peer.next_request()
            return  # closes without answering
        await peer.send(ok(b"second"))
        await peer.client_closed()

    server = await raw.start(handler)
    assert await get(client, server.url()) == b"first"
    assert await get(client, server.url()) == b"second"
    assert server.connections == 2
    assert server.requests == [(1, get_bytes(server.port)), (1, get_bytes(server.port)), (2, get_bytes(server.port))]
    assert (client.in_use, client.open_connections) == (0, 1)


async def test_pooled_connection_closed_mid_response_is_not_retried(raw: RawServers, client: HttpClient) -> None:
    """A kept-alive connection closed after part of the head: ServerDisconnected, and no second attempt."""

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(ok(b"first"))
        await peer.next_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")

    server = await raw.start(handler)
    assert await get(client, server.url()) == b"first"
    with pytest.raises(ServerDisconnected, match="^the server closed the connection mid-response$"):
        await get(client, server.url())
    assert server.connections == 1
    assert (client.in_use, client.open_connections) == (0, 0)


async def test_new_connection_closed_before_responding_is_not_retried(raw: RawServers, client: HttpClient) -> None:
    """A new connection closed before any response byte: ServerDisconnected, and no second attempt."""

    async def handler(peer: Peer) -> None:
        await peer.next_request()

    server = await raw.start(handler)
    with pytest.raises(ServerDisconnected, match="^the server closed the connection before responding$"):
        await get(client, server.url())
    assert server.connections == 1
    assert (client.in_use, client.open_connections) == (0, 0)


@pytest.mark.parametrize(
    ("reply", "received"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234", b"01234"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n wor", b"hello wor"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"hello"),
    ],
    ids=["content-length", "mid-chunk", "no-last-chunk"],
)
async def test_truncated_body_is_server_disconnected(
    raw: RawServers, client: HttpClient, reply: bytes, received: bytes
) -> None:
    """A body cut short by the server's close: ``readany`` gives what arrived, then raises ServerDisconnected."""
    server = await raw.start(reply_then_close(reply))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert await resp.readany() == received
            with pytest.raises(ServerDisconnected, match="^the server closed the connection mid-response$"):
                await resp.readany()
    assert (client.in_use, client.open_connections) == (0, 0)


# --- 4. malformed responses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line 'HTTP/1.1 OK'"),
        (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line 'HTTP/2 200 OK'"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line 'HTTP/1.1 2000 OK'"),
        (b"ICY 200 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line 'ICY 200 OK'"),
        (b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n", "malformed header line 'NoColon'"),
        (b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n", "malformed header line ' two'"),
        (b"HTTP/1.1 200 OK\r\nX-A\t: one\r\nContent-Length: 0\r\n\r\n", "malformed header line 'X-A\\t: one'"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\nhello", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nhi", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "invalid Content-Length"),
    ],
    ids=[
        "no-status",
        "http2",
        "four-digit-status",
        "not-http",
        "no-colon",
        "obs-fold",
        "space-before-colon",
        "length-not-a-number",
        "length-negative",
        "length-signed",
        "length-two-numbers",
        "length-non-ascii-digit",
        "length-conflicting",
    ],
)
async def test_malformed_head_is_a_protocol_error(
    raw: RawServers, client: HttpClient, reply: bytes, message: str
) -> None:
    """A malformed head raises ProtocolError from ``request``; the connection is closed, nothing stays in use."""
    server = await raw.start(reply_then_wait(reply))
    with pytest.raises(ProtocolError) as raised:
        async with bounded():
            await client.request("GET", server.url())
    assert str(raised.value) == message
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


async def test_duplicate_equal_content_lengths_are_accepted(raw: RawServers, client: HttpClient) -> None:
    """Two ``Content-Length`` fields with the same value frame the body by that value."""
    server = await raw.start(first_then(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"))
    assert await get(client, server.url()) == b"hello"
    assert await get(client, server.url()) == b"next"


FILL_HEAD_PREFIX: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Fill: "
FILL_HEAD_SUFFIX: Final = b"\r\n\r\n"


def _head_of_size(size: int) -> bytes:
    """A complete head of exactly ``size`` bytes (terminating blank line included), no body."""
    return FILL_HEAD_PREFIX + b"a" * (size - len(FILL_HEAD_PREFIX) - len(FILL_HEAD_SUFFIX)) + FILL_HEAD_SUFFIX


async def test_head_of_max_size_is_accepted(raw: RawServers, client: HttpClient) -> None:
    """A head of exactly MAX_HEAD_BYTES is parsed."""
    server = await raw.start(first_then(_head_of_size(MAX_HEAD_BYTES)))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert resp.headers["X-Fill"] == "a" * (MAX_HEAD_BYTES - len(FILL_HEAD_PREFIX) - len(FILL_HEAD_SUFFIX))
            assert await resp.read() == b""


@pytest.mark.parametrize(
    "reply",
    [_head_of_size(MAX_HEAD_BYTES + 1), b"HTTP/1.1 200 OK\r\nX-Fill: " + b"a" * MAX_HEAD_BYTES],
    ids=["terminated", "unterminated"],
)
async def test_head_larger_than_max_is_a_protocol_error(raw: RawServers, client: HttpClient, reply: bytes) -> None:
    """A head over MAX_HEAD_BYTES (whole, or still without its end) raises ProtocolError."""
    server = await raw.start(reply_then_wait(reply))
    with pytest.raises(ProtocolError, match="^response head too large$"):
        async with bounded():
            await client.request("GET", server.url())
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"zz\r\nhello\r\n0\r\n\r\n", "malformed chunk size b'zz'"),
        (b"\r\nhello\r\n0\r\n\r\n", "malformed chunk size b''"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "malformed chunk size b'-5'"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "malformed chunk size b'0x5'"),
        (b"1" + b"0" * 16 + b"\r\n", "malformed chunk size b'10000000000000000'"),
        (b"5\r\nhelloX\r\n0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"5\r\nhello\rX0\r\n\r\n", "chunk data not followed by CRLF"),
        (b"f" * 5000, "chunk size line too long"),
        (b"0\r\nX-T: " + b"a" * MAX_HEAD_BYTES, "trailers too large"),
    ],
    ids=[
        "size-not-hex",
        "size-empty",
        "size-negative",
        "size-0x",
        "size-17-digits",
        "data-then-junk",
        "data-then-cr-junk",
        "size-line-too-long",
        "trailers-too-large",
    ],
)
async def test_malformed_chunked_body_is_a_protocol_error(
    raw: RawServers, client: HttpClient, body: bytes, message: str
) -> None:
    """Broken chunked framing raises ProtocolError from the read; the connection is closed."""
    server = await raw.start(reply_then_wait(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body))
    async with bounded():
        async with await client.request("GET", server.url()) as resp:
            assert resp.status == 200
            with pytest.raises(ProtocolError) as raised:
                await resp.read()
    assert str(raised.value) == message
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


# --- 5. timeouts -------------------------------------------------------------------------


async def stall(peer: Peer) -> None:
    """A handler that reads a request and never answers."""
    await peer.next_request()
    await peer.client_closed()


@pytest.mark.parametrize("timeouts", [Timeouts(idle=SHORT_S), Timeouts(total=SHORT_S)], ids=["idle", "total"])
async def test_timeout_waiting_for_the_head(raw: RawServers, client: HttpClient, timeouts: Timeouts) -> None:
    """No head within the idle (or total) limit: TimeoutError; the connection is closed, nothing in use."""
    server = await raw.start(stall)
    with pytest.raises(TimeoutError):
        async with bounded():
            await client.request("GET", server.url(), timeouts=timeouts)
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


async def test_idle_timeout_between_body_bytes(raw: RawServers, client: HttpClient) -> None:
    """A body that stops arriving: ``readany`` raises TimeoutError; leaving the block closes the connection."""
    server = await raw.start(reply_then_wait(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n012"))
    async with bounded():
        async with await client.request("GET", server.url(), timeouts=Timeouts(idle=SHORT_S)) as resp:
            assert await resp.readany() == b"012"
            with pytest.raises(TimeoutError):
                await resp.readany()
            assert client.in_use == 1
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


async def test_total_deadline_bounds_a_trickling_body(raw: RawServers, client: HttpClient) -> None:
    """A body trickling in with gaps far shorter than ``idle`` still ends at the ``total`` deadline."""

    async def trickle(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while not peer.reader.at_eof():
                await peer.send(b"x")
                await asyncio.sleep(SHORT_S / 5)

    server = await raw.start(trickle)
    timeouts = Timeouts(total=6 * SHORT_S, idle=BOUND_S)
    async with bounded():
        async with await client.request("GET", server.url(), timeouts=timeouts) as resp:
            with pytest.raises(TimeoutError):
                await resp.read()
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


async def test_shorter_idle_timeout_set_after_the_head_applies(raw: RawServers, client: HttpClient) -> None:
    """``Response.idle_timeout`` set after the head (the call had none) bounds the wait for body bytes."""
    server = await raw.start(reply_then_wait(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"))
    async with bounded():
        async with await client.request("GET", server.url(), timeouts=Timeouts()) as resp:
            resp.idle_timeout = SHORT_S
            with pytest.raises(TimeoutError):
                await resp.readany()
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


async def test_longer_idle_timeout_set_after_the_head_applies(raw: RawServers, client: HttpClient) -> None:
    """Raising ``Response.idle_timeout`` after the head lets a body arrive after a pause the call's limit forbids."""

    async def pause(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        await asyncio.sleep(4 * SHORT_S)
        await peer.send(b"ok")
        await peer.client_closed()

    server = await raw.start(pause)
    async with bounded():
        async with await client.request("GET", server.url(), timeouts=Timeouts(idle=SHORT_S)) as resp:
            resp.idle_timeout = BOUND_S
            assert await resp.read() == b"ok"
    assert client.open_connections == 1


async def test_connect_timeout_covers_the_tls_handshake(raw: RawServers, client: HttpClient) -> None:
    """A server that accepts but never answers the TLS handshake: TimeoutError after ``connect``; socket closed."""

    async def silent(peer: Peer) -> None:
        await peer.client_closed()

    server = await raw.start(silent)
    with pytest.raises(TimeoutError):
        async with bounded():
            await client.request("GET", server.url(scheme="https"), timeouts=Timeouts(connect=SHORT_S))
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(1)


# --- 6. connect errors and invalid requests ------------------------------------------------


async def test_connection_refused_is_a_connect_error() -> None:
    """A port nothing listens on: ConnectError caused by the refusal; the slot is given back each time."""
    port = closed_port()
    async with HttpClient(limit=1) as client:
        for _ in range(2):
            with pytest.raises(ConnectError, match=f"^cannot connect to 127.0.0.1:{port}: ") as raised:
                async with bounded():
                    await client.request("GET", f"http://127.0.0.1:{port}/")
            assert isinstance(raised.value.__cause__, ConnectionRefusedError)
            assert isinstance(raised.value, HttpClientError)
            assert (client.in_use, client.open_connections) == (0, 0)


@pytest.mark.parametrize(
    ("method", "url", "headers", "message"),
    [
        ("GET", "ftp://127.0.0.1:{port}/", {}, "not an http(s) URL: 'ftp://127.0.0.1:{port}/'"),
        ("GET", "http:///path", {}, "not an http(s) URL: 'http:///path'"),
        ("GET", "127.0.0.1:{port}/", {}, "not an http(s) URL: '127.0.0.1:{port}/'"),
        ("GET", "http://user:secret@127.0.0.1:{port}/", {}, "credentials in the URL are not supported; use a header"),
        ("GET", "http://user@127.0.0.1:{port}/", {}, "credentials in the URL are not supported; use a header"),
        ("GET", "http://127.0.0.1:{port}/", {"X-Evil": "a\r\nInjected: yes"}, "invalid header 'X-Evil'"),
        ("GET", "http://127.0.0.1:{port}/", {"X-Evil": "a\nb"}, "invalid header 'X-Evil'"),
        ("GET", "http://127.0.0.1:{port}/", {"X-Evil": "a\rb"}, "invalid header 'X-Evil'"),
        ("GET", "http://127.0.0.1:{port}/", {"X-Evil": "a\x00b"}, "invalid header 'X-Evil'"),
        ("GET", "http://127.0.0.1:{port}/", {"Bad Name": "v"}, "invalid header 'Bad Name'"),
        ("GET", "http://127.0.0.1:{port}/", {"X-A\r\nX-B": "v"}, "invalid header 'X-A\\r\\nX-B'"),
        ("GE T", "http://127.0.0.1:{port}/", {}, "invalid method 'GE T'"),
    ],
    ids=[
        "ftp",
        "no-host",
        "no-scheme",
        "user-and-password",
        "user",
        "crlf-in-value",
        "lf-in-value",
        "cr-in-value",
        "nul-in-value",
        "space-in-name",
        "crlf-in-name",
        "space-in-method",
    ],
)
async def test_invalid_request_is_refused_before_sending(
    raw: RawServers, client: HttpClient, method: str, url: str, headers: dict[str, str], message: str
) -> None:
    """A bad URL, header or method raises ValueError before anything is sent: the server sees only the next request."""
    server = await raw.start(answer_each(lambda n: ok(b"ok")))
    with pytest.raises(ValueError) as raised:
        await client.request(method, url.format(port=server.port), headers=headers)
    assert str(raised.value) == message.format(port=server.port)
    assert (client.in_use, client.open_connections) == (0, 0)
    assert await get(client, server.url()) == b"ok"
    assert server.requests == [(1, get_bytes(server.port))]


# --- 7. the connection limit ---------------------------------------------------------------


async def test_limit_queues_a_request_until_a_response_is_released(raw: RawServers) -> None:
    """With ``limit=1`` a second call waits for the first response's release, then reuses its connection."""
    server = await raw.start(answer_each(lambda n: ok(f"reply {n}".encode())))
    async with HttpClient(limit=1) as client:
        first = await client.request("GET", server.url())
        second_call = asyncio.create_task(client.request("GET", server.url()))
        await asyncio.sleep(4 * SHORT_S)  # every chance to go ahead, were it not held back
        assert not second_call.done()
        assert len(server.requests) == 1
        assert (client.in_use, client.open_connections) == (1, 1)
        async with first:
            assert await first.read() == b"reply 1"
        async with bounded():
            second = await second_call
        async with second:
            assert await second.read() == b"reply 2"
        assert (client.in_use, client.open_connections) == (0, 1)
    assert server.connections == 1


async def test_waiting_for_the_limit_respects_the_total_deadline(raw: RawServers) -> None:
    """A call waiting for a slot times out at its ``total`` deadline and does not take a slot with it."""
    server = await raw.start(answer_each(lambda n: ok(f"reply {n}".encode())))
    async with HttpClient(limit=1) as client:
        first = await client.request("GET", server.url())
        with pytest.raises(TimeoutError):
            async with bounded():
                await client.request("GET", server.url(), timeouts=Timeouts(total=SHORT_S))
        assert client.in_use == 1
        async with first:
            assert await first.read() == b"reply 1"
        assert await get(client, server.url()) == b"reply 2"
    assert server.connections == 1
    assert len(server.requests) == 2


# --- 8. close ----------------------------------------------------------------------------


async def partial_or_whole(peer: Peer) -> None:
    """A handler answering ``/partial`` with 5 of 10 body bytes and anything else with ``done``."""
    while (request := await peer.next_request()) is not None:
        if request.startswith(b"GET /partial "):
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        else:
            await peer.send(ok(b"done"))


async def test_close_closes_idle_and_active_connections(raw: RawServers) -> None:
    """``close`` closes the idle and the in-use connection; the open response fails; later calls raise RuntimeError."""
    server = await raw.start(partial_or_whole)
    client = HttpClient()
    active = await client.request("GET", server.url("/partial"))
    assert (client.in_use, client.open_connections) == (1, 1)
    assert await get(client, server.url("/whole")) == b"done"
    assert (client.closed, client.in_use, client.open_connections) == (False, 1, 2)

    await client.close()
    # The response is still lent out until it is released; no connection is open any more.
    assert (client.closed, client.in_use, client.open_connections) == (True, 1, 0)
    async with bounded():
        async with active:
            assert await active.readany() == b"01234"
            with pytest.raises(HttpClientError, match="^the HTTP client was closed$") as failed:
                await active.readany()
            assert not isinstance(failed.value, ServerDisconnected)
    assert (client.in_use, client.open_connections) == (0, 0)
    await server.wait_finished(2)

    with pytest.raises(RuntimeError, match="^the HTTP client is closed$"):
        await client.request("GET", server.url())
    await client.close()  # closing again is harmless
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_close_fails_a_call_waiting_for_its_head_on_a_pooled_connection(raw: RawServers) -> None:
    """A call on a pooled connection whose client is closed before the head fails; it is not retried elsewhere."""
    second_read = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.next_request()
        await peer.send(ok(b"first"))
        if peer.number == 1:
            await peer.next_request()
            second_read.set()
        await peer.client_closed()

    server = await raw.start(handler)
    client = HttpClient()
    assert await get(client, server.url()) == b"first"
    call = asyncio.create_task(client.request("GET", server.url()))
    async with bounded():
        await second_read.wait()
    await client.close()
    with pytest.raises(HttpClientError, match="^the HTTP client was closed$"):
        async with bounded():
            await call
    assert server.connections == 1
    assert (client.in_use, client.open_connections) == (0, 0)


async def test_close_fails_a_call_waiting_for_the_limit(raw: RawServers) -> None:
    """A call waiting for a slot when the client is closed fails with RuntimeError once the slot frees up."""
    server = await raw.start(answer_each(lambda n: ok(b"ok")))
    client = HttpClient(limit=1)
    first = await client.request("GET", server.url())
    waiting = asyncio.create_task(client.request("GET", server.url()))
    await asyncio.sleep(0)
    await client.close()
    first.release()
    with pytest.raises(RuntimeError, match="^the HTTP client is closed$"):
        async with bounded():
            await waiting
    assert server.connections == 1
    assert (client.in_use, client.open_connections) == (0, 0)


# --- 9. request bytes --------------------------------------------------------------------


async def test_post_request_bytes(raw: RawServers, client: HttpClient) -> None:
    """A POST: request line with the query (no fragment), defaults replaced case-insensitively, framing ours."""
    server = await raw.start(answer_each(lambda n: ok(b"")))
    headers = {
        "Content-Type": "application/json",
        "user-agent": "custom-agent/2",
        "X-Trace": "abc",
        "content-length": "999",
        "Transfer-Encoding": "chunked",
        "CONNECTION": "close",
    }
    url = server.url("/v1/chat/completions?x=1&y=2#frag")
    async with bounded():
        async with await client.request("POST", url, headers=headers, body=b'{"a": 1}') as resp:
            assert await resp.read() == b""
    assert server.requests == [
        (
            1,
            b"POST /v1/chat/completions?x=1&y=2 HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{server.port}\r\n".encode()
            + b"user-agent: custom-agent/2\r\n"
            b"Accept-Encoding: identity\r\n"
            b"Content-Type: application/json\r\n"
            b"X-Trace: abc\r\n"
            b"Content-Length: 8\r\n"
            b"\r\n"
            b'{"a": 1}',
        )
    ]


@pytest.mark.parametrize(
    ("method", "framing"),
    [("GET", ""), ("HEAD", ""), ("POST", "Content-Length: 0\r\n"), ("DELETE", "Content-Length: 0\r\n")],
)
async def test_request_without_body_bytes(raw: RawServers, client: HttpClient, method: str, framing: str) -> None:
    """No body: GET and HEAD carry no Content-Length, other methods ``Content-Length: 0``; the path defaults to ``/``."""
    server = await raw.start(answer_each(lambda n: ok(b"")))
    async with bounded():
        async with await client.request(method, f"http://127.0.0.1:{server.port}") as resp:
            assert await resp.read() == b""
    expected = (
        f"{method} / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{USER_AGENT}\r\n"
        f"Accept-Encoding: identity\r\n{framing}\r\n"
    )
    assert server.requests == [(1, expected.encode())]


async def test_unsafe_path_characters_are_percent_encoded(raw: RawServers, client: HttpClient) -> None:
    """Spaces, controls and non-ASCII in a configured URL cannot corrupt the request line; escapes stay as they are."""
    server = await raw.start(answer_each(lambda n: ok(b"")))
    async with bounded():
        async with await client.request("GET", server.url("/a b/\u00e9\x01/%20ok?q=\u00fc v")) as resp:
            assert await resp.read() == b""
    assert server.requests == [(1, get_bytes(server.port, "/a%20b/%C3%A9%01/%20ok?q=%C3%BC%20v"))]


async def test_ipv6_host_header(raw: RawServers, client: HttpClient) -> None:
    """An IPv6 literal is bracketed in ``Host``, with the port."""
    try:
        server = await raw.start(answer_each(lambda n: ok(b"ok")), host="::1")
    except OSError:
        pytest.skip("IPv6 loopback is unavailable")
    assert await get(client, f"http://[::1]:{server.port}/x") == b"ok"
    assert server.requests == [
        (1, f"GET /x HTTP/1.1\r\nHost: [::1]:{server.port}\r\n{USER_AGENT}\r\nAccept-Encoding: identity\r\n\r\n".encode())
    ]


# --- 10. flow control --------------------------------------------------------------------


async def test_large_body_with_a_slow_reader(aiohttp_server: AiohttpServer, client: HttpClient) -> None:
    """A 4 MiB body read slowly arrives intact; while unread, the client buffers at most about READ_HIGH_WATER."""
    body = random.Random(1).randbytes(4 * 1024 * 1024)

    async def large(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(body)
        await resp.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await resp.write(body[start : start + 64 * 1024])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/large", large)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    received = hashlib.sha256()
    size = 0
    async with bounded():
        async with await client.request("GET", str(server.make_url("/large"))) as resp:
            first = await resp.readany(16 * 1024)
            received.update(first)
            size += len(first)
            # The server could send the whole body meanwhile; the client stops reading instead.
            await asyncio.sleep(4 * SHORT_S)
            burst = await resp.readany(len(body))
            assert len(burst) <= READ_HIGH_WATER + ASYNCIO_READ_SIZE
            received.update(burst)
            size += len(burst)
            while piece := await resp.readany(16 * 1024):
                received.update(piece)
                size += len(piece)
                await asyncio.sleep(0)
    assert size == len(body)
    assert received.hexdigest() == hashlib.sha256(body).hexdigest()
    assert client.open_connections == 1


# --- 11. HTTPS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority."""
    return trustme.CA()


@pytest.fixture
async def tls_server(aiohttp_server: AiohttpServer, ca: trustme.CA) -> TestServer:
    """An aiohttp server on https://127.0.0.1, its certificate issued by ``ca``, answering with its scheme."""

    async def scheme(request: web.Request) -> web.Response:
        return web.Response(text=request.scheme)

    app = web.Application()
    app.router.add_get("/", scheme)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1", ssl=server_context)
    return server


async def test_https_with_a_trusted_ca(tls_server: TestServer, ca: trustme.CA) -> None:
    """With a context trusting the CA, requests over TLS work and reuse the connection."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with HttpClient(ssl_context=context) as client:
        for _ in range(2):
            assert await get(client, f"https://127.0.0.1:{tls_server.port}/") == b"https"
        assert client.open_connections == 1


async def test_default_context_refuses_a_self_signed_server(tls_server: TestServer) -> None:
    """The default context (system trust store) refuses the unknown CA: ConnectError caused by the verification."""
    async with HttpClient() as client:
        with pytest.raises(ConnectError, match=f"^cannot connect to 127.0.0.1:{tls_server.port}: ") as raised:
            async with bounded():
                await client.request("GET", f"https://127.0.0.1:{tls_server.port}/")
        assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
        assert (client.in_use, client.open_connections) == (0, 0)
