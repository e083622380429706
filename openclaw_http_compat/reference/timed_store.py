"""Timing of session-store operations, from outside the store.

:func:`timed_store` wraps a :class:`~.storage.TranscriptStore` of either engine without
touching it: every coroutine method it has (``open``, ``load``, ``append``, ``close``, and any
an engine adds) is timed under its own name, an async context manager it hands out
(``take_turn``) is timed while it is entered (waiting for the session's turn), and the object
it yields (the :class:`~.storage.SessionTurn`) is wrapped the same way, so a turn's ``load``
and ``append`` are timed too. Everything else passes through unchanged.

Wrapping by name rather than by a fixed list keeps the timing right while the store's
contract grows; the ``op`` label is always a method name, so it stays bounded.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from .metrics import StoreMetrics

__all__ = ("ENGINE_POSTGRESQL", "ENGINE_SQLITE", "timed_store")

ENGINE_SQLITE: Final = "sqlite"
ENGINE_POSTGRESQL: Final = "postgresql"

_T = TypeVar("_T")


class _Timed:
    """The proxy: see the module docstring."""

    def __init__(self, inner: object, metrics: StoreMetrics, engine: str) -> None:
        self._inner = inner
        self._metrics = metrics
        self._engine = engine

    def __repr__(self) -> str:
        return f"timed({self._inner!r})"

    def _observe(self, op: str, started: float) -> None:
        self._metrics.store_operation(engine=self._engine, op=op, duration_s=time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr
        if inspect.iscoroutinefunction(attr):
            wrapped: Callable[..., Any] = self._timed_coroutine(name, attr)
        else:
            wrapped = self._timed_call(name, attr)
        # Methods are looked up once; plain values (a turn's session_key) are read each time.
        self.__dict__[name] = wrapped
        return wrapped

    def _timed_coroutine(self, op: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self._observe(op, started)

        return timed

    def _timed_call(self, op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if hasattr(result, "__aenter__") and hasattr(result, "__aexit__"):
                return _TimedEntry(self, op, result)
            return result

        return call


class _TimedEntry:
    """An async context manager from the store: entering it is timed, what it yields is wrapped."""

    def __init__(self, owner: _Timed, op: str, inner: Any) -> None:
        self._owner = owner
        self._op = op
        self._inner = inner

    async def __aenter__(self) -> Any:
        started = time.perf_counter()
        try:
            entered = await self._inner.__aenter__()
        finally:
            self._owner._observe(self._op, started)
        return entered if entered is None else _Timed(entered, self._owner._metrics, self._owner._engine)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return cast("bool | None", await self._inner.__aexit__(exc_type, exc, tb))


def timed_store(store: _T, metrics: StoreMetrics, *, engine: str) -> _T:
    """``store``, its operations timed into ``metrics.store_operation(engine=engine, op=<method>)``."""
    return cast(_T, _Timed(store, metrics, engine))
