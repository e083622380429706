"""Profile the plugin's hot path under the benchmark's load.

``python -m benchmarks.profile [--profiler cprofile|pyinstrument] [--seconds N] [--scenario ...]``
starts the plugin server (``benchmarks.servers plugin``) under a profiler, drives it with the
same load as the handler-cost (concurrency 64) or the streaming-throughput scenario, stops it
and prints the top costs. ``--kind gateway`` profiles the reference gateway instead (with a
mock upstream), non-streaming at concurrency 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pstats
import tempfile
from pathlib import Path
from typing import Any

from .common import MSG_INSTANT, MSG_STREAM_PREFIX, chat_body
from .procs import ServerProcess, run_client
from .wrk import run_wrk, wrk_path


def _load(scenario: str, port: int, seconds: float, model: str = "openclaw") -> dict[str, Any]:
    if scenario == "stream":
        spec: dict[str, Any] = {
            "scenario": "stream_throughput", "port": port,
            "body": chat_body(f"{MSG_STREAM_PREFIX}1000", stream=True).decode(), "deltas": 1000, "conns": 1,
            "duration": seconds, "max_streams": 100_000, "warmup": 1,
        }
        return run_client(spec, timeout=seconds + 120)
    conns = 1 if scenario == "gateway" else 64
    spec = {
        "scenario": "reqresp", "port": port, "body": chat_body(MSG_INSTANT, stream=False, model=model).decode(),
        "conns": conns, "duration": seconds, "max_requests": 10_000_000, "warmup": 100, "expect": "Hello",
    }
    return run_wrk(spec) if wrk_path() else run_client(spec, timeout=seconds + 120)


def profile(scenario: str, profiler: str, seconds: float, top: int) -> str:
    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp, contextlib.ExitStack() as stack:
        path = str(Path(tmp) / "profile.out")
        args = ["--profile", path, "--profiler", profiler]
        if scenario == "gateway":
            upstream = stack.enter_context(ServerProcess("upstream"))
            server = ServerProcess("gateway", "--upstream-port", str(upstream.port), "--state-dir", tmp, *args)
        else:
            server = ServerProcess("plugin", *args)
        with server:
            result = _load(scenario, server.port, seconds, model="openclaw")
        out.write(f"== {scenario}: {profiler}, load result {result}\n")
        if profiler == "pyinstrument":
            out.write(Path(path).read_text(encoding="utf-8"))
            return out.getvalue()
        stats = pstats.Stats(path, stream=out)
        stats.strip_dirs()
        out.write("\n-- by own time (tottime)\n")
        stats.sort_stats("tottime").print_stats(top)
        out.write("\n-- by cumulative time, openclaw_http_compat and aiohttp_sse only\n")
        stats.sort_stats("cumulative").print_stats(r"handlers|body|run|run_request|conversation|held|models|wire|stream|plugin|"
                                                   r"auth|request|prompt|routing|registry|keys|aiohttp_sse|"
                                                   r"__init__", top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--scenario", choices=("handler", "stream", "gateway"), action="append",
                        help="handler (c=64 JSON), stream (1,000-delta streams) or gateway; default handler+stream")
    parser.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    for scenario in args.scenario or ["handler", "stream"]:
        print(profile(scenario, args.profiler, args.seconds, args.top), flush=True)


if __name__ == "__main__":
    main()
