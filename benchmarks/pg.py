"""A throwaway PostgreSQL cluster: for the benchmarks, and for the tests (``tests/reference/pg.py``).

:func:`throwaway_cluster` runs ``initdb`` into a temp dir (trust auth; the server listens on
127.0.0.1 only, on a free port, its socket in the temp dir), ``pg_ctl start``, and on exit
``pg_ctl stop -m fast`` and removes the dir. ``initdb`` and ``postgres`` refuse to run as root,
so as root they run as the ``postgres`` system user (``runuser``).

The server binaries are looked up in ``OPENCLAW_TEST_PG_BIN`` (a directory), then on ``PATH``,
then in Debian's ``/usr/lib/postgresql/<version>/bin``. It imports no more than the standard
library, like :mod:`benchmarks.common`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Final

__all__ = ("HOW_TO_GET_ASYNCPG", "HOW_TO_GET_POSTGRES", "PgCluster", "find_pg_bin", "throwaway_cluster")

#: What to do to get the PostgreSQL server, shown when it is missing.
HOW_TO_GET_POSTGRES: Final = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql) or set "
    "OPENCLAW_TEST_PG_BIN to the directory holding initdb and pg_ctl"
)
HOW_TO_GET_ASYNCPG: Final = "pip install 'openclaw-http-compat[postgres]' (or the testing extra)"
_START_TIMEOUT_S: Final = 30


def find_pg_bin() -> pathlib.Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    override = os.environ.get("OPENCLAW_TEST_PG_BIN")
    candidates: list[pathlib.Path] = []
    if override is not None:
        candidates.append(pathlib.Path(override))
    else:
        found = shutil.which("initdb")
        if found is not None:
            candidates.append(pathlib.Path(found).resolve().parent)
        # Debian keeps the server binaries out of PATH, one directory per major version.
        candidates.extend(
            sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _major(p.parent.name), reverse=True)
        )
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _major(name: str) -> int:
    return int(name) if name.isdigit() else -1


def _free_port() -> int:
    # The port is free now; the server binds it a moment later (a race nothing else here runs).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class PgCluster:
    """A running throwaway cluster: superuser ``postgres``, trust auth, on 127.0.0.1:``port``."""

    port: int
    #: The cluster's data directory (``postmaster.pid`` names the server's pid).
    data_dir: pathlib.Path | None = None

    def url(self, database: str) -> str:
        """The ``postgresql://`` URL of ``database`` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def server_pid(self) -> int | None:
        """The postmaster's pid (its backends are its children), or ``None`` if unknown."""
        if self.data_dir is None:
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@contextlib.contextmanager
def throwaway_cluster(bin_dir: pathlib.Path, *, fsync: bool = False) -> Iterator[PgCluster]:
    """Start a cluster with the binaries in ``bin_dir``; stop it and remove its files on exit.

    ``fsync`` off (the default) suits a cluster that is thrown away; the benchmarks turn it on
    to measure what a real deployment pays for a commit.

    Raises:
        RuntimeError: the server did not start (its log is in the message).
        subprocess.CalledProcessError: ``initdb`` failed.
    """
    as_user: list[str] = []
    root = pathlib.Path(tempfile.mkdtemp(prefix="openclaw-pg-"))
    if os.geteuid() == 0:
        # initdb and postgres refuse to run as root: they run as the postgres system user,
        # which must own the directory.
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    log = root / "server.log"
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, timeout=_START_TIMEOUT_S,
        )  # fmt: skip
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -k {root} -c fsync={'on' if fsync else 'off'}"
        started = subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
             "-t", str(_START_TIMEOUT_S), "-o", options, "start"],
            capture_output=True, timeout=_START_TIMEOUT_S + 5,
        )  # fmt: skip
        if started.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stdout!r} {started.stderr!r}\n{server_log}")
        try:
            yield PgCluster(port, data)
        finally:
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True, timeout=_START_TIMEOUT_S,
            )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
