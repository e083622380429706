"""The gateway's access log: one line per request, as text (logfmt) or as one JSON object.

Each line holds the request id (the ``x-request-id`` every response carries), method,
route (the matched route's template, never the raw path or query), status, duration and
time to first byte (until the response head went out) in milliseconds, the client IP
(through ``gateway.trustedProxies``) and, for a chat completion, the agent, the session key
as a short hash, the run's outcome and its token counts. Never a credential, never message
text. In text form a field with no value is ``-``; in JSON it is ``null``::

    request_id=chatcmpl_1f… method=POST route=/v1/chat/completions status=200 duration_ms=2012.4
    ttfb_ms=3.1 client_ip=127.0.0.1 agent=main session=5e8f0c2a91d3 outcome=completed
    prompt_tokens=12 completion_tokens=40 cached_tokens=0

:func:`configure_logging` sets up stderr logging in the chosen format for the whole
process; :func:`access_logger_class` is what the gateway hands to its ``AppRunner``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import uuid
from typing import Any, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from openclaw_http_compat import HttpCompatConfig
from openclaw_http_compat.auth import client_ip
from openclaw_http_compat.facts import run_facts

from .config import LogFormat

__all__ = (
    "ACCESS_FIELDS",
    "REQUEST_ID",
    "JsonFormatter",
    "access_fields",
    "access_logger_class",
    "configure_logging",
    "format_text",
    "stamp_response",
)

#: The response header naming the request.
REQUEST_ID: Final = "x-request-id"
#: The fields of an access line, in order.
ACCESS_FIELDS: Final = (
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "ttfb_ms",
    "client_ip",
    "agent",
    "session",
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
)
_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# With several processes every log line says which one wrote it.
_FLEET_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"

#: When the response head went out, on the loop's clock (set by :func:`stamp_response`).
_PREPARED_AT: Final = web.RequestKey("openclaw_http_compat.reference.prepared_at", float)


async def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of the gateway: give the response a request id if it has none
    (the endpoint names its own), and note when its head went out (time to first byte)."""
    if REQUEST_ID not in response.headers:
        response.headers[REQUEST_ID] = f"req_{uuid.uuid4().hex}"
    # The first head only: a stand-in answer prepared after it (a 499 for a client that
    # left mid-stream) does not move the time to first byte.
    if _PREPARED_AT not in request:
        request[_PREPARED_AT] = asyncio.get_running_loop().time()


def _route(request: web.BaseRequest) -> str | None:
    match_info = request.match_info if isinstance(request, web.Request) else None
    resource = match_info.route.resource if match_info is not None else None
    return resource.canonical if resource is not None else None


def access_fields(
    request: web.BaseRequest, response: web.StreamResponse, duration_s: float, now: float, *, config: HttpCompatConfig
) -> dict[str, Any]:
    """The access-log fields of one answered request (``None`` where there is no value).

    Args:
        duration_s: how long the request took, as aiohttp measured it.
        now: the loop's clock when it ended.
        config: the plugin's config, for the trusted proxies behind ``client_ip``.
    """
    prepared_at = request.get(_PREPARED_AT)
    ttfb_ms = None if prepared_at is None else round(max(0.0, prepared_at - (now - duration_s)) * 1000, 1)
    facts = run_facts(request)
    return {
        "request_id": response.headers.get(REQUEST_ID),
        "method": request.method,
        "route": _route(request),
        "status": response.status,
        "duration_ms": round(duration_s * 1000, 1),
        "ttfb_ms": ttfb_ms,
        "client_ip": client_ip(
            request, config.trusted_proxies, allow_real_ip_fallback=config.allow_real_ip_fallback
        ),
        "agent": facts.agent_id if facts else None,
        "session": facts.session if facts else None,
        "outcome": facts.outcome if facts else None,
        "prompt_tokens": facts.prompt_tokens if facts else None,
        "completion_tokens": facts.completion_tokens if facts else None,
        "cached_tokens": facts.cached_tokens if facts else None,
    }


def format_text(fields: dict[str, Any]) -> str:
    """The text form of an access line: ``key=value`` pairs, ``-`` for no value."""
    return " ".join(f"{key}={'-' if value is None else value}" for key, value in fields.items())


def access_logger_class(config: HttpCompatConfig, log_format: LogFormat) -> type[AbstractAccessLogger]:
    """The access logger class for the gateway's ``AppRunner`` (``access_log_class``).

    Lines go to the runner's access logger (``aiohttp.access``) at INFO, with the fields
    also attached to the record as ``access`` for :class:`JsonFormatter`.
    """

    class AccessLogger(AbstractAccessLogger):
        """One line per request; see :mod:`openclaw_http_compat.reference.accesslog`."""

        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            now = asyncio.get_running_loop().time()
            fields = access_fields(request, response, time, now, config=config)
            message = json.dumps(fields) if log_format == "json" else format_text(fields)
            self.logger.info("%s", message, extra={"access": fields})

        @property
        def enabled(self) -> bool:
            return self.logger.isEnabledFor(logging.INFO)

    return AccessLogger


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line.

    Every object has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``pid``; an access
    line adds its fields (:data:`ACCESS_FIELDS`), any other record its ``message`` (and
    ``exception``, the traceback, when it has one).
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            out.update(access)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(log_format: LogFormat, *, fleet: bool = False) -> None:
    """Log at INFO to stderr in ``log_format`` (``gateway.logging.format``), for the whole process.

    Args:
        fleet: the process is one of several (``--workers``): text lines name its pid.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_FLEET_TEXT_FORMAT if fleet else _TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
