"""CORS in a real browser: headless Chromium streams a completion from a page on another origin.

The reference gateway (token auth, ``gateway.http.cors.allowOrigins`` = one page origin) and
two page servers run on 127.0.0.1, each on its own port, so each is its own origin. Chromium
(Debian's ``chromium``, started headless with a fresh profile) is driven over the DevTools
protocol through aiohttp's WebSocket client: it opens the page, whose script ``fetch``es a
streamed completion with ``Authorization``, ``Content-Type`` and an ``x-openclaw-*`` header
(so the browser sends a preflight first), reads the SSE body as it arrives, shows the text
and the exposed ``x-request-id``. From the allowed origin the page shows the whole reply;
from the other origin the browser blocks the call and the upstream never sees it.

Skipped, saying so, when no Chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import shutil
import signal
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web

from openclaw_http_compat.reference.app import build_gateway_app
from openclaw_http_compat.reference.config import GatewayConfig

from .mock_upstream import MockUpstream, StreamReply
from .test_faults import TOKEN

CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)"
)

CHROMIUM_FLAGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)
DEVTOOLS: Final = re.compile(rb"DevTools listening on (ws://\S+)")
#: Bound on everything the browser does in one test.
WAIT_S: Final = 30.0

PAGE: Final = """<!doctype html>
<html><head><title>waiting</title></head><body><pre id="out"></pre><script>
(async () => {
  const out = document.getElementById("out");
  try {
    const resp = await fetch("GATEWAY/v1/chat/completions", {
      method: "POST",
      headers: {
        "Authorization": "Bearer TOKEN",
        "Content-Type": "application/json",
        "x-openclaw-agent-id": "main",
      },
      body: JSON.stringify({model: "openclaw", stream: true, messages: [{role: "user", content: "hi"}]}),
    });
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    let finished = false;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffered.indexOf("\\n\\n")) >= 0) {
        const frame = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        if (!frame.startsWith("data: ")) continue;
        const data = frame.slice(6);
        if (data === "[DONE]") { finished = true; continue; }
        const delta = JSON.parse(data).choices[0]?.delta;
        if (delta && delta.content) out.textContent += delta.content;
      }
    }
    document.title = (finished ? "done " : "cut ") + resp.status + " " + resp.headers.get("x-request-id");
  } catch (error) {
    document.title = "blocked " + error.name;
  }
})();
</script></body></html>
"""


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """``app`` on 127.0.0.1 (an ephemeral port); yields its origin."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class DevTools:
    """A DevTools protocol connection to the browser (commands answered by id; events skipped)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_json(message)
        while True:
            answer = await self.ws.receive_json()
            if answer.get("id") == self.last_id:
                assert "error" not in answer, answer
                return answer["result"]

    async def open_page(self, url: str) -> str:
        """Open ``url`` in a new tab; returns the session attached to it."""
        target = await self.call("Target.createTarget", {"url": url})
        attached = await self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        return str(attached["sessionId"])

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(profile: pathlib.Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fresh profile, and a DevTools connection to it; killed on exit."""
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its helper processes share its group, ended with it
    )
    try:
        assert proc.stderr is not None
        async with asyncio.timeout(WAIT_S):
            while not (match := DEVTOOLS.search(await proc.stderr.readline())):
                assert proc.returncode is None
        # Keep reading its log, so that a chatty browser never blocks on a full pipe.
        drain = asyncio.create_task(proc.stderr.read())
        async with aiohttp.ClientSession() as session, session.ws_connect(
            match.group(1).decode(), max_msg_size=0
        ) as ws:
            yield DevTools(ws)
        drain.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def page_outcome(devtools: DevTools, url: str) -> tuple[str, str]:
    """Open ``url``, wait until its script has finished; returns (title, shown text)."""
    session = await devtools.open_page(url)
    async with asyncio.timeout(WAIT_S):
        while (title := await devtools.evaluate(session, "document.title")) in ("", "waiting", None):
            await asyncio.sleep(0.05)
    text = await devtools.evaluate(session, "document.getElementById('out').textContent")
    return str(title), str(text)


def gateway_config(upstream: MockUpstream, state: pathlib.Path, allowed: str) -> GatewayConfig:
    return GatewayConfig.from_mapping(
        {
            "gateway": {
                "auth": {"mode": "token", "token": TOKEN},
                "stateDir": str(state),
                "http": {"endpoints": {"chatCompletions": {"enabled": True}}, "cors": {"allowOrigins": [allowed]}},
            },
            "agents": {"list": [{"id": "main", "default": True, "model": "mock/m"}]},
            "models": {"providers": {"mock": {"baseUrl": upstream.url, "api": "openai-completions"}}},
        },
        env={},
    )


async def test_browser_streams_from_the_allowed_origin_and_is_blocked_elsewhere(
    mock_upstream: MockUpstream, tmp_path: pathlib.Path
) -> None:
    """The allowed page shows every streamed word and the exposed x-request-id; the other page is blocked."""
    mock_upstream.default = StreamReply(deltas=("Hello", " from", " the", " gateway"), delay_s=0.05)
    # The pages must know the gateway's origin and the gateway the allowed page's: the page
    # servers start first, and serve the page once the gateway's port is known.
    allowed_page = web.Application()
    other_page = web.Application()
    page_html: dict[str, str] = {}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=page_html["html"], content_type="text/html")

    allowed_page.router.add_get("/", page)
    other_page.router.add_get("/", page)
    async with serve(allowed_page) as allowed, serve(other_page) as other:
        app = build_gateway_app(gateway_config(mock_upstream, tmp_path / "state", allowed))
        async with serve(app) as gateway:
            page_html["html"] = PAGE.replace("GATEWAY", gateway).replace("TOKEN", TOKEN)
            async with chromium(tmp_path / "profile") as devtools:
                shown = await page_outcome(devtools, f"{allowed}/")
                requests_after_allowed = len(mock_upstream.requests)
                blocked = await page_outcome(devtools, f"{other}/")
    title, text = shown
    assert re.fullmatch(r"done 200 chatcmpl_[0-9a-f-]{36}", title), title
    assert text == "Hello from the gateway"
    assert blocked == ("blocked TypeError", "")
    assert requests_after_allowed == 1
    assert len(mock_upstream.requests) == 1  # the blocked page's call never reached the upstream
