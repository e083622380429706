"""The benchmark command: every scenario, one table, ``benchmarks/RESULTS.md``.

``python -m benchmarks`` from the repository root. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import attrs

from .common import MSG_IDLE, MSG_INSTANT, MSG_STREAM_PREFIX, ROOT, chat_body
from .micro import MicroRow, run_micro
from .procs import ServerProcess, run_client
from .wrk import run_wrk, wrk_path, wrk_version

RESULTS_PATH: Final = ROOT / "benchmarks" / "RESULTS.md"


@attrs.frozen(kw_only=True)
class Settings:
    """How long and how much each scenario runs."""

    quick: bool
    reqresp_seconds: float
    reqresp_max: int
    reqresp_warmup: int
    latency_seconds: float
    latency_max: int
    deltas: int
    throughput_seconds: float
    throughput_max: int
    streams: int
    #: Each comparison runs in this many rounds, alternating the two servers, so that load
    #: from elsewhere on the machine hits both alike; figures are the median over rounds.
    rounds: int

    @classmethod
    def full(cls) -> Settings:
        # Durations are per round.
        return cls(quick=False, reqresp_seconds=2.0, reqresp_max=2_000_000, reqresp_warmup=300,
                   latency_seconds=2.0, latency_max=20_000, deltas=1_000, throughput_seconds=2.0,
                   throughput_max=10_000, streams=1_000, rounds=3)

    @classmethod
    def quick_(cls) -> Settings:
        return cls(quick=True, reqresp_seconds=0.4, reqresp_max=300, reqresp_warmup=20,
                   latency_seconds=0.4, latency_max=100, deltas=1_000, throughput_seconds=0.5,
                   throughput_max=3, streams=100, rounds=1)


@attrs.frozen(kw_only=True)
class Row:
    """One line of the results table."""

    scenario: str
    metric: str
    value: str
    baseline: str
    compare: str
    target: str = ""
    result: str = ""


def _ok(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def _rps(value: float) -> str:
    return f"{value:,.0f} req/s"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f} ms"


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def _added(a: float, b: float) -> str:
    return f"{a - b:+.3f} ms"


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds into one result: counts add up, rates and latencies take the median."""
    combined: dict[str, Any] = {}
    for key in results[0]:
        values = [r[key] for r in results if r.get(key) is not None]
        if key in _SUMMED:
            combined[key] = sum(values)
        elif values and all(isinstance(v, (int, float)) for v in values):
            combined[key] = statistics.median(values)
        else:
            combined[key] = values[0] if values else None
    return combined


_SUMMED: Final = frozenset({"requests", "errors", "streams", "chunks", "seconds", "completed"})


def _na_rows(scenario: str, metrics: list[tuple[str, str]], why: str) -> list[Row]:
    return [Row(scenario=scenario, metric=m, value="n/a", baseline="n/a", compare=why, target=t,
                result="n/a") for m, t in metrics]


class Bench:
    """Runs the scenarios; collects rows."""

    def __init__(self, settings: Settings, generator: str) -> None:
        self.settings = settings
        self.generator = generator
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def ordered_rows(self) -> list[Row]:
        """The rows by scenario number (1-4), each scenario's rows in the order measured."""
        return sorted(self.rows, key=lambda row: row.scenario.split(".", 1)[0])

    # --- load generation ------------------------------------------------------------------

    def reqresp(self, port: int, body: bytes, conns: int, *, warmup: bool) -> dict[str, Any]:
        s = self.settings
        spec: dict[str, Any] = {
            "scenario": "reqresp", "port": port, "body": body.decode(), "conns": conns,
            "duration": s.reqresp_seconds, "max_requests": s.reqresp_max,
            "warmup": s.reqresp_warmup if warmup else 0, "expect": "Hello",
        }
        if self.generator == "wrk":
            # wrk's own 1 s warm-up run; skipped in quick mode (wrk runs whole seconds only).
            spec["warmup"] = warmup and not s.quick
            return run_wrk(spec)
        return run_client(spec, timeout=s.reqresp_seconds + 120)

    def client(self, spec: dict[str, Any], budget: float) -> dict[str, Any]:
        return run_client(spec, timeout=budget + 120)

    def alternate(self, subjects: dict[str, int], measure: Callable[[str, int, bool], dict[str, Any]]
                  ) -> dict[str, dict[str, Any]]:
        """``measure(name, port, first_round)`` for each subject, in alternating rounds; medians."""
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in subjects}
        names = list(subjects)
        for index in range(self.settings.rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                per[name].append(measure(name, subjects[name], index == 0))
        return {name: _combine(results) for name, results in per.items()}

    # --- 1. handler cost ------------------------------------------------------------------

    def handler_cost_and_throughput(self) -> None:
        s = self.settings
        body = chat_body(MSG_INSTANT, stream=False)
        stream_body = chat_body(f"{MSG_STREAM_PREFIX}{s.deltas}", stream=True)
        results: dict[str, dict[str, Any]] = {"plugin": {}, "raw": {}}
        with ServerProcess("plugin") as plugin, ServerProcess("raw") as raw:
            ports = {"plugin": plugin.port, "raw": raw.port}
            for conns in (1, 64):

                def json_request(name: str, port: int, first: bool, conns: int = conns) -> dict[str, Any]:
                    return self.reqresp(port, body, conns, warmup=first)

                for name, result in self.alternate(ports, json_request).items():
                    results[name][f"c{conns}"] = result

            def stream(name: str, port: int, first: bool) -> dict[str, Any]:
                return self.client({
                    "scenario": "stream_throughput", "port": port, "body": stream_body.decode(),
                    "deltas": s.deltas, "conns": 1, "duration": s.throughput_seconds,
                    "max_streams": s.throughput_max, "warmup": 1 if first else 0,
                }, s.throughput_seconds)

            for name, result in self.alternate(ports, stream).items():
                results[name]["stream"] = result
        p, r = results["plugin"], results["raw"]
        sc = "1. Handler cost (instant runner)"
        for conc in ("c1", "c64"):
            n = conc[1:]
            ratio = _ratio(p[conc]["rps"], r[conc]["rps"])
            target, verdict = ("", "")
            if conc == "c64":
                target, verdict = "≥ 0.60x raw", _ok(ratio >= 0.6)
            self.rows.append(Row(scenario=sc, metric=f"throughput, concurrency {n}", value=_rps(p[conc]["rps"]),
                                 baseline=_rps(r[conc]["rps"]), compare=f"{ratio:.2f}x", target=target,
                                 result=verdict))
            for pct in ("p50", "p99"):
                key = f"{pct}_ms"
                self.rows.append(Row(scenario=sc, metric=f"{pct} latency, concurrency {n}", value=_ms(p[conc][key]),
                                     baseline=_ms(r[conc][key]), compare=f"{_ratio(p[conc][key], r[conc][key]):.2f}x"))
        errors_p = p["c1"]["errors"] + p["c64"]["errors"]
        errors_r = r["c1"]["errors"] + r["c64"]["errors"]
        requests_p = p["c1"]["requests"] + p["c64"]["requests"]
        requests_r = r["c1"]["requests"] + r["c64"]["requests"]
        self.rows.append(Row(scenario=sc, metric="errors / requests", value=f"{errors_p} / {requests_p:,}",
                             baseline=f"{errors_r} / {requests_r:,}", compare="", target="0 errors",
                             result=_ok(errors_p == 0)))
        sc = f"3. Streaming throughput ({s.deltas:,} deltas/stream)"
        ps, rs = p["stream"], r["stream"]
        ratio = _ratio(ps["chunks_per_s"], rs["chunks_per_s"])
        self.rows.append(Row(scenario=sc, metric="content chunks per second, 1 stream at a time",
                             value=f"{ps['chunks_per_s']:,.0f} chunks/s", baseline=f"{rs['chunks_per_s']:,.0f} chunks/s",
                             compare=f"{ratio:.2f}x", target="≥ 0.50x raw", result=_ok(ratio >= 0.5)))
        self.rows.append(Row(scenario=sc, metric="streams complete / errors",
                             value=f"{ps['streams']} / {ps['errors']}", baseline=f"{rs['streams']} / {rs['errors']}",
                             compare="", target="0 errors", result=_ok(ps["errors"] == 0 and ps["streams"] > 0)))

    # --- 2. gateway overhead --------------------------------------------------------------

    GATEWAY_METRICS: Final = [
        ("non-streaming p50, concurrency 1", "≤ +1 ms"),
        ("non-streaming p99, concurrency 1", "≤ +3 ms"),
        ("non-streaming throughput, concurrency 1", ""),
        ("streaming: first content byte p50", "≤ +1 ms"),
        ("streaming: first content byte p99", ""),
        ("streaming: [DONE] p50", ""),
        ("streaming: [DONE] p99", ""),
        ("errors / requests", "0 errors"),
    ]

    def gateway_overhead(self) -> None:
        sc = "2. Gateway overhead (reference gateway → mock upstream)"
        try:
            import openclaw_http_compat.reference.app  # noqa: F401 - is it there?
        except ImportError as exc:
            self.rows.extend(_na_rows(sc, self.GATEWAY_METRICS, f"reference gateway missing: {exc}"))
            return
        s = self.settings
        with contextlib.ExitStack() as stack:
            upstream = stack.enter_context(ServerProcess("upstream"))
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-"))
            try:
                gateway = stack.enter_context(
                    ServerProcess("gateway", "--upstream-port", str(upstream.port), "--state-dir", state_dir))
            except RuntimeError as exc:
                self.rows.extend(_na_rows(sc, self.GATEWAY_METRICS, f"gateway did not start: {str(exc)[:200]}"))
                return
            ports = {"gateway": gateway.port, "direct": upstream.port}
            models = {"gateway": "openclaw", "direct": "m"}
            json_results = self.alternate(
                ports, lambda name, port, first: self.reqresp(
                    port, chat_body(MSG_INSTANT, stream=False, model=models[name]), 1, warmup=first))

            def latency(name: str, port: int, first: bool) -> dict[str, Any]:
                return self.client({
                    "scenario": "stream_latency", "port": port,
                    "body": chat_body(MSG_INSTANT, stream=True, model=models[name]).decode(),
                    "duration": s.latency_seconds, "max_requests": s.latency_max, "warmup": 20 if first else 0,
                }, s.latency_seconds)

            stream_results = self.alternate(ports, latency)
            results = {name: {"json": json_results[name], "stream": stream_results[name]} for name in ports}
        g, d = results["gateway"], results["direct"]
        gj, dj, gs, ds = g["json"], d["json"], g["stream"], d["stream"]
        add50 = gj["p50_ms"] - dj["p50_ms"]
        add99 = gj["p99_ms"] - dj["p99_ms"]
        first50 = gs["first_p50_ms"] - ds["first_p50_ms"]
        self.rows += [
            Row(scenario=sc, metric="non-streaming p50, concurrency 1", value=_ms(gj["p50_ms"]),
                baseline=_ms(dj["p50_ms"]), compare=_added(gj["p50_ms"], dj["p50_ms"]), target="≤ +1 ms",
                result=_ok(add50 <= 1.0)),
            Row(scenario=sc, metric="non-streaming p99, concurrency 1", value=_ms(gj["p99_ms"]),
                baseline=_ms(dj["p99_ms"]), compare=_added(gj["p99_ms"], dj["p99_ms"]), target="≤ +3 ms",
                result=_ok(add99 <= 3.0)),
            Row(scenario=sc, metric="non-streaming throughput, concurrency 1", value=_rps(gj["rps"]),
                baseline=_rps(dj["rps"]), compare=f"{_ratio(gj['rps'], dj['rps']):.2f}x"),
            Row(scenario=sc, metric="streaming: first content byte p50", value=_ms(gs["first_p50_ms"]),
                baseline=_ms(ds["first_p50_ms"]), compare=_added(gs["first_p50_ms"], ds["first_p50_ms"]),
                target="≤ +1 ms", result=_ok(first50 <= 1.0)),
            Row(scenario=sc, metric="streaming: first content byte p99", value=_ms(gs["first_p99_ms"]),
                baseline=_ms(ds["first_p99_ms"]), compare=_added(gs["first_p99_ms"], ds["first_p99_ms"])),
            Row(scenario=sc, metric="streaming: [DONE] p50", value=_ms(gs["done_p50_ms"]),
                baseline=_ms(ds["done_p50_ms"]), compare=_added(gs["done_p50_ms"], ds["done_p50_ms"])),
            Row(scenario=sc, metric="streaming: [DONE] p99", value=_ms(gs["done_p99_ms"]),
                baseline=_ms(ds["done_p99_ms"]), compare=_added(gs["done_p99_ms"], ds["done_p99_ms"])),
        ]
        g_err, g_req = gj["errors"] + gs["errors"], gj["requests"] + gs["requests"]
        d_err, d_req = dj["errors"] + ds["errors"], dj["requests"] + ds["requests"]
        self.rows.append(Row(scenario=sc, metric="errors / requests", value=f"{g_err} / {g_req:,}",
                             baseline=f"{d_err} / {d_req:,}", compare="", target="0 errors", result=_ok(g_err == 0)))

    # --- 4. many idle streams -------------------------------------------------------------

    def many_streams(self) -> None:
        s = self.settings
        body = chat_body(MSG_IDLE, stream=True).decode()
        results: dict[str, dict[str, Any]] = {}
        for kind in ("plugin", "raw"):
            with ServerProcess(kind) as server:
                results[kind] = self.client({
                    "scenario": "many_streams", "port": server.port, "body": body, "streams": s.streams,
                    "batch": 100, "timeout": 60.0, "warmup": 20 if s.quick else 50,
                }, 120)
        p, r = results["plugin"], results["raw"]
        sc = f"4. Many streams ({s.streams:,} idle open streams)"

        def kib(result: dict[str, Any]) -> float:
            value = result.get("bytes_per_stream")
            return math.nan if value is None else float(value) / 1024

        pk, rk = kib(p), kib(r)
        self.rows.append(Row(scenario=sc, metric="server RSS growth per open stream",
                             value="n/a" if math.isnan(pk) else f"{pk:.1f} KiB",
                             baseline="n/a" if math.isnan(rk) else f"{rk:.1f} KiB",
                             compare=f"{_ratio(pk, rk):.2f}x", target="≤ 64 KiB",
                             result="n/a" if math.isnan(pk) else _ok(pk <= 64)))
        self.rows.append(Row(scenario=sc, metric="streams finished correctly / errors",
                             value=f"{p['completed']:,} / {p['errors']}", baseline=f"{r['completed']:,} / {r['errors']}",
                             compare="", target="all, 0 errors",
                             result=_ok(p["errors"] == 0 and p["completed"] == s.streams)))


def machine() -> dict[str, str]:
    """The facts that make figures comparable."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cores": f"{affinity} usable ({os.cpu_count()} online), {cpu}",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": version("aiohttp"),
        "aiohttp-sse": version("aiohttp-sse"),
        "orjson": version("orjson"),
        "event loop": "asyncio (default selector loop)",
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render(bench: Bench, micro: list[MicroRow], facts: dict[str, str], generator_text: str, elapsed: float,
           argv: list[str]) -> str:
    mode = "quick (indicative only: tiny counts)" if bench.settings.quick else "full"
    command = "python -m benchmarks" + ("" if not argv else " " + " ".join(argv))
    out = [
        "# Benchmark results",
        "",
        f"`{command}` — {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}, {mode} run, "
        f"{elapsed:.0f} s.",
        "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in facts.items()) + ".",
        "",
        f"Load generator: {generator_text}.",
        "",
        _table(
            ["Scenario", "Metric", "Plugin / gateway", "Baseline (raw / direct)", "Ratio or added", "Target",
             "Result"],
            [[r.scenario, r.metric, r.value, r.baseline, r.compare, r.target, r.result] for r in bench.ordered_rows()],
        ),
        "",
        f"Each comparison runs in {bench.settings.rounds} round(s) alternating the two servers "
        f"(request/response {bench.settings.reqresp_seconds:g} s, streaming {bench.settings.throughput_seconds:g} s "
        "per round and server); figures are medians over rounds, request and error counts are totals. "
        "Baselines: for 1, 3 and 4 a minimal raw aiohttp handler that parses the same JSON body and answers "
        "with the same completion JSON or SSE frames; for 2 the mock upstream called directly. Ratios are "
        "plugin / raw (higher is better for throughput, lower for latency and memory); \"added\" is "
        "gateway minus direct.",
        "",
        "## Micro-benchmarks",
        "",
        _table(["Benchmark", "Variant", "Time per op", "Speed vs first", "Note"],
               [[m.group, m.variant, m.value, m.relative, m.note] for m in micro]),
    ]
    if bench.notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in bench.notes]
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    print(f"… {name}", file=sys.stderr, flush=True)
    yield
    print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts and durations (a smoke run, seconds)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS_PATH.relative_to(ROOT)}")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="where to write the results")
    parser.add_argument("--generator", choices=("auto", "wrk", "asyncio"), default="auto",
                        help="request/response load generator (default: wrk when installed)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(args_list)

    settings = Settings.quick_() if args.quick else Settings.full()
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if wrk_path() else "asyncio"
    if generator == "wrk" and wrk_path() is None:
        parser.error("--generator wrk: wrk is not installed")
    stream_gen = "asyncio client process (streaming rows always: wrk cannot time SSE frames)"
    generator_text = (f"{wrk_version()} for request/response rows; {stream_gen}" if generator == "wrk"
                      else f"asyncio client process for every row (wrk not {'used' if wrk_path() else 'installed'})")
    t0 = time.perf_counter()
    bench = Bench(settings, generator)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("handler cost + streaming throughput", bench.handler_cost_and_throughput),
        ("gateway overhead", bench.gateway_overhead),
        ("many idle streams", bench.many_streams),
    ]
    for name, step in steps:
        with _step(name):
            step()
    with _step("micro-benchmarks"):
        micro = run_micro(settings.quick)
    text = render(bench, micro, machine(), generator_text, time.perf_counter() - t0, args_list)
    print(text, end="")
    if not args.no_write:
        args.output.write_text(text, encoding="utf-8")
        print(f"written to {args.output}", file=sys.stderr)
    failed = [r for r in bench.rows if r.result == "FAIL"]
    return 1 if args.check and failed else 0
