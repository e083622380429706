"""Every typed key this package stores on applications and requests, in one place to audit."""

from __future__ import annotations

from typing import Final

import aiohttp
from aiohttp import web

from .config import HttpCompatConfig
from .host import Host, Principal
from .registry import RunRegistry

__all__ = ("CLIENT_SESSION_KEY", "CONFIG_KEY", "HOST_KEY", "PRINCIPAL_KEY", "RUNS_KEY")

#: The gateway config the sub-app was built from (set on our sub-app).
CONFIG_KEY: Final = web.AppKey("openclaw_http_compat.config", HttpCompatConfig)

#: The host contract: runner, authenticator, roster (set on our sub-app).
HOST_KEY: Final = web.AppKey("openclaw_http_compat.host", Host)

#: Agent runs in flight, so that shutdown can end their responses properly (our sub-app).
RUNS_KEY: Final = web.AppKey("openclaw_http_compat.runs", RunRegistry)

#: Who the request authenticated as; set by the auth middleware (gateway's or ours).
PRINCIPAL_KEY: Final = web.RequestKey("openclaw_http_compat.principal", Principal)

#: The gateway's one outbound HTTP session (set on the gateway's root app by
#: ``client_session_context``; the plugin reaches it through ``request.config_dict``).
CLIENT_SESSION_KEY: Final = web.AppKey("openclaw_http_compat.client_session", aiohttp.ClientSession)
