"""The benchmark command runs end to end on a tiny setting and reports every row.

No timing is asserted: only that ``python -m benchmarks --quick`` finishes, prints the table
with every scenario and micro-benchmark row, writes the same text where asked, that the
correctness rows (errors, streams finished) hold, and that scenario 2's derived rows are
computed from the figures they name.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    ("5. Metrics cost", "throughput, concurrency 64, metrics on (prometheus-client) vs off"),
    ("5. Metrics cost", "server CPU per request, concurrency 64"),
    ("5. Metrics cost", "errors / requests"),
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
        [sys.executable, "-m", "benchmarks", "--quick", "--generator", "asyncio", "--output", str(output)],
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
