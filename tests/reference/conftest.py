"""Fixtures for the reference gateway's tests: a session store, a client session, the mock upstream."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from openclaw_http_compat.reference import SessionStore
from openclaw_http_compat.reference.http1 import HttpClient

from .mock_upstream import mock_upstream as mock_upstream


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
async def http() -> AsyncIterator[HttpClient]:
    """The HTTP client provider calls go through."""
    async with HttpClient() as client:
        yield client
