"""The SQLite call driver: every store call on a SQLite file runs whole, on the
synchronous pysqlite driver, on the event loop when the database's lock is free and in
one thread of the store's own (``bpsync-sqlite``) when another process holds it.

A store call on a SQLite file costs SQLite tens of microseconds; handing it to a thread
and its result back to the event loop cost more than that (~120 us of CPU per call, and
the GIL passed to and fro while the loop has work). So a call first runs right where it
is awaited, on connections whose busy timeout is 0: it never waits there. When another
process holds the lock (a ``bpsync`` command writing, SQLite's ``database is locked``),
the call stops at once with nothing done (a write transaction starts with ``BEGIN
IMMEDIATE``, so that is where it stops; a read in WAL mode does not wait for writers)
and runs again from the start in the store's thread, on the thread's own connections,
with the full busy timeout: a busy wait for another process's lock blocks that thread,
never the event loop. Calls are serialised either way: the event loop runs one call to
its end before anything else, the thread one at a time, and SQLite one writer at a time.

How: the store's code is written against ``AsyncConnection``; in a call it gets an
:class:`InlineConnection` whose ``execute`` never suspends, so :func:`run_inline` runs a
whole store call (a coroutine) to its end with one ``send``. :func:`run_calls_in_thread`
wraps every public coroutine method of the store class once, so a new method cannot be
forgotten.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sqlite3
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from sqlalchemy import Connection

from sync.errors import StoreError
from sync.store.prepared import PreparedStatements

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)

#: ``active``: a store call runs in this thread; ``on_loop``: on the event loop
_in_thread = threading.local()


class LockBusy(Exception):  # noqa: N818 - control flow, not an error
    """A call on the event loop found the database locked by another process: nothing
    was done, it runs again in the store's thread (which waits for the lock)."""


def in_store_thread() -> bool:
    """Whether the caller runs inside a store call (on the event loop or in the store's
    thread): a call within a call runs directly."""
    return bool(getattr(_in_thread, "active", False))


def on_event_loop() -> bool:
    """Whether the store call running in this thread runs on the event loop (its
    connections must not wait for a lock) rather than in the store's thread."""
    return bool(getattr(_in_thread, "on_loop", False))


def is_lock_busy(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver error, or SQLAlchemy's around it) is SQLite's busy lock."""
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    return (
        isinstance(orig, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF == sqlite3.SQLITE_BUSY)
    )


class InlineConnection:
    """What the store code needs of an AsyncConnection, over a synchronous Connection:
    its ``execute`` never suspends, so a whole store call runs in one ``send``. A
    statement of ``prepared`` runs straight on the driver (:mod:`sync.store.prepared`),
    in the same transaction."""

    __slots__ = ("_conn", "_driver", "_prepared")

    def __init__(self, conn: Connection, prepared: PreparedStatements) -> None:
        self._conn = conn
        self._prepared = prepared
        self._driver = cast(sqlite3.Connection, conn.connection.driver_connection)

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        ready = self._prepared.get(statement, parameters, self._conn.dialect)
        if ready is not None:
            return ready.run(self._driver, parameters)
        return self._conn.execute(statement, parameters)


def run_inline(coro: Coroutine[Any, Any, _T], *, on_loop: bool = False) -> _T:
    """Run a store call to its end in this thread (the event loop's with ``on_loop``,
    else the store's); it must not suspend."""
    _in_thread.active = True
    _in_thread.on_loop = on_loop
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(_T, stop.value)
    finally:
        _in_thread.active = False
        _in_thread.on_loop = False
    coro.close()
    raise RuntimeError("a SQLite store call suspended")


def threaded(
    method: Callable[..., Coroutine[Any, Any, _T]],
) -> Callable[..., Coroutine[Any, Any, _T]]:
    """``method`` of a store with a SQLite thread (``self._thread_pool``): run on the event
    loop, or in the thread when the lock is another process's (see the module doc);
    directly for another store (and for a call within a call)."""

    @functools.wraps(method)
    async def run(self: Any, *args: Any, **kwargs: Any) -> _T:
        pool = self._thread_pool
        if pool is None or in_store_thread():
            if pool is None and self._thread_engine is not None:
                raise StoreError("the store is closed")
            return await method(self, *args, **kwargs)
        try:
            return run_inline(method(self, *args, **kwargs), on_loop=True)
        except LockBusy:
            pass  # another process holds the lock: wait for it in the store's thread
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, run_inline, method(self, *args, **kwargs))

    return run


def run_calls_in_thread(cls: _C) -> _C:
    """Wrap every public coroutine method of ``cls`` (its own and inherited ones) with
    :func:`threaded`, ``close`` excepted (it manages the thread itself)."""
    for name in dir(cls):
        method = inspect.getattr_static(cls, name)
        if not name.startswith("_") and name != "close" and inspect.iscoroutinefunction(method):
            setattr(cls, name, threaded(method))
    return cls


__all__ = [
    "InlineConnection",
    "LockBusy",
    "in_store_thread",
    "is_lock_busy",
    "on_event_loop",
    "run_calls_in_thread",
    "run_inline",
    "threaded",
]
