"""Outbound proxies for provider calls: the environment's (``HTTP_PROXY``, ``NO_PROXY``) and a provider's own.

The proxy is a real forward proxy on 127.0.0.1 (an ephemeral port): :class:`ForwardProxy`, a
small aiohttp server that takes absolute-form requests (``POST http://host:port/path HTTP/1.1``,
which aiohttp's server parses into ``raw_path``), records them and forwards them with a
``ClientSession`` of its own, streaming the answer back as it arrives. It was chosen over a
proxy package from PyPI run as a subprocess because it starts and stops with the test's own
event loop (no process to wait for, leave behind or kill, no port to poll), adds no dependency,
and speaks exactly what aiohttp's client sends to an ``http://`` proxy for an ``http://``
upstream. It does not implement ``CONNECT``: the ``https://`` upstream test tunnels through
pproxy, a maintained forward proxy, run in the test's own event loop.

Proxy variables are cleared for every reference test (``conftest.py``); each test here sets
its own with ``monkeypatch``, so none outlives it.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp
import pproxy
import pytest
import trustme
from aiohttp import web
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpServer

from openclaw_http_compat import AgentEvent, AgentRunRequest, RunEnd, RunError, RunUsage, TextDelta
from openclaw_http_compat.client import open_client_session
from openclaw_http_compat.reference.config import GatewayConfig
from openclaw_http_compat.reference import AgentRuntime, SessionStore

from .mock_upstream import MockUpstream, StreamReply

#: Headers about one hop, which a proxy does not pass on (RFC 9110, section 7.6.1).
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length"}
)


class ForwardProxy:
    """An HTTP/1.1 forward proxy for ``http://`` targets; see the module docstring.

    Attributes:
        seen: ``(method, request target)`` of each request it received, in order.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.url = ""
        self.session: aiohttp.ClientSession | None = None
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._forward)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        if not request.raw_path.startswith("http://"):
            raise web.HTTPBadRequest(text="a forward proxy takes absolute-form targets")
        assert self.session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        async with self.session.request(
            request.method, request.raw_path, headers=headers, data=await request.read(), allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
            return response


@pytest.fixture
async def forward_proxy(aiohttp_server: AiohttpServer) -> AsyncIterator[ForwardProxy]:
    """A running :class:`ForwardProxy`; ``.url`` is ``http://127.0.0.1:<port>``."""
    proxy = ForwardProxy()
    async with aiohttp.ClientSession() as session:
        proxy.session = session
        server = await aiohttp_server(proxy.app, host="127.0.0.1")
        proxy.url = f"http://127.0.0.1:{server.port}"
        yield proxy
        # The test server stops (its connections first) before this session closes.
        await server.close()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_config(upstream_url: str, **provider: Any) -> GatewayConfig:
    """Agent ``main`` on ``mock/gpt-test`` at ``upstream_url``; ``provider`` adds provider keys."""
    return GatewayConfig.from_mapping(
        {
            "gateway": {"auth": {"mode": "none"}},
            "agents": {"defaults": {"model": "mock/gpt-test"}},
            "models": {
                "providers": {
                    "mock": {"api": "openai-completions", "baseUrl": upstream_url, "apiKey": "sk-upstream", **provider}
                }
            },
        },
        env={},
    )


async def run_once(
    config: GatewayConfig, store: SessionStore, client_session: aiohttp.ClientSession, *, stream: bool = True
) -> list[AgentEvent]:
    """One run on a fresh runtime (so that its provider reads the environment now)."""
    runtime = AgentRuntime(config, store, client_session)
    request = AgentRunRequest(run_id="run-1", agent_id="main", session_key="s", message="hi", stream=stream)
    return [event async for event in runtime.run(request)]


def set_proxy_environment(monkeypatch: pytest.MonkeyPatch, variables: Mapping[str, str]) -> None:
    """Set proxy variables for this test only (conftest cleared every one, upper and lower case)."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_http_proxy_from_the_environment(
    forward_proxy: ForwardProxy,
    mock_upstream: MockUpstream,
    store: SessionStore,
    client_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    stream: bool,
) -> None:
    """With HTTP_PROXY set, the provider call goes to the proxy as an absolute-form request, and is answered."""
    set_proxy_environment(monkeypatch, {"HTTP_PROXY": forward_proxy.url})
    mock_upstream.reply(StreamReply(deltas=("via", " proxy")))
    events = await run_once(make_config(mock_upstream.url), store, client_session, stream=stream)
    assert events == [TextDelta("via"), TextDelta(" proxy"), RunUsage(input=8, output=3), RunEnd("stop")]
    assert forward_proxy.seen == [("POST", f"{mock_upstream.url}/chat/completions")]
    (received,) = mock_upstream.requests
    assert received.json["stream"] is stream
    assert received.headers["Authorization"] == "Bearer sk-upstream"


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
async def test_no_proxy_bypasses_the_environment_proxy(
    forward_proxy: ForwardProxy,
    mock_upstream: MockUpstream,
    store: SessionStore,
    client_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    """A host NO_PROXY lists is called directly: the proxy sees nothing."""
    set_proxy_environment(monkeypatch, {"HTTP_PROXY": forward_proxy.url, "NO_PROXY": no_proxy})
    events = await run_once(make_config(mock_upstream.url), store, client_session)
    assert events == [TextDelta("Hello"), TextDelta(" world"), RunUsage(input=8, output=3), RunEnd("stop")]
    assert forward_proxy.seen == []
    assert len(mock_upstream.requests) == 1


async def test_https_proxy_is_not_used_for_an_http_upstream(
    forward_proxy: ForwardProxy,
    mock_upstream: MockUpstream,
    store: SessionStore,
    client_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS_PROXY is for https:// upstreams only; an http:// upstream is called directly."""
    set_proxy_environment(monkeypatch, {"HTTPS_PROXY": forward_proxy.url})
    assert (await run_once(make_config(mock_upstream.url), store, client_session))[-1] == RunEnd("stop")
    assert forward_proxy.seen == []


async def test_provider_proxy_wins_over_the_environment(
    forward_proxy: ForwardProxy,
    mock_upstream: MockUpstream,
    store: SessionStore,
    client_session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """models.providers.<id>.proxy is used even where the environment names another proxy (here a dead one)
    or none (NO_PROXY)."""
    set_proxy_environment(monkeypatch, {"HTTP_PROXY": f"http://127.0.0.1:{closed_port()}", "NO_PROXY": "*"})
    events = await run_once(make_config(mock_upstream.url, proxy=forward_proxy.url), store, client_session)
    assert events == [TextDelta("Hello"), TextDelta(" world"), RunUsage(input=8, output=3), RunEnd("stop")]
    assert forward_proxy.seen == [("POST", f"{mock_upstream.url}/chat/completions")]
    assert len(mock_upstream.requests) == 1


async def test_unreachable_proxy_is_a_connection_failure(
    mock_upstream: MockUpstream, store: SessionStore, client_session: aiohttp.ClientSession
) -> None:
    """A provider proxy nothing listens on fails the run as a connection failure; the upstream is never called."""
    config = make_config(mock_upstream.url, proxy=f"http://127.0.0.1:{closed_port()}")
    assert await run_once(config, store, client_session) == [
        RunError(message="upstream unreachable", reason="unreachable")
    ]
    assert mock_upstream.requests == []


async def test_https_proxy_tunnels_to_an_https_upstream(
    aiohttp_server: AiohttpServer, store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY set, an ``https://`` provider is reached through the proxy's ``CONNECT``
    tunnel, TLS verified end to end against the upstream's own certificate.

    The proxy is pproxy, a maintained forward proxy, run in this test's event loop; its
    verbose log names each tunnel's target. HTTP_PROXY points nowhere: it must not be used.
    """
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    upstream = MockUpstream(StreamReply(deltas=("over", " tls")))
    server = await aiohttp_server(upstream.app, host="127.0.0.1", ssl=server_context)
    seen: list[str] = []
    proxy = await pproxy.Server("http://127.0.0.1:0").start_server({"rserver": [], "verbose": seen.append})
    try:
        proxy_port = proxy.sockets[0].getsockname()[1]
        set_proxy_environment(
            monkeypatch,
            {"HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}", "HTTP_PROXY": f"http://127.0.0.1:{closed_port()}"},
        )
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        async with open_client_session(ssl_context=client_context) as session:
            events = await run_once(make_config(f"https://127.0.0.1:{server.port}/v1"), store, session)
    finally:
        proxy.close()
        await proxy.wait_closed()
    # The mock reports no usage: the provider's estimate (#10) comes before the end.
    assert events == [TextDelta("over"), TextDelta(" tls"), RunUsage(input=8, output=2), RunEnd("stop")]
    assert len(seen) == 1 and re.fullmatch(rf"http 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{server.port}", seen[0]), seen
    assert upstream.requests[0].json["model"] == "gpt-test"
