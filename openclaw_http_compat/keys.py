"""Every typed key this package stores on applications and requests, in one place to audit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from .config import HttpCompatConfig
from .host import Host, Principal
from .images import ImageFetcher
from .registry import OUTCOME_KEY, RunRegistry
from .run import Run

if TYPE_CHECKING:
    # Only a type here: attach.py reaches this module again through the stored routes.
    from .attach import LiveRuns

__all__ = (
    "CONFIG_KEY",
    "HOST_KEY",
    "IMAGES_KEY",
    "LIVE_RUNS_KEY",
    "OUTCOME_KEY",
    "PRINCIPAL_KEY",
    "RUNS_KEY",
    "RUN_KEY",
)

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

#: The agent run a chat request started (set by the handler, read by access logs).
RUN_KEY: Final = web.RequestKey("openclaw_http_compat.run", Run)

# OUTCOME_KEY (how that run's watch ended) is defined next to the registry that sets it.

#: Runs that may outlive their clients (Idempotency-Key, SDK retries, onDisconnect; our sub-app).
LIVE_RUNS_KEY: Final = web.AppKey["LiveRuns"]("openclaw_http_compat.live_runs")
