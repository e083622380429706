"""The ``mock_upstream`` fixture: the one mock OpenAI-compatible upstream on an aiohttp test server.

The upstream itself, its replies and its counters are defined once, in
:mod:`benchmarks.mock_upstream` (the benchmarks and the soak run the same one); this module
adds the fixture and re-exports the names the tests use. Import the fixture into a
``conftest.py`` to share it::

    mock_upstream.reply(StreamReply(deltas=("Hi", "!")))
    ... point a provider's baseUrl at mock_upstream.url ...
    assert mock_upstream.requests[0].json["model"] == "gpt-test"
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pytest_aiohttp import AiohttpServer

# Every public name of the one mock (its __all__), so that tests import them from here.
from benchmarks.mock_upstream import *  # noqa: F403
from benchmarks.mock_upstream import MockUpstream


@pytest.fixture
async def mock_upstream(aiohttp_server: AiohttpServer) -> AsyncIterator[MockUpstream]:
    """A running :class:`MockUpstream` on 127.0.0.1; ``.url`` is its base URL ending in ``/v1``."""
    upstream = MockUpstream()
    server = await aiohttp_server(upstream.app, host="127.0.0.1")
    assert server.runner is not None
    upstream.bind(server.runner)
    yield upstream
