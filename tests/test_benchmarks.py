"""The benchmark command runs end to end on a tiny setting and reports every row.

No timing is asserted: only that ``python -m benchmarks --quick`` finishes, prints the table
with every scenario and micro-benchmark row, writes the same text where asked, and that the
correctness rows (errors, streams finished) hold.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    ("3. Streaming throughput", "content chunks per second, 1 stream at a time"),
    ("3. Streaming throughput", "server CPU per chunk"),
    ("3. Streaming throughput", "streams complete / errors"),
    ("4. Many streams", "server RSS growth per open stream"),
    ("4. Many streams", "server CPU while all streams idle"),
    ("4. Many streams", "streams finished correctly / errors"),
]
# Rows whose result is correctness, not speed: they must pass (n/a only if the reference
# gateway is absent).
CORRECTNESS_METRICS = {"errors / requests", "streams complete / errors", "streams finished correctly / errors"}
MICRO_GROUPS = [
    "JSON encode: completion body",
    "JSON encode: stream chunk",
    "SSE frame: one small content delta",
    "Session store",
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

    micro_rows = [r for r in rows if len(r) == 5]
    for group in MICRO_GROUPS:
        assert any(r[0].startswith(group) for r in micro_rows), f"missing micro-benchmark {group}:\n{text}"
    assert not any(r[1] == "error" for r in micro_rows), text
