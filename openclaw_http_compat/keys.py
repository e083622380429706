"""Every typed key this package stores on applications and requests, in one place to audit."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from .attach import LiveRuns
from .config import HttpCompatConfig
from .host import Host, Principal
from .images import ImageFetcher
from .registry import RunRegistry

__all__ = ("CONFIG_KEY", "HOST_KEY", "IMAGES_KEY", "LIVE_RUNS_KEY", "PRINCIPAL_KEY", "RUNS_KEY")

#: The gateway config the sub-app was built from (set on our sub-app).
CONFIG_KEY: Final = web.AppKey("openclaw_http_compat.config", HttpCompatConfig)

#: The host contract: runner, authenticator, roster (set on our sub-app).
HOST_KEY: Final = web.AppKey("openclaw_http_compat.host", Host)

#: Agent runs in flight, so that shutdown can end their responses properly (our sub-app).
RUNS_KEY: Final = web.AppKey("openclaw_http_compat.runs", RunRegistry)

#: Who the request authenticated as; set by the auth middleware (gateway's or ours).
PRINCIPAL_KEY: Final = web.RequestKey("openclaw_http_compat.principal", Principal)

#: Fetches remote image URLs on the guarded pool of its own (our sub-app; set, and closed
#: again, by its cleanup context).
IMAGES_KEY: Final = web.AppKey("openclaw_http_compat.images", ImageFetcher)

#: Runs that may outlive their clients (Idempotency-Key, SDK retries, onDisconnect; our sub-app).
LIVE_RUNS_KEY: Final = web.AppKey("openclaw_http_compat.live_runs", LiveRuns)
