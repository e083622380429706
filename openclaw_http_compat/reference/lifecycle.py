"""The gateway's probes and its drain: ``/healthz``, ``/readyz``, and what SIGTERM starts.

* ``GET /healthz``: 200 ``{"ok": true}`` while the process serves HTTP at all (liveness).
* ``GET /readyz``: 200 ``{"ok": true}`` when the gateway takes new work: it is not draining
  and its session store answers a one-row read within :data:`STORE_CHECK_S`. Otherwise 503
  ``{"ok": false, "reason": "draining"}`` or ``{"ok": false, "reason": "store_unavailable"}``
  (readiness, for a load balancer). Both are public and never cached.

A drain (:func:`drain`) makes ``/readyz`` answer 503 at once, closes every response's
connection after it (so that keep-alive clients reconnect, to another replica), tells each
mounted endpoint and the WebSocket protocol to refuse new work (503 ``shutting_down`` with
``Retry-After``; ``shutting_down`` with ``retryAfterMs``) and waits up to the grace period
for the requests and runs already going, WebSocket runs included, to end on their own. The
runner's shutdown then ends whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aiohttp import hdrs, web

from openclaw_http_compat.plugin import start_drain, wait_drained

from .storage import STORE_ERRORS, TranscriptStore
from .ws import SOCKETS_KEY

__all__ = (
    "MOUNTED_KEY",
    "STATE_KEY",
    "STORE_CHECK_S",
    "GatewayState",
    "close_while_draining",
    "drain",
    "healthz",
    "readyz",
)

log = logging.getLogger(__name__)

#: How long the readiness check waits for the session store.
STORE_CHECK_S: Final = 2.0
#: The session the readiness check reads one row of; no run ever uses it (real keys start
#: with ``agent:``), so the read finds nothing, cheaply, through the store's usual index.
_PROBE_SESSION: Final = "openclaw:readyz"
_NO_STORE: Final = {"Cache-Control": "no-store"}
_CHECK_ERRORS: Final[tuple[type[Exception], ...]] = (TimeoutError, *STORE_ERRORS)


class GatewayState:
    """What the probes look at (set on the root app under :data:`STATE_KEY`)."""

    __slots__ = ("draining", "store")

    def __init__(self) -> None:
        #: True from the start of a drain on.
        self.draining = False
        #: The session store once the runtime opened it; ``None`` for a gateway built
        #: around another runner (nothing of ours to check).
        self.store: TranscriptStore | None = None


#: The gateway's probe state (root app).
STATE_KEY: Final = web.AppKey("openclaw_http_compat.reference.state", GatewayState)

#: The sub-applications the gateway's plugins mounted, drained on SIGTERM (root app).
MOUNTED_KEY: Final = web.AppKey("openclaw_http_compat.reference.mounted", tuple[web.Application, ...])


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: the process serves."""
    return web.json_response({"ok": True}, headers=_NO_STORE)


def _not_ready(reason: str) -> web.Response:
    return web.json_response({"ok": False, "reason": reason}, status=503, headers=_NO_STORE)


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: not draining, and the session store answers."""
    state = request.app[STATE_KEY]
    if state.draining:
        return _not_ready("draining")
    if state.store is not None:
        try:
            async with asyncio.timeout(STORE_CHECK_S):
                await state.store.load(_PROBE_SESSION, limit=1)
        except _CHECK_ERRORS as exc:
            log.warning("readiness: the session store does not answer (%s)", type(exc).__name__)
            return _not_ready("store_unavailable")
    return web.json_response({"ok": True}, headers=_NO_STORE)


async def close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: while draining, no connection is kept alive past its response."""
    state = request.config_dict.get(STATE_KEY)
    if state is not None and state.draining:
        response.force_close()
        # aiohttp has already written down the Connection header by the time this signal
        # runs: without saying so, the client would reuse the connection we close.
        response.headers[hdrs.CONNECTION] = "close"


async def drain(app: web.Application, grace_s: float, *, cut_short: asyncio.Event | None = None) -> bool:
    """Drain the gateway ``app``: refuse new work, wait up to ``grace_s`` for what is going.

    Args:
        app: the gateway's root application, serving.
        grace_s: how long requests and runs already going may take to end.
        cut_short: when set during the wait (a second signal), stop waiting at once.

    Returns:
        True when everything ended within the grace period.
    """
    app[STATE_KEY].draining = True
    mounted = app.get(MOUNTED_KEY, ())
    for subapp in mounted:
        start_drain(subapp)
    sockets = app.get(SOCKETS_KEY)
    if sockets is not None:
        sockets.start_draining()

    async def all_drained() -> bool:
        waits = [wait_drained(subapp, grace_s) for subapp in mounted]
        if sockets is not None:
            waits.append(sockets.wait_runs(grace_s))
        return all(await asyncio.gather(*waits))

    waiting = asyncio.ensure_future(all_drained())
    if cut_short is not None:
        stopper = asyncio.ensure_future(cut_short.wait())
        await asyncio.wait((waiting, stopper), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            return False
    return await waiting
