"""``SqlStore``: the link store on SQLite (aiosqlite) or Postgres (asyncpg), SQLAlchemy 2 Core.

Same semantics as :class:`sync.store.memory.MemoryStore` (its docstring lists them; the
contract suite in ``tests/store`` proves both agree). How the SQL side keeps them:

- Every method is one short transaction on a pooled connection.
- SQLite file: every store call runs whole, on the synchronous pysqlite driver, in one
  thread of the store's own (``bpsync-sqlite``): one hand-over between threads per call
  instead of several per statement (aiosqlite's), which cost more than SQLite itself.
  The calls are serialised there, as SQLite serialises writers anyway; a busy wait for
  another process's lock blocks that thread, never the event loop. Postgres (asyncpg)
  and in-memory SQLite use the async engine.
- The hot statements are built once, with their parameters given at execution;
  the hot upserts are text (SQLAlchemy does not cache ``on_conflict_do_update``).
- SQLite: WAL journal, ``busy_timeout``, foreign keys on. pysqlite's own transaction
  handling is switched off and SQLAlchemy emits ``BEGIN`` itself (the SQLAlchemy
  recipe), so reads are real snapshots; writes start with ``BEGIN IMMEDIATE`` so two
  writers queue on the busy timeout instead of failing on a lock upgrade.
- Postgres: ``claim_due`` uses ``FOR UPDATE SKIP LOCKED`` so replicas never claim the
  same item; a ``search_path`` query parameter in the URL selects a schema.
- No duplicate live links: the partial unique indexes of ``tables.py`` decide; an
  IntegrityError there becomes :class:`DuplicateLinkError`.
- Fencing: once :meth:`SqlStore.fence` (or :meth:`take_epoch`) set an epoch, every write
  transaction first reads the leader row (``FOR SHARE`` on Postgres, so it waits for a
  concurrent ``take_epoch``) and raises :class:`FencedError` when it moved on.
- Driver and connection errors become :class:`StoreError` naming the database with its
  password masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

if TYPE_CHECKING:
    from alembic.config import Config

from sync.constants import Side
from sync.errors import StoreError
from sync.model import LIVE_LINK_STATES, FieldState, Link, LinkState
from sync.settings import redact_url
from sync.store import as_utc, opt_utc
from sync.store import tables as t
from sync.store.base import (
    AuditEntry,
    Cursor,
    DuplicateLinkError,
    FencedError,
    FieldStates,
    NewOutboxItem,
    OutboxItem,
    OutboxState,
)
from sync.store.memory import link_times_for

#: how long a SQLite writer waits for another one before "database is locked"
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: execution option marking a connection whose transaction writes (SQLite: BEGIN IMMEDIATE)
_WRITE_OPTION = "bpsync_write"

#: Alembic's version table (its default name, as migrations/env.py leaves it)
_VERSION_TABLE = "alembic_version"
#: the leader table's only row
_LEADER_ID = 1


# --------------------------------------------------------------------------- engines


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


def make_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` with bpsync's connection setup (see the module doc)."""
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
    return create_async_engine(parsed, connect_args=connect_args, pool_pre_ping=True)


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
    event.listen(engine, "begin", _sqlite_on_begin)
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
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _describe(exc: BaseException) -> str:
    """The driver's own words, first line only."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _unique_violation(exc: IntegrityError) -> bool:
    text = str(exc.orig).lower()
    return "unique" in text or "duplicate key" in text


# --------------------------------------------------------------------------- Alembic


def alembic_config() -> Config:
    """Alembic's configuration, found via the ``migrations`` package (checkout or installed).

    Alembic is imported only here and in :func:`upgrade_database`, when a database is
    really upgraded: the daemon's schema check reads the version table itself."""
    from alembic.config import Config

    import migrations

    # __path__, not __file__: an editable install made before migrations/__init__.py
    # existed maps the package as a namespace, which has no __file__.
    here = Path(next(iter(migrations.__path__))).resolve()
    ini = here / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(here))
    return cfg


def head_revision() -> str:
    """The newest migration (``migrations.HEAD``, kept equal to Alembic's head by a test)."""
    import migrations

    return migrations.HEAD


def _current_sync(connection: Connection) -> str | None:
    """The database's revision, read from Alembic's version table (None: no table/row)."""
    if not sa_inspect(connection).has_table(_VERSION_TABLE):
        return None
    row = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).first()  # noqa: S608 - a constant
    return None if row is None else str(row[0])


async def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        async with _mapped_errors(url), engine.connect() as conn:
            return await conn.run_sync(_current_sync)
    finally:
        await engine.dispose()


async def upgrade_database(url: str) -> tuple[str | None, str]:
    """``alembic upgrade head`` on ``url``; returns (revision before, revision after).
    A database already at the head is left alone, without loading Alembic."""
    current = await current_revision(url)
    if current == head_revision():
        return current, current
    from alembic import command

    cfg = alembic_config()

    def run(connection: Connection) -> str | None:
        before = _current_sync(connection)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
        return before

    engine = make_engine(url)
    try:
        async with _mapped_errors(url):
            async with engine.connect() as conn:
                await conn.execution_options(**{_WRITE_OPTION: True})
                before = await conn.run_sync(run)
                await conn.commit()
            async with engine.connect() as conn:
                after = await conn.run_sync(_current_sync)
    finally:
        await engine.dispose()
    assert after is not None
    return before, after


async def check_schema(url: str) -> None:
    """Raise StoreError unless the database is at the newest migration."""
    engine = make_engine(url)
    try:
        await _check_schema_engine(engine, url)
    finally:
        await engine.dispose()


async def _check_schema_engine(engine: AsyncEngine, url: str) -> None:
    async with _mapped_errors(url), engine.connect() as conn:
        current = await conn.run_sync(_current_sync)
    head = head_revision()
    if current != head:
        raise StoreError(
            f"database schema is at {current or 'empty'}, this bpsync needs {head}: "
            "run `bpsync db upgrade`"
        )


@contextlib.asynccontextmanager
async def _mapped_errors(url: str) -> AsyncIterator[None]:
    """Driver / connection failures as one-line StoreErrors (IntegrityError passes through)."""
    try:
        yield
    except IntegrityError:
        raise
    except (TimeoutError, SQLAlchemyError, OSError) as exc:
        raise StoreError(f"database {redact_url(url)}: {_describe(exc)}") from exc


async def open_sql_store(url: str, *, check_schema: bool = True) -> SqlStore:
    engine = make_engine(url)
    try:
        if check_schema:
            await _check_schema_engine(engine, url)
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine, url, thread_engine=make_sqlite_thread_engine(url))


# --------------------------------------------------------------------------- rows


def _link(row: Row[Any]) -> Link:
    m = row._mapping
    return Link(
        id=m["id"],
        bp_incident_id=m["bp_incident_id"],
        sn_sys_id=m["sn_sys_id"],
        sn_number=m["sn_number"],
        state=LinkState(m["state"]),
        created_at=m["created_at"],
        resolved_at=m["resolved_at"],
        reopen_deadline=m["reopen_deadline"],
        previous_link_id=m["previous_link_id"],
        updated_at=m["updated_at"],
    )


def _item(row: Row[Any]) -> OutboxItem:
    m = row._mapping
    return OutboxItem(
        id=m["id"],
        kind=m["kind"],
        target=m["target"],
        payload=m["payload"],
        idempotency_key=m["idempotency_key"],
        state=OutboxState(m["state"]),
        attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        link_id=m["link_id"],
        bp_incident_id=m["bp_incident_id"],
        sn_sys_id=m["sn_sys_id"],
        last_error=m["last_error"],
    )


def _audit(row: Row[Any]) -> AuditEntry:
    m = row._mapping
    return AuditEntry(
        id=m["id"],
        at=m["at"],
        kind=m["kind"],
        outcome=m["outcome"],
        link_id=m["link_id"],
        bp_incident_id=m["bp_incident_id"],
        sn_sys_id=m["sn_sys_id"],
        field=m["field"],
        bp_value=m["bp_value"],
        sn_value=m["sn_value"],
        detail=m["detail"] or {},
    )


_LIVE = [s.value for s in LIVE_LINK_STATES]

# The hot upserts as text, the same on SQLite and Postgres: SQLAlchemy cannot cache an
# ``on_conflict_do_update`` (it would compile it again on every call).
# The hot statements, built once: their parameters come at execution (building a
# statement, and its cache key, on every call costs more than running it on SQLite).
_LINK_BY_ID = select(t.links).where(t.links.c.id == bindparam("b_id"))
_LIVE_BY_BP = (
    select(t.links)
    .where(t.links.c.bp_incident_id == bindparam("b_value"), t.links.c.state.in_(_LIVE))
    .limit(1)
)
_LIVE_BY_SN = (
    select(t.links)
    .where(t.links.c.sn_sys_id == bindparam("b_value"), t.links.c.state.in_(_LIVE))
    .limit(1)
)
_LIVE_BY_BPS = select(t.links).where(
    t.links.c.bp_incident_id.in_(bindparam("b_values", expanding=True)),
    t.links.c.state.in_(_LIVE),
)
_LINKS_FOR_BP = (
    select(t.links)
    .where(t.links.c.bp_incident_id == bindparam("b_value"))
    .order_by(t.links.c.id.desc())
)
_INSERT_LINK = insert(t.links).returning(t.links)
_CONFIRM_LINK = (
    update(t.links)
    .where(t.links.c.id == bindparam("b_id"))
    .values(
        sn_sys_id=bindparam("sn_sys_id"),
        sn_number=bindparam("sn_number"),
        state=bindparam("state"),
        updated_at=bindparam("updated_at"),
    )
    .returning(t.links)
)
_NOT_DONE_WITH_KEY = select(t.outbox).where(
    t.outbox.c.idempotency_key == bindparam("b_key"),
    t.outbox.c.state != OutboxState.DONE.value,
)
_INSERT_ITEM = insert(t.outbox).returning(t.outbox)
_COMPLETE_ITEM = (
    update(t.outbox)
    .where(t.outbox.c.id == bindparam("b_id"))
    .values(state=OutboxState.DONE.value, updated_at=bindparam("updated_at"))
)
_INSERT_AUDIT = insert(t.audit)

_UPSERT_FIELD_STATE = text(
    "INSERT INTO field_state (link_id, side, name, value, synced_at) "
    "VALUES (:link_id, :side, :name, :value, :synced_at) "
    "ON CONFLICT (link_id, side, name) "
    "DO UPDATE SET value = excluded.value, synced_at = excluded.synced_at"
).bindparams(bindparam("synced_at", type_=t.field_state.c.synced_at.type))
_UPSERT_CHECKPOINT = text(
    "INSERT INTO checkpoints (name, value, updated_at) VALUES (:name, :value, :updated_at) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
).bindparams(bindparam("updated_at", type_=t.checkpoints.c.updated_at.type))
_T = TypeVar("_T")

#: set while a store call runs in its SQLite thread (see ``SqlStore``)
_in_thread = threading.local()


class _InlineConnection:
    """What the store code needs of an AsyncConnection, over a synchronous Connection:
    its ``execute`` never suspends, so a whole store call runs in one ``send``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self._conn.execute(statement, parameters)


def _run_inline(coro: Coroutine[Any, Any, _T]) -> _T:
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


def _threaded(
    method: Callable[..., Coroutine[Any, Any, _T]],
) -> Callable[..., Coroutine[Any, Any, _T]]:
    @functools.wraps(method)
    async def run(self: SqlStore, *args: Any, **kwargs: Any) -> _T:
        pool = self._thread_pool
        if pool is None or getattr(_in_thread, "active", False):
            if pool is None and self._thread_engine is not None:
                raise StoreError("the store is closed")
            return await method(self, *args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, _run_inline, method(self, *args, **kwargs))

    return run


def _audit_values(
    kind: str,
    outcome: str,
    now: datetime,
    *,
    link_id: int | None = None,
    bp_incident_id: str | None = None,
    sn_sys_id: str | None = None,
    field: str | None = None,
    bp_value: str | None = None,
    sn_value: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "at": now,
        "kind": kind,
        "outcome": outcome,
        "link_id": link_id,
        "bp_incident_id": bp_incident_id,
        "sn_sys_id": sn_sys_id,
        "field": field,
        "bp_value": bp_value,
        "sn_value": sn_value,
        "detail": dict(detail or {}),
    }


# --------------------------------------------------------------------------- the store


class SqlStore:
    """A :class:`~sync.store.base.LinkStore` on SQLite or Postgres. Build with ``open_store``."""

    def __init__(
        self, engine: AsyncEngine, url: str, *, thread_engine: Engine | None = None
    ) -> None:
        self._engine = engine
        self._url = url
        self._postgres = engine.dialect.name == "postgresql"
        self._fenced_epoch: int | None = None
        self._link_for_update = self._lock(_LINK_BY_ID)
        # SQLite file: every store call runs whole in one thread of its own, on the
        # synchronous driver (one hand-over per call, not several per statement)
        self._thread_engine = thread_engine
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

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._thread_engine is not None:
            assert getattr(_in_thread, "active", False), "a store call outside its thread"
            async with _mapped_errors(self._url):
                with self._thread_engine.connect() as sync_conn, sync_conn.begin():
                    yield cast(AsyncConnection, _InlineConnection(sync_conn))
            return
        async with _mapped_errors(self._url), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self, *, fenced: bool = True) -> AsyncIterator[AsyncConnection]:
        if self._thread_engine is not None:
            assert getattr(_in_thread, "active", False), "a store call outside its thread"
            async with _mapped_errors(self._url):
                with self._thread_engine.connect() as sync_conn:
                    sync_conn.execution_options(**{_WRITE_OPTION: True})
                    with sync_conn.begin():
                        conn = cast(AsyncConnection, _InlineConnection(sync_conn))
                        if fenced and self._fenced_epoch is not None:
                            await self._check_fence(conn, self._fenced_epoch)
                        yield conn
            return
        async with _mapped_errors(self._url), self._engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                if fenced and self._fenced_epoch is not None:
                    await self._check_fence(conn, self._fenced_epoch)
                yield conn

    async def _check_fence(self, conn: AsyncConnection, epoch: int) -> None:
        query = select(t.leader.c.epoch).where(t.leader.c.id == _LEADER_ID)
        if self._postgres:
            # FOR SHARE: concurrent writes of the leader do not wait on each other, but
            # take_epoch's UPDATE waits for them, and they for it.
            query = query.with_for_update(read=True)
        stored = (await conn.execute(query)).scalar_one_or_none() or 0
        if stored != epoch:
            raise FencedError(
                f"leader epoch is {stored}, this replica holds {epoch}: another replica leads"
            )

    def _lock(self, query: Any) -> Any:
        return query.with_for_update() if self._postgres else query

    def _upsert(self, table: Any) -> Any:
        return postgresql.insert(table) if self._postgres else sqlite.insert(table)

    # --- lifecycle

    async def close(self) -> None:
        pool, self._thread_pool = self._thread_pool, None
        if pool is not None and self._thread_engine is not None:
            # queued behind every call still running: they finish first
            await asyncio.get_running_loop().run_in_executor(pool, self._thread_engine.dispose)
            pool.shutdown(wait=True)
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))

    # --- links

    async def _get_link(self, conn: AsyncConnection, link_id: int, *, lock: bool) -> Link:
        query = self._link_for_update if lock else _LINK_BY_ID
        row = (await conn.execute(query, {"b_id": link_id})).first()
        if row is None:
            raise StoreError(f"no link {link_id}")
        return _link(row)

    async def get_link(self, link_id: int) -> Link | None:
        async with self._read() as conn:
            row = (await conn.execute(_LINK_BY_ID, {"b_id": link_id})).first()
        return None if row is None else _link(row)

    async def _live_by(self, query: Any, value: str) -> Link | None:
        async with self._read() as conn:
            row = (await conn.execute(query, {"b_value": value})).first()
        return None if row is None else _link(row)

    async def live_link_for_bp(self, bp_incident_id: str) -> Link | None:
        return await self._live_by(_LIVE_BY_BP, bp_incident_id)

    async def live_link_for_sn(self, sn_sys_id: str) -> Link | None:
        return await self._live_by(_LIVE_BY_SN, sn_sys_id)

    async def live_links_for_bp(self, bp_incident_ids: Collection[str]) -> dict[str, Link]:
        ids = sorted(set(bp_incident_ids))
        if not ids:
            return {}
        async with self._read() as conn:
            rows = await conn.execute(_LIVE_BY_BPS, {"b_values": ids})
            links = [_link(row) for row in rows]
        return {link.bp_incident_id: link for link in links}

    async def links_for_bp(self, bp_incident_id: str) -> list[Link]:
        async with self._read() as conn:
            rows = await conn.execute(_LINKS_FOR_BP, {"b_value": bp_incident_id})
            return [_link(row) for row in rows]

    async def links_for_sn(self, sn_sys_id: str) -> list[Link]:
        """Every link ever confirmed with this sys_id, newest first (not in the protocol)."""
        query = (
            select(t.links).where(t.links.c.sn_sys_id == sn_sys_id).order_by(t.links.c.id.desc())
        )
        async with self._read() as conn:
            return [_link(row) for row in await conn.execute(query)]

    @staticmethod
    def _pending_link_values(
        bp_incident_id: str, now: datetime, previous_link_id: int | None
    ) -> dict[str, Any]:
        return {
            "bp_incident_id": bp_incident_id,
            "sn_sys_id": None,
            "sn_number": None,
            "state": LinkState.PENDING.value,
            "created_at": now,
            "updated_at": now,
            "resolved_at": None,
            "reopen_deadline": None,
            "previous_link_id": previous_link_id,
        }

    async def _insert_pending_link(
        self, conn: AsyncConnection, bp_incident_id: str, now: datetime, previous: int | None
    ) -> Link:
        if previous is not None:
            await self._get_link(conn, previous, lock=False)
        values = self._pending_link_values(bp_incident_id, now, previous)
        result = await conn.execute(_INSERT_LINK, values)
        return _link(result.one())

    async def create_pending_link(
        self, bp_incident_id: str, now: datetime, *, previous_link_id: int | None = None
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                return await self._insert_pending_link(conn, bp_incident_id, now, previous_link_id)
        except IntegrityError as exc:
            if not _unique_violation(exc):
                raise StoreError(f"cannot create link: {_describe(exc)}") from exc
            raise DuplicateLinkError(
                f"BigPanda incident {bp_incident_id} already has a live link"
            ) from None

    async def _confirm(
        self, conn: AsyncConnection, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link:
        link = await self._get_link(conn, link_id, lock=True)
        if link.state not in LIVE_LINK_STATES:
            raise StoreError(f"link {link_id} is {link.state}: it cannot be confirmed")
        state = LinkState.LINKED if link.state == LinkState.PENDING else link.state
        params = {
            "b_id": link_id,
            "sn_sys_id": sn_sys_id,
            "sn_number": sn_number,
            "state": state.value,
            "updated_at": now,
        }
        return _link((await conn.execute(_CONFIRM_LINK, params)).one())

    async def confirm_link(
        self, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                return await self._confirm(conn, link_id, sn_sys_id, sn_number, now)
        except IntegrityError as exc:
            if not _unique_violation(exc):
                raise StoreError(f"cannot confirm link {link_id}: {_describe(exc)}") from exc
            raise DuplicateLinkError(
                f"ServiceNow incident {sn_sys_id} already has a live link"
            ) from None

    async def set_link_state(
        self,
        link_id: int,
        state: LinkState,
        now: datetime,
        *,
        resolved_at: datetime | None = None,
        reopen_deadline: datetime | None = None,
    ) -> Link:
        now = as_utc(now)
        resolved_at = opt_utc(resolved_at)
        reopen_deadline = opt_utc(reopen_deadline)
        state = LinkState(state)
        try:
            async with self._write() as conn:
                link = await self._get_link(conn, link_id, lock=True)
                new_resolved, new_deadline = link_times_for(
                    state,
                    now,
                    old_resolved_at=link.resolved_at,
                    old_deadline=link.reopen_deadline,
                    resolved_at=resolved_at,
                    reopen_deadline=reopen_deadline,
                )
                result = await conn.execute(
                    update(t.links)
                    .where(t.links.c.id == link_id)
                    .values(
                        state=state.value,
                        resolved_at=new_resolved,
                        reopen_deadline=new_deadline,
                        updated_at=now,
                    )
                    .returning(t.links)
                )
                return _link(result.one())
        except IntegrityError as exc:
            if not _unique_violation(exc):
                raise StoreError(f"cannot update link {link_id}: {_describe(exc)}") from exc
            raise DuplicateLinkError(
                f"link {link_id} cannot become {state}: its BigPanda or ServiceNow incident "
                "already has a live link"
            ) from None

    @staticmethod
    def _link_filter(states: Collection[LinkState] | None) -> list[ColumnElement[bool]]:
        if states is None:
            return []
        return [t.links.c.state.in_([LinkState(s).value for s in states])]

    async def list_links(
        self, states: Collection[LinkState] | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[Link]:
        query = (
            select(t.links)
            .where(*self._link_filter(states))
            .order_by(t.links.c.id.desc())
            .limit(max(0, limit))
            .offset(max(0, offset))
        )
        async with self._read() as conn:
            return [_link(row) for row in await conn.execute(query)]

    async def count_links(self, states: Collection[LinkState] | None = None) -> int:
        query = select(func.count()).select_from(t.links).where(*self._link_filter(states))
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    # --- field state

    async def field_states(self, link_id: int) -> dict[tuple[Side, str], FieldState]:
        query = select(t.field_state).where(t.field_state.c.link_id == link_id)
        async with self._read() as conn:
            rows = list(await conn.execute(query))
        out: dict[tuple[Side, str], FieldState] = {}
        for row in rows:
            m = row._mapping
            side = Side(m["side"])
            out[(side, m["name"])] = FieldState(
                link_id=m["link_id"],
                side=side,
                name=m["name"],
                value=m["value"],
                synced_at=m["synced_at"],
            )
        return out

    async def _record_states(
        self,
        conn: AsyncConnection,
        link_id: int,
        side: Side,
        values: Mapping[str, str | None],
        now: datetime,
        *,
        check_link: bool = True,
    ) -> None:
        if check_link:
            await self._get_link(conn, link_id, lock=False)
        if not values:
            return
        rows = [
            {"link_id": link_id, "side": side.value, "name": name, "value": value, "synced_at": now}
            for name, value in values.items()
        ]
        await conn.execute(_UPSERT_FIELD_STATE, rows)

    async def record_field_states(
        self, link_id: int, side: Side, values: Mapping[str, str | None], now: datetime
    ) -> None:
        now = as_utc(now)
        async with self._write() as conn:
            await self._record_states(conn, link_id, Side(side), values, now)

    # --- several steps in one transaction

    async def create_pending_link_and_enqueue(
        self,
        bp_incident_id: str,
        now: datetime,
        item_for: Callable[[Link], NewOutboxItem],
        *,
        previous_link_id: int | None = None,
        checkpoint: tuple[str, str] | None = None,
    ) -> tuple[Link, OutboxItem]:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                link = await self._insert_pending_link(conn, bp_incident_id, now, previous_link_id)
                if checkpoint is not None:
                    await self._put_checkpoint(conn, checkpoint[0], checkpoint[1], now)
                new = item_for(link)
                # the link was made in this transaction: no need to look it up again
                item = await self._enqueue_in(conn, new, now, check_link=new.link_id != link.id)
                return link, item
        except IntegrityError as exc:
            if not _unique_violation(exc) or "outbox" in str(exc.orig).lower():
                raise StoreError(f"cannot create link: {_describe(exc)}") from exc
            raise DuplicateLinkError(
                f"BigPanda incident {bp_incident_id} already has a live link"
            ) from None

    async def confirm_link_and_record(
        self,
        link_id: int,
        sn_sys_id: str,
        sn_number: str,
        now: datetime,
        *,
        audit_outcome: str | None = None,
        field_states: Sequence[FieldStates] = (),
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                link = await self._confirm(conn, link_id, sn_sys_id, sn_number, now)
                if audit_outcome is not None:
                    await conn.execute(
                        _INSERT_AUDIT,
                        _audit_values(
                            "action",
                            audit_outcome,
                            now,
                            link_id=link_id,
                            bp_incident_id=link.bp_incident_id,
                            sn_sys_id=sn_sys_id,
                        ),
                    )
                for states in field_states:
                    await self._record_states(
                        conn,
                        states.link_id,
                        Side(states.side),
                        states.values,
                        now,
                        check_link=states.link_id != link_id,
                    )
                return link
        except IntegrityError as exc:
            if not _unique_violation(exc):
                raise StoreError(f"cannot confirm link {link_id}: {_describe(exc)}") from exc
            raise DuplicateLinkError(
                f"ServiceNow incident {sn_sys_id} already has a live link"
            ) from None

    async def complete_and_enqueue(
        self,
        item_id: int,
        now: datetime,
        *,
        follow_ups: Sequence[NewOutboxItem] = (),
        field_states: Sequence[FieldStates] = (),
    ) -> list[OutboxItem]:
        now = as_utc(now)
        for attempt in (1, 2):
            try:
                async with self._write() as conn:
                    checked: set[int] = set()
                    for states in field_states:
                        await self._record_states(
                            conn,
                            states.link_id,
                            Side(states.side),
                            states.values,
                            now,
                            check_link=states.link_id not in checked,
                        )
                        checked.add(states.link_id)
                    items = []
                    for new in follow_ups:
                        check = new.link_id is not None and new.link_id not in checked
                        items.append(await self._enqueue_in(conn, new, now, check_link=check))
                        if new.link_id is not None:
                            checked.add(new.link_id)
                    await self._complete_in(conn, item_id, now)
                    return items
            except IntegrityError as exc:
                # a concurrent enqueue of a follow-up's key won the race: once more (the
                # item it made is then found and returned)
                if attempt == 2 or not _unique_violation(exc):
                    raise StoreError(f"cannot complete item {item_id}: {_describe(exc)}") from exc
        raise AssertionError("unreachable: the loop returns or raises")

    # --- outbox and dead letters

    def _not_done_with_key(self, key: str) -> Any:
        return select(t.outbox).where(
            t.outbox.c.idempotency_key == key, t.outbox.c.state != OutboxState.DONE.value
        )

    async def _enqueue_in(
        self, conn: AsyncConnection, new: NewOutboxItem, now: datetime, *, check_link: bool = True
    ) -> OutboxItem:
        key = {"b_key": new.idempotency_key}
        existing = (await conn.execute(_NOT_DONE_WITH_KEY, key)).first()
        if existing is not None:
            return _item(existing)
        if check_link and new.link_id is not None:
            await self._get_link(conn, new.link_id, lock=False)
        values = {
            "kind": new.kind,
            "target": new.target,
            "payload": dict(new.payload),
            "idempotency_key": new.idempotency_key,
            "state": OutboxState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "link_id": new.link_id,
            "bp_incident_id": new.bp_incident_id,
            "sn_sys_id": new.sn_sys_id,
            "created_at": now,
            "updated_at": now,
        }
        return _item((await conn.execute(_INSERT_ITEM, values)).one())

    async def enqueue(
        self,
        kind: str,
        target: str,
        payload: Mapping[str, Any],
        idempotency_key: str,
        now: datetime,
        *,
        link_id: int | None = None,
        bp_incident_id: str | None = None,
        sn_sys_id: str | None = None,
    ) -> OutboxItem:
        now = as_utc(now)
        new = NewOutboxItem(
            kind, target, payload, idempotency_key, link_id, bp_incident_id, sn_sys_id
        )
        try:
            async with self._write() as conn:
                return await self._enqueue_in(conn, new, now)
        except IntegrityError as exc:
            # A concurrent enqueue of the same key won the race: return its item.
            if not _unique_violation(exc):
                raise StoreError(f"cannot enqueue {kind}: {_describe(exc)}") from exc
        async with self._read() as conn:
            row = (await conn.execute(self._not_done_with_key(idempotency_key))).first()
        if row is None:
            raise StoreError(f"outbox item {idempotency_key!r} vanished while being enqueued")
        return _item(row)

    async def claim_due(self, now: datetime, *, limit: int, lease_s: float) -> list[OutboxItem]:
        now = as_utc(now)
        if limit <= 0:
            return []
        lease_cutoff = now - timedelta(seconds=lease_s)
        c = t.outbox.c
        query = (
            select(t.outbox)
            .where(
                or_(
                    and_(c.state == OutboxState.PENDING.value, c.next_attempt_at <= now),
                    and_(c.state == OutboxState.IN_FLIGHT.value, c.updated_at <= lease_cutoff),
                )
            )
            .order_by(c.next_attempt_at, c.id)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        async with self._write() as conn:
            rows = list(await conn.execute(query))
            if not rows:
                return []
            ids = [row._mapping["id"] for row in rows]
            await conn.execute(
                update(t.outbox)
                .where(c.id.in_(ids))
                .values(state=OutboxState.IN_FLIGHT.value, updated_at=now)
            )
        return [
            dataclasses.replace(_item(row), state=OutboxState.IN_FLIGHT, updated_at=now)
            for row in rows
        ]

    async def _update_item(self, item_id: int, **values: Any) -> OutboxItem:
        async with self._write() as conn:
            result = await conn.execute(
                update(t.outbox)
                .where(t.outbox.c.id == item_id)
                .values(**values)
                .returning(t.outbox)
            )
            row = result.first()
        if row is None:
            raise StoreError(f"no outbox item {item_id}")
        return _item(row)

    async def _complete_in(self, conn: AsyncConnection, item_id: int, now: datetime) -> None:
        result = await conn.execute(_COMPLETE_ITEM, {"b_id": item_id, "updated_at": now})
        if result.rowcount == 0:
            raise StoreError(f"no outbox item {item_id}")

    async def complete(self, item_id: int, now: datetime) -> None:
        now = as_utc(now)
        async with self._write() as conn:
            await self._complete_in(conn, item_id, now)

    async def fail(
        self, item_id: int, error: str, next_attempt_at: datetime, now: datetime
    ) -> OutboxItem:
        return await self._update_item(
            item_id,
            state=OutboxState.PENDING.value,
            attempts=t.outbox.c.attempts + 1,
            last_error=error,
            next_attempt_at=as_utc(next_attempt_at),
            updated_at=as_utc(now),
        )

    async def dead_letter(self, item_id: int, error: str, now: datetime) -> OutboxItem:
        return await self._update_item(
            item_id,
            state=OutboxState.DEAD.value,
            attempts=t.outbox.c.attempts + 1,
            last_error=error,
            updated_at=as_utc(now),
        )

    @staticmethod
    def _outbox_filter(states: Collection[OutboxState] | None) -> list[ColumnElement[bool]]:
        if states is None:
            return []
        return [t.outbox.c.state.in_([OutboxState(s).value for s in states])]

    async def list_outbox(
        self, states: Collection[OutboxState] | None = None, *, limit: int = 100
    ) -> list[OutboxItem]:
        query = (
            select(t.outbox)
            .where(*self._outbox_filter(states))
            .order_by(t.outbox.c.id)
            .limit(max(0, limit))
        )
        async with self._read() as conn:
            return [_item(row) for row in await conn.execute(query)]

    async def count_outbox(self, states: Collection[OutboxState] | None = None) -> int:
        query = select(func.count()).select_from(t.outbox).where(*self._outbox_filter(states))
        async with self._read() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def retry_dead(self, item_id: int | None, now: datetime) -> int:
        now = as_utc(now)
        where = [t.outbox.c.state == OutboxState.DEAD.value]
        if item_id is not None:
            where.append(t.outbox.c.id == item_id)
        async with self._write() as conn:
            result = await conn.execute(
                update(t.outbox)
                .where(*where)
                .values(
                    state=OutboxState.PENDING.value, attempts=0, next_attempt_at=now, updated_at=now
                )
            )
            return int(result.rowcount)

    async def drop_dead(self, item_id: int) -> bool:
        async with self._write() as conn:
            result = await conn.execute(
                delete(t.outbox).where(
                    t.outbox.c.id == item_id, t.outbox.c.state == OutboxState.DEAD.value
                )
            )
            return int(result.rowcount) > 0

    # --- audit

    async def append_audit(
        self,
        kind: str,
        outcome: str,
        now: datetime,
        *,
        link_id: int | None = None,
        bp_incident_id: str | None = None,
        sn_sys_id: str | None = None,
        field: str | None = None,
        bp_value: str | None = None,
        sn_value: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        values = _audit_values(
            kind,
            outcome,
            as_utc(now),
            link_id=link_id,
            bp_incident_id=bp_incident_id,
            sn_sys_id=sn_sys_id,
            field=field,
            bp_value=bp_value,
            sn_value=sn_value,
            detail=detail,
        )
        async with self._write() as conn:
            await conn.execute(insert(t.audit).values(values))

    async def list_audit(
        self, *, link_id: int | None = None, kind: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        where: list[ColumnElement[bool]] = []
        if link_id is not None:
            where.append(t.audit.c.link_id == link_id)
        if kind is not None:
            where.append(t.audit.c.kind == kind)
        query = select(t.audit).where(*where).order_by(t.audit.c.id.desc()).limit(max(0, limit))
        async with self._read() as conn:
            return [_audit(row) for row in await conn.execute(query)]

    # --- cursors and checkpoints

    async def get_cursor(self, side: Side) -> Cursor:
        side = Side(side)
        async with self._read() as conn:
            row = (
                await conn.execute(select(t.cursors).where(t.cursors.c.side == side.value))
            ).first()
        if row is None:
            return Cursor(side=side, watermark=None)
        m = row._mapping
        return Cursor(side=side, watermark=m["watermark"], seen=frozenset(m["seen"] or ()))

    async def advance_cursor(self, cursor: Cursor, now: datetime) -> None:
        values = {
            "side": Side(cursor.side).value,
            "watermark": opt_utc(cursor.watermark),
            "seen": sorted(cursor.seen),
            "updated_at": as_utc(now),
        }
        async with self._write() as conn:
            stmt = self._upsert(t.cursors).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["side"],
                set_={k: stmt.excluded[k] for k in ("watermark", "seen", "updated_at")},
            )
            await conn.execute(stmt)

    async def get_checkpoint(self, name: str) -> str | None:
        query = select(t.checkpoints.c.value).where(t.checkpoints.c.name == name)
        async with self._read() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return None if value is None else str(value)

    async def _put_checkpoint(
        self, conn: AsyncConnection, name: str, value: str, now: datetime
    ) -> None:
        await conn.execute(_UPSERT_CHECKPOINT, {"name": name, "value": value, "updated_at": now})

    async def set_checkpoint(self, name: str, value: str, now: datetime) -> None:
        now = as_utc(now)
        async with self._write() as conn:
            await self._put_checkpoint(conn, name, value, now)

    # --- high availability

    async def take_epoch(self, holder: str, now: datetime) -> int:
        now = as_utc(now)
        # Not fenced: taking the epoch is how a fenced replica becomes leader.
        async with self._write(fenced=False) as conn:
            seed = self._upsert(t.leader).values(
                id=_LEADER_ID, epoch=0, holder=None, updated_at=now
            )
            await conn.execute(seed.on_conflict_do_nothing(index_elements=["id"]))
            result = await conn.execute(
                update(t.leader)
                .where(t.leader.c.id == _LEADER_ID)
                .values(epoch=t.leader.c.epoch + 1, holder=holder, updated_at=now)
                .returning(t.leader.c.epoch)
            )
            epoch = int(result.scalar_one())
        self._fenced_epoch = epoch
        return epoch

    def fence(self, epoch: int | None) -> None:
        """From now on every write checks the stored epoch equals ``epoch`` (None: off)."""
        self._fenced_epoch = epoch


# Every public store call (the LinkStore protocol) runs whole in the SQLite thread when
# the store has one (``_threaded``); wrapped here once rather than decorated one by one,
# so a new method cannot be forgotten. ``close`` manages the thread itself.
for _name, _method in list(vars(SqlStore).items()):
    if not _name.startswith("_") and _name != "close" and inspect.iscoroutinefunction(_method):
        setattr(SqlStore, _name, _threaded(_method))

__all__: Sequence[str] = [
    "SqlStore",
    "check_schema",
    "current_revision",
    "head_revision",
    "make_engine",
    "open_sql_store",
    "upgrade_database",
]
