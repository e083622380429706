"""One ``LISTEN`` connection per gateway process, for everything the fleet shares in PostgreSQL.

Run leases wake the runs waiting for a released session (:mod:`.pglease`), and the failed-auth
limiter mirrors lockouts (:mod:`.pgauthstate`); each subscribes its channel to the process's
one :class:`Listener`, which the PostgreSQL store opens and closes.

The listener holds a connection of its own (not one of the pool's: it is held for the
process's life). It reconnects by itself, backing off, and pings the connection when nothing
arrives for a while, since a silent partition closes no socket. Each subscriber hears when
the connection is up again (a notification may have gone unheard meanwhile: it reads what it
needs again) and when it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg
import attrs

from .storage import StoreError

__all__ = ("OUTAGES", "Listener", "Subscription")

log = logging.getLogger(__name__)

#: What a database that cannot be reached or a statement that fails raises; mapped into
#: :class:`~.storage.StoreError` where it is caught. (Not asyncpg's whole tree: a bug in our
#: SQL is a bug, not an outage.)
OUTAGES: Final[tuple[type[Exception], ...]] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.DataError,
    OSError,
    TimeoutError,
)

# The connection is checked this often when nothing arrives, and reconnection backs off up to
# the maximum.
_PING_S: Final = 5.0
_STATEMENT_TIMEOUT_S: Final = 2.0
_RECONNECT_MIN_S: Final = 0.1
_RECONNECT_MAX_S: Final = 2.0
_CONNECT_TIMEOUT_S: Final = 10.0


@attrs.define(eq=False)
class Subscription:
    """A channel's subscriber: what to call on a notification, on (re)connecting and on losing
    the connection. ``on_connect`` gets the listener's connection, for reads that must come
    after ``LISTEN`` (whatever changes meanwhile arrives as a notification too)."""

    channel: str
    on_notify: Callable[[str], None]
    on_connect: Callable[[Any], Awaitable[None]] | None = None
    on_lost: Callable[[], None] | None = None


class Listener:
    """The process's listening connection to the database at ``url``.

    Args:
        url: the database's URL. It may hold a password, so no message shows it.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._subscriptions: list[Subscription] = []
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        # One operation at a time on the connection (asyncpg refuses overlapping ones): the
        # ping, LISTEN and UNLISTEN, and the subscribers' reads on connecting.
        self._using = asyncio.Lock()

    @property
    def connected(self) -> bool:
        """Whether notifications are being heard now."""
        return self._conn is not None and not self._conn.is_closed()

    async def subscribe(self, subscription: Subscription) -> None:
        """Add ``subscription``; when connected, listen on its channel and call its
        ``on_connect`` now, else when the connection is back."""
        if subscription in self._subscriptions:
            return
        new_channel = not self._listens_to(subscription.channel)
        self._subscriptions.append(subscription)
        conn = self._conn
        if conn is None or conn.is_closed():
            return
        try:
            async with self._using:
                if new_channel:
                    await conn.add_listener(subscription.channel, self._dispatch)
                if subscription.on_connect is not None:
                    await subscription.on_connect(conn)
        except Exception as exc:  # noqa: BLE001 - whatever failed is tried again on a new connection
            # Starting over on a new connection calls every on_connect again, this one's too.
            log.warning("the PostgreSQL listener starts over: %s: %s", type(exc).__name__, exc)
            conn.terminate()

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Remove ``subscription`` (``UNLISTEN`` when its channel has no subscriber left)."""
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)
        conn = self._conn
        if conn is not None and not self._listens_to(subscription.channel):
            with contextlib.suppress(*OUTAGES):
                async with self._using:
                    await conn.remove_listener(subscription.channel, self._dispatch)

    async def start(self) -> None:
        """Connect and listen on every channel subscribed so far, then keep listening in the
        background. Starting twice is a no-op.

        Raises:
            StoreError: the first connection failed.
        """
        if self._task is not None:
            return
        try:
            conn = await self._connect()
        except OUTAGES as exc:
            raise StoreError(f"cannot listen for the fleet's notifications: {type(exc).__name__}: {exc}") from exc
        self._task = asyncio.create_task(self._keep(conn), name="openclaw listener")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*OUTAGES):
                await conn.close(timeout=1.0)

    def _listens_to(self, channel: str) -> bool:
        return any(s.channel == channel for s in self._subscriptions)

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(self._url, timeout=_CONNECT_TIMEOUT_S)
        try:
            async with self._using:
                for channel in dict.fromkeys(s.channel for s in self._subscriptions):
                    await conn.add_listener(channel, self._dispatch)
                # Listening first, then the subscribers' reads: whatever changes in between
                # arrives as a notification too.
                self._conn = conn
                for subscription in list(self._subscriptions):
                    if subscription.on_connect is not None:
                        await subscription.on_connect(conn)
        except BaseException:
            self._conn = None
            conn.terminate()
            raise
        return conn

    def _dispatch(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        for subscription in self._subscriptions:
            if subscription.channel == channel:
                subscription.on_notify(payload)

    def _lost(self) -> None:
        self._conn = None
        for subscription in self._subscriptions:
            if subscription.on_lost is not None:
                subscription.on_lost()

    async def _keep(self, conn: Any) -> None:
        backoff = _RECONNECT_MIN_S
        while True:
            await self._until_lost(conn)
            self._lost()
            conn.terminate()
            log.warning("the PostgreSQL listener lost its connection; reconnecting")
            while True:
                await asyncio.sleep(backoff)
                try:
                    conn = await self._connect()
                except (*OUTAGES, asyncpg.PostgresError) as exc:
                    # The server refusing us (the database dropped and not yet back, a
                    # password changed) is an outage too: the listener must live on to see it
                    # fixed, and its subscribers make do meanwhile.
                    backoff = min(backoff * 2, _RECONNECT_MAX_S)
                    log.debug("the PostgreSQL listener cannot reconnect: %s", exc)
                    continue
                except Exception:  # noqa: BLE001 - a subscriber's bug must not end the listening
                    backoff = min(backoff * 2, _RECONNECT_MAX_S)
                    log.exception("the PostgreSQL listener cannot reconnect")
                    continue
                backoff = _RECONNECT_MIN_S
                log.info("the PostgreSQL listener reconnected")
                break

    async def _until_lost(self, conn: Any) -> None:
        lost = asyncio.Event()
        on_close: Callable[[Any], None] = lambda _conn: lost.set()  # noqa: E731
        conn.add_termination_listener(on_close)
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PING_S):
                    await lost.wait()
                return
            try:
                async with self._using, asyncio.timeout(_STATEMENT_TIMEOUT_S):
                    await conn.fetchval("SELECT 1")
            except OUTAGES:
                return
