"""The SQLite thread driver: every store call on a SQLite file runs whole in one thread.

On a SQLite file, each public store call runs on the synchronous pysqlite driver, in
one thread of the store's own (``bpsync-sqlite``): one hand-over between threads per
call instead of several per statement (aiosqlite's), which cost more than SQLite itself.
The calls are serialised there, as SQLite serialises writers anyway; a busy wait for
another process's lock blocks that thread, never the event loop.

How: the store's code is written against ``AsyncConnection``; in the thread it gets an
:class:`InlineConnection` whose ``execute`` never suspends, so :func:`run_inline` runs a
whole store call (a coroutine) to its end with one ``send``. :func:`run_calls_in_thread`
wraps every public coroutine method of the store class once, so a new method cannot be
forgotten.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from sqlalchemy import Connection

from sync.errors import StoreError

_T = TypeVar("_T")
_C = TypeVar("_C", bound=type)

#: set while a store call runs in its SQLite thread
_in_thread = threading.local()


def in_store_thread() -> bool:
    """Whether the caller runs inside a store call in the store's SQLite thread."""
    return bool(getattr(_in_thread, "active", False))


class InlineConnection:
    """What the store code needs of an AsyncConnection, over a synchronous Connection:
    its ``execute`` never suspends, so a whole store call runs in one ``send``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)


def run_inline(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a store call to its end in this (the SQLite) thread; it must not suspend."""
    _in_thread.active = True
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(_T, stop.value)
    finally:
        _in_thread.active = False
    coro.close()
    raise RuntimeError("a SQLite store call suspended in the store's thread")


def threaded(
    method: Callable[..., Coroutine[Any, Any, _T]],
) -> Callable[..., Coroutine[Any, Any, _T]]:
    """``method`` of a store run in the store's thread (``self._thread_pool``) when it has
    one, directly otherwise (and when already in the thread: a call within a call)."""

    @functools.wraps(method)
    async def run(self: Any, *args: Any, **kwargs: Any) -> _T:
        pool = self._thread_pool
        if pool is None or in_store_thread():
            if pool is None and self._thread_engine is not None:
                raise StoreError("the store is closed")
            return await method(self, *args, **kwargs)
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
    "in_store_thread",
    "run_calls_in_thread",
    "run_inline",
    "threaded",
]
