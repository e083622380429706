"""``Idempotency-Key`` records in PostgreSQL: the :class:`~openclaw_http_compat.idempotency.IdempotencyStore`
every process of a fleet on one database shares.

One row per key (``openclaw_idempotency``, created by the PostgreSQL store's migrations), named
by the key's digest; it holds the request's fingerprint (a digest), the claim's owner token,
the expiry and, once the run finished, its answer. Claiming is one ``INSERT … ON CONFLICT``
that takes the row only when it expired, so two processes never both run a key. Expired rows
are purged in the background, a bounded batch at a time, at most once a minute.

It uses the pool of the :class:`~.pgstore.PostgresStore` it is given (opened at start-up);
a statement holds a connection for itself only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from openclaw_http_compat.idempotency import Answer, IdempotencyRecord

__all__ = ("PostgresIdempotencyStore",)

log = logging.getLogger(__name__)

_GET: Final = (
    "SELECT fingerprint, status, stream, headers::text, body, expires_at FROM openclaw_idempotency"
    " WHERE key_digest = $1 AND expires_at > $2"
)
_CLAIM: Final = """
INSERT INTO openclaw_idempotency (key_digest, fingerprint, owner, expires_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (key_digest) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at,
    status = NULL, stream = false, headers = NULL, body = NULL
WHERE openclaw_idempotency.expires_at <= $5
RETURNING key_digest
"""
_RENEW: Final = (
    "UPDATE openclaw_idempotency SET expires_at = $3"
    " WHERE key_digest = $1 AND owner = $2 AND status IS NULL RETURNING key_digest"
)
_COMPLETE: Final = (
    "UPDATE openclaw_idempotency SET status = $3, stream = $4, headers = $5::jsonb, body = $6, expires_at = $7"
    " WHERE key_digest = $1 AND owner = $2 RETURNING key_digest"
)
_RELEASE: Final = "DELETE FROM openclaw_idempotency WHERE key_digest = $1 AND owner = $2"
_PURGE: Final = (
    "DELETE FROM openclaw_idempotency WHERE key_digest IN"
    " (SELECT key_digest FROM openclaw_idempotency WHERE expires_at <= $1 LIMIT $2)"
)
_PURGE_EVERY_S: Final = 60.0
_PURGE_BATCH: Final = 1000


class PostgresIdempotencyStore:
    """Records of keyed runs in PostgreSQL (see the module docs).

    Args:
        pool: returns the open asyncpg pool (the session store's; it opens at start-up).
        clock: seconds since the epoch; every process of a fleet must agree on it to within
            a fraction of the lease (NTP does).
    """

    def __init__(self, pool: Callable[[], Any], *, clock: Callable[[], float] = time.time) -> None:
        self._pool = pool
        self._clock = clock
        self._next_purge = 0.0
        self._purging: asyncio.Task[None] | None = None

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The key's live record."""
        row = await self._pool().fetchrow(_GET, key, self._clock())
        if row is None:
            return None
        fingerprint, status, stream, headers, body, expires_at = row
        answer = None
        if status is not None:
            pairs = tuple((str(k), str(v)) for k, v in json.loads(headers or "[]"))
            answer = Answer(status=status, body=bytes(body), stream=stream, headers=pairs)
        return IdempotencyRecord(fingerprint=fingerprint, answer=answer, expires_at=expires_at)

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease_s: float) -> bool:
        """Claim ``key`` unless a live record holds it (one statement: never two owners)."""
        now = self._clock()
        self._purge_soon(now)
        claimed = await self._pool().fetchval(_CLAIM, key, fingerprint, owner, now + lease_s, now)
        return claimed is not None

    async def renew(self, key: str, owner: str, *, lease_s: float) -> bool:
        """Extend the owner's running claim."""
        return await self._pool().fetchval(_RENEW, key, owner, self._clock() + lease_s) is not None

    async def complete(self, key: str, owner: str, answer: Answer, *, ttl_s: float) -> bool:
        """Store the owner's answer for ``ttl_s``."""
        headers = json.dumps([list(pair) for pair in answer.headers])
        done = await self._pool().fetchval(
            _COMPLETE, key, owner, answer.status, answer.stream, headers, answer.body, self._clock() + ttl_s
        )
        return done is not None

    async def release(self, key: str, owner: str) -> None:
        """Drop the owner's claim."""
        await self._pool().execute(_RELEASE, key, owner)

    def _purge_soon(self, now: float) -> None:
        if now < self._next_purge or (self._purging is not None and not self._purging.done()):
            return
        self._next_purge = now + _PURGE_EVERY_S
        self._purging = asyncio.get_running_loop().create_task(self._purge(now))

    async def _purge(self, now: float) -> None:
        try:
            await self._pool().execute(_PURGE, now, _PURGE_BATCH)
        except Exception:
            log.warning("purging expired Idempotency-Key records failed", exc_info=True)

    async def close(self) -> None:
        """Wait for a purge under way (before the pool closes)."""
        if self._purging is not None:
            await asyncio.wait([self._purging])
