"""``gateway --workers 2`` with metrics: one scrape of the port reports the whole host.

Real processes: the supervisor and two workers (``OPENCLAW_STATELESS_WORKERS=1``, honest here
as in ``test_workers.py``: no request uses a session), the agent calling the mock upstream.
Every request and scrape goes over a fresh connection, so the kernel spreads them over both
workers; the counters must add up whichever worker answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .mock_upstream import MockUpstream, StreamReply
from .test_workers import WAIT_S, Fleet

TOKEN = "fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REQUESTS = 24
BODY = {"model": "openclaw", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def config(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "openclaw.json"
    path.write_text(
        json.dumps(
            {
                "gateway": {
                    "auth": {"mode": "token", "token": TOKEN},
                    "stateDir": str(tmp_path / "state"),
                    "http": {"endpoints": {"chatCompletions": {"enabled": True}}},
                    "metrics": {"enabled": True},
                },
                "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
                "models": {"providers": {"mock": {"baseUrl": mock_upstream.url, "api": "openai-completions"}}},
            }
        ),
        encoding="utf-8",
    )
    return path


def metrics_fleet(config: pathlib.Path, tmp_path: pathlib.Path) -> Fleet:
    """The fleet of ``test_workers.py``, its supervisor's fresh metrics directory made under
    ``tmp_path / "tmp"`` (TMPDIR): where a test sees it, and cleaned up with the test's files
    (the fleet is killed on exit, so its supervisor cannot remove the directory itself)."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    fleet = Fleet(config, tmp_path / "state")
    fleet.env["TMPDIR"] = str(temp)
    return fleet


def fresh_connections() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def scrape(fleet: Fleet) -> dict[str, float]:
    """One scrape: each sample as ``name{label="value",...}`` (labels sorted) to its value."""
    async with fresh_connections() as session, session.get(f"{fleet.base}/metrics", headers=AUTH) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items())) + "}": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


CHAT_200 = 'openclaw_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
COMPLETED = 'openclaw_agent_runs_total{agent="main",outcome="completed"}'
STREAMS = "openclaw_active_streams{}"
IN_FLIGHT = "openclaw_agent_runs_in_flight{}"


async def test_one_scrape_reports_every_worker(config: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """N requests spread over two workers: every scrape, whichever worker answers it, counts N."""
    async with metrics_fleet(config, tmp_path) as fleet:
        async with fresh_connections() as session:
            for _ in range(REQUESTS):
                async with session.post(f"{fleet.base}/v1/chat/completions", json=BODY, headers=AUTH) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["choices"][0]["message"]["content"] == "Hello world"
        # Both workers answered some (their access log lines carry their pids).
        pattern = re.compile(r"aiohttp\.access\[(\d+)\]: .* method=POST route=/v1/chat/completions ")
        async with asyncio.timeout(WAIT_S):
            while len([line for line in fleet.log if pattern.search(line)]) < REQUESTS:
                await asyncio.sleep(0.05)
        served = {int(m.group(1)) for line in fleet.log if (m := pattern.search(line))}
        assert served == set(fleet.worker_pids().values())
        for _ in range(6):
            samples = await scrape(fleet)
            assert samples[CHAT_200] == REQUESTS
            assert samples[COMPLETED] == REQUESTS
            assert samples['openclaw_upstream_request_duration_seconds_count{provider="mock"}'] == REQUESTS
            assert samples[IN_FLIGHT] == 0
            assert samples[STREAMS] == 0


async def test_a_dead_workers_gauges_leave_its_counters_stay(
    config: pathlib.Path, tmp_path: pathlib.Path, mock_upstream: MockUpstream
) -> None:
    """A worker killed with a stream open: once the supervisor reaps it, its stream is no longer
    counted as active, while what it counted before stays in the totals."""
    async with metrics_fleet(config, tmp_path) as fleet:
        async with fresh_connections() as session:
            for _ in range(4):
                async with session.post(f"{fleet.base}/v1/chat/completions", json=BODY, headers=AUTH) as resp:
                    assert resp.status == 200
            release = asyncio.Event()
            mock_upstream.reply(StreamReply(deltas=("held",), hold=release))
            async with session.post(
                f"{fleet.base}/v1/chat/completions", json={**BODY, "stream": True}, headers=AUTH
            ) as held:
                assert held.status == 200
                await held.content.readline()
                samples = await scrape(fleet)
                assert (samples[STREAMS], samples[IN_FLIGHT]) == (1, 1)
                old = fleet.worker_pids()
                for pid in old.values():
                    os.kill(pid, signal.SIGKILL)
                for slot, pid in old.items():
                    await fleet.wait_for_log(rf"worker {slot} started \(pid (?!{pid}\))(\d+)\)")
                release.set()
        # The replacements announce themselves before they listen: ask until one answers.
        async with asyncio.timeout(WAIT_S):
            while True:
                try:
                    samples = await scrape(fleet)
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        assert (samples[STREAMS], samples[IN_FLIGHT]) == (0, 0)
        assert samples[CHAT_200] == 4
        assert samples[COMPLETED] == 4


async def test_a_worker_file_caught_half_made_is_a_temporary_503(config: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A metrics file a starting worker has created but not yet sized cannot be read: while one
    is there a scrape is a clean 503 with Retry-After (after retrying), and the next scrape after
    it is complete answers in full again. The directory goes when the supervisor stops."""
    temp = tmp_path / "tmp"
    async with metrics_fleet(config, tmp_path) as fleet:
        (directory,) = temp.glob("openclaw-metrics-*")
        assert (await scrape(fleet))[STREAMS] == 0
        half_made = directory / "counter_4000000.db"
        half_made.touch()
        async with fresh_connections() as session, session.get(f"{fleet.base}/metrics", headers=AUTH) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            assert await resp.json() == {"error": {"message": "metrics unavailable, retry shortly",
                                                   "type": "api_error", "param": None, "code": "metrics_unavailable"}}
        half_made.unlink()
        assert (await scrape(fleet))[STREAMS] == 0
        # A supervisor that stops cleanly removes the directory: the next start counts from zero.
        assert fleet.proc is not None
        fleet.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            assert await fleet.proc.wait() == 0
        assert not directory.exists()


async def test_a_killed_supervisors_directory_is_removed_by_the_next_start(
    config: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A supervisor killed with SIGKILL cannot remove its metrics directory, named with its pid;
    the next start on the host removes it (that pid is gone) and makes its own."""
    temp = tmp_path / "tmp"
    async with metrics_fleet(config, tmp_path) as first:
        assert first.proc is not None
        first_pid = first.proc.pid
    left = [path.name for path in temp.iterdir()]
    assert len(left) == 1 and left[0].startswith(f"openclaw-metrics-{first_pid}-")
    async with metrics_fleet(config, tmp_path) as second:
        assert second.proc is not None
        now = [path.name for path in temp.iterdir()]
        assert await scrape(second)  # the new directory serves
    assert len(now) == 1 and now[0].startswith(f"openclaw-metrics-{second.proc.pid}-")
