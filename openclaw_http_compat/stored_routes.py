"""The stored-completions routes, as OpenAI serves them, and keeping a completion on create.

* ``GET /v1/chat/completions``: the principal's stored completions (``model``,
  ``metadata[key]=value``, ``after``, ``limit`` 1-100 (20), ``order`` ``asc`` (default) or
  ``desc`` by ``created``);
* ``GET /v1/chat/completions/{id}``: one of them;
* ``GET /v1/chat/completions/{id}/messages``: the request's messages (``after``, ``limit``,
  ``order``);
* ``POST /v1/chat/completions/{id}`` with ``{"metadata": {...}}``: replaces its metadata;
* ``DELETE /v1/chat/completions/{id}``: ``chat.completion.deleted``.

A completion of another principal, or past retention, does not exist: 404, like an unknown
id. The records live in the host's :class:`~.stored.CompletionStore`; this module only speaks
HTTP, applies retention (``chatCompletions.store.retentionDays``) to every read and purges
expired records in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar, cast

from aiohttp import web
from multidict import MultiMapping

from .body import read_json
from .config import ChatCompletionsConfig
from .errors import InvalidRequestError, UpstreamError
from .keys import CONFIG_KEY, PRINCIPAL_KEY
from .log import log
from .request import ChatRequest
from .run import Run
from .stored import (
    CompletionQuery,
    CompletionStore,
    CompletionStoreUnavailable,
    InMemoryCompletionStore,
    Order,
    StoredCompletion,
    UnknownCursor,
    parse_metadata,
)
from .wire import completion_body, json_response

__all__ = (
    "STORED_KEY",
    "RetentionPurger",
    "StoredCompletions",
    "completion_of",
    "install_stored_routes",
    "keep_completion",
    "stored_messages",
)

_DAY_S: Final = 86_400
_MAX_LIMIT: Final = 100
_DEFAULT_LIMIT: Final = 20
#: How often expired records are purged (and once at start-up).
PURGE_INTERVAL_S: Final = 3600.0
_METADATA_PARAM: Final = re.compile(r"metadata\[(.*)\]", re.DOTALL)
_T = TypeVar("_T")


class StoredCompletions:
    """The store and the retention policy the routes use (one per sub-app).

    Args:
        store: where completions are kept.
        retention_days: how long a completion is kept after its ``created``.
        clock: Unix time in seconds (tests pass their own).
    """

    def __init__(self, store: CompletionStore, retention_days: int, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_s = retention_days * _DAY_S
        self.clock = clock

    def not_before(self) -> int:
        """Completions created before this are past retention."""
        return int(self.clock()) - self.retention_s


#: The sub-app's :class:`StoredCompletions`.
STORED_KEY: Final = web.AppKey("openclaw_http_compat.stored", StoredCompletions)


class RetentionPurger:
    """Removes expired completions from the store: at start-up, then every ``interval_s``.

    A purge runs in the store (a thread for SQLite, one statement for PostgreSQL), never on
    the event loop; a store that is down is logged and tried again next time.
    """

    def __init__(self, stored: StoredCompletions, *, interval_s: float = PURGE_INTERVAL_S) -> None:
        self._stored = stored
        self._interval_s = interval_s

    async def run_once(self) -> int:
        """Purge now; how many records were removed."""
        removed = await self._stored.store.purge(self._stored.not_before())
        if removed:
            log.info("purged %d stored completions past retention", removed)
        return removed

    async def run(self) -> None:
        """Purge forever (until cancelled)."""
        while True:
            try:
                await self.run_once()
            except CompletionStoreUnavailable:
                log.warning("stored completions: the store is unavailable; purging later")
            except Exception:
                log.exception("stored completions: purge failed")
            await asyncio.sleep(self._interval_s)


_PURGE_TASK: Final = web.AppKey("openclaw_http_compat.stored_purge", asyncio.Task[None])


async def _start_purging(app: web.Application) -> None:
    app[_PURGE_TASK] = asyncio.create_task(RetentionPurger(app[STORED_KEY]).run(), name="stored-completions-purge")


async def _stop_purging(app: web.Application) -> None:
    task = app.get(_PURGE_TASK)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def install_stored_routes(
    subapp: web.Application, config: ChatCompletionsConfig, store: CompletionStore | None
) -> None:
    """Add the stored-completions routes and the background purge to the plugin's sub-app.

    ``store`` is the host's; ``None`` keeps completions in this process's memory.
    """
    subapp[STORED_KEY] = StoredCompletions(
        store if store is not None else InMemoryCompletionStore(), config.store.retention_days
    )
    router = subapp.router
    router.add_get("/chat/completions", list_completions, allow_head=False)
    router.add_get("/chat/completions/{completion_id}", get_completion, allow_head=False)
    router.add_post("/chat/completions/{completion_id}", update_completion)
    router.add_delete("/chat/completions/{completion_id}", delete_completion)
    router.add_get("/chat/completions/{completion_id}/messages", list_messages, allow_head=False)
    subapp.on_startup.append(_start_purging)
    subapp.on_shutdown.append(_stop_purging)


# --- keeping a completion ----------------------------------------------------------------


def completion_of(run: Run, created: int) -> dict[str, Any]:
    """The ``chat.completion`` a finished run adds up to (a stream's, assembled), as the JSON
    answer would have been."""
    return completion_body(
        completion_id=run.request.run_id,
        created=created,
        model=run.chat.model,
        content=run.content,
        finish_reason=run.finish_reason,
        tool_calls=run.calls,
        usage=run.usage,
    )


def _text_of(parts: Sequence[Any]) -> str | None:
    texts = [p["text"] for p in parts if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return "\n".join(texts) if texts else None


def _stored_parts(parts: Sequence[Any]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") in ("text", "input_text") and isinstance(part.get("text"), str):
            kept.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url" and isinstance(part.get("image_url"), Mapping):
            kept.append({"type": "image_url", "image_url": dict(part["image_url"])})
    return kept


def stored_messages(completion_id: str, messages: Sequence[object]) -> list[dict[str, Any]]:
    """The request's messages as ``/messages`` lists them (OpenAI's store message shape).

    Each gets the id ``<completion id>-<index in the request>``. Content sent as parts is
    ``content`` (their text) plus ``content_parts`` (the text and image parts); entries that
    are not objects are left out.
    """
    stored = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        parts = None
        if isinstance(content, list):
            parts = _stored_parts(content)
            content = _text_of(content)
        elif not isinstance(content, str):
            content = None
        role = message.get("role")
        name = message.get("name")
        item: dict[str, Any] = {
            "id": f"{completion_id}-{index}",
            "role": role if isinstance(role, str) else None,
            "content": content,
            "name": name if isinstance(name, str) else None,
            "content_parts": parts,
        }
        if isinstance(message.get("tool_calls"), list):
            item["tool_calls"] = message["tool_calls"]
        if isinstance(message.get("tool_call_id"), str):
            item["tool_call_id"] = message["tool_call_id"]
        stored.append(item)
    return stored


async def keep_completion(request: web.Request, chat: ChatRequest, completion: Mapping[str, Any]) -> None:
    """Store ``completion`` (asked with ``store: true``) for the request's principal.

    The completion has been made, so a store that fails costs the client its record, never
    its answer: the failure is logged.
    """
    stored = request.app[STORED_KEY]
    record = StoredCompletion(
        id=str(completion["id"]),
        owner=request[PRINCIPAL_KEY].subject,
        created=int(completion["created"]),
        model=chat.model,
        metadata=chat.metadata,
        completion=completion,
    )
    try:
        await stored.store.save(record, stored_messages(record.id, chat.messages))
    except CompletionStoreUnavailable:
        log.warning("completion %s was not stored: the store is unavailable", record.id)
    except Exception:
        log.exception("completion %s was not stored", record.id)


# --- the routes --------------------------------------------------------------------------


async def _call(call: Awaitable[_T]) -> _T:
    try:
        return await call
    except CompletionStoreUnavailable:
        raise UpstreamError(
            "Stored completions are unavailable. Please retry shortly.", status=503, headers={"Retry-After": "1"}
        ) from None


def _not_found(completion_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"No stored chat completion found with id '{completion_id}'.", status=404, code="not_found"
    )


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise InvalidRequestError(f"Invalid '{name}': given more than once.", param=name)
    return values[0] if values else None


def _limit(query: MultiMapping[str]) -> int:
    raw = _single(query, "limit")
    if raw is None:
        return _DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= _MAX_LIMIT:
        raise InvalidRequestError(f"Invalid 'limit': expected an integer from 1 to {_MAX_LIMIT}.", param="limit")
    return int(raw)


def _order(query: MultiMapping[str]) -> Order:
    raw = _single(query, "order")
    if raw is None:
        return "asc"
    if raw not in ("asc", "desc"):
        raise InvalidRequestError("Invalid 'order': expected 'asc' or 'desc'.", param="order")
    return cast(Order, raw)


def _metadata_filter(query: MultiMapping[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for name in dict.fromkeys(query.keys()):
        match = _METADATA_PARAM.fullmatch(name)
        if match is None:
            continue
        value = _single(query, name)
        assert value is not None
        pairs[match.group(1)] = value
    # The same limits as metadata itself; an over-long key can match nothing anyway.
    return parse_metadata(pairs)


def _owner(request: web.Request) -> str:
    return request[PRINCIPAL_KEY].subject


async def list_completions(request: web.Request) -> web.StreamResponse:
    """``GET /v1/chat/completions``: a page of the principal's stored completions."""
    stored = request.app[STORED_KEY]
    query = request.rel_url.query
    after = _single(query, "after")
    completion_query = CompletionQuery(
        not_before=stored.not_before(),
        model=_single(query, "model"),
        metadata=_metadata_filter(query),
        after=after,
        limit=_limit(query),
        order=_order(query),
    )
    try:
        page = await _call(stored.store.list(_owner(request), completion_query))
    except UnknownCursor:
        raise InvalidRequestError(
            f"Invalid 'after': no stored chat completion found with id '{after}'.", param="after"
        ) from None
    data = [record.body() for record in page.data]
    return json_response(_list_body(data, page.has_more))


def _list_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


async def get_completion(request: web.Request) -> web.StreamResponse:
    """``GET /v1/chat/completions/{completion_id}``."""
    stored = request.app[STORED_KEY]
    completion_id = request.match_info["completion_id"]
    record = await _call(stored.store.get(_owner(request), completion_id, not_before=stored.not_before()))
    if record is None:
        raise _not_found(completion_id)
    return json_response(record.body())


async def list_messages(request: web.Request) -> web.StreamResponse:
    """``GET /v1/chat/completions/{completion_id}/messages``: the request's messages, a page."""
    stored = request.app[STORED_KEY]
    completion_id = request.match_info["completion_id"]
    query = request.rel_url.query
    after, limit, order = _single(query, "after"), _limit(query), _order(query)
    messages = await _call(stored.store.messages(_owner(request), completion_id, not_before=stored.not_before()))
    if messages is None:
        raise _not_found(completion_id)
    items = [dict(m) for m in messages]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [m["id"] for m in items]
        if after not in ids:
            raise InvalidRequestError(f"Invalid 'after': no message found with id '{after}'.", param="after")
        items = items[ids.index(after) + 1 :]
    return json_response(_list_body(items[:limit], len(items) > limit))


async def update_completion(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions/{completion_id}``: replace the metadata (nothing else changes)."""
    stored = request.app[STORED_KEY]
    config = request.app[CONFIG_KEY].chat_completions
    completion_id = request.match_info["completion_id"]
    body = await read_json(request, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_ms / 1000)
    if not isinstance(body, Mapping):
        raise InvalidRequestError("Request body must be a JSON object.")
    if "metadata" not in body:
        raise InvalidRequestError("Missing required parameter: 'metadata'.", param="metadata")
    metadata = parse_metadata(body["metadata"])
    record = await _call(
        stored.store.update_metadata(_owner(request), completion_id, metadata, not_before=stored.not_before())
    )
    if record is None:
        raise _not_found(completion_id)
    return json_response(record.body())


async def delete_completion(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/chat/completions/{completion_id}``."""
    stored = request.app[STORED_KEY]
    completion_id = request.match_info["completion_id"]
    if not await _call(stored.store.delete(_owner(request), completion_id, not_before=stored.not_before())):
        raise _not_found(completion_id)
    return json_response({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})
