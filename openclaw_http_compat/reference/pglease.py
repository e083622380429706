"""Run leases on sessions in PostgreSQL: how runs in several processes take turns on one session.

A run holds its session through a row of ``openclaw_leases`` (created by the PostgreSQL
store's migrations): ``(session_key, token, expires_at, wanted_by, wanted_at,
others_waiting)``, with the database's clock as the only clock.

* **Taking** a lease is one statement: insert the row, or take it over when it has expired
  (released leases expire at once), adding one to its ``token``. The token is the *fencing
  token*: it only grows, per key, so each holder of a session has a token no earlier holder had.
* **Renewing**: while the run lives, a task pushes ``expires_at`` forward every third of the
  lease, if the token is still its own. A process that stalls or loses the database stops
  renewing; its lease expires after ``leaseMs`` and another run may take the session.
* **Fencing**: an append checks, in its own statement, that the lease row still carries the
  run's token (locking the row until commit, so the lease cannot change hands mid-append). A
  run whose lease was taken over cannot write: :class:`~.storage.LeaseLost`, nothing stored.
* **Taking turns between processes.** A run that finds the session held marks it as wanted
  by its process (unless another process's mark is there). A marked session is not taken by
  any other process when it is released: without the mark, the holder's own process, whose
  next run needs no notification to try, would win every race and starve the others. A mark
  is cleared by taking the lease or giving up, and ignored once two lease lengths old (its
  process died).
* **Releasing** expires the lease and, when another process has marked the session as wanted,
  sends ``NOTIFY`` in the same statement. Each process keeps one connection that ``LISTEN``\\ s
  (:class:`~.pglisten.Listener`, reconnecting by itself), so a run waiting for the session tries
  again at once instead of polling; without a notification (none came, or the listener is
  down) it tries again when the holder's lease would expire. A release with no mark sends
  nothing: a waiter marks the session after its failed take, so one released in between is
  found expired when it marks, and it tries again at once. A waiter that finds another
  process's mark cannot place its own; it notes that others wait (``others_waiting``), and
  the next release is announced for it, though the marked process cleared its mark by taking
  the lease. (A ``NOTIFY`` is not free: the server serialises the commits of transactions
  that send one, and wakes every listener.)

No connection is held for a run: each statement borrows one from the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, Final

import attrs

from .pglisten import OUTAGES, Listener, Subscription
from .storage import LeaseLost, SessionBusy, StoreError

__all__ = ("CHANNEL", "Lease", "ReleaseListener", "SessionLeases", "check_token")

log = logging.getLogger(__name__)

#: The channel releases are announced on; the payload is :func:`_digest` of the session key
#: (a fixed length, whatever the key's: a NOTIFY payload must stay under 8000 bytes).
CHANNEL: Final = "openclaw_lease_released"


# Another process's mark keeps a free lease for that process for two lease lengths at most: a
# waiter that died without clearing it blocks no one for longer, and a live one (which renews
# its mark each time it looks again, at the latest when the holder's lease would expire) keeps
# it. $1 session key, $2 lease length in seconds, $3 this process's id.
_MARK_FRESH: Final = (
    "(l.wanted_by IS NULL OR l.wanted_by = $3"
    " OR l.wanted_at <= clock_timestamp() - make_interval(secs => 2 * $2))"
)

# Takes the lease if it is free (no row, or expired) and no other process has marked it as
# wanted, in one statement; the row lock of ON CONFLICT makes concurrent takers take turns.
_TAKE: Final = f"""
INSERT INTO openclaw_leases AS l (session_key, token, expires_at)
VALUES ($1, 1, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (session_key) DO UPDATE
    SET token = l.token + 1, expires_at = clock_timestamp() + make_interval(secs => $2),
        wanted_by = NULL, wanted_at = NULL
    WHERE l.expires_at <= clock_timestamp() AND {_MARK_FRESH}
RETURNING token
"""
# After a failed take: mark the session as wanted by this process unless another process's
# fresh mark is there (so the holder's own process, whose next run would otherwise win every
# race by a network hop, lets the other process have the next turn), and answer when to look
# again without a notification: when the lease expires, or another's mark goes stale.
# A waiter that cannot place its mark says so (others_waiting), so that the next release is
# announced even though the marked process, having taken the lease, cleared its mark.
_WANT: Final = f"""
UPDATE openclaw_leases AS l
SET wanted_by = CASE WHEN {_MARK_FRESH} THEN $3 ELSE l.wanted_by END,
    wanted_at = CASE WHEN {_MARK_FRESH} THEN clock_timestamp() ELSE l.wanted_at END,
    others_waiting = l.others_waiting OR NOT {_MARK_FRESH}
WHERE session_key = $1
RETURNING extract(epoch FROM CASE WHEN wanted_by = $3 THEN expires_at
                                  ELSE greatest(expires_at, wanted_at + make_interval(secs => 2 * $2)) END
                             - clock_timestamp())::float8
"""
# A waiter that gives up clears its mark and says so, so that others need not wait it out.
_UNWANT: Final = f"""
WITH cleared AS (
    UPDATE openclaw_leases SET wanted_by = NULL, wanted_at = NULL
    WHERE session_key = $1 AND wanted_by = $2
    RETURNING session_key
)
SELECT pg_notify('{CHANNEL}', md5(session_key)) FROM cleared
"""
# Never a released lease ('epoch'): a renewal cancelled as the run's last append releases the
# lease may still reach the server after it.
_RENEW: Final = """
UPDATE openclaw_leases SET expires_at = clock_timestamp() + make_interval(secs => $3)
WHERE session_key = $1 AND token = $2 AND expires_at <> 'epoch'
RETURNING true
"""
# Expired at once, and announced on commit (the statement is its own transaction) when
# another process waits for it; every waiter wakes then, so others_waiting starts over.
_RELEASE: Final = f"""
WITH held AS (
    SELECT session_key, wanted_by IS NOT NULL OR others_waiting AS wanted
    FROM openclaw_leases WHERE session_key = $1 AND token = $2
    FOR UPDATE
), freed AS (
    UPDATE openclaw_leases AS l SET expires_at = 'epoch', others_waiting = false
    FROM held WHERE l.session_key = held.session_key
    RETURNING held.session_key, held.wanted
)
SELECT pg_notify('{CHANNEL}', md5(session_key)) FROM freed WHERE wanted
"""

# Without a working listener, a waiter looks again at least this often.
_DEAF_RECHECK_S: Final = 0.5
# Never sooner than this: a lease that has "0 s left" is about to be free, not free.
_MIN_RECHECK_S: Final = 0.002


def _digest(session_key: str) -> str:
    # PostgreSQL's md5() of the key's UTF-8 bytes, as the release statement sends it.
    return hashlib.md5(session_key.encode(), usedforsecurity=False).hexdigest()


@attrs.define
class Lease:
    """A run's lease on a session: its fencing ``token``; ``lost`` once a renewal found it
    taken; ``released`` once the run's last append gave it up."""

    session_key: str
    token: int
    lost: bool = False
    released: bool = False
    #: The task renewing the lease while the run lives (see :meth:`SessionLeases.hold`).
    renewal: asyncio.Task[None] | None = attrs.field(default=None, eq=False, repr=False)


def check_token(lease: Lease, token: int | None) -> None:
    """Check the token a fenced statement found on ``lease``'s row (``None``: no row) is the
    lease's own; otherwise mark the lease lost.

    Raises:
        LeaseLost: another run has taken the session since.
    """
    if token != lease.token:
        lease.lost = True
        raise LeaseLost(f"the run's lease on its session was taken over (token {lease.token}, now {token})")


class ReleaseListener:
    """Wakes this process's runs waiting for a session when its lease is released, through the
    process's :class:`~.pglisten.Listener`; when that reconnects, it wakes every waiter (a
    release may have gone unheard meanwhile).

    Args:
        listener: the process's listening connection (the store's).
    """

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._subscription = Subscription(CHANNEL, self._on_release, on_connect=self._wake_all)

    @property
    def connected(self) -> bool:
        """Whether releases are being heard now."""
        return self._listener.connected

    @property
    def watched(self) -> int:
        """How many sessions runs of this process are waiting for."""
        return len(self._waiters)

    @contextlib.contextmanager
    def watching(self, session_key: str) -> Iterator[asyncio.Event]:
        """An event set whenever a lease on ``session_key`` is released (or may have been)."""
        event = asyncio.Event()
        digest = _digest(session_key)
        self._waiters.setdefault(digest, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(digest)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[digest]

    async def start(self) -> None:
        """Listen for releases (from when the listener is connected)."""
        await self._listener.subscribe(self._subscription)

    async def stop(self) -> None:
        """Stop listening for releases."""
        await self._listener.unsubscribe(self._subscription)

    def _on_release(self, payload: str) -> None:
        for event in self._waiters.get(payload, ()):
            event.set()

    async def _wake_all(self, conn: object) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


class SessionLeases:
    """Takes, renews and releases run leases on sessions, for :class:`~.pgstore.PostgresStore`.

    Args:
        listener: the process's listening connection (the store's).
        lease_s: how long a lease lasts unless renewed (``gateway.sessionStore.leaseMs``).
    """

    def __init__(self, listener: Listener, *, lease_s: float) -> None:
        self.lease_s = lease_s
        self.listener = ReleaseListener(listener)
        # Marks a session as wanted by this process (see _WANT).
        self.process_id = uuid.uuid4().hex
        # Renewals, and clean-ups spawned by cancelled waiters: stop() ends what is left.
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start listening for releases (on the store's listener, started after)."""
        await self.listener.start()

    async def stop(self) -> None:
        """Stop renewing (the leases expire by themselves) and listening."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.listener.stop()

    @contextlib.asynccontextmanager
    async def hold(self, pool: Any, session_key: str, deadline: float) -> AsyncIterator[Lease]:
        """Take the lease on ``session_key`` (waiting until the loop time ``deadline`` at
        most), renew it while the block runs, release it after.

        Raises:
            SessionBusy: another run held the session until ``deadline``.
            StoreError: the database cannot be reached.
        """
        lease = await self._take(pool, session_key, deadline)
        renewal = asyncio.create_task(self._renew(pool, lease), name="openclaw lease renewal")
        lease.renewal = renewal
        self._tasks.add(renewal)
        renewal.add_done_callback(self._tasks.discard)
        try:
            yield lease
        finally:
            # Not awaited: the caller may be being cancelled, and a cancelled renewal only
            # has to stop (stop() gathers what is left).
            renewal.cancel()
            if not lease.lost and not lease.released:
                await self._release(pool, lease)

    @staticmethod
    async def stop_renewing(lease: Lease) -> None:
        """Stop ``lease``'s renewal and wait until it has: a renewal landing after the lease
        is released would hold the session again."""
        renewal = lease.renewal
        if renewal is not None:
            renewal.cancel()
            # asyncio.wait, not await: the renewal's cancellation is not this task's.
            await asyncio.wait({renewal})

    async def _take(self, pool: Any, session_key: str, deadline: float) -> Lease:
        loop = asyncio.get_running_loop()
        marked = False
        try:
            with self.listener.watching(session_key) as released:
                while True:
                    # Cleared before trying: a release after a failed try still wakes this waiter.
                    released.clear()
                    try:
                        token = await self._try_take(pool, session_key)
                        if token is not None:
                            marked = False  # taking clears the mark
                            return Lease(session_key, int(token))
                        marked = True  # perhaps: cleared on giving up only if it is ours
                        left_s = await pool.fetchval(_WANT, session_key, self.lease_s, self.process_id)
                    except OUTAGES as exc:
                        raise StoreError(f"cannot take a session lease: {type(exc).__name__}: {exc}") from exc
                    wait_s = deadline - loop.time()
                    if wait_s <= 0:
                        raise SessionBusy(session_key)
                    recheck_s = self.lease_s if left_s is None else max(float(left_s), _MIN_RECHECK_S)
                    if not self.listener.connected:
                        recheck_s = min(recheck_s, _DEAF_RECHECK_S)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(recheck_s, wait_s)):
                            await released.wait()
        finally:
            if marked:
                # In a task of its own: this one may be being cancelled.
                self._spawn(self._unwant(pool, session_key))

    async def _try_take(self, pool: Any, session_key: str) -> int | None:
        # Shielded: if this task is cancelled while the statement runs, the lease may have been
        # taken all the same; it is then released at once instead of blocking the session for
        # a whole lease.
        take = asyncio.ensure_future(pool.fetchval(_TAKE, session_key, self.lease_s, self.process_id))
        try:
            token: int | None = await asyncio.shield(take)
        except asyncio.CancelledError:
            self._spawn(self._release_if_taken(pool, session_key, take))
            raise
        return token

    async def _release_if_taken(self, pool: Any, session_key: str, take: asyncio.Future[int | None]) -> None:
        with contextlib.suppress(*OUTAGES):
            token = await take
            if token is not None:
                await self._release(pool, Lease(session_key, int(token)))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unwant(self, pool: Any, session_key: str) -> None:
        try:
            async with asyncio.timeout(self.lease_s):
                await pool.execute(_UNWANT, session_key, self.process_id)
        except OUTAGES as exc:
            log.debug("cannot clear a session's wanted mark (it goes stale by itself): %s", exc)

    async def _renew(self, pool: Any, lease: Lease) -> None:
        period_s = self.lease_s / 3
        while True:
            await asyncio.sleep(period_s)
            try:
                kept = await pool.fetchval(_RENEW, lease.session_key, lease.token, self.lease_s)
            except OUTAGES as exc:
                # The lease may still be ours at the next try; if it is taken meanwhile, the
                # fenced append refuses this run's turns.
                log.warning("cannot renew the lease on a session: %s: %s", type(exc).__name__, exc)
                continue
            if not kept:
                lease.lost = True
                log.warning("a run lost its session lease (token %d) to another run", lease.token)
                return

    async def _release(self, pool: Any, lease: Lease) -> None:
        try:
            async with asyncio.timeout(self.lease_s):
                await pool.execute(_RELEASE, lease.session_key, lease.token)
        except OUTAGES as exc:
            log.warning("cannot release a session lease (it expires by itself): %s: %s", type(exc).__name__, exc)
