"""``gateway --workers N``: one port served by N gateway processes under a small supervisor.

The supervisor serves nothing itself. It reserves the address, starts N workers (each the
ordinary ``gateway`` command with a hidden ``--worker-of PID`` option), announces once every
worker is ready, restarts a worker that dies, and forwards SIGTERM/SIGINT to them on shutdown.

* **One port.** The supervisor binds a ``SO_REUSEPORT`` socket first (resolving port 0 to a
  real port) and keeps it, bound but never listening, for its whole life; workers bind the
  same address with ``SO_REUSEPORT`` and the kernel spreads new connections over the
  listening sockets only. Keeping the reservation means that no other program can take the
  port between a worker's death and its replacement's bind, which matters most for port 0.
  (Linux only lets sockets of the same user join a ``SO_REUSEPORT`` group.)
* **Readiness.** A worker prints its "listening on" line once its site has started; the
  supervisor reads each worker's stdout and prints its own line once all N have done so.
* **Restart.** A worker that exits while the supervisor is not stopping is logged (pid and
  exit status) and restarted after a backoff that grows while workers die young. A worker
  that exits before it was ever ready, :data:`MAX_START_FAILURES` times in a row, stops the
  supervisor with exit 1 rather than looping.
* **Shutdown.** SIGTERM/SIGINT are forwarded once to every worker (workers run in their own
  process group so that a terminal's Ctrl-C reaches them once, through the supervisor); each
  worker drains (``gateway.shutdown.graceMs``) and exits. The supervisor waits up to its stop
  timeout (:func:`stop_timeout_for` the grace period: the grace plus :data:`END_MARGIN_S`)
  for them, then SIGKILLs the rest and exits 1; otherwise it exits 0. A worker also receives SIGTERM if the supervisor itself
  dies (``PR_SET_PDEATHSIG``), so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

__all__ = (
    "MAX_START_FAILURES",
    "END_MARGIN_S",
    "STOP_TIMEOUT_S",
    "WORKER_OPTION",
    "Supervisor",
    "die_with_supervisor",
    "reserve_port",
    "stop_timeout_for",
)

_log = logging.getLogger(__name__)

#: The hidden ``gateway`` option that makes a process a worker; its value is the supervisor's pid.
WORKER_OPTION: Final = "--worker-of"
#: What a worker may need past its drain's grace period to end the runs still going and exit
#: (at worst 3 s for runs to write their last frame, 1 s for other handlers; usually far less).
END_MARGIN_S: Final = 5.0
#: The stop timeout for the default grace period (``gateway.shutdown.graceMs`` 25000).
STOP_TIMEOUT_S: Final = 25.0 + END_MARGIN_S
#: Consecutive start-up failures (exit before ready) of one worker slot that stop the supervisor.
MAX_START_FAILURES: Final = 3
#: How long a worker may take to print its "listening on" line.
_START_TIMEOUT_S: Final = 60.0
_BACKOFF_FIRST_S: Final = 0.1
_BACKOFF_MAX_S: Final = 5.0
#: A worker that lived at least this long resets the backoff: it was not crash-looping.
_HEALTHY_AFTER_S: Final = 10.0
_READY_MARKER: Final = b" listening on "
_PR_SET_PDEATHSIG: Final = 1


class _StartFailed(Exception):
    """A worker slot failed to start :data:`MAX_START_FAILURES` times in a row."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a ``SO_REUSEPORT`` socket on ``host``/``port``; keep it to hold the port.

    Raises:
        OSError: the address cannot be bound (e.g. a process without ``SO_REUSEPORT`` holds it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def die_with_supervisor(supervisor_pid: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies, then check the parent is still ``supervisor_pid``.

    Without it a worker whose supervisor was SIGKILLed would keep serving the port alone.
    (Linux sends it when the thread that forked us ends: the supervisor spawns workers from its
    event loop, in its main thread, so that is when the supervisor exits.)
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    # The supervisor may have died before prctl: then nobody would ever signal us.
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def stop_timeout_for(grace_ms: int) -> float:
    """How long the supervisor waits for draining workers: their grace period plus :data:`END_MARGIN_S`."""
    return grace_ms / 1000 + END_MARGIN_S


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class Supervisor:
    """Keeps ``workers`` processes running ``worker_command`` until SIGTERM/SIGINT; see the module docstring.

    Args:
        worker_command: argv of one worker (it must print a "listening on" line once ready).
        workers: how many workers to keep running (at least 1).
        ready_line: what to print once every worker is ready.
        stop_timeout: how long workers may drain after the stop signal before they are killed.
        on_worker_exit: called with the pid of every worker reaped (e.g. to drop its live metrics).
    """

    def __init__(
        self,
        worker_command: Sequence[str],
        *,
        workers: int,
        ready_line: str,
        stop_timeout: float = STOP_TIMEOUT_S,
        on_worker_exit: Callable[[int], None] | None = None,
    ) -> None:
        self._command = tuple(worker_command)
        self._stop_timeout = stop_timeout
        self._workers = workers
        self._ready_line = ready_line
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._ready: list[asyncio.Event] = []
        self._stop_signal: signal.Signals | None = None
        self._stopping: asyncio.Event | None = None
        self._on_worker_exit = on_worker_exit

    def run(self) -> int:
        """Run until stopped; returns the exit code (0: stopped cleanly, 1: a worker could not start or stop)."""
        return asyncio.run(self._run())

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._ready = [asyncio.Event() for _ in range(self._workers)]
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum, f"{signum.name} received")
        slots = [asyncio.create_task(self._keep(slot)) for slot in range(self._workers)]
        announcer = asyncio.create_task(self._announce())
        exit_code = 0
        # A slot ends only by raising (it gave up) or once stopping is set: wait for either,
        # then give the workers stop_timeout to drain.
        stopping = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait([*slots, stopping], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and task.exception() is not None:
                if isinstance(task.exception(), _StartFailed):
                    print(f"error: {task.exception()}", file=sys.stderr, flush=True)
                exit_code = 1
                self._stop(signal.SIGTERM, "a worker cannot start")
        stopping.cancel()
        announcer.cancel()
        _, pending = await asyncio.wait(slots, timeout=self._stop_timeout)
        if pending:
            exit_code = 1
            for proc in self._live():
                _log.error("worker pid %d did not stop within %g s; killing it", proc.pid, self._stop_timeout)
                proc.kill()
            await asyncio.wait(slots)
        for task in slots:
            if not isinstance(task.exception(), _StartFailed):
                task.result()  # re-raises a bug in _keep rather than hiding it
        return exit_code

    def _live(self) -> list[asyncio.subprocess.Process]:
        return [proc for proc in self._procs.values() if proc.returncode is None]

    def _stop(self, signum: signal.Signals, reason: str) -> None:
        assert self._stopping is not None
        if self._stop_signal is not None:
            # Forwarded once: a second signal would cut a worker's drain short.
            _log.info("already stopping; %s ignored", signum.name)
            return
        self._stop_signal = signum
        self._stopping.set()
        _log.info("%s; stopping %d workers", reason, len(self._live()))
        for proc in self._live():
            proc.send_signal(signum)

    async def _announce(self) -> None:
        for event in self._ready:
            await event.wait()
        print(self._ready_line, flush=True)

    async def _keep(self, slot: int) -> None:
        """Run the worker of ``slot`` and replace it whenever it dies, until the supervisor stops."""
        assert self._stopping is not None
        start_failures = 0
        backoff = _BACKOFF_FIRST_S
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                # Its own process group: a terminal's SIGINT reaches the worker only through us.
                process_group=0,
            )
            self._procs[slot] = proc
            if self._stop_signal is not None:
                # The signal came while this worker was being spawned: _stop did not see it.
                proc.send_signal(self._stop_signal)
            _log.info("worker %d started (pid %d)", slot, proc.pid)
            became_ready = await self._follow(proc, slot)
            returncode = await proc.wait()
            if self._on_worker_exit is not None:
                self._on_worker_exit(proc.pid)
            if self._stopping.is_set():
                _log.info("worker pid %d stopped (%s)", proc.pid, _describe(returncode))
                return
            if not became_ready:
                start_failures += 1
                if start_failures >= MAX_START_FAILURES:
                    raise _StartFailed(
                        f"worker failed to start {start_failures} times in a row "
                        f"(last: pid {proc.pid}, {_describe(returncode)}); see its log above"
                    )
            else:
                start_failures = 0
            backoff = _BACKOFF_FIRST_S if time.monotonic() - started >= _HEALTHY_AFTER_S else backoff
            _log.warning(
                "worker pid %d exited unexpectedly (%s); restarting in %.1f s", proc.pid, _describe(returncode), backoff
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _follow(self, proc: asyncio.subprocess.Process, slot: int) -> bool:
        """Read the worker's stdout to its end; returns whether it announced that it was ready."""
        assert proc.stdout is not None
        ready = False
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while not ready:
                    line = await proc.stdout.readline()
                    if not line:
                        return False
                    if _READY_MARKER in line:
                        ready = True
                        self._ready[slot].set()
                    else:
                        sys.stdout.buffer.write(line)
                        sys.stdout.flush()
        except TimeoutError:
            _log.error("worker pid %d not ready after %.0f s; killing it", proc.pid, _START_TIMEOUT_S)
            proc.kill()
            return False
        # Keep draining, so that a chatty worker never blocks on a full pipe.
        while line := await proc.stdout.readline():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        return True
