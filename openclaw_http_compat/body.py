"""Reading a request's JSON body within its size limit, its time limit and shutdown."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .errors import InvalidRequestError, ShuttingDown, shutting_down_error
from .keys import RUNS_KEY

__all__ = ("read_json",)


def _too_large() -> InvalidRequestError:
    return InvalidRequestError("Payload too large", status=413)


async def _read_body(request: web.Request, *, max_bytes: int, timeout_s: float) -> bytes:
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large()
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (the usual small request): no waiting.
        body = content.read_nowait()
        if len(body) > max_bytes:
            raise _too_large()
        return body
    # Registered so that shutdown can fail the read at once instead of waiting out timeout_s.
    readers = request.app[RUNS_KEY].readers
    readers.add(content)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await content.readany():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large()
                chunks.append(chunk)
    except TimeoutError:
        raise InvalidRequestError("Request body timeout", status=408) from None
    except ShuttingDown:
        raise shutting_down_error() from None
    finally:
        readers.discard(content)
    return b"".join(chunks)


async def read_json(request: web.Request, *, max_bytes: int, timeout_s: float) -> object:
    """The request body parsed as JSON; an empty body reads as ``{}``.

    Raises:
        InvalidRequestError: 413 past ``max_bytes``, 408 when the body is not complete within
            ``timeout_s``, 400 for a body that is not UTF-8 JSON.
        UpstreamError: 503 ``shutting_down`` when the gateway shuts down mid-body.
    """
    body = await _read_body(request, max_bytes=max_bytes, timeout_s=timeout_s)
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequestError("Request body is not valid UTF-8.") from None
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # The parser's own message (line and column), as OpenClaw answers it.
        raise InvalidRequestError(str(exc)) from None
    except ValueError:
        # Python's limit on integer digits: its message names sys internals, so not echoed.
        raise InvalidRequestError("Request body has a number too long to parse.") from None
    except RecursionError:
        raise InvalidRequestError("Request body is nested too deeply.") from None
