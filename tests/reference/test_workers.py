"""``gateway --workers 2``: one port served by two real worker processes under the supervisor.

Most tests start ``python -m openclaw_http_compat gateway --workers 2 --port 0`` on 127.0.0.1
and wait for the supervisor's single "listening on" line; the supervisor and every worker it
logged are killed on exit, whatever happened. One runs the supervisor over a stub worker that
ignores SIGTERM, to see the stop timeout kill it.

``--workers`` above 1 on the SQLite store is refused (see ``test_cli.py``; with PostgreSQL it
runs: ``test_fleet.py``); these tests set ``OPENCLAW_STATELESS_WORKERS=1``, which is honest here
because every request is stateless (no ``user``, no session header): no two requests share a
session, so the in-process per-session locks are never needed across workers.

Which worker answered is read from the access log: with several processes every log line
carries the pid of its writer (``aiohttp.access[PID]``), and every access line the request id
the client got in ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import pytest

from .mock_upstream import MockUpstream, StreamReply
from .test_shutdown import SHORT_GRACE, assert_stream_ended_by_shutdown, gateway_env, open_request, write_gateway_config

READY: Final = re.compile(
    rb"openclaw gateway listening on http://127\.0\.0\.1:(\d+) "
    rb"\(WebSocket on /, /v1/chat/completions enabled, 2 workers\)\n"
)
STARTED: Final = re.compile(r"supervisor\[\d+\]: worker (\d) started \(pid (\d+)\)")
#: An access-log line: the pid of the worker that wrote it and the request id.
ACCESS: Final = re.compile(r"aiohttp\.access\[(\d+)\]: request_id=(\S+) ")
#: Bound on every wait for a log line.
WAIT_S: Final = 8.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Fleet:
    """The supervisor with two workers as an async context manager; everything is killed on exit."""

    def __init__(self, config: pathlib.Path, state: pathlib.Path) -> None:
        self.config = config
        self.env = gateway_env(state) | {"OPENCLAW_STATELESS_WORKERS": "1"}
        self.port = 0
        self.log: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()
        #: Request ids of the requests :meth:`health` sent, by tag.
        self.request_ids: dict[str, set[str]] = {}

    async def __aenter__(self) -> Fleet:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "openclaw_http_compat", "gateway", "--config", str(self.config),
            "--port", "0", "--workers", "2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env,
        )
        self._reader = asyncio.create_task(self._read_log())
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(WAIT_S):
                line = await self.proc.stdout.readline()
            match = READY.fullmatch(line)
            assert match is not None, (line, self.log)
            self.port = int(match.group(1))
            # The supervisor logged both starts before it announced; our reader may lag behind.
            await self.wait_for_log(r"worker 1 started")
            await self.wait_for_log(r"worker 0 started")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        # Workers get SIGTERM when the supervisor dies; SIGKILL them anyway, this is cleanup.
        for pid in self.all_worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._reader is not None:
            # stderr reaches EOF once every process holding it (the workers too) has exited.
            async with asyncio.timeout(WAIT_S):
                await self._reader

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode(errors="replace"))
            self._new_line.set()

    async def wait_for_log(self, pattern: str) -> re.Match[str]:
        """The first log line matching ``pattern``, waiting for it up to :data:`WAIT_S`."""
        async with asyncio.timeout(WAIT_S):
            while True:
                self._new_line.clear()
                for line in self.log:
                    if match := re.search(pattern, line):
                        return match
                await self._new_line.wait()

    def all_worker_pids(self) -> set[int]:
        """Every worker pid the supervisor has started."""
        return {int(m.group(2)) for line in self.log if (m := STARTED.search(line))}

    def worker_pids(self) -> dict[int, int]:
        """The current worker pid of each slot."""
        return {int(m.group(1)): int(m.group(2)) for line in self.log if (m := STARTED.search(line))}

    def access_lines(self, tag: str) -> list[re.Match[str]]:
        """The access-log lines of the requests :meth:`health` sent with a tag starting with ``tag``."""
        ids = set().union(*(sent for t, sent in self.request_ids.items() if t.startswith(tag)))
        return [m for line in self.log if (m := ACCESS.search(line)) and m.group(2) in ids]

    def pids_that_served(self, tag: str) -> set[int]:
        """Pids of the workers whose access log shows a request :meth:`health` sent with ``tag``."""
        return {int(m.group(1)) for m in self.access_lines(tag)}

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self, tag: str, count: int) -> None:
        """``count`` GETs of ``/health``, each on a fresh connection, all answered 200 {"ok": true};
        their request ids are kept under ``tag``."""
        ids = self.request_ids.setdefault(tag, set())
        # force_close: a new connection (new source port) per request, so the kernel picks a worker each time.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(count):
                async with session.get(f"{self.base}/health") as resp:
                    assert (resp.status, await resp.json()) == (200, {"ok": True})
                    ids.add(resp.headers["x-request-id"])


@contextlib.asynccontextmanager
async def killed_on_exit(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python *args`` with stdout and stderr piped; killed on exit if it is still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def config(mock_upstream: MockUpstream, tmp_path: pathlib.Path) -> pathlib.Path:
    return write_gateway_config(tmp_path / "openclaw.json", tmp_path / "state", mock_upstream.url, gateway=SHORT_GRACE)


async def test_both_workers_serve_one_port(config: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Requests over fresh connections to the one announced port are answered by both workers, two distinct pids."""
    async with Fleet(config, tmp_path / "state") as fleet:
        workers = set(fleet.worker_pids().values())
        assert len(workers) == 2 and os.getpid() not in workers
        await fleet.health("a", 40)
        # Each worker writes its own access log lines: wait until all 40 have arrived.
        async with asyncio.timeout(WAIT_S):
            while len(fleet.access_lines("a")) < 40:
                await asyncio.sleep(0.05)
        assert fleet.pids_that_served("a") == workers


async def test_killed_worker_is_replaced(config: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """A worker killed with SIGKILL is logged with its pid and status, restarted, and the port keeps answering."""
    async with Fleet(config, tmp_path / "state") as fleet:
        victim = fleet.worker_pids()[0]
        survivor = fleet.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        await fleet.wait_for_log(rf"worker pid {victim} exited unexpectedly \(signal SIGKILL\); restarting in 0\.1 s")
        await fleet.health("b", 10)  # served by the survivor meanwhile
        match = await fleet.wait_for_log(r"worker 0 started \(pid (?!%d\))(\d+)\)" % victim)
        replacement = int(match.group(1))
        # Ask until the replacement has answered too: it listens on the same port.
        async with asyncio.timeout(WAIT_S):
            round_ = 0
            while replacement not in fleet.pids_that_served("c"):
                await fleet.health(f"c{round_}-", 5)
                round_ += 1
                await asyncio.sleep(0.05)
        assert fleet.pids_that_served("c") <= {survivor, replacement}
        assert not _alive(victim)
        assert fleet.proc is not None and fleet.proc.returncode is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_workers_and_exits_0(
    mock_upstream: MockUpstream, config: pathlib.Path, tmp_path: pathlib.Path, signum: signal.Signals
) -> None:
    """SIGTERM/SIGINT to the supervisor: the open stream ends as a single process ends it, every process exits, status 0."""
    mock_upstream.default = StreamReply(deltas=("partial",), stall=True)
    async with Fleet(config, tmp_path / "state") as fleet, aiohttp.ClientSession() as session:
        opened = await open_request(session, f"{fleet.base}/v1/chat/completions", stream=True, user="")
        await opened.read_frame()
        workers = set(fleet.worker_pids().values())
        assert fleet.proc is not None
        fleet.proc.send_signal(signum)
        async with asyncio.timeout(5):
            text = await opened.read_rest()
            returncode = await fleet.proc.wait()
            while any(_alive(pid) for pid in workers):
                await asyncio.sleep(0.05)
        assert_stream_ended_by_shutdown(text, relayed=("partial",))
        assert returncode == 0
        assert mock_upstream.disconnects == 1
        for pid in workers:
            await fleet.wait_for_log(rf"worker pid {pid} stopped \(exit status 0\)")


async def test_worker_failing_at_start_stops_the_supervisor(tmp_path: pathlib.Path) -> None:
    """Workers that cannot start (the state directory is a file) make the supervisor exit 1, not loop."""
    blocker = tmp_path / "state"
    blocker.write_text("not a directory", encoding="utf-8")
    config = tmp_path / "openclaw.json"
    config.write_text(
        json.dumps({"gateway": {"auth": {"mode": "token", "token": "t"}, "stateDir": str(blocker)}}), encoding="utf-8"
    )
    async with killed_on_exit(
        "-m", "openclaw_http_compat", "gateway", "--config", str(config), "--port", "0", "--workers", "2",
        env=gateway_env(blocker) | {"OPENCLAW_STATELESS_WORKERS": "1"},
    ) as proc, asyncio.timeout(10):
        stdout, stderr = await proc.communicate()
    assert (proc.returncode, stdout) == (1, b"")
    log = stderr.decode()
    assert re.search(
        r"^error: worker failed to start 3 times in a row \(last: pid \d+, exit status 1\); see its log above$",
        log,
        re.MULTILINE,
    ), log
    assert len(re.findall(r"worker \d started", log)) <= 2 * 3


async def test_workers_do_not_outlive_a_killed_supervisor(config: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """When the supervisor is SIGKILLed its workers get SIGTERM (PR_SET_PDEATHSIG), drain and exit."""
    async with Fleet(config, tmp_path / "state") as fleet:
        workers = set(fleet.worker_pids().values())
        assert fleet.proc is not None
        fleet.proc.kill()
        await fleet.proc.wait()
        async with asyncio.timeout(5):
            while any(_alive(pid) for pid in workers):
                await asyncio.sleep(0.05)


STUBBORN_WORKER: Final = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('stub listening on nothing', flush=True)\n"
    "time.sleep(30)\n"
)


async def test_worker_that_does_not_stop_is_killed_and_exit_is_1() -> None:
    """A worker still running stop_timeout after SIGTERM is SIGKILLed, logged, and the supervisor exits 1."""
    # The supervisor itself, in its own process, over a real worker process that ignores SIGTERM.
    script = (
        "import sys\n"
        "from openclaw_http_compat.reference.supervisor import Supervisor\n"
        f"command = [sys.executable, '-c', {STUBBORN_WORKER!r}]\n"
        "sys.exit(Supervisor(command, workers=1, ready_line='ready', stop_timeout=0.5).run())\n"
    )
    async with killed_on_exit("-c", script) as proc, asyncio.timeout(WAIT_S):
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await proc.communicate()
    assert (proc.returncode, stdout) == (1, b"")
    assert re.fullmatch(r"worker pid \d+ did not stop within 0\.5 s; killing it\n", stderr.decode()), stderr
