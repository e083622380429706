"""A small HTTP/1.1 client for the reference gateway's provider calls.

Every agent run makes one call to its provider, so the client's cost is paid on every
request the gateway answers. On the gateway-overhead benchmark (a 2-core machine, one
request at a time, a local upstream), a call through :class:`aiohttp.ClientSession` took
about 0.3 ms more than the same call on a bare asyncio protocol, most of it the session's
per-request machinery (request and response objects, timers, tracing, cookie handling,
an extra task). That is a third of the endpoint's whole latency budget, so provider calls
use this client instead; everything else in the gateway keeps using aiohttp.

Scope is what a call to an OpenAI-compatible API needs: ``http`` and ``https`` origins,
persistent connections pooled per origin with a cap on open connections, request bodies
of known length, and responses framed by ``Content-Length``, by the chunked transfer coding
or by the connection's close (RFC 9112). Interim 1xx responses are skipped. There are no
redirects, cookies, proxies or content codings: requests ask for ``identity``.

Timeouts never cancel the caller's task: each wait for the network has its own deadline
and raises :class:`TimeoutError` where it waits, so a call is safe to use across
``yield`` in an async generator.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import re
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, NamedTuple
from urllib.parse import quote, urlsplit

import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from openclaw_http_compat import __version__

__all__ = (
    "ConnectError",
    "HttpClient",
    "HttpClientError",
    "ProtocolError",
    "Response",
    "ServerDisconnected",
    "Timeouts",
)

#: The most a status line plus headers (or a chunked body's trailers) may take.
MAX_HEAD_BYTES: Final = 64 * 1024
#: Past this many received, unread body bytes the connection stops reading.
READ_HIGH_WATER: Final = 256 * 1024
#: How long an idle pooled connection is kept (aiohttp's default too).
KEEPALIVE_S: Final = 15.0
# RFC 8305's recommended connection attempt delay, and aiohttp's.
_HAPPY_EYEBALLS_DELAY_S: Final = 0.25

_USER_AGENT: Final = f"openclaw-http-compat/{__version__}"
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE: Final = re.compile(r"HTTP/1\.([01]) (\d{3})(?: (.*))?")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BAD_VALUE_CHARS: Final = re.compile(r"[\r\n\x00]")


class HttpClientError(Exception):
    """A provider call failed below HTTP: no connection, a broken one, or a malformed response."""


class ConnectError(HttpClientError):
    """No connection could be made (refused, unresolvable, TLS handshake failed)."""


class ServerDisconnected(HttpClientError):
    """The server closed the connection before the response was complete."""


class ProtocolError(HttpClientError):
    """The server's response is not valid HTTP/1.1."""


@attrs.frozen
class Timeouts:
    """Limits of one call, in seconds; ``None`` is no limit.

    Attributes:
        total: the whole call, from the request until the body's last byte.
        connect: opening a new connection (TCP and TLS).
        idle: the longest silence while waiting for the response head or body bytes.
    """

    total: float | None = None
    connect: float | None = None
    idle: float | None = None


class _Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class _Target(NamedTuple):
    origin: _Origin
    host_header: str
    path: str


@functools.lru_cache(maxsize=256)
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported; use a header")
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    # Spaces, controls and non-ASCII would corrupt the request line: percent-encode them,
    # leaving what is already encoded (and every delimiter) alone.
    return _Target(_Origin(scheme, host, port), host_header, quote(path, safe="!#$%&'()*+,/:;=?@[]~"))


# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class _Head(NamedTuple):
    version: int
    status: int
    reason: str
    headers: CIMultiDictProxy[str]


def _parse_head(raw: bytes) -> _Head:
    # Header bytes outside ASCII are kept as latin-1, as aiohttp and httpx do.
    lines = raw.decode("latin-1").split("\n")
    status_line = lines[0].rstrip("\r")
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ProtocolError(f"malformed status line {status_line[:80]!r}")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            continue
        name, colon, value = line.partition(":")
        # Obsolete line folding (a line starting with whitespace) is refused too.
        if not colon or _TOKEN.fullmatch(name) is None:
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers.add(name, value.strip(" \t"))
    return _Head(int(match[1]), int(match[2]), match[3] or "", CIMultiDictProxy(headers))


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    return {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}


class _Connection(asyncio.Protocol):
    """One connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: _Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.expiry: asyncio.TimerHandle | None = None
        self._buffer = bytearray()
        # Where the search for the end of a head (or trailers) resumes: no rescans from 0.
        self._scanned = 0
        self._body: collections.deque[bytes] = collections.deque()
        self._body_size = 0
        self._paused = False
        self._state = _DONE
        self._remaining = 0
        self._head_only = False
        self._got_bytes = False
        self._head: _Head | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._state == _DONE:
            # Bytes nobody asked for: whatever they are, the connection is not to be trusted.
            self.reusable = False
            self.close()
            return
        self._got_bytes = True
        self._buffer += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)
            self.close()
            return
        if self._body_size > READ_HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # Returning False closes the transport, which then reports connection_lost.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.expiry is not None:
            self.expiry.cancel()
        # A reset is no end of a close-delimited body: only an orderly close is.
        if self._state == _UNTIL_CLOSE and exc is None:
            self._state = _DONE
        elif self._state != _DONE and self._error is None:
            where = "mid-response" if self._got_bytes else "before responding"
            error = ServerDisconnected(f"the server closed the connection {where}")
            error.__cause__ = exc
            self._error = error
        self._wake()

    # --- used by the client and the response ---------------------------------------------

    def start(self, request: bytes, *, head_only: bool) -> None:
        """Send a request; the response is read from here on."""
        assert self.transport is not None
        self._state = _HEAD
        self._head_only = head_only
        self._got_bytes = False
        self._head = None
        self._error = None
        self._buffer.clear()
        self._scanned = 0
        self.transport.write(request)

    @property
    def fresh_failure(self) -> bool:
        """The server closed the connection without sending one byte of this response."""
        return isinstance(self._error, ServerDisconnected) and not self._got_bytes

    @property
    def done(self) -> bool:
        """The response body has been read to its end."""
        return self._state == _DONE and not self._body

    async def wait(self, timeout: float | None) -> None:
        """Wait until something changed: bytes arrived, the body ended, or an error."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        timer = self.loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def head(self) -> _Head | None:
        """The response head once received; raises the connection's failure."""
        if self._head is None and self._error is not None:
            raise self._error
        return self._head

    def take(self, limit: int) -> bytes | None:
        """Up to ``limit`` body bytes received so far; ``b""`` at the end, ``None`` if none yet."""
        body = self._body
        if body:
            if len(body) == 1 and len(body[0]) <= limit:
                data = body.popleft()
            else:
                pieces: list[bytes] = []
                size = 0
                while body and size < limit:
                    piece = body.popleft()
                    if size + len(piece) > limit:
                        cut = limit - size
                        body.appendleft(piece[cut:])
                        piece = piece[:cut]
                    pieces.append(piece)
                    size += len(piece)
                data = b"".join(pieces)
            self._body_size -= len(data)
            if self._paused and self._body_size <= READ_HIGH_WATER // 2 and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self._error is not None:
            raise self._error
        if self._state == _DONE:
            return b""
        return None

    def abort(self, exc: HttpClientError) -> None:
        """Drop the connection; a read in progress or to come raises ``exc``."""
        self._fail(exc)
        self.close()
        self._wake()

    def close(self) -> None:
        """Drop the connection."""
        self.reusable = False
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # --- parsing ---------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def _push(self, data: bytes) -> None:
        if data:
            self._body.append(data)
            self._body_size += len(data)

    def _parse(self) -> None:
        buffer = self._buffer
        while buffer:
            state = self._state
            if state == _HEAD:
                match = self._block_end("response head")
                if match is None:
                    return
                if match.end() > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                head = _parse_head(bytes(buffer[: match.start()]))
                del buffer[: match.end()]
                self._begin_body(head)
            elif state == _LENGTH or state == _CHUNK_DATA:
                take = min(self._remaining, len(buffer))
                self._push(bytes(buffer[:take]))
                del buffer[:take]
                self._remaining -= take
                if not self._remaining:
                    self._state = _DONE if state == _LENGTH else _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\n")
                if end < 0:
                    if len(buffer) > 4096:
                        raise ProtocolError("chunk size line too long")
                    return
                line = bytes(buffer[:end]).rstrip(b"\r")
                del buffer[: end + 1]
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if _HEX.fullmatch(size_text) is None:
                    raise ProtocolError(f"malformed chunk size {line[:40]!r}")
                self._remaining = int(size_text, 16)
                self._state = _CHUNK_DATA if self._remaining else _TRAILERS
            elif state == _CHUNK_END:
                if buffer.startswith(b"\r\n"):
                    del buffer[:2]
                elif buffer.startswith(b"\n"):
                    del buffer[:1]
                elif buffer == b"\r":
                    return
                else:
                    raise ProtocolError("chunk data not followed by CRLF")
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                # Trailer fields, then an empty line; they carry nothing a caller here uses.
                if buffer.startswith(b"\r\n") or buffer.startswith(b"\n"):
                    del buffer[: 2 if buffer[0] == 0x0D else 1]
                    self._state = _DONE
                    continue
                match = self._block_end("trailers")
                if match is None:
                    return
                del buffer[: match.end()]
                self._state = _DONE
            elif state == _UNTIL_CLOSE:
                self._push(bytes(buffer))
                buffer.clear()
            else:  # _DONE with bytes left over
                self.reusable = False
                buffer.clear()

    def _block_end(self, what: str) -> re.Match[bytes] | None:
        """The blank line ending a head or trailer block; ``None`` until it has arrived."""
        buffer = self._buffer
        match = _HEAD_END.search(buffer, self._scanned)
        if match is None:
            if len(buffer) > MAX_HEAD_BYTES:
                raise ProtocolError(f"{what} too large")
            # The end may straddle the next piece: keep the last 3 bytes in view.
            self._scanned = max(0, len(buffer) - 3)
            return None
        self._scanned = 0
        return match

    def _begin_body(self, head: _Head) -> None:
        status = head.status
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("unexpected protocol switch")
            return  # an interim response: the real one follows
        headers = head.headers
        tokens = _connection_tokens(headers)
        self.reusable = self.reusable and (
            "close" not in tokens if head.version == 1 else "keep-alive" in tokens
        )
        self._head = head
        if self._head_only or status in (204, 304):
            self._state = _DONE
            return
        encodings = [c.strip().lower() for v in headers.getall("Transfer-Encoding", ()) for c in v.split(",")]
        if encodings:
            if "Content-Length" in headers:
                # Both framings at once smells of response splitting (RFC 9112, 6.3): the
                # transfer coding wins, and the connection is not trusted with another request.
                self.reusable = False
            if encodings[-1] == "chunked":
                self._state = _CHUNK_SIZE
            else:
                self._state = _UNTIL_CLOSE
                self.reusable = False
            return
        lengths = {v.strip() for v in headers.getall("Content-Length", ())}
        if lengths:
            if len(lengths) != 1 or not (length := lengths.pop()).isdigit() or not length.isascii():
                self._head = None  # a malformed head: the request fails, not the response's first read
                raise ProtocolError("invalid Content-Length")
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _DONE
            return
        self._state = _UNTIL_CLOSE
        self.reusable = False


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """A response whose head has arrived; the body is read from it.

    Use it as an async context manager: leaving the block, however, gives the connection
    back to the pool when the body was read to its end, and closes it otherwise (which is
    how the server learns that the caller gave up).

    Attributes:
        status: the status code.
        reason: the reason phrase.
        headers: the response headers.
        idle_timeout: the longest wait for body bytes (``None``: no limit); may be changed.
    """

    __slots__ = ("_client", "_conn", "_deadline", "_released", "headers", "idle_timeout", "reason", "status")

    def __init__(
        self, client: HttpClient, conn: _Connection, head: _Head, *, idle_timeout: float | None, deadline: float | None
    ) -> None:
        self._client = client
        self._conn = conn
        self._deadline = deadline
        self._released = False
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.idle_timeout = idle_timeout

    @property
    def content_type(self) -> str:
        """The media type of ``Content-Type``, lower-cased, without parameters."""
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def readany(self, limit: int = 1 << 20) -> bytes:
        """The body bytes received so far (waiting for some if there are none); ``b""`` at the end.

        Raises:
            TimeoutError: no bytes within ``idle_timeout``, or the call's total time ran out.
            ServerDisconnected: the body was cut short.
            ProtocolError: the body's framing is malformed.
        """
        conn = self._conn
        while True:
            data = conn.take(limit)
            if data is not None:
                return data
            await conn.wait(_remaining(conn.loop, self.idle_timeout, self._deadline))

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body, or only its first ``limit`` bytes."""
        pieces: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            piece = await self.readany(1 << 20 if limit is None else limit - size)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)

    async def json(self) -> Any:
        """The body parsed as JSON (UTF-8); ``ValueError`` if it is not JSON."""
        return json.loads(await self.read())

    def close(self) -> None:
        """Drop the connection, unread body and all."""
        if not self._released:
            self._released = True
            self._conn.close()
            self._client._done(self._conn)

    def release(self) -> None:
        """Give the connection back if its body was read to the end; close it otherwise."""
        if not self._released:
            self._released = True
            self._client._done(self._conn)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever ended the block, a body read to its end leaves a reusable connection.
        self.release()


def _remaining(loop: asyncio.AbstractEventLoop, idle: float | None, deadline: float | None) -> float | None:
    if deadline is None:
        return idle
    left = deadline - loop.time()
    if left <= 0:
        raise TimeoutError()
    return left if idle is None else min(idle, left)


class HttpClient:
    """HTTP/1.1 calls over pooled persistent connections.

    Args:
        limit: the most calls in progress at once, across origins (0: no limit); a call
            past it waits for one to end. Idle pooled connections are not counted: there are
            never more of them than calls were once in progress together.
        ssl_context: for ``https`` origins; the system's default trust store if not given.
        keepalive: how long an idle connection stays in the pool, in seconds.
    """

    def __init__(self, *, limit: int = 100, ssl_context: ssl.SSLContext | None = None, keepalive: float = KEEPALIVE_S) -> None:
        self._limit = limit
        self._ssl_context = ssl_context
        self._keepalive = keepalive
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._active: set[_Connection] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def in_use(self) -> int:
        """How many connections are lent to calls (a response not yet closed or released)."""
        return len(self._active)

    @property
    def open_connections(self) -> int:
        """How many connections are open: in use or idle in the pool."""
        idle = sum(1 for conns in self._idle.values() for c in conns if not c.closed)
        return idle + sum(1 for c in self._active if not c.closed)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        timeouts: Timeouts = Timeouts(),
    ) -> Response:
        """Send a request and wait for the response head.

        A pooled connection that the server closed before answering (it may drop an idle
        connection just as it is reused) is replaced by a new one once and the request sent
        again: the server never saw it. The caller must close or release the response.

        Raises:
            ValueError: the URL is not ``http(s)``, or a header is malformed.
            ConnectError: no connection could be made.
            TimeoutError: connecting, or the head, took longer than ``timeouts`` allow.
            ServerDisconnected, ProtocolError: as :meth:`Response.readany`.
        """
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        target = _target(url)
        request = _request_bytes(method, target, headers or {}, body)
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.total is None else loop.time() + timeouts.total
        if self._slots is not None:
            await _wait_slot(self._slots, loop, deadline)
        try:
            if self._closed:  # closed while this call waited for a slot
                raise RuntimeError("the HTTP client is closed")
            conn = self._pooled(target.origin)
            while True:
                reused = conn is not None
                if conn is None:
                    conn = await self._connect(target.origin, loop, timeouts.connect, deadline)
                self._active.add(conn)
                conn.start(request, head_only=method == "HEAD")
                try:
                    head = await _read_head(conn, timeouts.idle, deadline)
                except ServerDisconnected:
                    self._active.discard(conn)
                    # A connection that close() dropped is no stale one to retry.
                    if reused and conn.fresh_failure and not self._closed:
                        conn = None
                        continue
                    raise
                except BaseException:
                    self._active.discard(conn)
                    conn.close()
                    raise
                return Response(self, conn, head, idle_timeout=timeouts.idle, deadline=deadline)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    async def close(self) -> None:
        """Close every connection; calls in progress fail."""
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in list(self._active):
            conn.abort(HttpClientError("the HTTP client was closed"))

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _pooled(self, origin: _Origin) -> _Connection | None:
        conns = self._idle.get(origin)
        while conns:
            conn = conns.pop()
            if conn.expiry is not None:
                conn.expiry.cancel()
                conn.expiry = None
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(
        self, origin: _Origin, loop: asyncio.AbstractEventLoop, timeout: float | None, deadline: float | None
    ) -> _Connection:
        context: ssl.SSLContext | None = None
        if origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        conn = _Connection(loop, origin)
        try:
            async with asyncio.timeout(_remaining(loop, timeout, deadline)):
                # Happy eyeballs (RFC 8305), as aiohttp does: a name with a dead IPv6 route
                # must not cost the whole connect timeout before IPv4 is tried.
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None,
                    happy_eyeballs_delay=_HAPPY_EYEBALLS_DELAY_S, interleave=1,
                )
        except TimeoutError:
            conn.close()
            raise
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        if self._closed:  # closed while this call was connecting
            conn.close()
            raise RuntimeError("the HTTP client is closed")
        return conn

    def _done(self, conn: _Connection) -> None:
        self._active.discard(conn)
        if self._slots is not None:
            self._slots.release()
        if self._closed or not conn.reusable or not conn.done or conn.closed:
            conn.close()
            return
        self._idle.setdefault(conn.origin, []).append(conn)
        conn.expiry = conn.loop.call_later(self._keepalive, self._expire, conn)

    def _expire(self, conn: _Connection) -> None:
        conn.expiry = None
        conns = self._idle.get(conn.origin)
        if conns and conn in conns:
            conns.remove(conn)
        conn.close()


async def _wait_slot(slots: asyncio.Semaphore, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
    if not slots.locked():
        await slots.acquire()
        return
    async with asyncio.timeout(_remaining(loop, None, deadline)):
        await slots.acquire()


async def _read_head(conn: _Connection, idle: float | None, deadline: float | None) -> _Head:
    while True:
        head = conn.head()
        if head is not None:
            return head
        await conn.wait(_remaining(conn.loop, idle, deadline))


def _request_bytes(method: str, target: _Target, headers: Mapping[str, str], body: bytes) -> bytes:
    if _TOKEN.fullmatch(method) is None:
        raise ValueError(f"invalid method {method!r}")
    fields: dict[str, str] = {
        "host": f"Host: {target.host_header}",
        "user-agent": f"User-Agent: {_USER_AGENT}",
        "accept-encoding": "Accept-Encoding: identity",
    }
    for name, value in headers.items():
        if _TOKEN.fullmatch(name) is None or _BAD_VALUE_CHARS.search(value) is not None:
            raise ValueError(f"invalid header {name!r}")
        # A caller's header replaces ours of the same name.
        fields[name.lower()] = f"{name}: {value}"
    for reserved in ("content-length", "transfer-encoding", "connection"):
        fields.pop(reserved, None)
    if body or method not in ("GET", "HEAD"):
        fields["content-length"] = f"Content-Length: {len(body)}"
    head = f"{method} {target.path} HTTP/1.1\r\n" + "\r\n".join(fields.values()) + "\r\n\r\n"
    return head.encode("latin-1") + body
