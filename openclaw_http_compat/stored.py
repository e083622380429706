"""Stored chat completions (OpenAI's ``store: true``): the host contract, its values, and the
in-memory default.

A completion created with ``store: true`` is kept, with the request's messages and its
``metadata``, for the principal that created it. The plugin reads and changes it through a
:class:`CompletionStore` the gateway hands over in :attr:`~.host.Host.completions`; a gateway
that hands none gets :class:`InMemoryCompletionStore` (one process, nothing survives a
restart). The reference gateway keeps them in its session store (SQLite or PostgreSQL), so a
completion stored through one process of a fleet is read through any other.

Retention is the plugin's policy, not the store's: every read takes ``not_before`` (records
created earlier count as gone, even before a purge removed them), and the plugin calls
:meth:`CompletionStore.purge` in the background.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol

import attrs

from .errors import HttpCompatError, InvalidRequestError

__all__ = (
    "MAX_METADATA_KEY",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE",
    "CompletionPage",
    "CompletionQuery",
    "CompletionStore",
    "CompletionStoreUnavailable",
    "InMemoryCompletionStore",
    "Order",
    "StoredCompletion",
    "UnknownCursor",
    "parse_metadata",
)

#: OpenAI's limits on ``metadata``: at most 16 pairs, keys of at most 64 characters, string
#: values of at most 512.
MAX_METADATA_PAIRS: Final = 16
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 512

Order = Literal["asc", "desc"]


class CompletionStoreUnavailable(HttpCompatError):
    """Raised by a :class:`CompletionStore` whose storage cannot be reached for now; the
    plugin answers 503 with ``Retry-After``."""


class UnknownCursor(HttpCompatError):
    """Raised by :meth:`CompletionStore.list` when ``after`` names no completion of the owner."""


def parse_metadata(value: object, param: str = "metadata") -> dict[str, str]:
    """Check ``metadata`` the way OpenAI does; ``None`` reads as no metadata.

    Raises:
        InvalidRequestError: not an object, more than 16 pairs, a key longer than 64
            characters, or a value that is not a string of at most 512; ``param`` names it.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"Invalid '{param}': expected an object of string values.", param=param)
    if len(value) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(
            f"Invalid '{param}': at most {MAX_METADATA_PAIRS} key-value pairs, got {len(value)}.", param=param
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise InvalidRequestError(
                f"Invalid '{param}': keys are at most {MAX_METADATA_KEY} characters.", param=param
            )
        if not isinstance(item, str):
            raise InvalidRequestError(f"Invalid '{param}': the value of {key!r} must be a string.", param=param)
        if len(item) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"Invalid '{param}': values are at most {MAX_METADATA_VALUE} characters.", param=param
            )
    return dict(value)


def _frozen_dict(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


@attrs.frozen(kw_only=True)
class StoredCompletion:
    """One stored completion.

    Attributes:
        id: the completion's id (``chatcmpl_<uuid>``).
        owner: the :attr:`~.host.Principal.subject` that created it; only it sees the record.
        created: the completion's ``created`` (Unix seconds); retention counts from it.
        model: the completion's ``model`` (what the client asked for), for ``?model=``.
        metadata: the key-value pairs given on create or update.
        completion: the ``chat.completion`` object as it was answered (a stream: as it
            added up), without ``metadata``.
    """

    id: str
    owner: str
    created: int
    model: str
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict, hash=False)
    completion: Mapping[str, Any] = attrs.field(converter=_frozen_dict, hash=False)

    def body(self) -> dict[str, Any]:
        """The object the routes answer: the completion with its ``metadata``."""
        return {**self.completion, "metadata": dict(self.metadata)}


@attrs.frozen(kw_only=True)
class CompletionQuery:
    """What ``GET /v1/chat/completions`` asks for.

    Attributes:
        not_before: completions created before this (Unix seconds) are past retention.
        model: only completions of this ``model``.
        metadata: only completions whose metadata holds every one of these pairs.
        after: the page starts after this completion (an id of the previous page).
        limit: at most this many completions.
        order: by ``created`` (then by when they were stored), oldest first with ``asc``.
    """

    not_before: int
    model: str | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict, hash=False)
    after: str | None = None
    limit: int = 20
    order: Order = "asc"


@attrs.frozen(kw_only=True)
class CompletionPage:
    """One page of completions, and whether more follow it."""

    data: tuple[StoredCompletion, ...]
    has_more: bool


class CompletionStore(Protocol):
    """Keeps stored completions for the plugin; one per gateway (shared by its processes, if
    they should all see every completion).

    Every method is scoped to ``owner``: a record of another owner does not exist for it.
    Records created before ``not_before`` do not exist either (past retention). Methods never
    block the event loop. A store that cannot reach its storage raises
    :class:`CompletionStoreUnavailable`.
    """

    async def save(self, record: StoredCompletion, messages: Sequence[Mapping[str, Any]]) -> None:
        """Keep ``record`` and the request's ``messages`` (as :func:`~.stored_routes` lists them)."""
        ...

    async def get(self, owner: str, completion_id: str, *, not_before: int) -> StoredCompletion | None:
        """The record, or ``None``."""
        ...

    async def messages(
        self, owner: str, completion_id: str, *, not_before: int
    ) -> Sequence[Mapping[str, Any]] | None:
        """The record's request messages, in request order, or ``None`` when there is no record."""
        ...

    async def list(self, owner: str, query: CompletionQuery) -> CompletionPage:
        """One page of the owner's records.

        Raises:
            UnknownCursor: ``query.after`` names no record of the owner.
        """
        ...

    async def update_metadata(
        self, owner: str, completion_id: str, metadata: Mapping[str, str], *, not_before: int
    ) -> StoredCompletion | None:
        """Replace the record's metadata; the updated record, or ``None`` when there is none."""
        ...

    async def delete(self, owner: str, completion_id: str, *, not_before: int) -> bool:
        """Remove the record (and its messages); whether there was one."""
        ...

    async def purge(self, created_before: int) -> int:
        """Remove every owner's records created before ``created_before``; how many."""
        ...


@attrs.define
class _Entry:
    seq: int
    record: StoredCompletion
    messages: tuple[Mapping[str, Any], ...]


class InMemoryCompletionStore:
    """A :class:`CompletionStore` in this process's memory: the default for gateways that
    bring none. Nothing survives a restart and other processes do not see it.

    Args:
        max_records: past this many, the records stored longest ago are dropped first, so
            memory stays bounded whatever the retention.
    """

    def __init__(self, *, max_records: int = 10_000) -> None:
        self._max_records = max_records
        self._entries: dict[str, _Entry] = {}
        self._seq = itertools.count()

    def _find(self, owner: str, completion_id: str, not_before: int) -> _Entry | None:
        entry = self._entries.get(completion_id)
        if entry is None or entry.record.owner != owner or entry.record.created < not_before:
            return None
        return entry

    async def save(self, record: StoredCompletion, messages: Sequence[Mapping[str, Any]]) -> None:
        """Keep ``record`` and its messages."""
        self._entries.pop(record.id, None)
        self._entries[record.id] = _Entry(next(self._seq), record, tuple(messages))
        while len(self._entries) > self._max_records:
            # A dict keeps insertion order: the first entry is the one stored longest ago.
            del self._entries[next(iter(self._entries))]

    async def get(self, owner: str, completion_id: str, *, not_before: int) -> StoredCompletion | None:
        """The record, or ``None``."""
        entry = self._find(owner, completion_id, not_before)
        return entry.record if entry is not None else None

    async def messages(
        self, owner: str, completion_id: str, *, not_before: int
    ) -> Sequence[Mapping[str, Any]] | None:
        """The record's request messages, or ``None``."""
        entry = self._find(owner, completion_id, not_before)
        return entry.messages if entry is not None else None

    async def list(self, owner: str, query: CompletionQuery) -> CompletionPage:
        """One page of the owner's records, by ``created`` then by when they were stored."""
        entries = sorted(
            (
                e
                for e in self._entries.values()
                if e.record.owner == owner
                and e.record.created >= query.not_before
                and (query.model is None or e.record.model == query.model)
                and all(e.record.metadata.get(k) == v for k, v in query.metadata.items())
            ),
            key=lambda e: (e.record.created, e.seq),
            reverse=query.order == "desc",
        )
        if query.after is not None:
            cursor = self._find(owner, query.after, query.not_before)
            if cursor is None:
                raise UnknownCursor(query.after)
            position = (cursor.record.created, cursor.seq)
            if query.order == "asc":
                entries = [e for e in entries if (e.record.created, e.seq) > position]
            else:
                entries = [e for e in entries if (e.record.created, e.seq) < position]
        page = entries[: query.limit]
        return CompletionPage(data=tuple(e.record for e in page), has_more=len(entries) > len(page))

    async def update_metadata(
        self, owner: str, completion_id: str, metadata: Mapping[str, str], *, not_before: int
    ) -> StoredCompletion | None:
        """Replace the record's metadata."""
        entry = self._find(owner, completion_id, not_before)
        if entry is None:
            return None
        entry.record = attrs.evolve(entry.record, metadata=metadata)
        return entry.record

    async def delete(self, owner: str, completion_id: str, *, not_before: int) -> bool:
        """Remove the record."""
        if self._find(owner, completion_id, not_before) is None:
            return False
        del self._entries[completion_id]
        return True

    async def purge(self, created_before: int) -> int:
        """Remove the records created before ``created_before``."""
        expired = [key for key, e in self._entries.items() if e.record.created < created_before]
        for key in expired:
            del self._entries[key]
        return len(expired)
