"""Fixtures for the reference gateway's tests: a session store, a client session, the mock upstream."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from openclaw_http_compat.client import open_client_session
from openclaw_http_compat.reference import SessionStore

from .mock_upstream import mock_upstream as mock_upstream

#: Every variable :func:`openclaw_http_compat.client.env_proxy` (or urllib) may read, in both cases.
PROXY_VARIABLES = tuple(
    name for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy") for name in (base, base.upper())
)


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Provider calls go to the local mock upstream directly, whatever proxy the machine sets.

    A test that wants a proxy sets it with ``monkeypatch`` after this, and the variables are
    restored when it ends.
    """
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    """A database path whose parent directories do not exist yet."""
    return tmp_path / "state" / "sessions" / "sessions.sqlite"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[SessionStore]:
    """An opened session store, closed afterwards."""
    session_store = SessionStore(db_path)
    await session_store.open()
    yield session_store
    await session_store.close()


@pytest.fixture
async def client_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The client session provider calls go through, as the gateway opens it."""
    async with open_client_session() as client_session:
        yield client_session
