"""Engines and URLs: how bpsync connects to SQLite and Postgres, and what a failure says.

- :func:`normalise_url`: bare ``sqlite://`` and ``postgresql://`` get the async drivers.
- :func:`make_engine`: the async engine (aiosqlite, asyncpg); :func:`make_sqlite_thread_engine`
  its synchronous pysqlite twin for a SQLite file (see :mod:`sync.store.threads`).
- SQLite: WAL journal, ``busy_timeout``, foreign keys on. pysqlite's own transaction
  handling is switched off and SQLAlchemy emits ``BEGIN`` itself (the SQLAlchemy
  recipe), so reads are real snapshots; a connection with :data:`WRITE_OPTION` set
  starts with ``BEGIN IMMEDIATE``, so two writers queue on the busy timeout instead of
  failing on a lock upgrade.
- Postgres: a ``search_path`` query parameter in the URL selects a schema;
  ``pool_size`` and ``max_overflow`` size the connection pool (SQLAlchemy's defaults, 5
  and 10, without them). A pooled connection is pinged at checkout only when it has been
  idle for :data:`PING_AFTER_IDLE_S` or more (:func:`ping_when_idle`): asyncpg's ping is
  three round trips, and every store call checks a connection out.
- :func:`mapped_errors`: driver and connection errors become :class:`StoreError` naming
  the database with its password masked.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InvalidatePoolError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from sync.errors import StoreError
from sync.settings import redact_url

#: how long a SQLite writer waits for another one before "database is locked"
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: Postgres URL options that size the connection pool (bpsync's, not the driver's):
#: several sync pairs get small pools (:mod:`sync.pairconfig`)
POOL_OPTIONS = ("pool_size", "max_overflow")
#: execution option marking a connection whose transaction writes (SQLite: BEGIN IMMEDIATE)
WRITE_OPTION = "bpsync_write"
#: a pooled Postgres connection back in the pool for less than this is not pinged when it
#: is checked out again (HikariCP's ``aliveBypassWindowMs``, 500 ms, is the same idea)
PING_AFTER_IDLE_S = 1.0
#: where a pooled connection's record keeps when it was last returned to the pool
_CHECKED_IN_AT = "bpsync_checked_in_at"


def normalise_url(url: str) -> URL:
    """Parse ``url``; bare ``sqlite://`` and ``postgresql://`` get the async drivers."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"invalid database URL {redact_url(url)!r}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite+aiosqlite:///PATH "
        "or postgresql+asyncpg://USER:PASSWORD@HOST/DB"
    )


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a Postgres database, in any spelling :func:`normalise_url` takes."""
    try:
        return normalise_url(url).get_backend_name() == "postgresql"
    except StoreError:
        return False


def make_engine(url: str, *, monotonic: Callable[[], float] = time.monotonic) -> AsyncEngine:
    """An async engine for ``url`` with bpsync's connection setup (see the module doc);
    ``monotonic`` is the clock of a Postgres pool's idle connections."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the database directory {path.parent}: {exc.strerror}"
                ) from None
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {}
    search_path = parsed.query.get("search_path")
    if search_path:
        connect_args["server_settings"] = {"search_path": str(search_path)}
        parsed = parsed.difference_update_query(["search_path"])
    pool: dict[str, int] = {}
    for name in POOL_OPTIONS:
        value = parsed.query.get(name)
        if value is not None:
            try:
                pool[name] = int(str(value))
            except ValueError:
                raise StoreError(f"database URL option {name} must be a number") from None
    parsed = parsed.difference_update_query(POOL_OPTIONS)
    engine = create_async_engine(parsed, connect_args=connect_args, **pool)
    ping_when_idle(engine.sync_engine, monotonic=monotonic)
    return engine


def ping_when_idle(
    engine: Engine,
    *,
    idle_s: float = PING_AFTER_IDLE_S,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Pessimistic disconnect handling, as ``pool_pre_ping`` does it, for connections
    that have been idle: one checked out within ``idle_s`` of its connect or of its
    return to the pool is handed out unpinged (it has just worked); an older one is
    pinged (the dialect's own ping), and when it does not answer the pool drops every
    connection made before (a restart or failover took them all, as ``pool_pre_ping``
    assumes too) and the caller gets a new one.

    Why not ``pool_pre_ping``: every store call is a checkout, and asyncpg's ping is three
    round trips (``BEGIN``, ``;``, ``ROLLBACK``: a transaction, for pgbouncer's
    transaction mode): 9 of a created incident's 24. A connection killed within the
    window (a failover in the last second) fails the one call that gets it, as a
    checked-out connection always could; the pool then drops it and the call's caller
    retries (the cycle, the outbox)."""
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        returned = record.info.pop(_CHECKED_IN_AT, None)
        if returned is None or monotonic() - returned >= idle_s:
            try:
                dialect.do_ping(dbapi_connection)
            except Exception as exc:
                # the pool drops it and the connections older than it, and connects afresh
                raise InvalidatePoolError(f"pooled connection did not answer: {exc}") from exc


def make_sqlite_thread_engine(url: str) -> Engine | None:
    """The synchronous (pysqlite) twin of :func:`make_engine` for a SQLite file, with the
    same connection setup; None for Postgres and in-memory SQLite (see ``SqlStore``)."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or "mode=memory" in str(parsed):
        return None
    engine = create_engine(parsed.set(drivername="sqlite+pysqlite"))
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_driver_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # pysqlite's legacy transaction control does not BEGIN before SELECT; take it over.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL: a killed process loses nothing committed (only power loss could).
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _sqlite_driver_begin(conn: Connection) -> None:
    """:func:`_sqlite_on_begin` on the synchronous driver itself: a statement through
    SQLAlchemy costs more than the ``BEGIN``; its error is SQLAlchemy's all the same."""
    statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        driver.execute(statement)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


# --------------------------------------------------------------------------- errors


def describe(exc: BaseException) -> str:
    """The driver's own words, first line only."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def unique_violation(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a unique index refusing a row (not another constraint)."""
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate key" in text


def foreign_key_violation(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a foreign key refusing a row (e.g. an unknown link)."""
    return "foreign key" in str(exc.orig).lower()


@contextlib.asynccontextmanager
async def mapped_errors(url: str) -> AsyncIterator[None]:
    """Driver / connection failures as one-line StoreErrors (IntegrityError passes through)."""
    try:
        yield
    except IntegrityError:
        raise
    except (TimeoutError, SQLAlchemyError, OSError) as exc:
        raise StoreError(f"database {redact_url(url)}: {describe(exc)}") from exc


__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "WRITE_OPTION",
    "describe",
    "foreign_key_violation",
    "make_engine",
    "make_sqlite_thread_engine",
    "mapped_errors",
    "normalise_url",
    "unique_violation",
]
