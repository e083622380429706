"""The failed-auth limiter's state in PostgreSQL, shared by every gateway process on one database.

A limiter that counts in memory gives a client N times the attempts behind N gateway
processes. :class:`PostgresAuthState` (an :class:`~openclaw_http_compat.auth.AuthLimiterState`)
counts them in the session store's database instead, through the store's pool:

* **Failures are counted by the server.** One statement per failed attempt upserts the
  client's row: the server drops attempts older than the window, appends this one and, at the
  attempt limit, writes the lockout, all under the row's lock; so failures arriving at any
  number of processes at once add up exactly. The same statement notifies every process
  (``NOTIFY``, delivered at commit).
* **Checks are local.** Every process keeps a mirror of the lockouts in force and of the
  clients with failures on record, fed by ``LISTEN``. A request with the right credential costs
  no round trip, unless its client has failures on record (then one ``DELETE`` resets them), and
  a locked-out client is refused without one. (Measured on a loaded 2-core machine: a
  successful ``authenticate()`` costs about 7 µs with this state, as with the in-memory one,
  most of it the keyed hash; one round trip to PostgreSQL on loopback costs about 500 µs.)
* **The mirror is trusted only while it listens.** It listens through the process's one
  listening connection, the store's (:class:`~.pglisten.Listener`, shared with the run
  leases); while that connection is down (the database cannot be reached), :meth:`lockout`
  raises :class:`~openclaw_http_compat.auth.AuthStateUnavailable` and the limiter does what
  ``gateway.auth.rateLimit.onStoreError`` says. The listener reconnects by itself, and the
  table is read again before the mirror is trusted. A ping every few seconds finds a
  connection that died silently.

The bound this gives across the fleet: ``maxAttempts`` failures per window, plus the guesses
already past the check when the lockout is written (a burst in flight at that moment); a
failure that arrives after the lockout is written is refused as locked out (429), whether or
not its process has heard of the lockout yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import asyncpg

from openclaw_http_compat.auth import AuthStateUnavailable
from openclaw_http_compat.config import RateLimitConfig

from .pglisten import OUTAGES, Subscription
from .pgstore import PostgresStore
from .storage import TranscriptStore

__all__ = ("CHANNEL", "PostgresAuthState")

log = logging.getLogger(__name__)

#: The ``LISTEN``/``NOTIFY`` channel; payloads are ``"<kind> <lockout ms> <key>"`` with kind
#: ``f`` (a failure counted), ``l`` (locked out for that long) or ``c`` (failures reset).
CHANNEL: Final = "openclaw_auth_limiter"

# The client's row after this failure; no row when a lockout was already in force (the WHERE
# of DO UPDATE), and then the attempt is not counted. After an expired lockout the count starts
# again, as the in-memory state forgets the failures behind a lockout once it has expired.
# $1 key, $2 max attempts, $3 window, $4 lockout, $5 channel.
_RECORD_FAILURE: Final = """
WITH counted AS (
    INSERT INTO openclaw_auth_failures AS f (client_key, attempts, locked_until, last_failed_at)
    VALUES ($1, ARRAY[now()], CASE WHEN $2 <= 1 THEN now() + $4::interval END, now())
    ON CONFLICT (client_key) DO UPDATE SET (attempts, locked_until, last_failed_at) = (
        SELECT kept.attempts,
               CASE WHEN cardinality(kept.attempts) >= $2 THEN now() + $4::interval END,
               now()
        FROM (
            SELECT CASE WHEN f.locked_until IS NOT NULL THEN ARRAY[now()]
                        ELSE array_append(
                            ARRAY(SELECT a FROM unnest(f.attempts) AS a WHERE a > now() - $3::interval ORDER BY a),
                            now())
                   END AS attempts
        ) AS kept
    )
    WHERE f.locked_until IS NULL OR f.locked_until <= now()
    RETURNING client_key, locked_until
), outcome AS (
    SELECT client_key, greatest(0, coalesce(ceil(extract(epoch FROM locked_until - now()) * 1000), 0))::bigint AS ms
    FROM counted
)
SELECT ms, pg_notify($5, CASE WHEN ms > 0 THEN 'l ' ELSE 'f ' END || ms || ' ' || client_key)::text
FROM outcome
"""
# The lockout in force that made _RECORD_FAILURE count nothing (a race with another process).
_LOCKOUT_LEFT: Final = """
SELECT greatest(0, ceil(extract(epoch FROM locked_until - now()) * 1000))::bigint
FROM openclaw_auth_failures WHERE client_key = $1
"""
# A success resets the failures, never a lockout in force. $1 key, $2 channel.
_RECORD_SUCCESS: Final = """
WITH cleared AS (
    DELETE FROM openclaw_auth_failures
    WHERE client_key = $1 AND (locked_until IS NULL OR locked_until <= now())
    RETURNING client_key
)
SELECT pg_notify($2, 'c 0 ' || client_key)::text FROM cleared
"""
# What a (re)connected listener reads: every lockout in force, and the newest clients with
# failures in the window. $1 window, $2 how many of the latter.
_SNAPSHOT: Final = """
(SELECT client_key, ceil(extract(epoch FROM locked_until - now()) * 1000)::bigint AS ms
 FROM openclaw_auth_failures WHERE locked_until > now())
UNION ALL
(SELECT client_key, 0 FROM openclaw_auth_failures
 WHERE (locked_until IS NULL OR locked_until <= now()) AND last_failed_at > now() - $1::interval
 ORDER BY last_failed_at DESC LIMIT $2)
"""
# Rows that mean nothing any more: no failure in the window, no lockout in force.
_PRUNE: Final = """
DELETE FROM openclaw_auth_failures
WHERE last_failed_at <= now() - $1::interval AND (locked_until IS NULL OR locked_until <= now())
"""

# The mirror tracks at most this many clients with failures (oldest dropped first), as the
# in-memory state does; a dropped one only means a success there skips its reset.
_MAX_TRACKED: Final = 10_000
_STATEMENT_TIMEOUT_S: Final = 2.0
_PRUNE_EVERY_S: Final = 60.0
# start-up waits this long for the first snapshot; after it, the listener goes on trying.
_FIRST_SYNC_S: Final = 10.0
_LOG_EVERY_S: Final = 60.0
# Whatever the database does wrong, the limiter answers as onStoreError says, never with a 500:
# the store's outages, and any error the server reports (a failover's read-only standby, a
# cancelled statement).
_FAILURES: Final = (*OUTAGES, asyncpg.PostgresError)


class PostgresAuthState:
    """An :class:`~openclaw_http_compat.auth.AuthLimiterState` in a PostgreSQL database that every
    gateway process of a fleet shares (the session store's).

    Serve it with ``async with state.running(store)`` once the store is open; outside that block
    (and while the database cannot be reached) every method raises
    :class:`~openclaw_http_compat.auth.AuthStateUnavailable`.

    Args:
        config: ``gateway.auth.rateLimit``, the same the authenticator gets.
        clock: the monotonic clock lockouts are mirrored on.
    """

    def __init__(self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._window = datetime.timedelta(milliseconds=config.window_ms)
        self._lockout = datetime.timedelta(milliseconds=config.lockout_ms)
        self._pool: Any = None
        # The listener's connection is up and the mirror was read after it connected.
        self._live = False
        self._synced_once = False
        # key -> this clock's deadline of its lockout.
        self._locked: dict[str, float] = {}
        # Keys with failures on record, oldest first (a dict as an ordered set).
        self._failing: dict[str, None] = {}
        self._logged_at = -_LOG_EVERY_S

    def __repr__(self) -> str:
        state = "live" if self._live else "not live"
        return f"<PostgresAuthState {state}, {len(self._locked)} locked out, {len(self._failing)} failing>"

    @property
    def live(self) -> bool:
        """Whether the mirror is fed (listening, read since it connected)."""
        return self._live

    @contextlib.asynccontextmanager
    async def running(self, store: TranscriptStore) -> AsyncIterator[None]:
        """Serve from ``store``'s pool, hearing the other processes through its listener, until
        the block exits.

        Waits for the first read of the table (at most a few seconds: after that the listener
        keeps trying on its own, and the state is unavailable meanwhile).

        Raises:
            TypeError: ``store`` is not a :class:`~.pgstore.PostgresStore`.
        """
        if not isinstance(store, PostgresStore):
            raise TypeError(f"PostgresAuthState needs the PostgreSQL session store, not {type(store).__name__}")
        self._pool = store.pool
        synced = asyncio.Event()

        async def on_connect(conn: Any) -> None:
            await self._sync(conn)
            synced.set()

        subscription = Subscription(CHANNEL, self._notified, on_connect=on_connect, on_lost=self._lost)
        await store.listener.subscribe(subscription)
        pruning = asyncio.create_task(self._prune_now_and_then(), name="openclaw auth limiter prune")
        try:
            try:
                await asyncio.wait_for(synced.wait(), _FIRST_SYNC_S)
            except TimeoutError:
                log.warning("the auth limiter's PostgreSQL state is not in sync yet; still trying")
            yield
        finally:
            pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruning
            await store.listener.unsubscribe(subscription)
            self._live = False
            self._pool = None

    async def lockout(self, key: str) -> float | None:
        """Seconds left of ``key``'s lockout, from the mirror (no round trip).

        Raises:
            AuthStateUnavailable: the mirror is not fed (the database cannot be reached).
        """
        if not self._live:
            raise AuthStateUnavailable("the PostgreSQL auth limiter state is not listening")
        until = self._locked.get(key)
        if until is None:
            return None
        remaining = until - self._clock()
        if remaining > 0:
            return remaining
        del self._locked[key]
        return None

    async def record_failure(self, key: str) -> float | None:
        """Count a failed attempt in the database; see
        :meth:`~openclaw_http_compat.auth.AuthLimiterState.record_failure`.

        Raises:
            AuthStateUnavailable: the database cannot be reached.
        """
        config = self._config
        left = None
        try:
            async with self._acquire() as conn:
                row = await conn.fetchrow(
                    _RECORD_FAILURE, key, config.max_attempts, self._window, self._lockout, CHANNEL,
                    timeout=_STATEMENT_TIMEOUT_S,
                )
                if row is None:
                    left = await conn.fetchval(_LOCKOUT_LEFT, key, timeout=_STATEMENT_TIMEOUT_S)
        except _FAILURES as exc:
            raise AuthStateUnavailable(f"cannot count a failed attempt: {type(exc).__name__}: {exc}") from exc
        if row is None:
            # Another process locked the key out after this one checked: refused as locked.
            if left:
                self._mirror("l", int(left), key)
                return int(left) / 1000
            return None
        ms = int(row[0])
        self._mirror("l" if ms > 0 else "f", ms, key)
        return None

    async def record_success(self, key: str) -> None:
        """Reset ``key``'s failures: one round trip when the mirror knows of any, else none.

        Raises:
            AuthStateUnavailable: the database cannot be reached.
        """
        if key not in self._failing:
            return
        try:
            async with self._acquire() as conn:
                await conn.execute(_RECORD_SUCCESS, key, CHANNEL, timeout=_STATEMENT_TIMEOUT_S)
        except _FAILURES as exc:
            raise AuthStateUnavailable(f"cannot reset a client's failures: {type(exc).__name__}: {exc}") from exc
        self._mirror("c", 0, key)

    def _acquire(self) -> Any:
        if self._pool is None:
            raise AuthStateUnavailable("the PostgreSQL auth limiter state is not running")
        return self._pool.acquire(timeout=_STATEMENT_TIMEOUT_S)

    def _mirror(self, kind: str, ms: int, key: str) -> None:
        # Applied for this process's own changes at once, and again when their notification
        # comes back: each kind is idempotent.
        if kind == "l":
            until = self._clock() + ms / 1000
            self._locked[key] = max(until, self._locked.get(key, until))
            self._failing.pop(key, None)
        elif kind == "f":
            self._failing.pop(key, None)
            self._failing[key] = None
            if len(self._failing) > _MAX_TRACKED:
                del self._failing[next(iter(self._failing))]
        elif kind == "c":
            self._failing.pop(key, None)

    def _notified(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        ms, _, key = rest.partition(" ")
        if key and ms.isdigit():
            self._mirror(kind, int(ms), key)

    async def _sync(self, conn: Any) -> None:
        """Read the table on the listener's (re)connected ``conn``, then trust the mirror."""
        was_synced = self._synced_once
        rows = await conn.fetch(_SNAPSHOT, self._window, _MAX_TRACKED, timeout=_STATEMENT_TIMEOUT_S)
        self._failing.clear()
        for key, ms in reversed(rows):
            self._mirror("l" if ms > 0 else "f", int(ms), key)
        self._synced_once = True
        self._live = True
        if was_synced:
            log.info("the auth limiter's PostgreSQL state is listening again")

    def _lost(self) -> None:
        self._live = False
        self._log("the auth limiter's PostgreSQL state lost its listening connection; retrying")

    async def _prune_now_and_then(self) -> None:
        """Drop the rows that mean nothing any more, every :data:`_PRUNE_EVERY_S`."""
        while True:
            await asyncio.sleep(_PRUNE_EVERY_S)
            try:
                async with self._acquire() as conn:
                    await conn.execute(_PRUNE, self._window, timeout=_STATEMENT_TIMEOUT_S)
            except (*_FAILURES, AuthStateUnavailable) as exc:
                self._log(f"the auth limiter's PostgreSQL state cannot prune ({type(exc).__name__}: {exc})")
            self._forget_expired()

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, until in self._locked.items() if until <= now]:
            del self._locked[key]

    def _log(self, message: str) -> None:
        # At most one line a minute while the database stays down.
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning(message)
