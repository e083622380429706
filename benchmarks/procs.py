"""Child processes: the servers under test, the gateway of the soak, and the asyncio load generator.

Every server is started with its stdin on a pipe we hold: the servers of
``benchmarks.servers`` exit when we close it or die. :class:`ChildProcess` always stops (then
kills) its child on exit.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Final, Self

from .common import ROOT, child_env, python

#: The line a ``benchmarks.servers`` process prints once it listens: ``READY <port> <pid>``.
READY: Final = re.compile(r"^READY (\d+)")


class ServerError(RuntimeError):
    """A child server did not start."""


class ChildProcess:
    """A child process that announces its port in its first line on stdout, as a context manager.

    ``ready`` finds the port (its first group) in that line. The child's stderr goes to a
    temporary file, readable with :meth:`log_text` until :meth:`close`; it runs in the
    repository root with :func:`~benchmarks.common.child_env`, plus ``env``.
    """

    def __init__(self, name: str, argv: Sequence[str], *, ready: re.Pattern[str] = READY,
                 start_timeout: float = 30.0, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready = ready
        self.start_timeout = start_timeout
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.pid = 0
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        """Start the child and wait for its port; :class:`ServerError` if it does not come."""
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT,
            env=child_env() | self.env,
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout, self.start_timeout)
        match = self.ready.search(line)
        if match is None:
            self.stop()
            raise ServerError(f"{self.name} did not start: {line!r} {self.log_text()[-2000:]}")
        self.port, self.pid = int(match.group(1)), self.proc.pid
        return self

    def log_text(self) -> str:
        """What the child wrote to stderr."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then wait up to ``timeout`` s; the exit status, or ``None`` when it had to be killed."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        status: int | None = None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        return status

    def close(self) -> None:
        """Stop the child, and drop its log."""
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ServerProcess(ChildProcess):
    """``python -m benchmarks.servers KIND ARGS...`` as a context manager."""

    def __init__(self, kind: str, *args: str, start_timeout: float = 30.0) -> None:
        super().__init__(f"{kind} server", [python(), "-m", "benchmarks.servers", kind, *args],
                         start_timeout=start_timeout)
        self.kind = kind
        self.args = args


def _read_line(stream: IO[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    fd = stream.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def run_client(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one scenario in a separate asyncio client process; its JSON result."""
    proc = subprocess.run(
        [python(), "-m", "benchmarks.client", json.dumps(spec)],
        capture_output=True,
        cwd=ROOT,
        env=child_env(),
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"client failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
