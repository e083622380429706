"""Soak: many concurrent streams with random client disconnects, and nothing may leak or be lost.

::

    python -m benchmarks.soak [--seconds 60] [--concurrency 200] [--disconnect-rate 0.3] [--json]
    python -m benchmarks.soak --retry-storm 200 [--json]

Three processes on 127.0.0.1: the mock OpenAI-compatible upstream (:mod:`benchmarks.mock_upstream`,
``python -m benchmarks.soak --serve-upstream``; it streams a fixed reply slowly, so streams
stay open, and answers a whole completion after as long), the reference
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

``--retry-storm N`` is another scenario: N ``openai`` SDK clients, each with a read timeout
(``timeout=1.0``) shorter than its agent run (:data:`STORM_RUN_S`) and ``max_retries=4``, ask
one distinct question each (not streamed). Every first attempt times out and the SDK retries;
each retry must attach to the run its first attempt left (``x-stainless-retry-count``). Checks:
every client answered with the reply, and exactly N upstream requests (a run per question,
none for a retry); the SDK's attempts are counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

import aiohttp

from .common import CHAT_PATH, TOKEN, percentile_ms, python, raise_nofile_limit, rss_bytes
from .mock_upstream import STATS_PATH, CompletionReply, Received, Reply
from .procs import ChildProcess
from .servers import gateway_config_mapping, serve_upstream

#: The upstream's reply: this many deltas, ``DELTA_DELAY_S`` apart.
DELTAS: Final = 10
DELTA_DELAY_S: Final = 0.02
PIECES: Final = tuple(f"w{i} " for i in range(DELTAS))
REPLY: Final = "".join(PIECES)
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
_SLOW_REPLY: Final = CompletionReply(pieces=PIECES, delay_s=DELTA_DELAY_S)
_ENDLESS_REPLY: Final = CompletionReply(pieces=PIECES, delay_s=DELTA_DELAY_S, repeat_s=ENDLESS_MAX_S)


#: A message holding this gets a reply taking STORM_RUN_S (the retry storm's agent run).
STORM: Final = "storm"
STORM_RUN_S: Final = 2.5
STORM_TIMEOUT_S: Final = 1.0
STORM_RETRIES: Final = 4
_STORM_REPLY: Final = CompletionReply(pieces=PIECES, delay_s=STORM_RUN_S / DELTAS)


def soak_reply(received: Received) -> Reply:
    """The upstream's reply: :data:`REPLY` slowly, endlessly when the user message holds
    :data:`ENDLESS`, in :data:`STORM_RUN_S` when it holds :data:`STORM`."""
    content = str(received.json["messages"][-1]["content"])
    if ENDLESS in content:
        return _ENDLESS_REPLY
    return _STORM_REPLY if STORM in content else _SLOW_REPLY


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
    """The mock upstream's counters (``GET /_mock/stats``); ``close_idle`` closes idle connections first."""
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
        peak[0] = max(peak[0], _rss(pid))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def stored_user_messages(state_dir: Path) -> tuple[set[str], int, int]:
    """User messages in the session store, and the user / assistant row counts."""
    with sqlite3.connect(state_dir / "sessions.sqlite") as conn:
        users = [str(row[0]) for row in conn.execute("SELECT content FROM turns WHERE role = 'user'")]
        (assistants,) = conn.execute("SELECT count(*) FROM turns WHERE role = 'assistant'").fetchone()
    return set(users), len(users), int(assistants)


def _rss(pid: int) -> int:
    return rss_bytes(pid) or 0


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        state = Path(tmp) / "state"
        config_path = Path(tmp) / "openclaw.json"
        upstream_argv = [python(), "-m", "benchmarks.soak", "--serve-upstream", "--upstream-keepalive",
                         str(args.upstream_keepalive)]
        with ChildProcess("upstream", upstream_argv) as upstream:
            config = gateway_config_mapping(upstream.port, str(state), max_concurrent_runs=4 * args.concurrency + 64)
            config_path.write_text(json.dumps(config), encoding="utf-8")
            gateway_argv = [python(), "-m", "openclaw_http_compat", "gateway", "--config", str(config_path),
                            "--port", "0"]
            with ChildProcess("gateway", gateway_argv, ready=_LISTENING) as gateway:
                url = f"http://127.0.0.1:{gateway.port}{CHAT_PATH}"
                rss_start = _rss(gateway.pid)
                # Warm up at full concurrency without disconnects: first-use allocations are not growth.
                warm = await load(url, seconds=60, concurrency=args.concurrency, max_requests=2 * args.concurrency,
                                  rate=0.0, seed=args.seed + 1)
                await settle(upstream.port, 5)
                rss_warm = _rss(gateway.pid)

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
                rss_end = _rss(gateway.pid)
                exit_status = gateway.stop()
                gateway_log = gateway.log_text()[-4000:] if exit_status != 0 else ""
                provider_failures = [
                    line.split(": ", 1)[-1] for line in gateway.log_text().splitlines() if " failed (run " in line
                    or " timed out (run " in line
                ]
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


async def storm_load(base_url: str, clients: int) -> dict[str, Any]:
    """``clients`` SDK clients with timeouts shorter than the run, one question each, at once."""
    import httpx
    import openai

    attempts = [0]
    answered = [0]
    errors: collections.Counter[str] = collections.Counter()

    async def count(request: httpx.Request) -> None:
        attempts[0] += 1

    async def one(index: int) -> None:
        http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]})
        async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, timeout=STORM_TIMEOUT_S,
                                      max_retries=STORM_RETRIES, http_client=http) as client:
            try:
                completion = await client.chat.completions.create(
                    model="openclaw", messages=[{"role": "user", "content": f"{STORM} {index}"}]
                )
            except openai.APIError as exc:
                errors[type(exc).__name__] += 1
                return
        if completion.choices[0].message.content == REPLY:
            answered[0] += 1
        else:
            errors["wrong reply"] += 1

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"answered": answered[0], "attempts": attempts[0], "errors": dict(errors),
            "seconds": round(time.monotonic() - began, 1)}


async def retry_storm(args: argparse.Namespace) -> dict[str, Any]:
    """The retry storm (see the module docs): the figures and their checks."""
    raise_nofile_limit()
    clients = args.retry_storm
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        config_path = Path(tmp) / "openclaw.json"
        upstream_argv = [python(), "-m", "benchmarks.soak", "--serve-upstream"]
        with ChildProcess("upstream", upstream_argv) as upstream:
            config = gateway_config_mapping(upstream.port, str(Path(tmp) / "state"),
                                            max_concurrent_runs=4 * clients + 64)
            config_path.write_text(json.dumps(config), encoding="utf-8")
            gateway_argv = [python(), "-m", "openclaw_http_compat", "gateway", "--config", str(config_path),
                            "--port", "0"]
            with ChildProcess("gateway", gateway_argv, ready=_LISTENING) as gateway:
                storm = await storm_load(f"http://127.0.0.1:{gateway.port}/v1", clients)
                stats = await settle(upstream.port, 5)
                exit_status = gateway.stop()
    result: dict[str, Any] = {
        "retry_storm_clients": clients,
        "answered": storm["answered"],
        "sdk_attempts": storm["attempts"],
        "errors": storm["errors"],
        "seconds": storm["seconds"],
        "upstream_requests": stats["requests"],
        "upstream_aborted": stats["aborted"],
        "gateway_exit_status": exit_status,
    }
    checks = {
        "every client answered": storm["answered"] == clients and not storm["errors"],
        "one upstream run per question": stats["requests"] == clients and stats["aborted"] == 0,
        "the SDK did retry": storm["attempts"] > clients,
        "gateway exits 0 on SIGTERM": exit_status == 0,
    }
    result["checks"] = checks
    result["ok"] = all(checks.values())
    return result


def _print_storm(result: dict[str, Any]) -> None:
    print(f"retry storm: {result['retry_storm_clients']} SDK clients (timeout {STORM_TIMEOUT_S:g} s, "
          f"max_retries {STORM_RETRIES}) against a {STORM_RUN_S:g} s agent, in {result['seconds']} s")
    print(f"answered {result['answered']}, SDK attempts {result['sdk_attempts']}, "
          f"upstream runs {result['upstream_requests']} ({result['upstream_aborted']} aborted), "
          f"errors {result['errors'] or 0}")
    for check, passed in result["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'}  {check}")


def _percentile_ms(sorted_s: list[float], pct: int) -> float | None:
    return round(percentile_ms(sorted_s, pct), 1) if sorted_s else None


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
    parser.add_argument("--retry-storm", type=int, default=0, metavar="N",
                        help="run the retry storm with N SDK clients instead (see above)")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        asyncio.run(serve_upstream(soak_reply, max_lifetime=3600, keepalive_timeout=args.upstream_keepalive))
        return 0
    if args.retry_storm and not 1 <= args.retry_storm <= 2000:
        parser.error("--retry-storm must be in [1, 2000]")
    if not args.retry_storm and (
        not 0 < args.seconds <= 600 or not 1 <= args.concurrency <= 2000 or not 0 <= args.disconnect_rate <= 1
    ):
        parser.error("--seconds must be in (0, 600], --concurrency in [1, 2000], --disconnect-rate in [0, 1]")
    # SIGTERM unwinds like Ctrl-C, so the children are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = asyncio.run(retry_storm(args) if args.retry_storm else soak(args))
    if args.json:
        print(json.dumps(result))
    elif args.retry_storm:
        _print_storm(result)
    else:
        _print_report(result)
    return 0 if result["ok"] else 1

if __name__ == "__main__":
    sys.exit(main())
