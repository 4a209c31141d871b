"""``SqlCore``: what every part of :class:`sync.store.sql.SqlStore` stands on: its engines,
one short transaction per call (:meth:`SqlCore._read`, :meth:`SqlCore._write`), and
leadership: the epoch a write checks first.

- Every method is one short transaction on a pooled connection; on a SQLite file it
  runs on the synchronous engine, on the event loop or in the store's own thread
  (:mod:`sync.store.threads`), on one of two connections (reads, writes) of each place,
  kept open between calls (the event loop's never wait for a lock). On Postgres a read
  runs without a transaction (autocommit: at READ COMMITTED each statement reads its
  own snapshot either way).
- Fencing: once :meth:`SqlCore.fence` (or :meth:`take_epoch`) set an epoch, every write
  transaction first reads the leader row (``FOR SHARE`` on Postgres, so it waits for a
  concurrent ``take_epoch``) and raises :class:`FencedError` when it moved on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import sync.store.tables as t
from sync.errors import StoreError
from sync.model import Link
from sync.settings import redact_url
from sync.store.base import as_utc, fenced_error
from sync.store.engines import SQLITE_BUSY_TIMEOUT_MS, WRITE_OPTION, mapped_errors
from sync.store.rows import to_link
from sync.store.statements import LEADER_EPOCH, LEADER_ID, LINK_BY_ID, PREPARED
from sync.store.threads import (
    InlineConnection,
    LockBusy,
    in_store_thread,
    is_lock_busy,
    on_event_loop,
)


class SqlCore:
    """Engines, transactions and fencing of a SQL store (``SqlStore`` builds on it)."""

    def __init__(
        self, engine: AsyncEngine, url: str, *, thread_engine: Engine | None = None
    ) -> None:
        self._engine = engine
        self._url = url
        self._postgres = engine.dialect.name == "postgresql"
        self._fenced_epoch: int | None = None
        self._link_for_update = self._lock(LINK_BY_ID)
        # FOR SHARE on Postgres: concurrent writes of the leader do not wait on each
        # other, but take_epoch's UPDATE waits for them, and they for it.
        self._leader_epoch = (
            LEADER_EPOCH.with_for_update(read=True) if self._postgres else LEADER_EPOCH
        )
        # Postgres reads without a transaction: at READ COMMITTED (bpsync sets no other
        # level) every statement reads its own snapshot inside a transaction as well, so
        # a read's BEGIN and COMMIT are two round trips that buy nothing
        self._read_engine = (
            engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgres else engine
        )
        # SQLite file: every store call runs whole on the synchronous driver, on the event
        # loop, or in one thread of its own when another process holds the lock
        self._thread_engine = thread_engine
        #: (on the event loop, write) -> its connection, kept open (write: starts with
        #: BEGIN IMMEDIATE; on the event loop: busy timeout 0)
        self._thread_conns: dict[tuple[bool, bool], Connection] = {}
        self._thread_pool = (
            None
            if thread_engine is None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpsync-sqlite")
        )

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with its password masked (for logs and messages)."""
        return redact_url(self._url)

    # --- transactions

    @contextlib.contextmanager
    def _thread_transaction(self, *, write: bool) -> Iterator[Connection]:
        """A transaction on the synchronous engine, on the connection for reads or for
        writes of the place the call runs (the event loop, the store's thread). They stay
        open between calls (a checkout from the pool and its reset on return cost more
        than a short transaction); one that failed is closed, the next call opens a
        fresh one. On the event loop a lock held by another process raises
        :class:`LockBusy` at once (the call runs again in the thread)."""
        assert self._thread_engine is not None
        assert in_store_thread(), "a store call outside run_inline"
        key = (on_event_loop(), write)
        conn = self._thread_conns.get(key)
        if conn is None:
            conn = self._thread_engine.connect()
            # every checkout: a pooled connection may have served the other place
            timeout_ms = 0 if key[0] else SQLITE_BUSY_TIMEOUT_MS
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute(f"PRAGMA busy_timeout={timeout_ms}")
            if write:
                conn.execution_options(**{WRITE_OPTION: True})
            self._thread_conns[key] = conn
        try:
            with conn.begin():
                yield conn
        except BaseException as exc:
            del self._thread_conns[key]
            conn.close()
            if key[0] and is_lock_busy(exc):
                raise LockBusy(str(exc)) from exc
            raise

    def _close_thread(self) -> None:
        """Close the thread's connections and its engine (in the thread)."""
        assert self._thread_engine is not None
        conns = list(self._thread_conns.values())
        self._thread_conns.clear()
        for conn in conns:
            conn.close()
        self._thread_engine.dispose()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._thread_engine is not None:
            async with mapped_errors(self._url):
                with self._thread_transaction(write=False) as sync_conn:
                    yield cast(AsyncConnection, InlineConnection(sync_conn, PREPARED))
            return
        if self._postgres:
            async with mapped_errors(self._url), self._read_engine.connect() as conn:
                yield conn
            return
        async with mapped_errors(self._url), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self, *, fenced: bool = True) -> AsyncIterator[AsyncConnection]:
        if self._thread_engine is not None:
            async with mapped_errors(self._url):
                with self._thread_transaction(write=True) as sync_conn:
                    conn = cast(AsyncConnection, InlineConnection(sync_conn, PREPARED))
                    if fenced and self._fenced_epoch is not None:
                        await self._check_fence(conn, self._fenced_epoch)
                    yield conn
            return
        async with mapped_errors(self._url), self._engine.connect() as conn:
            await conn.execution_options(**{WRITE_OPTION: True})
            async with conn.begin():
                if fenced and self._fenced_epoch is not None:
                    await self._check_fence(conn, self._fenced_epoch)
                yield conn

    async def _check_fence(self, conn: AsyncConnection, epoch: int) -> None:
        stored = (await conn.execute(self._leader_epoch)).scalar_one_or_none() or 0
        if stored != epoch:
            raise fenced_error(stored, epoch)

    def _lock(self, query: Any) -> Any:
        return query.with_for_update() if self._postgres else query

    def _upsert(self, table: Any) -> Any:
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    async def _get_link(self, conn: AsyncConnection, link_id: int, *, lock: bool) -> Link:
        query = self._link_for_update if lock else LINK_BY_ID
        row = (await conn.execute(query, {"b_id": link_id})).first()
        if row is None:
            raise StoreError(f"no link {link_id}")
        return to_link(row)

    # --- lifecycle

    async def close(self) -> None:
        pool, self._thread_pool = self._thread_pool, None
        if pool is not None and self._thread_engine is not None:
            # queued behind every call still running: they finish first
            await asyncio.get_running_loop().run_in_executor(pool, self._close_thread)
            pool.shutdown(wait=True)
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))

    # --- high availability

    async def take_epoch(self, holder: str, now: datetime) -> int:
        now = as_utc(now)
        # Not fenced: taking the epoch is how a fenced replica becomes leader.
        async with self._write(fenced=False) as conn:
            seed = self._upsert(t.leader).values(id=LEADER_ID, epoch=0, holder=None, updated_at=now)
            await conn.execute(seed.on_conflict_do_nothing(index_elements=["id"]))
            result = await conn.execute(
                update(t.leader)
                .where(t.leader.c.id == LEADER_ID)
                .values(epoch=t.leader.c.epoch + 1, holder=holder, updated_at=now)
                .returning(t.leader.c.epoch)
            )
            epoch = int(result.scalar_one())
        self._fenced_epoch = epoch
        return epoch

    def fence(self, epoch: int | None) -> None:
        """From now on every write checks the stored epoch equals ``epoch`` (None: off)."""
        self._fenced_epoch = epoch
