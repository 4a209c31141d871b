"""``SqlStore``: the link store on SQLite (aiosqlite) or Postgres (asyncpg), SQLAlchemy 2 Core.

Same semantics as :class:`sync.store.memory.MemoryStore` (its docstring lists them; the
contract suite in ``tests/store`` proves both agree). How the SQL side keeps them:

- Every method is one short transaction on a pooled connection.
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

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

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
    OutboxItem,
    OutboxState,
)
from sync.store.memory import link_times_for

#: how long a SQLite writer waits for another one before "database is locked"
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: execution option marking a connection whose transaction writes (SQLite: BEGIN IMMEDIATE)
_WRITE_OPTION = "bpsync_write"
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
    """Alembic's configuration, found via the ``migrations`` package (checkout or installed)."""
    import migrations

    # __path__, not __file__: an editable install made before migrations/__init__.py
    # existed maps the package as a namespace, which has no __file__.
    here = Path(next(iter(migrations.__path__))).resolve()
    ini = here / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(here))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/versions holds no migration"
    return head


def _current_sync(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        async with _mapped_errors(url), engine.connect() as conn:
            return await conn.run_sync(_current_sync)
    finally:
        await engine.dispose()


async def upgrade_database(url: str) -> tuple[str | None, str]:
    """``alembic upgrade head`` on ``url``; returns (revision before, revision after)."""
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
    return SqlStore(engine, url)


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


# --------------------------------------------------------------------------- the store


class SqlStore:
    """A :class:`~sync.store.base.LinkStore` on SQLite or Postgres. Build with ``open_store``."""

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        self._engine = engine
        self._url = url
        self._postgres = engine.dialect.name == "postgresql"
        self._fenced_epoch: int | None = None

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
        async with _mapped_errors(self._url), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with _mapped_errors(self._url), self._engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                if self._fenced_epoch is not None:
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
        await self._engine.dispose()

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(select(1))

    # --- links

    async def _get_link(self, conn: AsyncConnection, link_id: int, *, lock: bool) -> Link:
        query = select(t.links).where(t.links.c.id == link_id)
        row = (await conn.execute(self._lock(query) if lock else query)).first()
        if row is None:
            raise StoreError(f"no link {link_id}")
        return _link(row)

    async def get_link(self, link_id: int) -> Link | None:
        async with self._read() as conn:
            row = (await conn.execute(select(t.links).where(t.links.c.id == link_id))).first()
        return None if row is None else _link(row)

    async def _live_by(self, column: ColumnElement[Any], value: str) -> Link | None:
        query = select(t.links).where(column == value, t.links.c.state.in_(_LIVE)).limit(1)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _link(row)

    async def live_link_for_bp(self, bp_incident_id: str) -> Link | None:
        return await self._live_by(t.links.c.bp_incident_id, bp_incident_id)

    async def live_link_for_sn(self, sn_sys_id: str) -> Link | None:
        return await self._live_by(t.links.c.sn_sys_id, sn_sys_id)

    async def links_for_bp(self, bp_incident_id: str) -> list[Link]:
        query = (
            select(t.links)
            .where(t.links.c.bp_incident_id == bp_incident_id)
            .order_by(t.links.c.id.desc())
        )
        async with self._read() as conn:
            return [_link(row) for row in await conn.execute(query)]

    async def links_for_sn(self, sn_sys_id: str) -> list[Link]:
        """Every link ever confirmed with this sys_id, newest first (not in the protocol)."""
        query = (
            select(t.links).where(t.links.c.sn_sys_id == sn_sys_id).order_by(t.links.c.id.desc())
        )
        async with self._read() as conn:
            return [_link(row) for row in await conn.execute(query)]

    async def create_pending_link(
        self, bp_incident_id: str, now: datetime, *, previous_link_id: int | None = None
    ) -> Link:
        now = as_utc(now)
        values = {
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
        try:
            async with self._write() as conn:
                if previous_link_id is not None:
                    await self._get_link(conn, previous_link_id, lock=False)
                result = await conn.execute(insert(t.links).values(values).returning(t.links))
                return _link(result.one())
        except IntegrityError as exc:
            if not _unique_violation(exc):
                raise StoreError(f"cannot create link: {_describe(exc)}") from exc
            raise DuplicateLinkError(
                f"BigPanda incident {bp_incident_id} already has a live link"
            ) from None

    async def confirm_link(
        self, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                link = await self._get_link(conn, link_id, lock=True)
                if link.state not in LIVE_LINK_STATES:
                    raise StoreError(f"link {link_id} is {link.state}: it cannot be confirmed")
                state = LinkState.LINKED if link.state == LinkState.PENDING else link.state
                result = await conn.execute(
                    update(t.links)
                    .where(t.links.c.id == link_id)
                    .values(
                        sn_sys_id=sn_sys_id, sn_number=sn_number, state=state.value, updated_at=now
                    )
                    .returning(t.links)
                )
                return _link(result.one())
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

    async def record_field_states(
        self, link_id: int, side: Side, values: Mapping[str, str | None], now: datetime
    ) -> None:
        now = as_utc(now)
        side = Side(side)
        async with self._write() as conn:
            await self._get_link(conn, link_id, lock=False)
            if not values:
                return
            rows = [
                {
                    "link_id": link_id,
                    "side": side.value,
                    "name": name,
                    "value": value,
                    "synced_at": now,
                }
                for name, value in values.items()
            ]
            stmt = self._upsert(t.field_state).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=["link_id", "side", "name"],
                set_={"value": stmt.excluded.value, "synced_at": stmt.excluded.synced_at},
            )
            await conn.execute(stmt)

    # --- outbox and dead letters

    def _not_done_with_key(self, key: str) -> Any:
        return select(t.outbox).where(
            t.outbox.c.idempotency_key == key, t.outbox.c.state != OutboxState.DONE.value
        )

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
        values = {
            "kind": kind,
            "target": target,
            "payload": dict(payload),
            "idempotency_key": idempotency_key,
            "state": OutboxState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": None,
            "link_id": link_id,
            "bp_incident_id": bp_incident_id,
            "sn_sys_id": sn_sys_id,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._write() as conn:
                existing = (await conn.execute(self._not_done_with_key(idempotency_key))).first()
                if existing is not None:
                    return _item(existing)
                if link_id is not None:
                    await self._get_link(conn, link_id, lock=False)
                result = await conn.execute(insert(t.outbox).values(values).returning(t.outbox))
                return _item(result.one())
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

    async def complete(self, item_id: int, now: datetime) -> None:
        await self._update_item(item_id, state=OutboxState.DONE.value, updated_at=as_utc(now))

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
        values = {
            "at": as_utc(now),
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

    async def set_checkpoint(self, name: str, value: str, now: datetime) -> None:
        values = {"name": name, "value": value, "updated_at": as_utc(now)}
        async with self._write() as conn:
            stmt = self._upsert(t.checkpoints).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["name"],
                set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            )
            await conn.execute(stmt)

    # --- high availability

    async def take_epoch(self, holder: str, now: datetime) -> int:
        now = as_utc(now)
        # Not through _write(): taking the epoch is how a fenced replica becomes leader.
        async with _mapped_errors(self._url), self._engine.connect() as conn:
            await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
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


__all__: Sequence[str] = [
    "SqlStore",
    "check_schema",
    "current_revision",
    "head_revision",
    "make_engine",
    "open_sql_store",
    "upgrade_database",
]
