"""Child processes: the servers under test and the asyncio load generator.

Every server is started with its stdin on a pipe we hold: it exits when we close it or die.
:class:`ServerProcess` always terminates (then kills) its child on exit.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO, Any

from .common import ROOT, child_env, python


class ServerError(RuntimeError):
    """A benchmark server did not start."""


class ServerProcess:
    """``python -m benchmarks.servers KIND ARGS...`` as a context manager."""

    def __init__(self, kind: str, *args: str, start_timeout: float = 30.0) -> None:
        self.kind = kind
        self.args = args
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.pid = 0
        self._stderr: IO[bytes] | None = None

    def start(self) -> ServerProcess:
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [python(), "-m", "benchmarks.servers", self.kind, *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            env=child_env(),
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout, self.start_timeout)
        if not line.startswith("READY "):
            self.stop()
            raise ServerError(f"{self.kind} server did not start: {line!r} {self.stderr_text()[-2000:]}")
        _, port, pid = line.split()
        self.port, self.pid = int(port), int(pid)
        return self

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


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
