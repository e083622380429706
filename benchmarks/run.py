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
import subprocess
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
from .servers import gateway_config_mapping
from .wrk import run_wrk, wrk_path, wrk_version

RESULTS_PATH: Final = ROOT / "benchmarks" / "RESULTS.md"
#: The steps of a run, in order (``--only`` picks some): scenarios 1 and 3, 2, 4, 5-8, micro.
STEPS: Final = ("handler", "gateway", "streams", "metrics", "fleet", "micro")
#: Everything after this line in RESULTS.md is written by hand (profiles, analyses) and kept
#: when the benchmark rewrites the measured part above it.
KEPT_MARKER: Final = "<!-- written by hand below: kept when python -m benchmarks rewrites this file -->"


@attrs.frozen(kw_only=True)
class Settings:
    """How long and how much each scenario runs."""

    quick: bool
    #: Seconds per round and server (request/response, streaming latency, throughput).
    reqresp_seconds: float
    reqresp_max: int
    latency_seconds: float
    latency_max: int
    deltas: int
    throughput_seconds: float
    throughput_max: int
    streams: int
    #: Each comparison runs in this many rounds, alternating the two servers, so that load
    #: from elsewhere on the machine hits both alike; figures are the median over rounds.
    rounds: int
    #: A warm-up run per server before the measured rounds (not counted).
    warmup: bool

    @classmethod
    def full(cls) -> Settings:
        return cls(quick=False, reqresp_seconds=2.0, reqresp_max=2_000_000, latency_seconds=2.0,
                   latency_max=20_000, deltas=1_000, throughput_seconds=2.0, throughput_max=10_000,
                   streams=1_000, rounds=5, warmup=True)

    @classmethod
    def tiny(cls) -> Settings:
        return cls(quick=True, reqresp_seconds=0.4, reqresp_max=300, latency_seconds=0.4, latency_max=100,
                   deltas=1_000, throughput_seconds=0.5, throughput_max=3, streams=100, rounds=1, warmup=False)


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


def _us(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.0f} µs"


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b else math.nan


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _added(a: float, b: float) -> str:
    return f"{a - b:+.3f} ms"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` and all its threads (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_SUMMED: Final = frozenset({"requests", "errors", "streams", "chunks", "seconds", "completed", "cpu_s"})


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds into one result: counts add up, rates and latencies take the median."""
    combined: dict[str, Any] = {}
    for key in results[0]:
        values = [r[key] for r in results if r.get(key) is not None]
        if key in _SUMMED:
            combined[key] = sum(values) if len(values) == len(results) else None
        elif values and all(isinstance(v, (int, float)) for v in values):
            combined[key] = statistics.median(values)
        else:
            combined[key] = values[0] if values else None
    return combined


def _cpu_per(result: dict[str, Any], count_key: str) -> float | None:
    """Server CPU µs per request (or chunk) over all rounds."""
    cpu, count = result.get("cpu_s"), result.get(count_key)
    return cpu / count * 1e6 if cpu is not None and count else None


def _na_rows(scenario: str, metrics: list[tuple[str, str]], why: str) -> list[Row]:
    return [Row(scenario=scenario, metric=m, value="n/a", baseline="n/a", compare=why, target=t,
                result="n/a") for m, t in metrics]


Measure = Callable[[str, ServerProcess, bool], dict[str, Any]]


class Bench:
    """Runs the scenarios; collects rows."""

    GATEWAY_METRICS: Final = [
        ("non-streaming p50, concurrency 1", "≤ +1 ms"),
        ("non-streaming p99, concurrency 1", "≤ +3 ms"),
        ("non-streaming throughput, concurrency 1", ""),
        ("server CPU per request, non-streaming", ""),
        ("streaming: first content byte p50", "≤ +1 ms"),
        ("streaming: first content byte p99", ""),
        ("streaming: [DONE] p50", ""),
        ("streaming: [DONE] p99", ""),
        ("errors / requests", "0 errors"),
    ]
    #: Rows beside the gateway's: the stack floor (``servers proxy``), the gateway's own
    #: share above it, and the gateway with a power-loss durable session store.
    FLOOR: Final = "stack floor (minimal aiohttp proxy)"
    MINUS_FLOOR: Final = "gateway minus stack floor"
    FSYNC_ROW: Final = "non-streaming p50 / p99, concurrency 1, with sessionStore.fsync=true (power-loss durable)"
    GATEWAY_EXTRA_METRICS: Final = [
        (f"{FLOOR}: non-streaming p50, concurrency 1", ""),
        (f"{FLOOR}: non-streaming p99, concurrency 1", ""),
        (f"{FLOOR}: streaming: first content byte p50", ""),
        (f"{FLOOR}: server CPU per request, non-streaming", ""),
        (f"{FLOOR}: errors / requests", "0 errors"),
        (f"{MINUS_FLOOR}, non-streaming p50", ""),
        (f"{MINUS_FLOOR}, streaming: first content byte p50", ""),
        (FSYNC_ROW, ""),
    ]

    def __init__(self, settings: Settings, generator: str) -> None:
        self.settings = settings
        self.generator = generator
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def ordered_rows(self) -> list[Row]:
        """The rows by scenario number (1-10), each scenario's rows in the order measured."""
        return sorted(self.rows, key=lambda row: int(row.scenario.split(".", 1)[0]))

    # --- load generation ------------------------------------------------------------------

    def reqresp(self, port: int, body: bytes, conns: int, *, warm: bool) -> dict[str, Any]:
        """One request/response run (``warm``: a short warm-up run instead)."""
        s = self.settings
        spec: dict[str, Any] = {
            "scenario": "reqresp", "port": port, "body": body.decode(), "conns": conns,
            "duration": 1.0 if warm else s.reqresp_seconds, "max_requests": s.reqresp_max, "expect": "Hello",
        }
        if self.generator == "wrk":
            return run_wrk(spec)
        return run_client(spec, timeout=s.reqresp_seconds + 120)

    def client(self, spec: dict[str, Any], budget: float) -> dict[str, Any]:
        return run_client(spec, timeout=budget + 120)

    def alternate(self, subjects: dict[str, ServerProcess], measure: Measure) -> dict[str, dict[str, Any]]:
        """``measure(name, server, warm)`` per subject: a warm-up run, then alternating rounds.

        Each measured result gains ``cpu_s``, the server process's CPU time during it; the
        rounds are combined by :func:`_combine`.
        """
        names = list(subjects)
        if self.settings.warmup:
            for name in names:
                measure(name, subjects[name], True)
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for index in range(self.settings.rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                server = subjects[name]
                before = cpu_seconds(server.pid)
                result = measure(name, server, False)
                after = cpu_seconds(server.pid)
                result["cpu_s"] = after - before if before is not None and after is not None else None
                per[name].append(result)
        return {name: _combine(results) for name, results in per.items()}

    # --- 1. handler cost, 3. streaming throughput -----------------------------------------

    def handler_cost_and_throughput(self) -> None:
        s = self.settings
        body = chat_body(MSG_INSTANT, stream=False)
        stream_body = chat_body(f"{MSG_STREAM_PREFIX}{s.deltas}", stream=True).decode()
        results: dict[str, dict[str, Any]] = {"plugin": {}, "raw": {}}
        with ServerProcess("plugin") as plugin, ServerProcess("raw") as raw:
            servers = {"plugin": plugin, "raw": raw}
            for conns in (1, 64):

                def json_request(name: str, server: ServerProcess, warm: bool, conns: int = conns) -> dict[str, Any]:
                    return self.reqresp(server.port, body, conns, warm=warm)

                for name, result in self.alternate(servers, json_request).items():
                    results[name][f"c{conns}"] = result

            def stream(name: str, server: ServerProcess, warm: bool) -> dict[str, Any]:
                return self.client({
                    "scenario": "stream_throughput", "port": server.port, "body": stream_body,
                    "deltas": s.deltas, "conns": 1, "duration": 0.5 if warm else s.throughput_seconds,
                    "max_streams": s.throughput_max,
                }, s.throughput_seconds)

            for name, result in self.alternate(servers, stream).items():
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
                                 baseline=_rps(r[conc]["rps"]), compare=_x(ratio), target=target, result=verdict))
            for pct in ("p50", "p99"):
                key = f"{pct}_ms"
                self.rows.append(Row(scenario=sc, metric=f"{pct} latency, concurrency {n}", value=_ms(p[conc][key]),
                                     baseline=_ms(r[conc][key]), compare=_x(_ratio(p[conc][key], r[conc][key]))))
            pc, rc = _cpu_per(p[conc], "requests"), _cpu_per(r[conc], "requests")
            self.rows.append(Row(scenario=sc, metric=f"server CPU per request, concurrency {n}", value=_us(pc),
                                 baseline=_us(rc), compare=_x(_ratio(pc, rc))))
        errors_p = p["c1"]["errors"] + p["c64"]["errors"]
        errors_r = r["c1"]["errors"] + r["c64"]["errors"]
        requests_p = p["c1"]["requests"] + p["c64"]["requests"]
        requests_r = r["c1"]["requests"] + r["c64"]["requests"]
        self.rows.append(Row(scenario=sc, metric="errors / requests", value=f"{errors_p} / {requests_p:,}",
                             baseline=f"{errors_r} / {requests_r:,}", compare="", target="0 errors",
                             result=_ok(errors_p == 0 and requests_p > 0)))
        sc = f"3. Streaming throughput ({s.deltas:,} deltas/stream)"
        ps, rs = p["stream"], r["stream"]
        ratio = _ratio(ps["chunks_per_s"], rs["chunks_per_s"])
        self.rows.append(Row(scenario=sc, metric="content chunks per second, 1 stream at a time",
                             value=f"{ps['chunks_per_s']:,.0f} chunks/s", baseline=f"{rs['chunks_per_s']:,.0f} chunks/s",
                             compare=_x(ratio), target="≥ 0.50x raw", result=_ok(ratio >= 0.5)))
        pc, rc = _cpu_per(ps, "chunks"), _cpu_per(rs, "chunks")
        self.rows.append(Row(scenario=sc, metric="server CPU per chunk", value=_us(pc), baseline=_us(rc),
                             compare=_x(_ratio(pc, rc))))
        self.rows.append(Row(scenario=sc, metric="streams complete / errors",
                             value=f"{ps['streams']} / {ps['errors']}", baseline=f"{rs['streams']} / {rs['errors']}",
                             compare="", target="0 errors", result=_ok(ps["errors"] == 0 and ps["streams"] > 0)))

    # --- 2. gateway overhead --------------------------------------------------------------

    def gateway_overhead(self) -> None:
        """Scenario 2: the reference gateway, the stack floor and the upstream called directly.

        The stack floor (``servers proxy``) is what any aiohttp server making one aiohttp
        client call costs; measured in the same rounds as the gateway, it splits the gateway's
        added latency into the stack's share and the gateway code's own. A second gateway with
        ``gateway.sessionStore.fsync`` on joins the non-streaming rounds only.
        """
        sc = "2. Gateway overhead (reference gateway → mock upstream)"
        all_metrics = self.GATEWAY_METRICS + self.GATEWAY_EXTRA_METRICS
        try:
            from openclaw_http_compat.reference.config import GatewayConfig
            import openclaw_http_compat.reference.app  # noqa: F401 - is it there?
        except ImportError as exc:
            self.rows.extend(_na_rows(sc, all_metrics, f"reference gateway missing: {exc}"))
            return
        s = self.settings
        with contextlib.ExitStack() as stack:
            upstream = stack.enter_context(ServerProcess("upstream"))
            up = ("--upstream-port", str(upstream.port))
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-"))
            # Its own store: two processes sharing one SQLite file would contend for its lock.
            fsync_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-fsync-"))
            default_fsync = GatewayConfig.from_mapping(
                gateway_config_mapping(upstream.port, state_dir), env={}).session_store.fsync
            try:
                gateway = stack.enter_context(ServerProcess("gateway", *up, "--state-dir", state_dir))
                fsync_gateway = stack.enter_context(
                    ServerProcess("gateway", *up, "--state-dir", fsync_dir, "--session-fsync", "on"))
            except RuntimeError as exc:
                self.rows.extend(_na_rows(sc, all_metrics, f"gateway did not start: {str(exc)[:200]}"))
                return
            proxy = stack.enter_context(ServerProcess("proxy", *up))
            servers = {"gateway": gateway, "direct": upstream, "floor": proxy}
            models = {"gateway": "openclaw", "fsync": "openclaw", "direct": "m", "floor": "openclaw"}

            def json_request(name: str, server: ServerProcess, warm: bool) -> dict[str, Any]:
                return self.reqresp(server.port, chat_body(MSG_INSTANT, stream=False, model=models[name]), 1,
                                    warm=warm)

            def latency(name: str, server: ServerProcess, warm: bool) -> dict[str, Any]:
                return self.client({
                    "scenario": "stream_latency", "port": server.port,
                    "body": chat_body(MSG_INSTANT, stream=True, model=models[name]).decode(),
                    "duration": 0.5 if warm else s.latency_seconds, "max_requests": s.latency_max,
                }, s.latency_seconds)

            json_results = self.alternate({**servers, "fsync": fsync_gateway}, json_request)
            stream_results = self.alternate(servers, latency)
        gj, dj, fj, xj = json_results["gateway"], json_results["direct"], json_results["floor"], json_results["fsync"]
        gs, ds, fs = stream_results["gateway"], stream_results["direct"], stream_results["floor"]
        add50 = gj["p50_ms"] - dj["p50_ms"]
        add99 = gj["p99_ms"] - dj["p99_ms"]
        first50 = gs["first_p50_ms"] - ds["first_p50_ms"]
        # The gateway's CPU excludes the upstream's (its own process), so compare the two.
        gc, dc = _cpu_per(gj, "requests"), _cpu_per(dj, "requests")
        self.rows += [
            Row(scenario=sc, metric="non-streaming p50, concurrency 1", value=_ms(gj["p50_ms"]),
                baseline=_ms(dj["p50_ms"]), compare=_added(gj["p50_ms"], dj["p50_ms"]), target="≤ +1 ms",
                result=_ok(add50 <= 1.0)),
            Row(scenario=sc, metric="non-streaming p99, concurrency 1", value=_ms(gj["p99_ms"]),
                baseline=_ms(dj["p99_ms"]), compare=_added(gj["p99_ms"], dj["p99_ms"]), target="≤ +3 ms",
                result=_ok(add99 <= 3.0)),
            Row(scenario=sc, metric="non-streaming throughput, concurrency 1", value=_rps(gj["rps"]),
                baseline=_rps(dj["rps"]), compare=_x(_ratio(gj["rps"], dj["rps"]))),
            Row(scenario=sc, metric="server CPU per request, non-streaming", value=_us(gc), baseline=_us(dc),
                compare=_x(_ratio(gc, dc))),
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
                             baseline=f"{d_err} / {d_req:,}", compare="", target="0 errors",
                             result=_ok(g_err == 0 and g_req > 0)))

        # The stack floor against the same direct figures; then the gateway against the floor.
        floor, minus = self.FLOOR, self.MINUS_FLOOR
        fc = _cpu_per(fj, "requests")
        f_err, f_req = fj["errors"] + fs["errors"], fj["requests"] + fs["requests"]
        self.rows += [
            Row(scenario=sc, metric=f"{floor}: non-streaming p50, concurrency 1", value=_ms(fj["p50_ms"]),
                baseline=_ms(dj["p50_ms"]), compare=_added(fj["p50_ms"], dj["p50_ms"])),
            Row(scenario=sc, metric=f"{floor}: non-streaming p99, concurrency 1", value=_ms(fj["p99_ms"]),
                baseline=_ms(dj["p99_ms"]), compare=_added(fj["p99_ms"], dj["p99_ms"])),
            Row(scenario=sc, metric=f"{floor}: streaming: first content byte p50", value=_ms(fs["first_p50_ms"]),
                baseline=_ms(ds["first_p50_ms"]), compare=_added(fs["first_p50_ms"], ds["first_p50_ms"])),
            Row(scenario=sc, metric=f"{floor}: server CPU per request, non-streaming", value=_us(fc),
                baseline=_us(dc), compare=_x(_ratio(fc, dc))),
            # Figures from a proxy that failed would understate the floor: check it like the gateway.
            Row(scenario=sc, metric=f"{floor}: errors / requests", value=f"{f_err} / {f_req:,}",
                baseline=f"{d_err} / {d_req:,}", compare="", target="0 errors",
                result=_ok(f_err == 0 and f_req > 0)),
            Row(scenario=sc, metric=f"{minus}, non-streaming p50", value=_ms(gj["p50_ms"]),
                baseline=_ms(fj["p50_ms"]), compare=_added(gj["p50_ms"], fj["p50_ms"])),
            Row(scenario=sc, metric=f"{minus}, streaming: first content byte p50", value=_ms(gs["first_p50_ms"]),
                baseline=_ms(fs["first_p50_ms"]), compare=_added(gs["first_p50_ms"], fs["first_p50_ms"])),
            Row(scenario=sc, metric=self.FSYNC_ROW, value=f"{_ms(xj['p50_ms'])} / {_ms(xj['p99_ms'])}",
                baseline=f"{_ms(dj['p50_ms'])} / {_ms(dj['p99_ms'])}",
                compare=f"{_added(xj['p50_ms'], dj['p50_ms'])} / {_added(xj['p99_ms'], dj['p99_ms'])}"),
        ]
        self.notes.append(
            f"Scenario 2's gateway rows run with the config's default gateway.sessionStore.fsync "
            f"({str(default_fsync).lower()} in the code measured); the fsync=true row is a second gateway process.")
        if xj["errors"]:
            self.notes.append(f"Scenario 2, gateway with sessionStore.fsync=true: {xj['errors']} errors in "
                              f"{xj['requests']:,} requests; its row is not to be trusted.")

    # --- 5. metrics cost ------------------------------------------------------------------

    METRICS_ROW: Final = "throughput, concurrency 64, metrics on (prometheus-client) vs off"

    def metrics_cost(self) -> None:
        """Scenario 10: the plugin with ``Host.metrics`` backed by prometheus-client, against the
        same plugin with the default no-op metrics, in alternating rounds of one run."""
        sc = "10. Metrics cost (instant runner)"
        try:
            import prometheus_client  # noqa: F401 - is it there?
        except ImportError as exc:
            self.rows.extend(_na_rows(sc, [(self.METRICS_ROW, "≥ 0.97x off"), ("server CPU per request, concurrency 64", ""),
                                           ("errors / requests", "0 errors")], f"prometheus-client missing: {exc}"))
            return
        body = chat_body(MSG_INSTANT, stream=False)
        with ServerProcess("plugin", "--metrics") as on, ServerProcess("plugin") as off:

            def json_request(name: str, server: ServerProcess, warm: bool) -> dict[str, Any]:
                return self.reqresp(server.port, body, 64, warm=warm)

            results = self.alternate({"on": on, "off": off}, json_request)
        m, o = results["on"], results["off"]
        ratio = _ratio(m["rps"], o["rps"])
        self.rows.append(Row(scenario=sc, metric=self.METRICS_ROW, value=_rps(m["rps"]), baseline=_rps(o["rps"]),
                             compare=_x(ratio), target="≥ 0.97x off", result=_ok(ratio >= 0.97)))
        mc, oc = _cpu_per(m, "requests"), _cpu_per(o, "requests")
        self.rows.append(Row(scenario=sc, metric="server CPU per request, concurrency 64", value=_us(mc),
                             baseline=_us(oc), compare=_x(_ratio(mc, oc))))
        self.rows.append(Row(scenario=sc, metric="errors / requests", value=f"{m['errors']} / {m['requests']:,}",
                             baseline=f"{o['errors']} / {o['requests']:,}", compare="", target="0 errors",
                             result=_ok(m["errors"] == 0 and m["requests"] > 0)))

    # --- 4. many idle streams -------------------------------------------------------------

    def many_streams(self) -> None:
        s = self.settings
        body = chat_body(MSG_IDLE, stream=True).decode()
        results: dict[str, dict[str, Any]] = {}
        # One server at a time, each fresh: its RSS must not include another scenario's heap.
        for kind in ("plugin", "raw"):
            with ServerProcess(kind) as server:
                results[kind] = self.client({
                    "scenario": "many_streams", "port": server.port, "body": body, "streams": s.streams,
                    "batch": 100, "timeout": 60.0, "warmup": 20 if s.quick else 50,
                    "idle_seconds": 0.5 if s.quick else 2.0,
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
                             compare=_x(_ratio(pk, rk)), target="≤ 64 KiB",
                             result="n/a" if math.isnan(pk) else _ok(pk <= 64)))
        pi, ri = p.get("idle_cpu_share"), r.get("idle_cpu_share")
        self.rows.append(Row(scenario=sc, metric="server CPU while all streams idle",
                             value="n/a" if pi is None else f"{pi * 100:.1f}% of a core",
                             baseline="n/a" if ri is None else f"{ri * 100:.1f}% of a core",
                             compare=""))
        self.rows.append(Row(scenario=sc, metric="streams finished correctly / errors",
                             value=f"{p['completed']:,} / {p['errors']}", baseline=f"{r['completed']:,} / {r['errors']}",
                             compare="", target="all, 0 errors",
                             result=_ok(p["errors"] == 0 and p["completed"] == s.streams)))


def _fleet(bench: Bench, quick: bool) -> None:
    # Imported here: fleet.py builds on this module's rows.
    from .fleet import run_fleet

    run_fleet(bench)
    bench.rows.extend(_fleet_lease_rows(quick))


def _fleet_lease_rows(quick: bool) -> list[Row]:
    """Scenario 9 (:mod:`.fleet_lease`): lease hand-over between two processes on PostgreSQL."""
    from .fleet_lease import TARGET_P50_MS, measure

    sc = "9. Fleet lease hand-over (PostgreSQL)"
    p50, p99 = "release → acquire p50, two processes", "release → acquire p99, two processes"
    target = f"≤ {TARGET_P50_MS:g} ms"
    try:
        result = measure(rounds=10 if quick else 500, hold_ms=5.0)
    except (RuntimeError, ImportError, OSError, subprocess.SubprocessError) as exc:
        return _na_rows(sc, [(p50, target), (p99, "")], f"no PostgreSQL: {str(exc)[:200]}")
    return [
        Row(scenario=sc, metric=p50, value=_ms(result.p50_ms), baseline="", compare=f"{len(result.latencies)} hand-overs",
            target=target, result=_ok(result.p50_ms <= TARGET_P50_MS)),
        Row(scenario=sc, metric=p99, value=_ms(result.p99_ms), baseline="", compare=""),
    ]


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


def revision() -> str:
    """The commit of the code measured, and whether the plugin's files differ from it."""
    override = os.environ.get("BENCH_REVISION")
    if override:
        return override
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "openclaw_http_compat"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} (with uncommitted changes to openclaw_http_compat)" if dirty else head


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
        f"{elapsed:.0f} s, code at {revision()}.",
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
        f"Each comparison runs in {bench.settings.rounds} round(s) alternating the servers compared "
        f"(request/response {bench.settings.reqresp_seconds:g} s, streaming {bench.settings.throughput_seconds:g} s "
        "per round and server); figures are medians over rounds, request and error counts are totals. "
        "Baselines: for 5 the same plugin with metrics off (the default no-op); for 1, 3 and 4 a minimal raw aiohttp handler that parses the same JSON body and answers "
        "with the same completion JSON or SSE frames; for 2 the mock upstream called directly. Ratios are "
        "plugin / raw (higher is better for throughput, lower for latency and memory); \"added\" is "
        "gateway minus direct. The stack floor (2) is a minimal aiohttp proxy to the same upstream (one "
        "shared aiohttp client session, no auth, no agent, no session store), measured in the same rounds: "
        "its rows compare it with direct, and the \"gateway minus stack floor\" rows take it as the baseline, "
        "so their \"added\" is the part the gateway's own code adds. Scenarios 5-8 (the fleet, "
        "benchmarks/fleet.py) compare within their own rows: 5 `--workers 2` with `--workers 1`, 6 and 7 "
        "PostgreSQL with SQLite, 8 runs on an old session with runs on a young one.",
    ]
    if micro:
        out += [
            "",
            "## Micro-benchmarks",
            "",
            _table(["Benchmark", "Variant", "Time per op", "Speed vs first", "Note"],
                   [[m.group, m.variant, m.value, m.relative, m.note] for m in micro]),
        ]
    if bench.notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in bench.notes]
    return "\n".join(out) + "\n"


def _kept_tail(path: Path) -> str:
    """The hand-written part of an existing results file (from :data:`KEPT_MARKER` on), if any."""
    try:
        previous = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    _, marker, tail = previous.partition(KEPT_MARKER)
    return f"\n{marker}{tail}" if marker else ""


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
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where to write the results (default: {RESULTS_PATH.relative_to(ROOT)}, "
                             "which a run with --only leaves alone)")
    parser.add_argument("--generator", choices=("auto", "wrk", "asyncio"), default="auto",
                        help="request/response load generator (default: wrk when installed)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", default=",".join(STEPS), metavar="STEP[,STEP...]",
                        help=f"run only these steps, of: {', '.join(STEPS)} (default: all)")
    args = parser.parse_args(args_list)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if not only or any(name not in STEPS for name in only):
        parser.error(f"--only: choose from {', '.join(STEPS)}")

    settings = Settings.tiny() if args.quick else Settings.full()
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
    steps: dict[str, tuple[str, Callable[[], None]]] = {
        "handler": ("handler cost + streaming throughput", bench.handler_cost_and_throughput),
        "gateway": ("gateway overhead", bench.gateway_overhead),
        "streams": ("many idle streams", bench.many_streams),
        "metrics": ("metrics cost", bench.metrics_cost),
        "fleet": ("fleet and PostgreSQL store", lambda: _fleet(bench, settings.quick)),
    }
    for key in STEPS:
        if key in only and key in steps:
            name, step = steps[key]
            with _step(name):
                step()
    micro: list[MicroRow] = []
    if "micro" in only:
        with _step("micro-benchmarks"):
            micro = run_micro(settings.quick)
    text = render(bench, micro, machine(), generator_text, time.perf_counter() - t0, args_list)
    print(text, end="")
    # A partial run must not replace the full results with its few rows.
    output = args.output if args.output is not None else RESULTS_PATH if set(only) == set(STEPS) else None
    if not args.no_write and output is not None:
        output.write_text(text + _kept_tail(output), encoding="utf-8")
        print(f"written to {output}", file=sys.stderr)
    elif not args.no_write:
        print(f"not written: a run with --only writes only to --output, never {RESULTS_PATH.relative_to(ROOT)}",
              file=sys.stderr)
    failed = [r for r in bench.rows if r.result == "FAIL"]
    return 1 if args.check and failed else 0
