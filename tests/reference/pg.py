"""A throwaway PostgreSQL cluster for the tests, and a fresh database per test.

:func:`pg_cluster` (session-scoped) runs ``initdb`` into a temp dir (trust auth; the server
listens on 127.0.0.1 only, on a free port, its socket in the temp dir) and ``pg_ctl start``;
at the end ``pg_ctl stop -m fast`` and the dir is removed. ``initdb`` and ``postgres`` refuse
to run as root, so as root they run as the ``postgres`` system user (``runuser``).

The server binaries are looked up in ``OPENCLAW_TEST_PG_BIN`` (a directory), then on ``PATH``,
then in Debian's ``/usr/lib/postgresql/<version>/bin``. Without them, or without asyncpg, the
PostgreSQL tests are skipped with a message saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest

#: What to do to run the PostgreSQL tests, shown when they are skipped.
HOW_TO_GET_POSTGRES = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql) or set "
    "OPENCLAW_TEST_PG_BIN to the directory holding initdb and pg_ctl"
)
HOW_TO_GET_ASYNCPG = "pip install 'openclaw-http-compat[postgres]' (or the testing extra)"
_START_TIMEOUT_S = 30


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
    # The port is free now; the server binds it a moment later (a race no other test runs).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.frozen
class PgCluster:
    """A running throwaway cluster: superuser ``postgres``, trust auth, on 127.0.0.1:``port``."""

    port: int

    def url(self, database: str) -> str:
        """The ``postgresql://`` URL of ``database`` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster for the whole test session; skipped (with a message) when unavailable."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.skip(f"PostgreSQL tests need asyncpg: {HOW_TO_GET_ASYNCPG}")
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL tests need the server binaries (initdb, pg_ctl): {HOW_TO_GET_POSTGRES}")
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
        # fsync off: the cluster is thrown away, and the tests run faster.
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -k {root} -c fsync=off"
        started = subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
             "-t", str(_START_TIMEOUT_S), "-o", options, "start"],
            capture_output=True, timeout=_START_TIMEOUT_S + 5,
        )  # fmt: skip
        if started.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stdout!r} {started.stderr!r}\n{server_log}")
        try:
            yield PgCluster(port)
        finally:
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True, timeout=_START_TIMEOUT_S,
            )  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def pg_url(pg_cluster: PgCluster) -> AsyncIterator[str]:
    """The URL of a new, empty database on the test cluster, dropped after the test."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(pg_cluster.url("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield pg_cluster.url(name)
    finally:
        admin = await asyncpg.connect(pg_cluster.url("postgres"))
        try:
            # FORCE: a connection the test leaked must not keep the database alive.
            with contextlib.suppress(asyncpg.PostgresError):
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
