"""``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header): the header, the digests,
and the records of keyed runs, kept through a host :class:`IdempotencyStore`.

A key is scoped to the principal that sent it and never stored as sent: its record is filed
under a SHA-256 digest of the principal's subject and the key (:func:`key_digest`). A record
holds the request's fingerprint (:func:`fingerprint`, a digest too) and, once the run
finished, its :class:`Answer`, replayed to every repeat until the record expires.

A running record is a lease: its owner renews it while the run goes on, so a record whose
process died frees its key after :data:`LEASE_S` instead of refusing repeats for a day.
Times are the store's own clock (seconds since the epoch), injectable for tests.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import attrs

__all__ = (
    "IDEMPOTENCY_KEY_HEADER",
    "LEASE_S",
    "REPLAYED_HEADER",
    "Answer",
    "IdempotencyRecord",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "fingerprint",
    "key_digest",
    "valid_key",
)

IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
#: Set on an answer that a request did not run for: a replay, or an attach to a run in flight.
REPLAYED_HEADER: Final = "Idempotent-Replayed"
#: How long a running record holds its key without being renewed (its owner renews it every
#: third of that): a process that died mid-run frees its keys after this.
LEASE_S: Final = 30.0
#: The request headers that change what a run does; part of the fingerprint.
RUN_HEADERS: Final = (
    "x-openclaw-agent-id",
    "x-openclaw-agent",
    "x-openclaw-session-key",
    "x-openclaw-model",
    "x-openclaw-message-channel",
)
_MAX_KEY: Final = 255


def valid_key(value: str) -> bool:
    """1 to 255 visible ASCII characters (``%x21-7E``)."""
    return 0 < len(value) <= _MAX_KEY and all("!" <= c <= "~" for c in value)


def key_digest(subject: str, key: str) -> str:
    """The record's name: SHA-256 over the principal's subject and the key, hex."""
    # Length-prefixed, so no subject/key split can collide with another.
    raw = f"{len(subject)}:{subject}\x00{key}".encode()
    return hashlib.sha256(raw).hexdigest()


def fingerprint(body: object, headers: Mapping[str, str]) -> str:
    """SHA-256 of the decoded JSON body (keys sorted) and the headers that change the run."""
    run_headers = [[name, (headers.get(name) or "").strip()] for name in RUN_HEADERS]
    text = json.dumps([body, run_headers], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class Answer:
    """A finished run's answer, exactly as replayed.

    Attributes:
        status: the HTTP status.
        body: the JSON body, or for a stream every frame from the role chunk to ``[DONE]``.
        stream: ``body`` is an SSE stream.
        headers: headers the answer carried besides the content type (``x-request-id``,
            ``Retry-After``).
    """

    status: int
    body: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    stream: bool = False
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class IdempotencyRecord:
    """A key's record: the request's fingerprint and, once the run finished, its answer."""

    fingerprint: str
    answer: Answer | None
    expires_at: float


class IdempotencyStore(Protocol):
    """Where records of keyed runs are kept; every process of a fleet must share one.

    ``key`` is always a :func:`key_digest`, ``owner`` a random token naming one claim: only
    the claim's owner renews, completes or releases it (a fencing token), so a run whose lease
    ran out never overwrites the record of the run that took the key over.
    """

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The key's record, or ``None`` when there is none or it expired."""
        ...

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease_s: float) -> bool:
        """Record a running claim unless a live record holds the key; true when claimed."""
        ...

    async def renew(self, key: str, owner: str, *, lease_s: float) -> bool:
        """Extend the owner's running claim; false when it is no longer the owner's."""
        ...

    async def complete(self, key: str, owner: str, answer: Answer, *, ttl_s: float) -> bool:
        """Store the owner's answer, kept ``ttl_s``; false when the claim is no longer the owner's."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Drop the owner's claim: the run produced no answer, a repeat may run it."""
        ...


@attrs.define
class _Entry:
    fingerprint: str
    owner: str
    answer: Answer | None
    expires_at: float


class MemoryIdempotencyStore:
    """The in-process :class:`IdempotencyStore`, the plugin's default: right for one process.

    Expired records are purged a few at a time as new ones come (a heap by expiry), never in
    one sweep that would hold the event loop.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._expiries: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        return entry

    def _purge(self, budget: int = 8) -> None:
        now = self._clock()
        while budget and self._expiries and self._expiries[0][0] <= now:
            budget -= 1
            _, key = heapq.heappop(self._expiries)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at <= now:
                del self._entries[key]

    def _expire_at(self, key: str, entry: _Entry, expires_at: float) -> None:
        entry.expires_at = expires_at
        heapq.heappush(self._expiries, (expires_at, key))

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The key's live record."""
        entry = self._live(key)
        if entry is None:
            return None
        return IdempotencyRecord(fingerprint=entry.fingerprint, answer=entry.answer, expires_at=entry.expires_at)

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease_s: float) -> bool:
        """Claim ``key`` unless a live record holds it."""
        self._purge()
        if self._live(key) is not None:
            return False
        entry = _Entry(fingerprint, owner, None, 0.0)
        self._entries[key] = entry
        self._expire_at(key, entry, self._clock() + lease_s)
        return True

    def _owned(self, key: str, owner: str) -> _Entry | None:
        entry = self._live(key)
        return entry if entry is not None and entry.owner == owner else None

    async def renew(self, key: str, owner: str, *, lease_s: float) -> bool:
        """Extend the owner's running claim."""
        entry = self._owned(key, owner)
        if entry is None or entry.answer is not None:
            return False
        self._expire_at(key, entry, self._clock() + lease_s)
        return True

    async def complete(self, key: str, owner: str, answer: Answer, *, ttl_s: float) -> bool:
        """Keep the owner's answer for ``ttl_s``."""
        entry = self._owned(key, owner)
        if entry is None:
            return False
        entry.answer = answer
        self._expire_at(key, entry, self._clock() + ttl_s)
        return True

    async def release(self, key: str, owner: str) -> None:
        """Drop the owner's claim."""
        if self._owned(key, owner) is not None:
            del self._entries[key]
