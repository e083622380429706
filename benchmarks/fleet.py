"""Scenarios 5-8: the fleet (``gateway --workers N`` on a PostgreSQL session store) and the stores.

Part of ``python -m benchmarks`` (``--only fleet`` runs just these). Every scenario shares one
throwaway PostgreSQL cluster (:mod:`benchmarks.pg`, with the server's default durability:
``fsync`` on) and one mock upstream process (zero latency); gateways are real processes of
``python -m openclaw_http_compat gateway``. Without the PostgreSQL server binaries or asyncpg
the rows say n/a and why.

* **5. Fleet throughput**: ``--workers 2`` against ``--workers 1``, both on the PostgreSQL
  store, alternating over rounds, at a concurrency that saturates both; stateless requests (no
  ``user``: a fresh session per request) and a session workload (each concurrent client its
  own ``user``, so every request loads and appends a transcript). The load generator, the
  mock upstream and PostgreSQL share the machine's cores with the gateway, so the rows give
  the CPU each of them used, and the gateway's requests per CPU core: 2 workers scale by
  2 x that ratio when they have two cores to themselves.
* **6. PostgreSQL store**: append and load p50/p99 through the store API (in this process),
  next to the SQLite store doing the same.
* **7. Gateway with the PostgreSQL store**: added latency at concurrency 1 with sessions on,
  next to the same gateway on SQLite and the mock upstream called directly.
* **8. Run cost against session age**: per engine, runs on a session of 10,000 turns
  (pre-filled through the store API) against runs on sessions of 10 turns (a fresh one per
  run), and against runs on a session of 1,000 turns (older than any run reads).

Every gateway here runs a model whose context fits about ten of the pre-filled turns
(:data:`CONTEXT_WINDOW`), so a run reads a bounded tail and sends the same amount to the
upstream whatever the session's age: what differs between the sessions of scenario 8 is
the age alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import pathlib
import re
import resource
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import attrs

from .client import USER_PLACEHOLDER
from .common import MSG_INSTANT, REPLY, chat_body, percentile_ms, python
from .pg import HOW_TO_GET_ASYNCPG, HOW_TO_GET_POSTGRES, PgCluster, find_pg_bin, throwaway_cluster
from .procs import ChildProcess, ServerProcess, run_client
# run.py imports this module only when it runs it, so these come from a loaded module.
from .run import Bench, Row, _added, _ms, _na_rows, _ok, _rps, _us, _x, cpu_seconds
from .servers import gateway_config_mapping
from .wrk import run_wrk

if TYPE_CHECKING:
    from openclaw_http_compat.reference.storage import TranscriptStore

#: The model's context and reply reserve: about ten turns of :data:`TURN_TEXT_BYTES` fit the
#: prompt (512 tokens), so a run reads and sends a bounded tail, whatever the session's age.
CONTEXT_WINDOW: Final = 704
MAX_TOKENS: Final = 192
TURN_TEXT_BYTES: Final = 160
#: Scenario 8: the old session and the young ones.
OLD_TURNS: Final = 10_000
YOUNG_TURNS: Final = 10
#: Scenario 8's context: the reply's share and room for about ten turns of the exchange every
#: run appends (question 7 tokens, answer 12, as the gateway estimates them), plus the new
#: question and the priming. Sessions are made of that exchange, so a run on an old session
#: and one on a young one send the same ten turns upstream; only the session's age differs.
AGE_CONTEXT_WINDOW: Final = MAX_TOKENS + 110
#: Scenario 5: the turns each client's session starts with (above the 129 turns a run reads
#: with :data:`CONTEXT_WINDOW`).
SESSION_TURNS: Final = 200

__all__ = ("CONTEXT_WINDOW", "Fleet", "FleetSettings", "fleet_config", "run_fleet", "tree_cpu_seconds")

_LISTENING: Final = re.compile(r"listening on http://127\.0\.0\.1:(\d+) ")
_EXPECT: Final = "Hello"
#: Two workers with two cores to themselves reach the issue's 1.70x when each serves at least
#: 0.85x of what one worker serves per core (one worker cannot use more than one core).
PER_CORE_TARGET: Final = "≥ 0.85x (1.70x / 2 cores)"
CEILING: Final = "throughput ratio measured / the most this machine allows"


@attrs.frozen(kw_only=True)
class FleetSettings:
    """How long and how much the fleet scenarios run."""

    quick: bool
    seconds: float
    rounds: int
    warmup: bool
    #: Concurrent clients of scenario 5 (enough to saturate two workers).
    conns: int
    #: Scenario 6: sequential appends per engine.
    appends: int
    #: Scenario 8: the old session's turns (the middle-aged one has a tenth), and the most
    #: runs per round on each side.
    old_turns: int
    age_requests: int

    @classmethod
    def full(cls) -> FleetSettings:
        return cls(quick=False, seconds=2.0, rounds=5, warmup=True, conns=32, appends=2_000,
                   old_turns=OLD_TURNS, age_requests=400)

    @classmethod
    def tiny(cls) -> FleetSettings:
        return cls(quick=True, seconds=0.4, rounds=1, warmup=False, conns=4, appends=20,
                   old_turns=300, age_requests=20)


# --- CPU accounting ---------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Every process's children, from ``/proc``."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_cpu_seconds(pid: int | None) -> float | None:
    """CPU time of ``pid`` and all its descendants (a supervisor and its workers; the
    postmaster and its backends); ``None`` when ``pid`` is gone or unknown."""
    if pid is None:
        return None
    tree = _children()
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        spent = cpu_seconds(current)
        if spent is None:
            if current == pid:
                return None
            continue
        total += spent
        pending.extend(tree.get(current, ()))
    return total


def _children_cpu() -> float:
    """CPU time of this process's waited-for children: the load generators run so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: What each measurement's CPU is split into; ``loadgen`` is read from this process's children.
CPU_PARTS: Final = ("gateway", "upstream", "loadgen", "postgres")


@attrs.frozen
class Subject:
    """A server measured: its port, and the processes whose CPU counts against it."""

    port: int
    probes: dict[str, Callable[[], float | None]]


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds into one: counts and CPU add up, latencies and rates take the median."""
    combined: dict[str, Any] = {}
    for key in results[0]:
        values = [r[key] for r in results if r.get(key) is not None]
        if key in ("requests", "errors", "seconds") or key.startswith("cpu_"):
            combined[key] = sum(values) if len(values) == len(results) else None
        elif values and all(isinstance(v, (int, float)) for v in values):
            combined[key] = statistics.median(values)
        else:
            combined[key] = values[0] if values else None
    return combined


# --- the gateway under test -------------------------------------------------------------------


def fleet_config(
    upstream_port: int, state_dir: str, *, store_url: str | None, context_window: int = CONTEXT_WINDOW
) -> dict[str, Any]:
    """The gateway config of these scenarios: the benchmark's (:func:`gateway_config_mapping`),
    on ``store_url`` (SQLite in ``state_dir`` when ``None``), with a model of a small context.

    ``maxConcurrentRuns`` keeps its default (256), above any concurrency here.
    """
    config = gateway_config_mapping(upstream_port, state_dir)
    config["models"]["providers"]["mock"]["models"] = [
        {"id": "m", "contextWindow": context_window, "maxTokens": MAX_TOKENS}
    ]
    if store_url is not None:
        config["gateway"]["sessionStore"] = {"url": store_url}
    return config


class Gateway(ChildProcess):
    """``python -m openclaw_http_compat gateway --workers N`` on a config file, as a context manager."""

    def __init__(self, name: str, config_path: pathlib.Path, *, workers: int = 1) -> None:
        argv = [python(), "-m", "openclaw_http_compat", "gateway", "--config", str(config_path), "--port", "0",
                "--workers", str(workers)]
        super().__init__(name, argv, ready=_LISTENING, start_timeout=60.0)


def session_key(user: str) -> str:
    """The session a request with ``user`` joins (agent ``main``)."""
    from openclaw_http_compat.routing import resolve_session_key

    return resolve_session_key("main", None, user)


def user_body(*, model: str = "openclaw") -> str:
    """The benchmark's non-streaming chat body with a ``user`` the load generator fills in."""
    body = json.loads(chat_body(MSG_INSTANT, stream=False, model=model))
    body["user"] = USER_PLACEHOLDER
    return json.dumps(body, separators=(",", ":"))


def _turn_text(index: int) -> str:
    head = f"turn {index:05d}: "
    return head + "lorem ipsum dolor sit amet " * ((TURN_TEXT_BYTES - len(head)) // 27 + 1)


def exchanges(count: int) -> list[Any]:
    """``count`` turns of the exchange every run of the benchmark appends: its question and the
    mock upstream's answer."""
    from openclaw_http_compat.reference.transcript import Turn

    return [Turn("user", MSG_INSTANT) if i % 2 == 0 else Turn("assistant", REPLY) for i in range(count)]


def history(count: int) -> list[Any]:
    """``count`` alternating user/assistant turns of :data:`TURN_TEXT_BYTES` each."""
    from openclaw_http_compat.reference.transcript import Turn

    return [Turn("user" if i % 2 == 0 else "assistant", _turn_text(i)[:TURN_TEXT_BYTES]) for i in range(count)]


# --- the scenarios ----------------------------------------------------------------------------


class Fleet:
    """Runs scenarios 5-8 into a :class:`~benchmarks.run.Bench`'s rows and notes."""

    SC_THROUGHPUT: Final = "5. Fleet throughput (--workers 2 / --workers 1, PostgreSQL store)"
    SC_STORE: Final = "6. PostgreSQL store (store API; baseline: SQLite store, fsync on)"
    SC_LATENCY: Final = "7. Gateway on PostgreSQL, sessions on (baseline: on SQLite, fsync on)"
    SC_AGE: Final = "8. Run cost against session age"

    #: Set by :meth:`run` for the scenarios: the cluster, the upstream, a temp dir.
    cluster: PgCluster
    upstream: ServerProcess
    tmp: pathlib.Path

    def __init__(self, bench: Bench, settings: FleetSettings) -> None:
        self.bench = bench
        self.settings = settings

    # --- rows -----------------------------------------------------------------------------

    def throughput_metrics(self) -> list[tuple[str, str]]:
        metrics: list[tuple[str, str]] = []
        for load in ("stateless", "sessions"):
            metrics += [
                (f"{load}: throughput, concurrency {self.settings.conns}", "≥ 1.70x"),
                (f"{load}: p50 / p99 latency", ""),
                (f"{load}: req/s per gateway CPU core", PER_CORE_TARGET),
                (f"{load}: CPU cores used, gateway / upstream / load generator / PostgreSQL", ""),
                (f"{load}: {CEILING}", ""),
                (f"{load}: errors / requests", "0 errors"),
            ]
        return metrics

    STORE_METRICS: Final = [
        ("append (user + assistant turn) p50", ""),
        ("append (user + assistant turn) p99", ""),
        ("load (newest 64 turns) p50", ""),
        ("load (newest 64 turns) p99", ""),
        ("64 concurrent appends", ""),
    ]
    LATENCY_METRICS: Final = [
        ("non-streaming p50, concurrency 1", ""),
        ("non-streaming p99, concurrency 1", ""),
        ("non-streaming p50 / p99, baseline with sessionStore.fsync off (the default)", ""),
        ("added over the upstream called directly, p50", ""),
        ("added over the upstream called directly, p99", ""),
        ("gateway CPU per request", ""),
        ("PostgreSQL server CPU per request", ""),
        ("errors / requests", "0 errors"),
    ]

    def age_metrics(self) -> list[tuple[str, str]]:
        """The metric of each row of scenario 8, and its target."""
        return [(metric, target) for _, metric, target in self._age_row_specs()]

    def _age_row_specs(self) -> list[tuple[str, str, str]]:
        # (what, metric, target): what is "p50", "p99", "mid" (p50 against the middle-aged
        # session) or "cpu", per engine.
        old, mid = f"{self.settings.old_turns:,}", f"{self.settings.old_turns // 10:,}"
        specs: list[tuple[str, str, str]] = []
        for what, text, target in (
            ("p50", f"run p50, session of {old} turns / of {YOUNG_TURNS}", "≤ 1.10x"),
            ("mid", f"run p50, session of {old} turns / of {mid}", ""),
            ("p99", f"run p99, session of {old} turns / of {YOUNG_TURNS}", ""),
            ("cpu", f"gateway CPU per run, session of {old} turns / of {YOUNG_TURNS}", ""),
        ):
            specs += [(what, f"{engine}: {text}", target) for engine in ("SQLite", "PostgreSQL")]
        return [*specs, ("errors", "errors / requests", "0 errors")]

    def _na(self, why: str) -> None:
        self.bench.rows += _na_rows(self.SC_THROUGHPUT, self.throughput_metrics(), why)
        self.bench.rows += _na_rows(self.SC_STORE, self.STORE_METRICS, why)
        self.bench.rows += _na_rows(self.SC_LATENCY, self.LATENCY_METRICS, why)
        self.bench.rows += _na_rows(self.SC_AGE, self.age_metrics(), why)

    # --- entry point ----------------------------------------------------------------------

    def run(self) -> None:
        """Every fleet scenario, on one throwaway cluster; n/a rows when it cannot start."""
        try:
            import asyncpg  # noqa: F401

            import openclaw_http_compat.reference.pgstore  # noqa: F401
        except ImportError:
            self._na(f"needs asyncpg: {HOW_TO_GET_ASYNCPG}")
            return
        bin_dir = find_pg_bin()
        if bin_dir is None:
            self._na(f"needs the PostgreSQL server binaries: {HOW_TO_GET_POSTGRES}")
            return
        with contextlib.ExitStack() as stack:
            try:
                # fsync on: a deployment's commits, not a throwaway's.
                cluster = stack.enter_context(throwaway_cluster(bin_dir, fsync=True))
                upstream = stack.enter_context(ServerProcess("upstream"))
            except (RuntimeError, OSError) as exc:
                self._na(f"could not start: {str(exc)[:200]}")
                return
            self.cluster = cluster
            self.upstream = upstream
            self.tmp = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")))
            scenarios: list[tuple[str, list[tuple[str, str]], Callable[[], None]]] = [
                (self.SC_STORE, self.STORE_METRICS, self.store_rows),
                (self.SC_LATENCY, self.LATENCY_METRICS, self.latency_rows),
                (self.SC_AGE, self.age_metrics(), self.age_rows),
                (self.SC_THROUGHPUT, self.throughput_metrics(), self.throughput_rows),
            ]
            for scenario, metrics, measure in scenarios:
                try:
                    measure()
                except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the others
                    traceback.print_exc()
                    self.bench.rows = [row for row in self.bench.rows if row.scenario != scenario]
                    self.bench.rows += _na_rows(scenario, metrics, f"failed: {str(exc)[:200]}")
        self.bench.notes.append(
            f"Scenarios 5-8 run the gateway as `python -m openclaw_http_compat gateway` processes (access log on) "
            f"whose model has a context of {CONTEXT_WINDOW} tokens (about ten {TURN_TEXT_BYTES}-byte turns), so "
            "every run reads a bounded transcript tail and sends as much to the upstream whatever the session's "
            "age. Scenario 8's sessions are made of the exchange every run appends (the question and the mock's "
            f"answer) and its model has a context of {AGE_CONTEXT_WINDOW} tokens, ten of those turns: runs on old and "
            "young sessions send the same ten turns upstream. PostgreSQL is a throwaway cluster with fsync on; the SQLite baselines of 6 and 7 have "
            "sessionStore.fsync on (the same durability), one row of 7 and scenario 8 the default (off). "
            "`--workers 2` on PostgreSQL: runs on one session take turns through the store's leases; no two "
            "concurrent clients share a session.")

    # --- helpers --------------------------------------------------------------------------

    def database(self, name: str) -> str:
        """A new database on the cluster; its URL."""
        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(self.cluster.url("postgres"))
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return self.cluster.url(name)

    def config_file(self, name: str, *, store_url: str | None, fsync: bool | None = None) -> pathlib.Path:
        """A gateway config file (:func:`fleet_config`) with a state dir of its own; ``fsync``
        sets SQLite's ``gateway.sessionStore.fsync`` (``None``: the default)."""
        state = self.tmp / name
        state.mkdir()
        path = self.tmp / f"{name}.json"
        config = fleet_config(self.upstream.port, str(state), store_url=store_url)
        if fsync is not None:
            config["gateway"].setdefault("sessionStore", {})["fsync"] = fsync
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    def probes(self, gateway: ChildProcess | None) -> dict[str, Callable[[], float | None]]:
        """The CPU probes of a measurement (:data:`CPU_PARTS`; no ``gateway`` for the upstream alone)."""
        postmaster = self.cluster.server_pid()
        probes: dict[str, Callable[[], float | None]] = {
            "upstream": lambda: tree_cpu_seconds(self.upstream.pid),
            "loadgen": _children_cpu,
            "postgres": lambda: tree_cpu_seconds(postmaster),
        }
        if gateway is not None:
            probes["gateway"] = lambda: tree_cpu_seconds(gateway.pid)
        return probes

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        """One ``reqresp`` run: wrk when the bench uses it, but the asyncio client for a new
        user per request (``users``), which wrk cannot send."""
        if self.bench.generator == "wrk" and "users" not in spec:
            return run_wrk(spec)
        return run_client(spec, timeout=spec["duration"] + 120)

    def alternate(self, subjects: dict[str, Subject],
                  measure: Callable[[str, Subject, bool], dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A warm-up per subject, then rounds alternating them; ``cpu_<part>`` per result."""
        s = self.settings
        names = list(subjects)
        if s.warmup:
            for name in names:
                measure(name, subjects[name], True)
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for index in range(s.rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                subject = subjects[name]
                before = {part: probe() for part, probe in subject.probes.items()}
                result = measure(name, subject, False)
                for part, probe in subject.probes.items():
                    after, start = probe(), before[part]
                    result[f"cpu_{part}"] = after - start if after is not None and start is not None else None
                per[name].append(result)
        return {name: _combine(results) for name, results in per.items()}

    # --- 6. the store API -----------------------------------------------------------------

    def store_rows(self) -> None:
        from openclaw_http_compat.reference.pgstore import PostgresStore
        from openclaw_http_compat.reference.store import SQLiteStore

        url = self.database("bench_store")
        sqlite_path = self.tmp / "store-api.sqlite"
        results = {
            "postgres": asyncio.run(self._store_ops(PostgresStore(url))),
            # The same durability as a PostgreSQL commit with fsync on: synced before it returns.
            "sqlite": asyncio.run(self._store_ops(SQLiteStore(sqlite_path, fsync=True))),
        }
        pg, lite = results["postgres"], results["sqlite"]
        sc = self.SC_STORE
        for metric, key in (("append (user + assistant turn) p50", "append_p50"),
                            ("append (user + assistant turn) p99", "append_p99"),
                            ("load (newest 64 turns) p50", "load_p50"), ("load (newest 64 turns) p99", "load_p99")):
            self.bench.rows.append(Row(scenario=sc, metric=metric, value=_ms(pg[key]), baseline=_ms(lite[key]),
                                       compare=_x(pg[key] / lite[key] if lite[key] else math.nan)))
        self.bench.rows.append(Row(
            scenario=sc, metric="64 concurrent appends", value=f"{pg['wide_per_s']:,.0f} appends/s",
            baseline=f"{lite['wide_per_s']:,.0f} appends/s",
            compare=_x(pg["wide_per_s"] / lite["wide_per_s"] if lite["wide_per_s"] else math.nan)))

    async def _store_ops(self, store: TranscriptStore) -> dict[str, float]:
        """Sequential appends (and a load of the tail after each), then rounds of 64 at once."""
        s = self.settings
        turns = history(2)
        sessions = max(1, s.appends // 50)
        appends: list[float] = []
        loads: list[float] = []
        wide_ops = 0
        wide_s = 0.0
        await store.open()
        try:
            for i in range(s.appends):
                key = f"agent:main:bench-store-{i % sessions}"
                t0 = time.perf_counter()
                await store.append(key, turns)
                t1 = time.perf_counter()
                await store.load(key, limit=64)
                loads.append(time.perf_counter() - t1)
                appends.append(t1 - t0)
            for round_ in range(3 if s.quick else 30):
                t0 = time.perf_counter()
                await asyncio.gather(*(store.append(f"agent:main:bench-wide-{round_}-{i}", turns) for i in range(64)))
                wide_s += time.perf_counter() - t0
                wide_ops += 64
        finally:
            await store.close()
        appends.sort()
        loads.sort()
        return {"append_p50": percentile_ms(appends, 50), "append_p99": percentile_ms(appends, 99),
                "load_p50": percentile_ms(loads, 50), "load_p99": percentile_ms(loads, 99),
                "wide_per_s": wide_ops / wide_s if wide_s else math.nan}

    # --- 7. gateway latency, PostgreSQL next to SQLite -------------------------------------

    def latency_rows(self) -> None:
        s = self.settings
        sc = self.SC_LATENCY
        with contextlib.ExitStack() as stack:
            gateways = {
                "postgres": stack.enter_context(Gateway(
                    "gateway (postgres)", self.config_file("latency-pg", store_url=self.database("bench_latency")))),
                "sqlite": stack.enter_context(Gateway("gateway (sqlite, fsync on)", self.config_file(
                    "latency-sqlite", store_url=None, fsync=True))),
                "sqlite_default": stack.enter_context(Gateway("gateway (sqlite)", self.config_file(
                    "latency-sqlite-default", store_url=None))),
            }
            subjects = {name: Subject(g.port, self.probes(g)) for name, g in gateways.items()}
            subjects["direct"] = Subject(self.upstream.port, self.probes(None))
            models = {"postgres": "openclaw", "sqlite": "openclaw", "sqlite_default": "openclaw", "direct": "m"}

            def measure(name: str, subject: Subject, warm: bool) -> dict[str, Any]:
                spec = {"scenario": "reqresp", "port": subject.port,
                        "body": user_body(model=models[name]),
                        "conns": 1, "duration": 1.0 if warm else s.seconds, "max_requests": 2_000_000,
                        "expect": _EXPECT, "user_prefix": "bench-latency-"}
                return self.load(spec)

            r = self.alternate(subjects, measure)
        pg, lite, lite_default, direct = r["postgres"], r["sqlite"], r["sqlite_default"], r["direct"]

        def per_request(result: dict[str, Any], part: str) -> float | None:
            cpu, count = result.get(f"cpu_{part}"), result.get("requests")
            return cpu / count * 1e6 if cpu is not None and count else None

        pg_cpu, lite_cpu = per_request(pg, "gateway"), per_request(lite, "gateway")
        pg_db = per_request(pg, "postgres")
        errors = {name: (res["errors"], res["requests"]) for name, res in r.items()}
        # The baseline cell counts both SQLite gateways.
        lite_errors = errors["sqlite"][0] + errors["sqlite_default"][0]
        lite_requests = errors["sqlite"][1] + errors["sqlite_default"][1]
        self.bench.rows += [
            Row(scenario=sc, metric="non-streaming p50, concurrency 1", value=_ms(pg["p50_ms"]),
                baseline=_ms(lite["p50_ms"]), compare=_added(pg["p50_ms"], lite["p50_ms"])),
            Row(scenario=sc, metric="non-streaming p99, concurrency 1", value=_ms(pg["p99_ms"]),
                baseline=_ms(lite["p99_ms"]), compare=_added(pg["p99_ms"], lite["p99_ms"])),
            Row(scenario=sc, metric="non-streaming p50 / p99, baseline with sessionStore.fsync off (the default)",
                value=f"{_ms(pg['p50_ms'])} / {_ms(pg['p99_ms'])}",
                baseline=f"{_ms(lite_default['p50_ms'])} / {_ms(lite_default['p99_ms'])}",
                compare=f"{_added(pg['p50_ms'], lite_default['p50_ms'])} / "
                        f"{_added(pg['p99_ms'], lite_default['p99_ms'])}"),
            Row(scenario=sc, metric="added over the upstream called directly, p50",
                value=_added(pg["p50_ms"], direct["p50_ms"]), baseline=_added(lite["p50_ms"], direct["p50_ms"]),
                compare=_added(pg["p50_ms"], lite["p50_ms"])),
            Row(scenario=sc, metric="added over the upstream called directly, p99",
                value=_added(pg["p99_ms"], direct["p99_ms"]), baseline=_added(lite["p99_ms"], direct["p99_ms"]),
                compare=_added(pg["p99_ms"], lite["p99_ms"])),
            Row(scenario=sc, metric="gateway CPU per request", value=_us(pg_cpu), baseline=_us(lite_cpu),
                compare=_x(pg_cpu / lite_cpu if pg_cpu is not None and lite_cpu else math.nan)),
            Row(scenario=sc, metric="PostgreSQL server CPU per request", value=_us(pg_db), baseline="", compare=""),
            Row(scenario=sc, metric="errors / requests", value=f"{errors['postgres'][0]} / {errors['postgres'][1]:,}",
                baseline=f"{lite_errors} / {lite_requests:,}", compare="", target="0 errors",
                result=_ok(all(e == 0 and n > 0 for e, n in errors.values()))),
        ]

    # --- 8. run cost against session age ----------------------------------------------------

    def age_rows(self) -> None:
        from openclaw_http_compat.reference.pgstore import PostgresStore
        from openclaw_http_compat.reference.store import SQLiteStore

        s = self.settings
        sc = self.SC_AGE
        # Each young run gets a session of its own, so it always finds YOUNG_TURNS turns; the
        # old and middle-aged sessions grow by a turn pair per run, which is nothing to them.
        per_side = (s.rounds + (1 if s.warmup else 0)) * s.age_requests
        young_users = [f"bench-young-{i}" for i in range(per_side)]
        aged = {"bench-old": s.old_turns, "bench-mid": s.old_turns // 10}
        body = user_body()
        figures: dict[str, dict[str, dict[str, Any]]] = {}
        for engine in ("sqlite", "postgres"):
            state = self.tmp / f"age-{engine}"
            state.mkdir()
            url = self.database(f"bench_age_{engine}") if engine == "postgres" else None
            store: TranscriptStore = PostgresStore(url) if url is not None else SQLiteStore(
                state / "sessions.sqlite", fsync=False)
            asyncio.run(self._prefill(store, aged, young_users, make=exchanges))
            config_path = self.tmp / f"age-{engine}.json"
            config = fleet_config(self.upstream.port, str(state), store_url=url, context_window=AGE_CONTEXT_WINDOW)
            config_path.write_text(json.dumps(config), encoding="utf-8")
            with Gateway(f"gateway ({engine})", config_path) as gateway:
                subject = Subject(gateway.port, self.probes(gateway))
                offset = 0

                def measure(name: str, subject: Subject, warm: bool) -> dict[str, Any]:
                    nonlocal offset
                    if name == "young":
                        users = young_users[offset:offset + s.age_requests]
                        offset += s.age_requests
                    else:
                        users = [f"bench-{name}"]
                    spec = {"scenario": "reqresp", "port": subject.port, "body": body, "conns": 1,
                            "duration": 1.0 if warm else s.seconds, "max_requests": s.age_requests,
                            "expect": _EXPECT, "users": users}
                    return self.load(spec)

                figures[engine] = self.alternate({"old": subject, "mid": subject, "young": subject}, measure)

        def ratio(a: float | None, b: float | None) -> float:
            return a / b if a is not None and b else math.nan

        def cpu(result: dict[str, Any]) -> float | None:
            spent, count = result.get("cpu_gateway"), result.get("requests")
            return spent / count * 1e6 if spent is not None and count else None

        engines = {"SQLite": figures["sqlite"], "PostgreSQL": figures["postgres"]}
        for what, metric, target in self._age_row_specs():
            if what == "errors":
                errors = sum(side["errors"] for r in figures.values() for side in r.values())
                requests = sum(side["requests"] for r in figures.values() for side in r.values())
                self.bench.rows.append(Row(scenario=sc, metric=metric, value=f"{errors} / {requests:,}", baseline="",
                                           compare="", target=target, result=_ok(errors == 0 and requests > 0)))
                continue
            r = engines[metric.split(":", 1)[0]]
            old, young = r["old"], r["mid" if what == "mid" else "young"]
            if what == "cpu":
                value, baseline, x = _us(cpu(old)), _us(cpu(young)), ratio(cpu(old), cpu(young))
            else:
                key = "p99_ms" if what == "p99" else "p50_ms"
                value, baseline, x = _ms(old[key]), _ms(young[key]), ratio(old[key], young[key])
            self.bench.rows.append(Row(scenario=sc, metric=metric, value=value, baseline=baseline, compare=_x(x),
                                       target=target, result=_ok(x <= 1.10) if target else ""))

    async def _prefill(
        self,
        store: TranscriptStore,
        sessions: dict[str, int],
        young_users: list[str],
        *,
        make: Callable[[int], list[Any]] = history,
    ) -> None:
        """Through the store API: ``sessions`` (user: how many turns), and :data:`YOUNG_TURNS`
        turns for each of ``young_users``; ``make`` writes the turns."""
        young_turns = make(YOUNG_TURNS)
        await store.open()
        try:
            for user, count in sessions.items():
                turns, key = make(count), session_key(user)
                for start in range(0, count, 1_000):
                    await store.append(key, turns[start:start + 1_000])
            for start in range(0, len(young_users), 32):
                await asyncio.gather(*(store.append(session_key(user), young_turns)
                                       for user in young_users[start:start + 32]))
        finally:
            await store.close()

    # --- 5. throughput, 2 workers over 1 ----------------------------------------------------

    def throughput_rows(self) -> None:
        from openclaw_http_compat.reference.pgstore import PostgresStore

        s = self.settings
        sc = self.SC_THROUGHPUT
        urls = {name: self.database(f"bench_fleet_{name}") for name in ("w2", "w1")}
        for name, url in urls.items():
            # The session workload's users start past the tail a run reads: every run costs the
            # same from the first round on, not less while its session is young.
            users = {f"bench-{name}-{i}": SESSION_TURNS for i in range(s.conns)}
            asyncio.run(self._prefill(PostgresStore(url), users, []))
        with contextlib.ExitStack() as stack:
            fleets = {
                name: stack.enter_context(Gateway(f"gateway --workers {name[1:]}", self.config_file(
                    f"fleet-{name}", store_url=url), workers=int(name[1:])))
                for name, url in urls.items()
            }
            subjects = {name: Subject(g.port, self.probes(g)) for name, g in fleets.items()}
            figures: dict[str, dict[str, dict[str, Any]]] = {}
            for load in ("stateless", "sessions"):

                def measure(name: str, subject: Subject, warm: bool, load: str = load) -> dict[str, Any]:
                    spec: dict[str, Any] = {"scenario": "reqresp", "port": subject.port, "conns": s.conns,
                                            "duration": 1.0 if warm else s.seconds, "max_requests": 2_000_000,
                                            "expect": _EXPECT}
                    if load == "stateless":
                        spec["body"] = chat_body(MSG_INSTANT, stream=False).decode()
                    else:
                        # Each client its own user: no two concurrent runs on one session.
                        spec["body"] = user_body()
                        spec["user_prefix"] = f"bench-{name}-"
                    return self.load(spec)

                figures[load] = self.alternate(subjects, measure)
        for load, r in figures.items():
            w2, w1 = r["w2"], r["w1"]
            ratio = w2["rps"] / w1["rps"] if w1["rps"] else math.nan

            def cores(result: dict[str, Any], part: str) -> float | None:
                cpu, seconds = result.get(f"cpu_{part}"), result.get("seconds")
                return cpu / seconds if cpu is not None and seconds else None

            def per_core(result: dict[str, Any]) -> float | None:
                used = cores(result, "gateway")
                return result["rps"] / used if used else None

            def split(result: dict[str, Any]) -> str:
                return " / ".join("n/a" if (c := cores(result, part)) is None else f"{c:.2f}" for part in CPU_PARTS)

            e2, e1 = per_core(w2), per_core(w1)
            efficiency = e2 / e1 if e2 is not None and e1 else math.nan
            # Every core busy at what each process spent per request with one worker.
            spent = [cores(w1, part) for part in CPU_PARTS]
            all_cores = len(os.sched_getaffinity(0))
            ceiling = (
                all_cores / sum(c for c in spent if c is not None) if w1["rps"] and None not in spent else math.nan
            )
            self.bench.rows += [
                Row(scenario=sc, metric=f"{load}: throughput, concurrency {s.conns}", value=_rps(w2["rps"]),
                    baseline=_rps(w1["rps"]), compare=_x(ratio), target="≥ 1.70x", result=_ok(ratio >= 1.7)),
                Row(scenario=sc, metric=f"{load}: p50 / p99 latency", value=f"{_ms(w2['p50_ms'])} / {_ms(w2['p99_ms'])}",
                    baseline=f"{_ms(w1['p50_ms'])} / {_ms(w1['p99_ms'])}", compare=""),
                Row(scenario=sc, metric=f"{load}: req/s per gateway CPU core",
                    value="n/a" if e2 is None else _rps(e2), baseline="n/a" if e1 is None else _rps(e1),
                    compare=_x(efficiency), target=PER_CORE_TARGET, result=_ok(efficiency >= 0.85)),
                Row(scenario=sc, metric=f"{load}: CPU cores used, gateway / upstream / load generator / PostgreSQL",
                    value=split(w2), baseline=split(w1), compare=""),
                Row(scenario=sc, metric=f"{load}: {CEILING}", value=_x(ratio), baseline=_x(ceiling),
                    compare="n/a" if math.isnan(ceiling) else f"{ratio / ceiling:.0%} of it"),
                Row(scenario=sc, metric=f"{load}: errors / requests", value=f"{w2['errors']} / {w2['requests']:,}",
                    baseline=f"{w1['errors']} / {w1['requests']:,}", compare="", target="0 errors",
                    result=_ok(w2["errors"] == 0 and w1["errors"] == 0 and w2["requests"] > 0 and w1["requests"] > 0)),
            ]
        self.bench.notes.append(
            "Scenario 5 compares `--workers 2` (value) with `--workers 1` (baseline) on the same machine, whose "
            f"{len(os.sched_getaffinity(0))} cores the load generator, the mock upstream and PostgreSQL share with "
            "the gateway (their CPU is in the \"CPU cores used\" rows): the throughput ratio is what this machine "
            "gives. \"req/s per gateway CPU core\" is the gateway's own efficiency: with two cores to themselves, "
            "two workers would serve about 2 x that ratio of what one serves (one worker, one event loop, "
            "uses at most one core), hence its target. The ceiling row (baseline column) is the most this machine "
            "can give: every core busy at the CPU per request that the gateway, the upstream, the load generator "
            "and PostgreSQL each spent with one worker; the value column is the ratio measured.")


def run_fleet(bench: Bench) -> None:
    """Scenarios 5-8 into ``bench`` (sized by its ``quick`` setting)."""
    Fleet(bench, FleetSettings.tiny() if bench.settings.quick else FleetSettings.full()).run()

