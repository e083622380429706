"""The asyncio load generator, run as a process of its own.

``python -m benchmarks.client SPEC_JSON`` runs one scenario against one server and prints
its result as one JSON line. It speaks just enough HTTP/1.1 (keep-alive, Content-Length and
chunked bodies) over ``asyncio`` streams to stay far cheaper per request than the servers it
measures. Every loop is bounded by a request count and by a deadline.

Scenarios (``SPEC["scenario"]``):

* ``reqresp``: ``conns`` keep-alive connections POST the same body as fast as they can;
  requests per second, p50/p99 latency, errors (a non-200 or a body without ``expect``). With
  ``user_prefix`` or ``users`` the body's ``__USER__`` names a different user per connection,
  or per request (see :func:`_user_requests`).
* ``stream_latency``: sequential streamed requests; time to the first frame with non-empty
  ``content`` and to ``data: [DONE]``.
* ``stream_throughput``: streamed requests of ``deltas`` content frames each; content frames
  per second, and that every stream delivered all of them and ``[DONE]``.
* ``many_streams``: ``streams`` concurrent streams the server holds idle; its RSS before and
  with all of them open, then the release and a check that every one finishes correctly.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from .common import (
    AUTH_HEADER,
    CHAT_PATH,
    RELEASE_PATH,
    REPLY,
    STATS_PATH,
    percentile_ms,
    raise_nofile_limit,
)

_CONTENT_RE: Final = re.compile(rb'"content":"[^"]')
_DONE: Final = b"data: [DONE]"
_REQUEST_TIMEOUT: Final = 60.0
#: Where a ``reqresp`` body names its user (``SPEC["user_prefix"]``, ``SPEC["users"]``).
USER_PLACEHOLDER: Final = "__USER__"


class HttpError(Exception):
    """A response the scenario did not expect."""


def build_request(method: str, path: str, port: int, body: bytes = b"", *, auth: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if auth:
        lines.append(f"Authorization: {AUTH_HEADER}")
    if body or method == "POST":
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _spec_request(spec: dict[str, Any]) -> bytes:
    """The request a scenario sends: ``SPEC["body"]`` POSTed to ``SPEC["path"]`` (the chat path by default)."""
    return build_request("POST", spec.get("path", CHAT_PATH), spec["port"], spec["body"].encode())


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, raw: bytes, on_data: Callable[[bytes], None] | None = None
    ) -> tuple[int, bytes]:
        """Send ``raw`` and read the response; body pieces go to ``on_data`` as they arrive
        (then the returned body is empty)."""
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        reader = self.reader
        self.writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length: int | None = None
        chunked = False
        closing = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                closing = True
        pieces: list[bytes] = []
        sink = on_data if on_data is not None else pieces.append
        if chunked:
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from our servers
                    break
                data = await reader.readexactly(size + 2)
                sink(data[:-2])
        elif length is not None:
            if length:
                sink(await reader.readexactly(length))
        else:
            sink(await reader.read())
            closing = True
        if closing:
            self.close()
        return status, b"".join(pieces)

    async def attempt(self, raw: bytes, on_data: Callable[[bytes], None] | None = None) -> tuple[int, bytes] | None:
        """:meth:`request` within the request timeout; ``None`` when it failed (the connection is closed)."""
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                return await self.request(raw, on_data)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            self.close()
            return None


class SseWatcher:
    """Splits an SSE body into frames and notes when content and ``[DONE]`` arrive."""

    __slots__ = ("buffer", "frames", "content_frames", "first_content", "done", "text")

    def __init__(self) -> None:
        self.buffer = b""
        self.frames = 0
        self.content_frames = 0
        self.first_content: float | None = None
        self.done: float | None = None
        self.text: list[bytes] = []

    def feed(self, data: bytes) -> None:
        buffer = self.buffer + data
        if b"\n\n" not in buffer:
            self.buffer = buffer
            return
        *frames, self.buffer = buffer.split(b"\n\n")
        for frame in frames:
            if not frame.startswith(b"data:"):
                continue
            self.frames += 1
            if frame.startswith(_DONE):
                self.done = time.perf_counter()
            elif _CONTENT_RE.search(frame):
                self.content_frames += 1
                if self.first_content is None:
                    self.first_content = time.perf_counter()
                self.text.append(frame)


def _user_requests(spec: dict[str, Any]) -> Callable[[int], bytes]:
    """The request of connection ``i``'s next turn: ``SPEC["body"]`` as is, or with its
    :data:`USER_PLACEHOLDER` filled in.

    ``SPEC["user_prefix"]``: connection ``i`` is user ``<prefix><i>`` (each client its own
    session, as wrk's threads do). ``SPEC["users"]``: every request takes the next user of the
    list, whichever connection sends it.
    """
    prefix: str | None = spec.get("user_prefix")
    users: list[str] | None = spec.get("users")
    if prefix is None and users is None:
        raw = _spec_request(spec)
        return lambda index: raw

    def fill(user: str) -> bytes:
        return _spec_request({**spec, "body": spec["body"].replace(USER_PLACEHOLDER, user)})

    if users is None:
        per_conn = [fill(f"{prefix}{i}") for i in range(spec["conns"])]
        return per_conn.__getitem__
    queue = [fill(user) for user in users]
    counter = iter(range(1 << 62))
    return lambda index: queue[next(counter) % len(queue)]


async def reqresp(spec: dict[str, Any]) -> dict[str, Any]:
    port: int = spec["port"]
    request_of = _user_requests(spec)
    expect: bytes = spec.get("expect", "").encode()
    conns: int = spec["conns"]
    duration: float = spec["duration"]
    max_requests: int = spec["max_requests"]
    warmup: int = spec.get("warmup", 0)
    latencies: list[float] = []
    errors = 0
    issued = 0
    ready = 0
    warm_left = warmup
    started = asyncio.Event()
    deadline = 0.0

    async def worker(index: int) -> None:
        nonlocal errors, issued, ready, warm_left
        conn = Connection(port)
        try:
            while warm_left > 0:
                warm_left -= 1
                await conn.request(request_of(index))
            ready += 1
            await started.wait()
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                raw = request_of(index)
                t0 = time.perf_counter()
                answer = await conn.attempt(raw)
                if answer is None:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                status, body = answer
                if status != 200 or expect not in body:
                    errors += 1
        finally:
            conn.close()

    tasks = [asyncio.create_task(worker(i)) for i in range(conns)]
    warm_deadline = time.perf_counter() + _REQUEST_TIMEOUT
    while ready < conns and time.perf_counter() < warm_deadline:
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.002)
    t_start = time.perf_counter()
    deadline = t_start + duration
    started.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors += sum(1 for r in results if isinstance(r, BaseException))
    elapsed = time.perf_counter() - t_start
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
    }


async def stream_latency(spec: dict[str, Any]) -> dict[str, Any]:
    port: int = spec["port"]
    raw = _spec_request(spec)
    duration: float = spec["duration"]
    max_requests: int = spec["max_requests"]
    warmup: int = spec.get("warmup", 0)
    first: list[float] = []
    done: list[float] = []
    errors = 0
    conn = Connection(port)
    try:
        for _ in range(warmup):
            await conn.request(raw, SseWatcher().feed)
        t_start = time.perf_counter()
        deadline = t_start + duration
        count = 0
        while count < max_requests and time.perf_counter() < deadline:
            count += 1
            watcher = SseWatcher()
            t0 = time.perf_counter()
            answer = await conn.attempt(raw, watcher.feed)
            if answer is None or answer[0] != 200 or watcher.first_content is None or watcher.done is None:
                errors += 1
                continue
            first.append(watcher.first_content - t0)
            done.append(watcher.done - t0)
        elapsed = time.perf_counter() - t_start
    finally:
        conn.close()
    first.sort()
    done.sort()
    return {
        "requests": len(done),
        "errors": errors,
        "seconds": elapsed,
        "first_p50_ms": percentile_ms(first, 50),
        "first_p99_ms": percentile_ms(first, 99),
        "done_p50_ms": percentile_ms(done, 50),
        "done_p99_ms": percentile_ms(done, 99),
    }


async def stream_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    port: int = spec["port"]
    raw = _spec_request(spec)
    deltas: int = spec["deltas"]
    conns: int = spec["conns"]
    duration: float = spec["duration"]
    max_streams: int = spec["max_streams"]
    warmup: int = spec.get("warmup", 0)
    chunks = 0
    streams = 0
    errors = 0
    issued = 0

    async def one(conn: Connection) -> None:
        nonlocal chunks, streams, errors
        watcher = SseWatcher()
        answer = await conn.attempt(raw, watcher.feed)
        if answer is None or answer[0] != 200 or watcher.content_frames != deltas or watcher.done is None:
            errors += 1
            return
        chunks += watcher.content_frames
        streams += 1

    warm = Connection(port)
    try:
        for _ in range(warmup):
            await warm.request(raw, SseWatcher().feed)
    finally:
        warm.close()

    async def worker() -> None:
        nonlocal issued
        conn = Connection(port)
        try:
            while issued < max_streams and time.perf_counter() < deadline:
                issued += 1
                await one(conn)
        finally:
            conn.close()

    t_start = time.perf_counter()
    deadline = t_start + duration
    await asyncio.gather(*(worker() for _ in range(conns)))
    elapsed = time.perf_counter() - t_start
    return {
        "streams": streams,
        "chunks": chunks,
        "errors": errors,
        "seconds": elapsed,
        "chunks_per_s": chunks / elapsed if elapsed > 0 else 0.0,
    }


async def _control(port: int, method: str, path: str) -> dict[str, Any]:
    conn = Connection(port)
    try:
        status, body = await conn.request(build_request(method, path, port, auth=False))
    finally:
        conn.close()
    if status != 200:
        raise HttpError(f"{method} {path}: {status}")
    result: dict[str, Any] = json.loads(body)
    return result


async def _wait_waiting(port: int, count: int, timeout: float, tasks: Sequence[asyncio.Task[Any]]) -> int:
    """Wait until the server holds ``count`` idle runs; give up early once every request ended."""
    deadline = time.perf_counter() + timeout
    waiting = 0
    while time.perf_counter() < deadline:
        waiting = int((await _control(port, "GET", STATS_PATH))["waiting"])
        if waiting >= count or all(task.done() for task in tasks):
            break
        await asyncio.sleep(0.05)
    return waiting


async def _idle_round(port: int, raw: bytes, count: int, batch: int, timeout: float,
                      measure: bool, idle_seconds: float = 1.0) -> dict[str, Any]:
    """Open ``count`` idle streams, (measure), release them, check each one's ending."""
    conns = [Connection(port) for _ in range(count)]
    watchers = [SseWatcher() for _ in range(count)]
    tasks: list[asyncio.Task[tuple[int, bytes]]] = []
    result: dict[str, Any] = {}
    try:
        for start in range(0, count, batch):
            for i in range(start, min(start + batch, count)):
                conn, watcher = conns[i], watchers[i]
                await conn.open()
                tasks.append(asyncio.create_task(asyncio.wait_for(conn.request(raw, watcher.feed), timeout)))
            # Let the batch's connections be accepted before opening the next.
            await asyncio.sleep(0.01)
        waiting = await _wait_waiting(port, count, timeout, tasks)
        result["waiting"] = waiting
        if measure:
            await asyncio.sleep(0.2)
            stats = await _control(port, "GET", STATS_PATH + "?gc=1")
            result["rss_open"] = stats["rss"]
            # What the open streams cost while nothing happens (timers, keep-alive checks).
            t_idle = time.perf_counter()
            await asyncio.sleep(idle_seconds)
            idle = await _control(port, "GET", STATS_PATH)
            result["idle_cpu_share"] = (idle["cpu"] - stats["cpu"]) / (time.perf_counter() - t_idle)
        await _control(port, "POST", RELEASE_PATH)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        ok = 0
        for outcome, watcher in zip(outcomes, watchers, strict=True):
            if isinstance(outcome, BaseException):
                continue
            status, _ = outcome
            if status == 200 and watcher.done is not None and any(REPLY.encode() in t for t in watcher.text):
                ok += 1
        result["completed"] = ok
        result["errors"] = count - ok
    finally:
        for task in tasks:
            task.cancel()
        for conn in conns:
            conn.close()
    return result


async def many_streams(spec: dict[str, Any]) -> dict[str, Any]:
    port: int = spec["port"]
    raw = _spec_request(spec)
    count: int = spec["streams"]
    batch: int = spec.get("batch", 100)
    timeout: float = spec.get("timeout", 60.0)
    # A warm-up round first, so lazily built state does not count as per-stream cost.
    warm = await _idle_round(port, raw, min(count, spec.get("warmup", 50)), batch, timeout, False)
    await asyncio.sleep(0.2)
    base = (await _control(port, "GET", STATS_PATH + "?gc=1"))["rss"]
    t0 = time.perf_counter()
    result = await _idle_round(port, raw, count, batch, timeout, True, spec.get("idle_seconds", 1.0))
    result["seconds"] = time.perf_counter() - t0
    result["rss_base"] = base
    result["streams"] = count
    result["warmup_errors"] = warm["errors"]
    if base is not None and result.get("rss_open") is not None:
        result["bytes_per_stream"] = (result["rss_open"] - base) / count
    return result


SCENARIOS: Final = {
    "reqresp": reqresp,
    "stream_latency": stream_latency,
    "stream_throughput": stream_throughput,
    "many_streams": many_streams,
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m benchmarks.client SPEC_JSON")
    spec: dict[str, Any] = json.loads(args[0])
    raise_nofile_limit()
    result = asyncio.run(SCENARIOS[spec["scenario"]](spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
