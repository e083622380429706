"""Exceptions, and the one JSON shape every error takes on the wire.

The hierarchy::

    HttpCompatError                 root of everything this package raises on purpose
    ├── ConfigError                 bad config at start-up (names the dotted key)
    └── ApiError                    an error answered to an HTTP client (status, type, param, code)
        ├── InvalidRequestError     400 invalid_request_error (or 408 / 413 with that type)
        ├── AuthenticationError     401 unauthorized
        ├── RateLimitedError        429 rate_limited, with Retry-After
        └── UpstreamError           the agent run failed (mapped provider error, or 500 api_error)

Client messages are always written by us; internal exception text never reaches a body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = (
    "ApiError",
    "AuthenticationError",
    "ConfigError",
    "HttpCompatError",
    "InvalidRequestError",
    "RateLimitedError",
    "UpstreamError",
    "error_body",
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


INTERNAL_ERROR: Final = "internal error"


def error_body(
    message: str, type: str, *, param: str | None = None, code: str | None = None  # noqa: A002
) -> dict[str, object]:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
