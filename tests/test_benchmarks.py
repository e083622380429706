"""The benchmark command runs end to end on a tiny setting and reports every row.

No timing is asserted: only that ``python -m benchmarks --quick`` finishes, prints the table
with every scenario and micro-benchmark row, writes the same text where asked, that the
correctness rows (errors, streams finished) hold, and that derived rows (scenario 2's, the
fleet's ratios) are computed from the figures they name. The fleet scenarios (5-8) run in a
test of their own, on a throwaway PostgreSQL cluster (skipped with a message without one);
without the server binaries they report n/a rows, never a crash.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from benchmarks.client import reqresp
from benchmarks.fleet import CONTEXT_WINDOW, fleet_config, user_body
from benchmarks.pg import HOW_TO_GET_ASYNCPG, HOW_TO_GET_POSTGRES, find_pg_bin
from benchmarks.servers import gateway_config_mapping

ROOT = Path(__file__).resolve().parent.parent

FLOOR = "stack floor (minimal aiohttp proxy)"
FSYNC_ROW = "non-streaming p50 / p99, concurrency 1, with sessionStore.fsync=true (power-loss durable)"
# (scenario prefix, metric) of every row the main table must hold.
EXPECTED_ROWS = [
    ("1. Handler cost", "throughput, concurrency 1"),
    ("1. Handler cost", "p50 latency, concurrency 1"),
    ("1. Handler cost", "p99 latency, concurrency 1"),
    ("1. Handler cost", "server CPU per request, concurrency 1"),
    ("1. Handler cost", "throughput, concurrency 64"),
    ("1. Handler cost", "p50 latency, concurrency 64"),
    ("1. Handler cost", "p99 latency, concurrency 64"),
    ("1. Handler cost", "server CPU per request, concurrency 64"),
    ("1. Handler cost", "errors / requests"),
    ("2. Gateway overhead", "non-streaming p50, concurrency 1"),
    ("2. Gateway overhead", "non-streaming p99, concurrency 1"),
    ("2. Gateway overhead", "non-streaming throughput, concurrency 1"),
    ("2. Gateway overhead", "server CPU per request, non-streaming"),
    ("2. Gateway overhead", "streaming: first content byte p50"),
    ("2. Gateway overhead", "streaming: first content byte p99"),
    ("2. Gateway overhead", "streaming: [DONE] p50"),
    ("2. Gateway overhead", "streaming: [DONE] p99"),
    ("2. Gateway overhead", "errors / requests"),
    ("2. Gateway overhead", f"{FLOOR}: non-streaming p50, concurrency 1"),
    ("2. Gateway overhead", f"{FLOOR}: non-streaming p99, concurrency 1"),
    ("2. Gateway overhead", f"{FLOOR}: streaming: first content byte p50"),
    ("2. Gateway overhead", f"{FLOOR}: server CPU per request, non-streaming"),
    ("2. Gateway overhead", f"{FLOOR}: errors / requests"),
    ("2. Gateway overhead", "gateway minus stack floor, non-streaming p50"),
    ("2. Gateway overhead", "gateway minus stack floor, streaming: first content byte p50"),
    ("2. Gateway overhead", FSYNC_ROW),
    ("3. Streaming throughput", "content chunks per second, 1 stream at a time"),
    ("3. Streaming throughput", "server CPU per chunk"),
    ("3. Streaming throughput", "streams complete / errors"),
    ("4. Many streams", "server RSS growth per open stream"),
    ("4. Many streams", "server CPU while all streams idle"),
    ("4. Many streams", "streams finished correctly / errors"),
    ("10. Metrics cost", "throughput, concurrency 64, metrics on (prometheus-client) vs off"),
    ("10. Metrics cost", "server CPU per request, concurrency 64"),
    ("10. Metrics cost", "errors / requests"),
]
# Rows whose result is correctness, not speed: they must pass (n/a only if the reference
# gateway is absent).
CORRECTNESS_METRICS = {"errors / requests", "streams complete / errors", "streams finished correctly / errors",
                       f"{FLOOR}: errors / requests"}
MICRO_GROUPS = [
    "JSON encode: completion body",
    "JSON encode: stream chunk",
    "SSE frame: one small content delta",
    "Session store",
    "Provider call",
]


def _table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| Scenario") and not line.startswith("| Benchmark"):
            rows.append([cell.strip() for cell in line.strip()[1:-1].split("|")])
    return rows


def test_quick_benchmark_reports_every_row(tmp_path: Path) -> None:
    """``python -m benchmarks --quick`` prints and writes one table with every figure."""
    output = tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--generator", "asyncio", "--output", str(output),
         "--only", "handler,gateway,streams,metrics,micro"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert output.read_text(encoding="utf-8") == text
    assert "Machine: cores:" in text
    assert "python: CPython" in text or "python: " in text
    assert "aiohttp: " in text

    rows = _table_rows(text)
    main_rows = [r for r in rows if len(r) == 7]
    for scenario, metric in EXPECTED_ROWS:
        matches = [r for r in main_rows if r[0].startswith(scenario) and r[1] == metric]
        assert len(matches) == 1, f"missing row {scenario} / {metric}:\n{text}"
        row = matches[0]
        assert row[2], f"empty figure in {row}"
        if metric in CORRECTNESS_METRICS:
            allowed = {"pass", "n/a"} if scenario.startswith("2.") else {"pass"}
            assert row[6] in allowed, f"correctness row failed: {row}"
    targets = [r for r in main_rows if r[5]]
    assert all(r[6] in {"pass", "FAIL", "n/a"} for r in targets)
    gateway = {r[1]: r for r in main_rows if r[0].startswith("2. Gateway overhead")}
    if gateway["errors / requests"][6] != "n/a":
        _check_gateway_rows(gateway)
        assert "run with the config's default gateway.sessionStore.fsync" in text

    micro_rows = [r for r in rows if len(r) == 5]
    for group in MICRO_GROUPS:
        assert any(r[0].startswith(group) for r in micro_rows), f"missing micro-benchmark {group}:\n{text}"
    assert not any(r[1] == "error" for r in micro_rows), text


def _ms(cell: str) -> float:
    assert cell.endswith(" ms"), cell
    return float(cell.removesuffix(" ms"))


def _check_gateway_rows(rows: dict[str, list[str]]) -> None:
    """Scenario 2's extra rows hold numbers, against the right baselines, subtracted right."""
    direct = {
        "p50": rows["non-streaming p50, concurrency 1"][3],
        "p99": rows["non-streaming p99, concurrency 1"][3],
        "first": rows["streaming: first content byte p50"][3],
    }
    # The stack floor is compared with the same direct figures as the gateway.
    assert rows[f"{FLOOR}: non-streaming p50, concurrency 1"][3] == direct["p50"]
    assert rows[f"{FLOOR}: non-streaming p99, concurrency 1"][3] == direct["p99"]
    assert rows[f"{FLOOR}: streaming: first content byte p50"][3] == direct["first"]
    assert rows[f"{FLOOR}: server CPU per request, non-streaming"][2].endswith(" µs")
    # "Gateway minus stack floor": the gateway's figure against the floor's.
    minus_p50 = rows["gateway minus stack floor, non-streaming p50"]
    minus_first = rows["gateway minus stack floor, streaming: first content byte p50"]
    assert minus_p50[2] == rows["non-streaming p50, concurrency 1"][2]
    assert minus_p50[3] == rows[f"{FLOOR}: non-streaming p50, concurrency 1"][2]
    assert minus_first[2] == rows["streaming: first content byte p50"][2]
    assert minus_first[3] == rows[f"{FLOOR}: streaming: first content byte p50"][2]
    for row in (minus_p50, minus_first, rows[f"{FLOOR}: non-streaming p50, concurrency 1"]):
        # Cells are rounded to the µs, the difference is taken before rounding.
        assert math.isclose(_ms(row[4].replace("+", "")), _ms(row[2]) - _ms(row[3]), abs_tol=0.0015), row
    # One row, "p50 / p99", for the gateway with a power-loss durable store.
    fsync = rows[FSYNC_ROW]
    p50, p99 = (_ms(cell) for cell in fsync[2].split(" / "))
    assert 0 < p50 <= p99
    assert fsync[3] == f"{direct['p50']} / {direct['p99']}"
    assert fsync[5] == "" and fsync[6] == ""


@pytest.mark.parametrize(("option", "expected"), [("on", {"fsync": True}), ("off", {"fsync": False})])
def test_session_fsync_option_sets_the_key(option: str, expected: dict[str, bool]) -> None:
    """``servers gateway --session-fsync on|off`` writes gateway.sessionStore.fsync."""
    assert gateway_config_mapping(1234, "/tmp/state", option)["gateway"]["sessionStore"] == expected


def test_session_fsync_default_leaves_the_key_out() -> None:
    """``--session-fsync default`` measures the gateway's own default: the key is not set."""
    assert "sessionStore" not in gateway_config_mapping(1234, "/tmp/state")["gateway"]


# --- the fleet scenarios (5-8) ------------------------------------------------------------------

THROUGHPUT = "5. Fleet throughput"
STORE = "6. PostgreSQL store"
LATENCY = "7. Gateway on PostgreSQL"
AGE = "8. Run cost against session age"
# (scenario prefix, metric) of every fleet row at the --quick sizes (4 clients, an old session
# of 300 turns, a middle-aged one of 30).
FLEET_ROWS = [
    *[
        (THROUGHPUT, f"{load}: {metric}")
        for load in ("stateless", "sessions")
        for metric in (
            "throughput, concurrency 4",
            "p50 / p99 latency",
            "req/s per gateway CPU core",
            "CPU cores used, gateway / upstream / load generator / PostgreSQL",
            "errors / requests",
        )
    ],
    (STORE, "append (user + assistant turn) p50"),
    (STORE, "append (user + assistant turn) p99"),
    (STORE, "load (newest 64 turns) p50"),
    (STORE, "load (newest 64 turns) p99"),
    (STORE, "64 concurrent appends"),
    (LATENCY, "non-streaming p50, concurrency 1"),
    (LATENCY, "non-streaming p99, concurrency 1"),
    (LATENCY, "non-streaming p50 / p99, baseline with sessionStore.fsync off (the default)"),
    (LATENCY, "added over the upstream called directly, p50"),
    (LATENCY, "added over the upstream called directly, p99"),
    (LATENCY, "gateway CPU per request"),
    (LATENCY, "PostgreSQL server CPU per request"),
    (LATENCY, "errors / requests"),
    *[
        (AGE, f"{engine}: {metric}")
        for metric in (
            "run p50, session of 300 turns / of 10",
            "run p50, session of 300 turns / of 30",
            "run p99, session of 300 turns / of 10",
            "gateway CPU per run, session of 300 turns / of 10",
        )
        for engine in ("SQLite", "PostgreSQL")
    ],
    (AGE, "errors / requests"),
]
FLEET_TARGETS = {
    (THROUGHPUT, "stateless: throughput, concurrency 4"): "≥ 1.70x",
    (THROUGHPUT, "sessions: throughput, concurrency 4"): "≥ 1.70x",
    (THROUGHPUT, "stateless: req/s per gateway CPU core"): "≥ 0.85x (1.70x / 2 cores)",
    (THROUGHPUT, "sessions: req/s per gateway CPU core"): "≥ 0.85x (1.70x / 2 cores)",
    (AGE, "SQLite: run p50, session of 300 turns / of 10"): "≤ 1.10x",
    (AGE, "PostgreSQL: run p50, session of 300 turns / of 10"): "≤ 1.10x",
}


def _run_fleet(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env_extra
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "fleet", "--no-write"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def _fleet_rows(text: str) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for row in _table_rows(text):
        for scenario, metric in FLEET_ROWS:
            if len(row) == 7 and row[0].startswith(scenario) and row[1] == metric:
                assert (scenario, metric) not in found, f"row twice: {row}"
                found[(scenario, metric)] = row
    missing = [key for key in FLEET_ROWS if key not in found]
    assert not missing, f"missing rows {missing}:\n{text}"
    return found


def _number(cell: str, unit: str) -> float:
    assert cell.endswith(unit), (cell, unit)
    return float(cell.removesuffix(unit).replace(",", "").replace("+", ""))


def test_fleet_benchmark_reports_every_row() -> None:
    """``python -m benchmarks --quick --only fleet``: every fleet row, with figures, on a real cluster."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.skip(f"the fleet benchmark needs asyncpg: {HOW_TO_GET_ASYNCPG}")
    if find_pg_bin() is None:
        pytest.skip(f"the fleet benchmark needs the PostgreSQL server binaries: {HOW_TO_GET_POSTGRES}")
    proc = _run_fleet({})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _fleet_rows(proc.stdout)
    # Only the fleet ran: no other scenario, no micro-benchmarks.
    assert not any(r[0][:2] in {"1.", "2.", "3.", "4."} for r in _table_rows(proc.stdout) if len(r) == 7)
    assert "## Micro-benchmarks" not in proc.stdout
    for key, row in rows.items():
        assert row[2] and row[2] != "n/a", f"no figure in {row}"
        assert row[5] == FLEET_TARGETS.get(key, "0 errors" if key[1].endswith("errors / requests") else ""), row
        if key[1].endswith("errors / requests"):
            assert row[6] == "pass", f"correctness row failed: {row}"
            assert re.fullmatch(r"0 / [\d,]+", row[2]), row
        elif row[5]:
            assert row[6] in {"pass", "FAIL"}, row
    for load in ("stateless", "sessions"):
        # The ratio is the two figures' (cells are rounded to 1 req/s, the ratio to 0.01).
        w2, w1, ratio = rows[(THROUGHPUT, f"{load}: throughput, concurrency 4")][2:5]
        assert math.isclose(_number(ratio, "x"), _number(w2, " req/s") / _number(w1, " req/s"), abs_tol=0.011)
        split = rows[(THROUGHPUT, f"{load}: CPU cores used, gateway / upstream / load generator / PostgreSQL")]
        for cell in split[2:4]:
            cores = [float(part) for part in cell.split(" / ")]
            assert len(cores) == 4 and cores[0] > 0 and all(c >= 0 for c in cores), cell
    pg50, lite50, diff50 = rows[(LATENCY, "non-streaming p50, concurrency 1")][2:5]
    assert math.isclose(_number(diff50, " ms"), _number(pg50, " ms") - _number(lite50, " ms"), abs_tol=0.0015)
    for engine in ("SQLite", "PostgreSQL"):
        old, young, ratio = rows[(AGE, f"{engine}: run p50, session of 300 turns / of 10")][2:5]
        assert math.isclose(_number(ratio, "x"), _number(old, " ms") / _number(young, " ms"), abs_tol=0.011)
    assert "runs on one session take turns through the store's leases" in proc.stdout


def test_fleet_benchmark_without_postgres_reports_na() -> None:
    """Without the server binaries the fleet rows say n/a and what to install; the run succeeds."""
    proc = _run_fleet({"OPENCLAW_TEST_PG_BIN": str(ROOT / "no-such-dir")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _fleet_rows(proc.stdout)
    why = f"needs the PostgreSQL server binaries: {HOW_TO_GET_POSTGRES}"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        why = f"needs asyncpg: {HOW_TO_GET_ASYNCPG}"
    for row in rows.values():
        assert row[2:5] == ["n/a", "n/a", why] and row[6] == "n/a", row


def test_fleet_config_bounds_the_context_and_names_the_store() -> None:
    """The fleet's gateways: the benchmark's config, a small context window, and the store URL."""
    url = "postgresql://postgres@127.0.0.1:5432/bench"
    config = fleet_config(4321, "/tmp/state", store_url=url)
    base = gateway_config_mapping(4321, "/tmp/state")
    assert config["models"]["providers"]["mock"]["models"] == [{"id": "m", "contextWindow": CONTEXT_WINDOW,
                                                                  "maxTokens": 192}]
    assert config["gateway"] == {**base["gateway"], "sessionStore": {"url": url}}
    assert "sessionStore" not in fleet_config(4321, "/tmp/state", store_url=None)["gateway"]
    # The load generator fills in the user per client.
    assert json.loads(user_body())["user"] == "__USER__"


async def _recording_server(aiohttp_server: AiohttpServer) -> tuple[int, list[tuple[str, str]]]:
    """A server answering "Hello" that records (connection's peer port, user) per request."""
    seen: list[tuple[str, str]] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((str(request.transport.get_extra_info("peername")[1]) if request.transport else "", body["user"]))
        return web.Response(text="Hello")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app, host="127.0.0.1")
    assert server.port is not None
    return server.port, seen


async def test_load_generator_gives_each_connection_its_user(aiohttp_server: AiohttpServer) -> None:
    """``user_prefix``: connection i always sends user <prefix>i, so no two share a session."""
    port, seen = await _recording_server(aiohttp_server)
    result = await reqresp({"port": port, "body": user_body(), "conns": 3, "duration": 5.0, "max_requests": 30,
                            "expect": "Hello", "user_prefix": "u-"})
    assert result["requests"] == 30 and result["errors"] == 0
    users_of_conn: dict[str, set[str]] = {}
    for conn, user in seen:
        users_of_conn.setdefault(conn, set()).add(user)
    assert sorted(user for users in users_of_conn.values() for user in users) == ["u-0", "u-1", "u-2"]
    assert all(len(users) == 1 for users in users_of_conn.values())


async def test_load_generator_takes_the_next_user_per_request(aiohttp_server: AiohttpServer) -> None:
    """``users``: every request takes the next user of the list (scenario 8's fresh young sessions)."""
    port, seen = await _recording_server(aiohttp_server)
    users = [f"young-{i}" for i in range(5)]
    result = await reqresp({"port": port, "body": user_body(), "conns": 1, "duration": 5.0, "max_requests": 5,
                            "expect": "Hello", "users": users})
    assert result["requests"] == 5 and result["errors"] == 0
    assert [user for _, user in seen] == users
