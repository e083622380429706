"""Load: a short soak with random client disconnects leaks nothing and loses no turn; many held streams.

The soak runs ``python -m benchmarks.soak --seconds 10 --concurrency 50 --json`` (mock upstream
and reference gateway in processes of their own) and checks its figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from .mock_upstream import MockUpstream, StreamReply
from .test_faults import TOKEN, make_config, serve

ROOT = Path(__file__).resolve().parents[2]


def run_soak(*args: str, timeout_s: float) -> tuple[int, dict[str, Any], str]:
    """Run the soak in a process group of its own, killed whole if it overruns."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", *args, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()[-4000:]
    return proc.returncode, json.loads(lines[-1]), err.decode()


def test_short_soak_leaks_nothing_and_loses_no_turn() -> None:
    """10 s at concurrency 50, 30 % cut by the client: 0 errors, 0 upstream leftovers, 0 lost turns, bounded RSS."""
    returncode, result, err = run_soak("--seconds", "10", "--concurrency", "50", timeout_s=120)
    assert result["errors"] == 0, (result["error_kinds"], result["error_examples"])
    assert result["upstream_requests_left_open"] == 0
    assert result["upstream_connections_left_open"] == 0
    assert (result["turns_lost"], result["turns_unpaired"]) == (0, 0)
    assert result["gateway_exit_status"] == 0
    assert result["rss_growth_mib"] < 32, result
    # The load really happened: streams held concurrently, every disconnect stage, aborted runs.
    assert result["completed"] >= 200, result
    assert result["max_open_upstream_requests"] >= 25, result
    assert set(result["disconnects"]) == {"body", "early", "mid-stream"}
    assert min(result["disconnects"].values()) >= 10, result
    # Endless replies end only if the gateway aborts them: each one that reached the upstream was.
    assert result["endless_upstream"] >= 10, result
    assert result["aborted_runs"] >= result["endless_upstream"], result
    assert (returncode, result["ok"]) == (0, True), err[-4000:]


def test_retry_storm_runs_each_question_once_and_answers_every_client() -> None:
    """20 openai SDK clients whose 1 s timeout is shorter than their 2.5 s agent run: the SDK
    retries, each retry attaches to its run; every client answered, exactly 20 upstream runs.
    (The benchmark command runs the 200 of the README: ``--retry-storm 200``.)"""
    returncode, result, err = run_soak("--retry-storm", "20", timeout_s=120)
    assert result["answered"] == 20 and result["errors"] == {}, result
    assert (result["upstream_requests"], result["upstream_aborted"]) == (20, 0), result
    assert result["sdk_attempts"] > 20, result
    assert (returncode, result["ok"], result["gateway_exit_status"]) == (0, True, 0), err[-4000:]


HELD_STREAMS = 150


async def test_gateway_holds_150_concurrent_upstream_streams(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """150 concurrent streams (under maxConcurrentRuns 256) all reach the upstream at once, then all finish."""
    hold = asyncio.Event()
    mock_upstream.default = StreamReply(deltas=("held",), hold=hold)
    config = make_config(tmp_path / "state", mock_upstream.url)
    async with serve(config) as gateway, aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(index: int) -> str:
            body = {"model": "openclaw", "stream": True, "user": f"u{index}", "messages": [{"role": "user", "content": "x"}]}
            async with session.post(gateway.url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                return await resp.text()

        clients = [asyncio.ensure_future(one(i)) for i in range(HELD_STREAMS)]
        try:
            async with asyncio.timeout(3):
                while len(mock_upstream.requests) < HELD_STREAMS:
                    await asyncio.sleep(0.02)
        finally:
            hold.set()
            async with asyncio.timeout(10):
                texts = await asyncio.gather(*clients)
        assert all(text.endswith('"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n') for text in texts)
