"""A throwaway PostgreSQL cluster for the tests, and a fresh database per test.

:func:`pg_cluster` (session-scoped) runs ``initdb`` into a temp dir (trust auth; the server
listens on 127.0.0.1 only, on a free port, its socket in the temp dir) and ``pg_ctl start``;
at the end ``pg_ctl stop -m fast`` and the dir is removed. ``initdb`` and ``postgres`` refuse
to run as root, so as root they run as the ``postgres`` system user (``runuser``).

The cluster itself is :func:`benchmarks.pg.throwaway_cluster`, which the benchmarks share; it
finds the server binaries in ``OPENCLAW_TEST_PG_BIN`` (a directory), then on ``PATH``, then in
Debian's ``/usr/lib/postgresql/<version>/bin``. Without them, or without asyncpg, the
PostgreSQL tests are skipped with a message saying what to install.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from benchmarks.pg import HOW_TO_GET_ASYNCPG, HOW_TO_GET_POSTGRES, PgCluster, find_pg_bin, throwaway_cluster

__all__ = ("HOW_TO_GET_ASYNCPG", "HOW_TO_GET_POSTGRES", "PgCluster", "find_pg_bin", "pg_cluster", "pg_url")


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
    # fsync off: the cluster is thrown away, and the tests run faster.
    with throwaway_cluster(bin_dir, fsync=False) as cluster:
        yield cluster


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
