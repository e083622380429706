"""Micro-benchmarks: JSON encoding, SSE framing, the session store and a provider call, in-process.

Each figure is the best of several repeats of a tight loop (per operation). SSE framing writes
into a real aiohttp ``StreamWriter`` over a transport that discards the bytes, so it counts
framing, chunked encoding and aiohttp's write path, but no socket.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import attrs
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from .common import DELTA, REPLY, USAGE, chunk_body, completion_body, percentile_ms

_REPEATS: Final = 5


@attrs.frozen
class MicroRow:
    """One micro-benchmark figure."""

    group: str
    variant: str
    value: str
    relative: str = ""
    note: str = ""


def _best_ns(fn: Callable[[], object], number: int) -> float:
    times = timeit.repeat(fn, number=number, repeat=_REPEATS)
    return min(times) / number * 1e9


async def _best_ns_async(fn: Callable[[], Awaitable[object]], number: int) -> float:
    best = float("inf")
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        for _ in range(number):
            await fn()
        best = min(best, time.perf_counter() - t0)
    return best / number * 1e9


def _fmt_ns(ns: float) -> str:
    return f"{ns / 1000:.2f} µs" if ns >= 1000 else f"{ns:.0f} ns"


_ID: Final = "chatcmpl_0b7c1a9e-3f0e-4c55-9d7e-2a51f0a6c0de"
_CREATED: Final = 1_764_000_000


def _completion() -> dict[str, Any]:
    return completion_body(_ID, _CREATED, "openclaw", REPLY, USAGE)


def _chunk(content: str) -> dict[str, Any]:
    return chunk_body(_ID, _CREATED, "openclaw", {"content": content})


def _stdlib_dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def json_rows(quick: bool) -> list[MicroRow]:
    from openclaw_http_compat import wire

    number = 2_000 if quick else 20_000
    rows: list[MicroRow] = []
    orjson: Any
    try:
        orjson = importlib.import_module("orjson")
    except ImportError:
        orjson = None
    for name, obj in (("completion body", _completion()), ("stream chunk", _chunk(DELTA))):
        stdlib = _best_ns(functools.partial(_stdlib_dumps, obj), number)
        plugin = _best_ns(functools.partial(wire.dumps, obj), number)
        rows.append(MicroRow(f"JSON encode: {name}", "stdlib json.dumps().encode()", _fmt_ns(stdlib), "1.00x"))
        rows.append(MicroRow(f"JSON encode: {name}", "plugin wire.dumps (stdlib, compact)", _fmt_ns(plugin),
                             f"{stdlib / plugin:.2f}x"))
        if orjson is not None:
            fast = _best_ns(functools.partial(orjson.dumps, obj), number)
            rows.append(MicroRow(f"JSON encode: {name}", f"orjson.dumps ({orjson.__version__})", _fmt_ns(fast),
                                 f"{stdlib / fast:.2f}x"))
        else:
            rows.append(MicroRow(f"JSON encode: {name}", "orjson.dumps", "not installed"))
    return rows


class _NullTransport(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _NullProtocol(BaseProtocol):
    # What aiohttp's Request reads from its protocol.
    ssl_context = None
    peername = ("127.0.0.1", 40000)
    sockname = ("127.0.0.1", 8000)
    max_field_size = 8190
    max_line_length = 8190
    max_headers = 128


def _null_request(loop: asyncio.AbstractEventLoop) -> web.Request:
    transport = _NullTransport()
    protocol = _NullProtocol(loop)
    protocol.connection_made(transport)
    writer = StreamWriter(protocol, loop)
    return make_mocked_request("POST", "/v1/chat/completions", writer=writer, transport=transport,
                               protocol=protocol)


async def _sse_rows(quick: bool) -> list[MicroRow]:
    from aiohttp_sse import EventSourceResponse

    from openclaw_http_compat.stream import ChatEventStream
    from openclaw_http_compat.wire import ChunkEncoder

    loop = asyncio.get_running_loop()
    number = 1_000 if quick else 10_000
    group = "SSE frame: one small content delta"
    encoder = ChunkEncoder(completion_id=_ID, created=_CREATED, model="openclaw")
    chunk = _chunk(DELTA)
    chunk_json = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
    frame = encoder.content(DELTA)

    sse = EventSourceResponse(allow_all_methods=True, sep="\n")
    await sse.prepare(_null_request(loop))
    try:
        send_dumps = await _best_ns_async(
            lambda: sse.send(json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))), number)
        send_pre = await _best_ns_async(lambda: sse.send(chunk_json), number)
    finally:
        sse.stop_streaming()
        await sse.wait()

    ours = ChatEventStream(keepalive_s=15.0, headers={})
    await ours.prepare(_null_request(loop))
    try:
        encode_write = await _best_ns_async(lambda: ours.write_frame(encoder.content(DELTA)), number)
    finally:
        ours.stop_streaming()
        await ours.wait()
    encode_only = _best_ns(lambda: encoder.content(DELTA), number * 5)

    plain = web.StreamResponse()
    await plain.prepare(_null_request(loop))
    plain.enable_chunked_encoding()
    write_only = await _best_ns_async(lambda: plain.write(frame), number)

    base = send_dumps
    return [
        MicroRow(group, "aiohttp-sse send(json.dumps(chunk))", _fmt_ns(send_dumps), "1.00x"),
        MicroRow(group, "aiohttp-sse send(pre-encoded JSON str)", _fmt_ns(send_pre), f"{base / send_pre:.2f}x"),
        MicroRow(group, "plugin ChunkEncoder.content() + write_frame()", _fmt_ns(encode_write),
                 f"{base / encode_write:.2f}x"),
        MicroRow(group, "plugin ChunkEncoder.content() alone", _fmt_ns(encode_only), f"{base / encode_only:.2f}x",
                 "encoding only, no write"),
        MicroRow(group, "StreamResponse.write(pre-built frame)", _fmt_ns(write_only), f"{base / write_only:.2f}x",
                 "aiohttp's write path alone (floor)"),
    ]


async def _store_rows(quick: bool) -> list[MicroRow]:
    try:
        from openclaw_http_compat.reference.store import SessionStore, Turn
    except ImportError:
        return [MicroRow("Session store (reference/store.py)", "append + load", "n/a", note="not in the repo")]
    group = "Session store (reference/store.py)"
    # Enough sequential appends for a few WAL checkpoints (about one per 1,000 pages written):
    # their cost shows in the tail, not the median. 20 appends per session: up to 40 turns.
    count = 20 if quick else 1_000
    sessions = count // 20
    # Concurrent appends to different sessions, as runs finish under load: how commits are shared.
    width = 64
    rounds = 3 if quick else 30
    turns = [Turn("user", "Say hello."), Turn("assistant", REPLY)]

    async def timed_append(store: SessionStore, key: str, times: list[float]) -> None:
        t0 = time.perf_counter()
        await store.append(key, turns)
        times.append(time.perf_counter() - t0)

    def fig(values: list[float]) -> str:
        values = sorted(values)
        return (f"p50 {percentile_ms(values, 50):.3f} ms · p99 {percentile_ms(values, 99):.3f} ms"
                f" · max {values[-1] * 1000:.3f} ms")

    rows: list[MicroRow] = []
    for fsync in (True, False):
        appends: list[float] = []
        loads: list[float] = []
        concurrent: list[float] = []
        wall = 0.0
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            store = SessionStore(Path(tmp) / "sessions.sqlite", fsync=fsync)
            await store.open()
            try:
                for i in range(count):
                    key = f"agent:main:bench-{i % sessions}"
                    t0 = time.perf_counter()
                    await store.append(key, turns)
                    t1 = time.perf_counter()
                    await store.load(key)
                    t2 = time.perf_counter()
                    appends.append(t1 - t0)
                    loads.append(t2 - t1)
                for round_ in range(rounds):
                    t0 = time.perf_counter()
                    await asyncio.gather(*(timed_append(store, f"agent:main:wide-{round_}-{i}", concurrent)
                                           for i in range(width)))
                    wall += time.perf_counter() - t0
            finally:
                await store.close()
        both = [a + b for a, b in zip(appends, loads, strict=True)]
        sync = "synchronous=FULL" if fsync else "synchronous=NORMAL"
        rows += [
            MicroRow(group, f"append (user + assistant turn), fsync={fsync}", fig(appends),
                     note=f"{count:,} sequential ops, SQLite WAL, {sync}, temp dir"),
            MicroRow(group, f"load (session of up to 40 turns), fsync={fsync}", fig(loads)),
            MicroRow(group, f"append + load, fsync={fsync}", fig(both)),
            MicroRow(group, f"{width} concurrent appends, fsync={fsync}", fig(concurrent),
                     note=f"{rounds * width / wall:,.0f} appends/s; latency per append, {rounds} rounds of {width}"),
        ]
    return rows


async def _provider_rows(quick: bool) -> list[MicroRow]:
    """One provider call, sequentially, through the reference gateway's aiohttp client session."""
    from openclaw_http_compat import AgentRunRequest, RunEnd, RunError
    from openclaw_http_compat.client import open_client_session
    from openclaw_http_compat.reference.config import GatewayConfig
    from openclaw_http_compat.reference.providers import make_provider

    from .mock_upstream import CompletionReply, MockUpstream

    group = "Provider call (reference/providers.py)"
    number = 200 if quick else 2_000
    upstream = MockUpstream(CompletionReply(), record=False)
    runner = web.AppRunner(upstream.app, access_log=None)
    await runner.setup()
    rows: list[MicroRow] = []
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        provider_config = {"api": "openai-completions", "baseUrl": f"http://127.0.0.1:{port}/v1"}
        config = GatewayConfig.from_mapping(
            {"gateway": {"auth": {"mode": "none"}}, "models": {"providers": {"up": provider_config}}}, env={}
        )
        messages = [{"role": "user", "content": "Say hello."}]
        async with open_client_session() as session:
            provider = make_provider(config, "up", session)
            assert not isinstance(provider, RunError), provider
            for stream, variant in ((False, "whole completion (stream: false)"), (True, "streamed (4 deltas + usage)")):
                request = AgentRunRequest(
                    run_id="bench", agent_id="main", session_key="bench", message="Say hello.", stream=stream
                )

                async def call(request: AgentRunRequest = request) -> None:
                    events = [event async for event in provider.stream("m", messages, request)]
                    assert isinstance(events[-1], RunEnd), events[-1]

                await _best_ns_async(call, max(1, number // 10))  # a pooled connection, warm code paths
                ns = await _best_ns_async(call, number)
                rows.append(MicroRow(group, variant, _fmt_ns(ns),
                                     note="aiohttp ClientSession, keep-alive; in-process upstream, its handling included"))
    finally:
        await runner.cleanup()
    return rows


def run_micro(quick: bool) -> list[MicroRow]:
    """Every micro-benchmark row; a group that fails says so in its row instead."""
    rows: list[MicroRow] = []
    try:
        rows.extend(json_rows(quick))
    except Exception as exc:  # noqa: BLE001 - a broken micro-benchmark must not hide the rest
        rows.append(MicroRow("JSON encode", "error", "n/a", note=repr(exc)))

    async def run_async() -> None:
        for name, make in (("SSE frame", _sse_rows), ("Session store", _store_rows), ("Provider call", _provider_rows)):
            try:
                rows.extend(await make(quick))
            except Exception as exc:  # noqa: BLE001
                rows.append(MicroRow(name, "error", "n/a", note=repr(exc)))

    asyncio.run(run_async())
    return rows
