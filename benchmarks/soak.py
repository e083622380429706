"""Soak: many concurrent streams with random client disconnects, and nothing may leak or be lost.

::

    python -m benchmarks.soak [--seconds 60] [--concurrency 200] [--disconnect-rate 0.3] [--json]

Three processes on 127.0.0.1: a mock OpenAI-compatible upstream (``python -m benchmarks.soak
--serve-upstream``; it streams a fixed reply slowly, so streams stay open), the reference
gateway (``python -m openclaw_http_compat gateway --port 0``, state in a temporary directory)
and this process, the load: ``--concurrency`` workers sending chat completions (mostly
streamed, some keyed by a ``user`` so runs queue on session locks) until ``--seconds`` have
passed or ``--max-requests`` were sent. A ``--disconnect-rate`` share of requests is cut on
purpose by the client at a random stage: with half the body sent, early (before or just after
the response starts), or in the middle of the stream; half of those cut after the body was sent
ask the upstream for a reply that never ends, so only the gateway aborting the run ends it.

Printed figures, then checks (exit status 1 when one fails):

* requests completed (full reply, finish chunk, ``[DONE]``), deliberate disconnects per stage,
  errors (anything else: a wrong reply, an error frame, an unexpected status, a reset, a
  request taking over 30 s) - must be 0;
* upstream: requests received, completed, aborted by the gateway (the runs aborted for
  disconnects), the most held open at once, and at the end requests still open (an endless
  reply the gateway never aborted stays open for good) and TCP connections still open once the
  idle keep-alive connections of the gateway's pool are closed - both must be 0;
* turns lost: user messages of completed requests missing from the gateway's SQLite session
  store after it shut down - must be 0;
* gateway RSS at start, after a warm-up at full concurrency, at peak and at the end; the end
  must be within ``--max-rss-growth-mib`` of the warm-up figure;
* the gateway's exit status on SIGTERM - must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
from aiohttp import web

TOKEN: Final = "soak-token"
ROOT: Final = Path(__file__).resolve().parent.parent
CHAT_PATH: Final = "/v1/chat/completions"
STATS_PATH: Final = "/_soak/stats"
#: The upstream's reply: this many deltas, ``DELTA_DELAY_S`` apart.
DELTAS: Final = 10
DELTA_DELAY_S: Final = 0.02
REPLY: Final = "".join(f"w{i} " for i in range(DELTAS))
#: The upstream's keep-alive idle timeout (default): longer than the gateway's client pool keeps
#: idle connections (aiohttp: 15 s), so the upstream never closes a connection the gateway may be
#: reusing at that moment (``--upstream-keepalive 1`` provokes that race on purpose).
UPSTREAM_KEEPALIVE_S: Final = 75.0
#: A message holding this gets a reply that never ends: only the gateway aborting the run ends it.
ENDLESS: Final = "endless"
ENDLESS_MAX_S: Final = 300.0
#: One request may take this long before it counts as an error.
REQUEST_TIMEOUT_S: Final = 30.0
STAGES: Final = ("body", "early", "mid-stream")
USERS: Final = tuple(f"soak-user-{i}" for i in range(8))
_LISTENING: Final = re.compile(r"listening on http://127\.0\.0\.1:(\d+) ")


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _raise_nofile_limit(wanted: int = 16384) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --- the mock upstream (its own process) ------------------------------------------------------


class UpstreamStats:
    def __init__(self) -> None:
        self.requests = 0
        self.completed = 0
        self.aborted = 0
        self.endless = 0
        self.open = 0
        self.max_open = 0
        #: Connections with a request in progress.
        self.busy: set[object] = set()


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def upstream_app(stats: UpstreamStats) -> web.Application:
    """The mock upstream: streams ``REPLY`` slowly (or endlessly); counts requests, aborts and connections."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model"))
        endless = ENDLESS in str(body["messages"][-1]["content"])
        stats.requests += 1
        stats.endless += endless
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        stats.busy.add(request.protocol)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(_chunk(model, {"role": "assistant", "content": ""}))
            deltas = int(ENDLESS_MAX_S / DELTA_DELAY_S) if endless else DELTAS
            for index in range(deltas):
                await asyncio.sleep(DELTA_DELAY_S)
                await resp.write(_chunk(model, {"content": f"w{index % DELTAS} "}))
            await resp.write(_chunk(model, {}, "stop"))
            usage = {"prompt_tokens": 5, "completion_tokens": DELTAS, "total_tokens": 5 + DELTAS}
            await resp.write(
                b"data: "
                + json.dumps({"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 0,
                              "model": model, "choices": [], "usage": usage}).encode()
                + b"\n\ndata: [DONE]\n\n"
            )
            await resp.write_eof()
            stats.completed += 1
            return resp
        except (asyncio.CancelledError, ConnectionResetError):
            # handler_cancellation is on: the gateway dropped the request (an aborted run).
            stats.aborted += 1
            raise
        finally:
            stats.open -= 1
            stats.busy.discard(request.protocol)

    async def report(request: web.Request) -> web.Response:
        server = request.app[_SERVER_KEY]
        connections = [c for c in server.connections if c is not request.protocol]
        closed_idle = 0
        if request.query.get("close_idle"):
            # Idle keep-alive connections are the gateway's pool, not leaks: close them, so that
            # every connection still open after this has a request in progress.
            for connection in connections:
                if connection not in stats.busy:
                    # force_close: close() only stops the handler and leaves the socket open.
                    connection.force_close()
                    closed_idle += 1
            await asyncio.sleep(0.1)
            connections = [c for c in server.connections if c is not request.protocol]
        return web.json_response(
            {
                "requests": stats.requests,
                "completed": stats.completed,
                "aborted": stats.aborted,
                "endless": stats.endless,
                "open_requests": stats.open,
                "max_open_requests": stats.max_open,
                "open_connections": len(connections),
                "closed_idle": closed_idle,
            }
        )

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get(STATS_PATH, report)
    return app


_SERVER_KEY: Final = web.AppKey("soak.server", web.Server)


async def serve_upstream(keepalive_s: float) -> None:
    """Serve the mock upstream until stdin closes or SIGTERM; prints ``READY <port>``."""
    _raise_nofile_limit()
    stats = UpstreamStats()
    app = upstream_app(stats)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, handler_cancellation=True,
        keepalive_timeout=keepalive_s, shutdown_timeout=1.0,
    )
    await runner.setup()
    assert runner.server is not None
    app[_SERVER_KEY] = runner.server
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        # The parent holds our stdin; EOF means it is gone, and so are we.
        with suppress(Exception):
            sys.stdin.buffer.read()
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    try:
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 3600)
    finally:
        await runner.cleanup()


# --- child processes --------------------------------------------------------------------------


class Child:
    """A child process whose first stdout line announces its port; always terminated, then killed."""

    def __init__(self, name: str, argv: Sequence[str], pattern: re.Pattern[str], env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.pattern = pattern
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log: IO[bytes] = tempfile.TemporaryFile()

    def start(self, timeout_s: float = 30.0) -> Child:
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=self.env
        )
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, timeout_s)
        match = self.pattern.search(line)
        if match is None:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {line!r}\n{self.log_tail()}")
        self.port = int(match.group(1))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def log_tail(self, limit: int = 4000) -> str:
        return self.log_text()[-limit:]

    def terminate(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait; the exit status, or ``None`` when it had to be killed."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()


def _readline(stream: IO[bytes], timeout_s: float) -> str:
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return result[0].decode(errors="replace") if result else ""


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gateway_config(upstream_port: int, state_dir: Path, concurrency: int) -> dict[str, Any]:
    return {
        "gateway": {
            "auth": {"mode": "token", "token": TOKEN},
            "stateDir": str(state_dir),
            "http": {"endpoints": {"chatCompletions": {"enabled": True, "maxConcurrentRuns": 4 * concurrency + 64}}},
        },
        "agents": {"list": [{"id": "main", "default": True, "model": "soak/m"}]},
        "models": {
            "providers": {
                "soak": {"baseUrl": f"http://127.0.0.1:{upstream_port}/v1", "api": "openai-completions",
                         "models": [{"id": "m"}]}
            }
        },
    }


# --- the load ---------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.started = 0
        self.endless = 0
        self.completed = 0
        self.disconnects: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_examples: list[str] = []
        self.completed_messages: list[str] = []
        self.latencies: list[float] = []
        self.keyed_latencies: list[float] = []

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(f"{kind}: {detail[:300]}")


async def _frames(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE body, as they arrive."""
    async for line in resp.content:
        text = line.decode().rstrip("\r\n")
        if text.startswith("data: "):
            yield text.removeprefix("data: ")


def _check_stream(payloads: list[str]) -> str | None:
    """Why a complete stream is wrong, or ``None``."""
    if not payloads or payloads[-1] != "[DONE]":
        return "no [DONE] at the end"
    chunks = [json.loads(p) for p in payloads[:-1]]
    if any("error" in c for c in chunks):
        return f"error frame {chunks[-1]}"
    if chunks[0]["choices"][0]["delta"] != {"role": "assistant"}:
        return "no role chunk first"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    if text != REPLY:
        return f"reply {text!r}"
    if chunks[-1]["choices"][0]["finish_reason"] != "stop":
        return "no finish chunk last"
    return None


async def one_request(session: aiohttp.ClientSession, url: str, tally: Tally, rng: random.Random, rate: float) -> None:
    stream = rng.random() < 0.85
    stage = rng.choice(STAGES if stream else STAGES[:2]) if rng.random() < rate else None
    # Half the runs cut after the body was sent get a reply that never ends: the gateway must
    # abort those upstream requests, or they stay open at the upstream for good.
    endless = stage in ("early", "mid-stream") and rng.random() < 0.5
    message = f"soak {uuid.uuid4()}" + (f" {ENDLESS}" if endless else "")
    body: dict[str, Any] = {"model": "openclaw", "stream": stream, "messages": [{"role": "user", "content": message}]}
    if rng.random() < 0.2:
        body["user"] = rng.choice(USERS)
    data = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    tally.started += 1
    tally.endless += endless
    started = time.monotonic()

    if stage == "body":
        never = asyncio.Event()

        async def half_body() -> AsyncIterator[bytes]:
            yield data[: len(data) // 2]
            await never.wait()
            yield data[len(data) // 2 :]

        posting = asyncio.ensure_future(
            session.post(url, data=half_body(), headers={**headers, "Content-Length": str(len(data))})
        )
        await asyncio.sleep(rng.uniform(0.005, 0.05))
        posting.cancel()
        with suppress(asyncio.CancelledError, aiohttp.ClientError):
            (await posting).close()
        tally.disconnects[stage] += 1
        return

    async def run() -> None:
        async with session.post(url, data=data, headers=headers) as resp:
            if resp.status != 200:
                tally.error(f"status {resp.status}", await resp.text())
                return
            if not stream:
                reply = await resp.json()
                content = reply["choices"][0]["message"]["content"]
                if content != REPLY:
                    tally.error("wrong reply", repr(reply))
                    return
            else:
                payloads: list[str] = []
                cut_after = rng.randint(1, DELTAS - 1) if stage == "mid-stream" else None
                async for payload in _frames(resp):
                    payloads.append(payload)
                    if cut_after is not None and len(payloads) > cut_after:  # role chunk + cut_after contents
                        resp.close()
                        tally.disconnects["mid-stream"] += 1
                        return
                problem = _check_stream(payloads)
                if problem is not None:
                    tally.error("bad stream", problem)
                    return
            tally.completed += 1
            tally.completed_messages.append(message)
            (tally.keyed_latencies if "user" in body else tally.latencies).append(time.monotonic() - started)

    async def guarded() -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                await run()
        except TimeoutError:
            tally.error("timeout", f"no answer in {REQUEST_TIMEOUT_S} s")
        except (aiohttp.ClientError, ValueError, KeyError, IndexError) as exc:
            tally.error(type(exc).__name__, repr(exc))

    if stage != "early":
        await guarded()
        return
    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(rng.uniform(0.0, 0.03 if stream else DELTAS * DELTA_DELAY_S))
    if task.done():
        return  # it finished first: judged as an ordinary request
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    tally.disconnects["early"] += 1


async def load(url: str, *, seconds: float, concurrency: int, max_requests: int, rate: float, seed: int) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(index: int) -> None:
            rng = random.Random(seed * 100_003 + index)
            while time.monotonic() < deadline and tally.started < max_requests:
                await one_request(session, url, tally, rng, rate)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return tally


async def upstream_stats(port: int, *, close_idle: bool = False) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        query = "?close_idle=1" if close_idle else ""
        async with session.get(f"http://127.0.0.1:{port}{STATS_PATH}{query}") as resp:
            stats: dict[str, int] = await resp.json()
            return stats


async def settle(port: int, timeout_s: float) -> dict[str, int]:
    """Upstream stats once no request is in progress (or after ``timeout_s``), idle connections closed."""
    deadline = time.monotonic() + timeout_s
    while (await upstream_stats(port))["open_requests"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return await upstream_stats(port, close_idle=True)


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_bytes(pid))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def stored_user_messages(state_dir: Path) -> tuple[set[str], int, int]:
    """User messages in the session store, and the user / assistant row counts."""
    with sqlite3.connect(state_dir / "sessions.sqlite") as conn:
        users = [str(row[0]) for row in conn.execute("SELECT content FROM turns WHERE role = 'user'")]
        (assistants,) = conn.execute("SELECT count(*) FROM turns WHERE role = 'assistant'").fetchone()
    return set(users), len(users), int(assistants)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    _raise_nofile_limit()
    env = _child_env()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        state = Path(tmp) / "state"
        upstream = Child(
            "upstream",
            [sys.executable, "-m", "benchmarks.soak", "--serve-upstream", "--upstream-keepalive",
             str(args.upstream_keepalive)],
            re.compile(r"READY (\d+)"),
            env,
        )
        gateway: Child | None = None
        try:
            upstream.start()
            config_path = Path(tmp) / "openclaw.json"
            config_path.write_text(json.dumps(gateway_config(upstream.port, state, args.concurrency)), encoding="utf-8")
            gateway = Child(
                "gateway",
                [sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", str(config_path), "--port", "0"],
                _LISTENING,
                env,
            ).start()
            url = f"http://127.0.0.1:{gateway.port}{CHAT_PATH}"
            rss_start = rss_bytes(gateway.pid)
            # Warm up at full concurrency without disconnects: first-use allocations are not growth.
            warm = await load(url, seconds=60, concurrency=args.concurrency, max_requests=2 * args.concurrency,
                              rate=0.0, seed=args.seed + 1)
            await settle(upstream.port, 5)
            rss_warm = rss_bytes(gateway.pid)

            peak = [rss_warm]
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(sample_rss(gateway.pid, peak, stop))
            began = time.monotonic()
            tally = await load(url, seconds=args.seconds, concurrency=args.concurrency,
                               max_requests=args.max_requests, rate=args.disconnect_rate, seed=args.seed)
            elapsed = time.monotonic() - began
            stop.set()
            await sampler
            stats = await settle(upstream.port, 5)
            rss_end = rss_bytes(gateway.pid)
            exit_status = gateway.terminate()
            gateway_log = gateway.log_tail() if exit_status != 0 else ""
            provider_failures = [
                line.split(": ", 1)[-1] for line in gateway.log_text().splitlines() if " failed (run " in line
                or " timed out (run " in line
            ]
        finally:
            if gateway is not None:
                gateway.kill()
            upstream.terminate()
        stored, user_rows, assistant_rows = stored_user_messages(state)

    completed_messages = warm.completed_messages + tally.completed_messages
    lost = [m for m in completed_messages if m not in stored]
    latencies = sorted(tally.latencies)
    keyed = sorted(tally.keyed_latencies)
    warm_errors = sum(warm.errors.values())
    result: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "concurrency": args.concurrency,
        "disconnect_rate": args.disconnect_rate,
        "requests": tally.started,
        "completed": tally.completed,
        "requests_per_s": round(tally.started / elapsed, 1) if elapsed else 0.0,
        "p50_ms": _percentile_ms(latencies, 50),
        "p99_ms": _percentile_ms(latencies, 99),
        "keyed_p50_ms": _percentile_ms(keyed, 50),
        "keyed_p99_ms": _percentile_ms(keyed, 99),
        "disconnects": dict(sorted(tally.disconnects.items())),
        "errors": sum(tally.errors.values()) + warm_errors,
        "error_kinds": dict(tally.errors + warm.errors),
        "error_examples": tally.error_examples + warm.error_examples,
        "upstream_requests": stats["requests"],
        "upstream_completed": stats["completed"],
        "aborted_runs": stats["aborted"],
        "endless_sent": tally.endless,
        "endless_upstream": stats["endless"],
        "idle_connections_closed_at_end": stats["closed_idle"],
        "max_open_upstream_requests": stats["max_open_requests"],
        "upstream_requests_left_open": stats["open_requests"],
        "upstream_connections_left_open": stats["open_connections"],
        "turns_committed": user_rows,
        "turns_unpaired": user_rows - assistant_rows,
        "turns_lost": len(lost),
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_warm_mib": round(rss_warm / 2**20, 1),
        "rss_peak_mib": round(peak[0] / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_growth_mib": round((rss_end - rss_warm) / 2**20, 1),
        "gateway_exit_status": exit_status,
        "gateway_provider_failures": provider_failures[:10],
    }
    checks = {
        "no errors": result["errors"] == 0,
        "no upstream request left open": result["upstream_requests_left_open"] == 0,
        "no upstream connection left open": result["upstream_connections_left_open"] == 0,
        "no completed turn lost": result["turns_lost"] == 0 and result["turns_unpaired"] == 0,
        f"RSS growth <= {args.max_rss_growth_mib} MiB": result["rss_growth_mib"] <= args.max_rss_growth_mib,
        "gateway exits 0 on SIGTERM": exit_status == 0,
    }
    result["checks"] = checks
    result["ok"] = all(checks.values())
    if gateway_log:
        result["gateway_log_tail"] = gateway_log
    return result


def _percentile_ms(sorted_s: list[float], pct: int) -> float | None:
    if not sorted_s:
        return None
    return round(1000 * sorted_s[min(len(sorted_s) - 1, len(sorted_s) * pct // 100)], 1)


def _print_report(result: dict[str, Any]) -> None:
    rows = [
        ("duration", f"{result['seconds']} s at concurrency {result['concurrency']}, "
                     f"disconnect rate {result['disconnect_rate']}"),
        ("requests sent", f"{result['requests']} ({result['requests_per_s']}/s)"),
        ("completed", f"{result['completed']} (p50 / p99: {result['p50_ms']} / {result['p99_ms']} ms stateless, "
                      f"{result['keyed_p50_ms']} / {result['keyed_p99_ms']} ms on {len(USERS)} shared sessions)"),
        ("deliberate disconnects", ", ".join(f"{k} {v}" for k, v in result["disconnects"].items()) or "0"),
        ("errors", f"{result['errors']} {result['error_kinds'] or ''}".rstrip()),
        ("upstream requests", f"{result['upstream_requests']} ({result['upstream_completed']} completed, "
                              f"{result['aborted_runs']} aborted runs, of which {result['endless_upstream']} "
                              f"endless replies)"),
        ("most streams held open at once", str(result["max_open_upstream_requests"])),
        ("upstream requests left open", str(result["upstream_requests_left_open"])),
        ("upstream connections left open", f"{result['upstream_connections_left_open']} "
                                           f"(idle pooled ones closed first: {result['idle_connections_closed_at_end']})"),
        ("turns committed / lost", f"{result['turns_committed']} / {result['turns_lost']}"),
        ("gateway RSS start / warm / peak / end", f"{result['rss_start_mib']} / {result['rss_warm_mib']} / "
                                                  f"{result['rss_peak_mib']} / {result['rss_end_mib']} MiB "
                                                  f"(growth {result['rss_growth_mib']} MiB)"),
        ("gateway exit status (SIGTERM)", str(result["gateway_exit_status"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for example in result["error_examples"]:
        print(f"  error: {example}")
    for failure in result["gateway_provider_failures"]:
        print(f"  gateway log: {failure}")
    for check, passed in result["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {check}")
    if "gateway_log_tail" in result:
        print(result["gateway_log_tail"], file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60, at most 600)")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent clients (default 200)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--disconnect-rate", type=float, default=0.3, help="share of requests cut on purpose")
    parser.add_argument("--max-rss-growth-mib", type=float, default=64.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    parser.add_argument("--upstream-keepalive", type=float, default=UPSTREAM_KEEPALIVE_S,
                        help=f"the upstream's keep-alive idle timeout in s (default {UPSTREAM_KEEPALIVE_S:g})")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream(args.upstream_keepalive))
        return 0
    if not 0 < args.seconds <= 600 or not 1 <= args.concurrency <= 2000 or not 0 <= args.disconnect_rate <= 1:
        parser.error("--seconds must be in (0, 600], --concurrency in [1, 2000], --disconnect-rate in [0, 1]")
    # SIGTERM unwinds like Ctrl-C, so the children are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(result))
    else:
        _print_report(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
