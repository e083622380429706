"""Exceptions, and the one JSON shape every error takes on the wire.

The hierarchy::

    HttpCompatError                 root of everything this package raises on purpose
    ├── ConfigError                 bad config at start-up (names the dotted key)
    ├── ApiError                    an error answered to an HTTP client (status, type, param, code)
    │   ├── InvalidRequestError     400 invalid_request_error (or 408 / 413 with that type)
    │   ├── AuthenticationError     401 unauthorized
    │   ├── RateLimitedError        429 rate_limited, with Retry-After
    │   └── UpstreamError           the agent run failed (mapped provider error, or 500 api_error)
    ├── ImageError                  an image part cannot be used (answered as 400 by images.py)
    ├── ShuttingDown                the gateway is shutting down (set on bodies still arriving)
    └── TransportError              an outbound HTTP call failed; aiohttp's ClientError tree is
                                    mapped into it once, in :mod:`.client`

Two mappings into that tree live here too: a runner's :class:`~.host.RunError` into the
:class:`UpstreamError` answered for it (:func:`map_run_error`), and :class:`ShuttingDown`
into its 503 answer (:func:`shutting_down_error`).

Client messages are always written by us; internal exception text never reaches a body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

from .host import RunError

__all__ = (
    "ApiError",
    "AuthenticationError",
    "ConfigError",
    "HttpCompatError",
    "InvalidRequestError",
    "ImageError",
    "RateLimitedError",
    "ShuttingDown",
    "TransportError",
    "TransportReason",
    "UpstreamError",
    "error_body",
    "map_run_error",
    "shutting_down_error",
)


class HttpCompatError(Exception):
    """Root of the exceptions this package raises on purpose."""


class ConfigError(HttpCompatError):
    """The gateway config has a wrong type or value for a key we use.

    The message starts with the dotted key, e.g. ``gateway.port: expected an integer``.
    """


class ApiError(HttpCompatError):
    """An error answered to an HTTP client as ``{"error": {message, type, param, code}}``."""

    status: int = 500
    type: str = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # noqa: A002 - the wire field is called type
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.param = param
        self.code = code
        self.headers: Mapping[str, str] = headers or {}

    def body(self) -> dict[str, object]:
        """The JSON body for this error."""
        return error_body(self.message, self.type, param=self.param, code=self.code)


class InvalidRequestError(ApiError):
    """The request cannot be served as sent (400 unless a status is given)."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(ApiError):
    """Missing or wrong credentials (401)."""

    status = 401
    type = "unauthorized"

    def __init__(self, message: str = "Unauthorized") -> None:
        super().__init__(message)


class RateLimitedError(ApiError):
    """Too many failed authentication attempts from this client (429 with ``Retry-After``)."""

    status = 429
    type = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "Too many failed authentication attempts. Please try again later.",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.retry_after_s = retry_after_s


class UpstreamError(ApiError):
    """The agent run failed; by default 500 ``internal error`` of type ``api_error``."""

    status = 500
    type = "api_error"


class ImageError(HttpCompatError):
    """An image part cannot be used.

    Raised while images of the active turn are checked or fetched. The message is for the
    log only; the client is answered 400 ``Invalid image_url content in `messages`.``.
    """


class ShuttingDown(HttpCompatError):
    """The gateway is shutting down.

    Set on a request body still arriving at shutdown, so that its reader stops at once
    instead of waiting out the body timeout; answered as 503 ``shutting_down``.
    """


TransportReason: TypeAlias = Literal["timeout", "unreachable", "connection", "invalid_url", "protocol"]
"""Why an outbound call failed: it timed out; the host could not be reached (DNS, refused,
proxy); the connection broke mid-exchange; the URL was unusable; the peer broke HTTP."""


class TransportError(HttpCompatError):
    """An outbound HTTP call (a provider call, an image fetch) failed below HTTP status level.

    Raised by :func:`openclaw_http_compat.client.transport_errors`, the one place aiohttp's
    ``ClientError`` tree (and ``TimeoutError``) is mapped; ``reason`` classifies the failure.
    The message names the exception class, never a URL's credentials or a body.
    """

    def __init__(self, reason: TransportReason, message: str) -> None:
        super().__init__(message)
        self.reason: TransportReason = reason


INTERNAL_ERROR: Final = "internal error"
SHUTTING_DOWN: Final = "The gateway is shutting down."

# OpenClaw's provider failure reasons -> (OpenAI error type, default status).
_REASONS: Final[dict[str, tuple[str, int]]] = {
    "auth": ("authentication_error", 401),
    "auth_permanent": ("permission_error", 403),
    "billing": ("insufficient_quota", 402),
    "format": ("invalid_request_error", 400),
    "model_not_found": ("invalid_request_error", 404),
    "session_expired": ("invalid_request_error", 410),
    "overloaded": ("api_error", 503),
    "server_error": ("api_error", 502),
    "unreachable": ("api_error", 502),
    # The gateway's own dependency (its session store) is down for now: retry shortly.
    "unavailable": ("api_error", 503),
    "timeout": ("api_error", 504),
    "rate_limit": ("rate_limit_error", 429),
    # Another run held the session for longer than the gateway waits (code session_busy).
    "session_busy": ("rate_limit_error", 429),
}
# The upstream's side of the failure: its own words are not the client's to act on.
_FIXED_MESSAGES: Final = {
    "server_error": "upstream provider error",
    "unreachable": "upstream unreachable",
    "timeout": "upstream provider timeout",
    "overloaded": "upstream provider overloaded",
}


def map_run_error(error: RunError) -> UpstreamError:
    """The client-facing error for a failed run (OpenClaw's ``openai-compat-errors``).

    Statuses are ones OpenAI clients know: an overload (503, Anthropic-style 529, …) is 503;
    a provider's 4xx keeps its status and its message (the user's to fix); a provider's 5xx,
    a timeout and an unreachable upstream get the reason's status and a fixed message.
    ``retry_after`` becomes ``Retry-After``. An unclassified failure (``reason`` unknown or
    ``None``) is a 500 ``internal error``.
    """
    reason = error.reason or ""
    mapped = _REASONS.get(reason)
    if mapped is None:
        return UpstreamError(INTERNAL_ERROR)
    error_type, status = mapped
    client_side = error.status is not None and 400 <= error.status <= 499
    if client_side and reason != "overloaded":
        assert error.status is not None
        status = error.status
    message = _FIXED_MESSAGES.get(reason) or error.message or "request failed"
    headers = {}
    if error.retry_after is not None and error.retry_after >= 0:
        headers["Retry-After"] = str(math.ceil(error.retry_after))
    return UpstreamError(message, status=status, type=error_type, code=error.code, headers=headers)


def shutting_down_error() -> UpstreamError:
    """The answer to a request that :class:`ShuttingDown` ended, or that came while the
    gateway drains: 503 ``shutting_down``, to be retried (elsewhere) after a second."""
    return UpstreamError(SHUTTING_DOWN, status=503, code="shutting_down", headers={"Retry-After": "1"})


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None  # noqa: A002
) -> dict[str, object]:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
