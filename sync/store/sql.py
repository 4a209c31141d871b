"""``SqlStore``: the link store on SQLite (aiosqlite) or Postgres (asyncpg), SQLAlchemy 2 Core.

Same semantics as :class:`sync.store.memory.MemoryStore` (``sync.store.base`` lists
them; the contract suite in ``tests/store`` proves both agree). How the SQL side keeps
them, part by part:

- :mod:`sync.store.engines`: engines and URLs (SQLite WAL, busy timeout, ``BEGIN
  IMMEDIATE`` for writes; a Postgres ``search_path`` schema); driver and connection
  errors become :class:`StoreError` naming the database with its password masked.
- :mod:`sync.store.threads`: on a SQLite file every store call runs whole, on the
  synchronous pysqlite driver, on the event loop while the lock is free, else in one
  thread of the store's own; Postgres (asyncpg) and in-memory SQLite use the async engine.
- :mod:`sync.store.sql_core`: one short transaction per call, and fencing by epoch.
- :mod:`sync.store.sql_outbox`: the outbox and dead letters.
- :mod:`sync.store.sql_push`: the changes webhooks announced (push mode).
- :mod:`sync.store.statements`: the hot statements, built once; :mod:`sync.store.rows`:
  rows to records and back.
- This module: links, field state, audit, cursors and checkpoints, the steps that span
  them in one transaction, and :func:`open_sql_store`. No duplicate live links: the
  partial unique indexes of ``tables.py`` decide; an IntegrityError there becomes
  :class:`DuplicateLinkError`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

import sync.store.tables as t
from sync.constants import Side
from sync.errors import StoreError
from sync.model import LIVE_LINK_STATES, FieldState, Link, LinkState
from sync.store.admin import check_schema_engine
from sync.store.base import (
    AuditEntry,
    Cursor,
    DuplicateLinkError,
    FieldStates,
    LinkConfirmation,
    NewAuditEntry,
    NewOutboxItem,
    OutboxItem,
    as_utc,
    link_times_for,
    opt_utc,
)
from sync.store.engines import describe, make_engine, make_sqlite_thread_engine, unique_violation
from sync.store.rows import audit_values, pending_link_values, to_audit, to_field_state, to_link
from sync.store.sql_journal import SqlJournal
from sync.store.sql_outbox import SqlOutbox
from sync.store.sql_push import SqlPushEvents
from sync.store.sql_status import SqlStatus
from sync.store.statements import (
    CHECKPOINT_VALUE,
    CONFIRM_LINK,
    COUNT_LINKS,
    COUNT_LINKS_IN,
    FIELD_STATES_CHUNK,
    FIELD_STATES_FOR,
    INSERT_AUDIT,
    INSERT_LINK,
    LINK_BY_ID,
    LINKS_FOR_BP,
    LINKS_IN_NEWEST,
    LINKS_NEWEST,
    LIVE_BY_BP,
    LIVE_BY_BPS,
    LIVE_BY_SN,
    LIVE_BY_SNS,
    UPSERT_CHECKPOINT,
    UPSERT_CURSOR,
    UPSERT_FIELD_STATE,
)
from sync.store.threads import run_calls_in_thread


# Every public store call (the LinkStore protocol) runs whole in the SQLite thread when
# the store has one; wrapped once by the decorator rather than one by one, so a new
# method cannot be forgotten. ``close`` manages the thread itself.
@run_calls_in_thread
class SqlStore(SqlStatus, SqlPushEvents, SqlJournal, SqlOutbox):
    """A :class:`~sync.store.base.LinkStore` on SQLite or Postgres. Build with ``open_store``."""

    # --- links

    async def get_link(self, link_id: int) -> Link | None:
        async with self._read() as conn:
            row = (await conn.execute(LINK_BY_ID, {"b_id": link_id})).first()
        return None if row is None else to_link(row)

    async def _live_by(self, query: Any, value: str) -> Link | None:
        async with self._read() as conn:
            row = (await conn.execute(query, {"b_value": value})).first()
        return None if row is None else to_link(row)

    async def live_link_for_bp(self, bp_incident_id: str) -> Link | None:
        return await self._live_by(LIVE_BY_BP, bp_incident_id)

    async def live_link_for_sn(self, sn_sys_id: str) -> Link | None:
        return await self._live_by(LIVE_BY_SN, sn_sys_id)

    async def live_links_for_bp(self, bp_incident_ids: Collection[str]) -> dict[str, Link]:
        ids = sorted(set(bp_incident_ids))
        if not ids:
            return {}
        async with self._read() as conn:
            rows = await conn.execute(LIVE_BY_BPS, {"b_values": ids})
            links = [to_link(row) for row in rows]
        return {link.bp_incident_id: link for link in links}

    async def live_links_for_sn(self, sn_sys_ids: Collection[str]) -> dict[str, Link]:
        ids = sorted(set(sn_sys_ids))
        if not ids:
            return {}
        async with self._read() as conn:
            rows = await conn.execute(LIVE_BY_SNS, {"b_values": ids})
            links = [to_link(row) for row in rows]
        return {link.sn_sys_id: link for link in links if link.sn_sys_id}

    async def links_for_bp(self, bp_incident_id: str) -> list[Link]:
        async with self._read() as conn:
            rows = await conn.execute(LINKS_FOR_BP, {"b_value": bp_incident_id})
            return [to_link(row) for row in rows]

    async def links_for_sn(self, sn_sys_id: str) -> list[Link]:
        """Every link ever confirmed with this sys_id, newest first (not in the protocol)."""
        query = (
            select(t.links).where(t.links.c.sn_sys_id == sn_sys_id).order_by(t.links.c.id.desc())
        )
        async with self._read() as conn:
            return [to_link(row) for row in await conn.execute(query)]

    async def _insert_pending_link(
        self,
        conn: AsyncConnection,
        bp_incident_id: str,
        now: datetime,
        previous: int | None,
        environment: str | None,
    ) -> Link:
        if previous is not None:
            await self._get_link(conn, previous, lock=False)
        values = pending_link_values(bp_incident_id, now, previous, environment)
        result = await conn.execute(INSERT_LINK, values)
        return to_link(result.one())

    async def create_pending_link(
        self,
        bp_incident_id: str,
        now: datetime,
        *,
        previous_link_id: int | None = None,
        bp_environment_id: str | None = None,
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                return await self._insert_pending_link(
                    conn, bp_incident_id, now, previous_link_id, bp_environment_id
                )
        except IntegrityError as exc:
            if not unique_violation(exc):
                raise StoreError(f"cannot create link: {describe(exc)}") from exc
            raise DuplicateLinkError(
                f"BigPanda incident {bp_incident_id} already has a live link"
            ) from None

    async def _confirm(
        self, conn: AsyncConnection, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link:
        params = {
            "b_id": link_id,
            "sn_sys_id": sn_sys_id,
            "sn_number": sn_number,
            "updated_at": now,
        }
        row = (await conn.execute(CONFIRM_LINK, params)).first()
        if row is None:  # not live, or no such link: say which
            link = await self._get_link(conn, link_id, lock=False)
            raise StoreError(f"link {link_id} is {link.state}: it cannot be confirmed")
        return to_link(row)

    async def confirm_link(
        self, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                return await self._confirm(conn, link_id, sn_sys_id, sn_number, now)
        except IntegrityError as exc:
            if not unique_violation(exc):
                raise StoreError(f"cannot confirm link {link_id}: {describe(exc)}") from exc
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
                return to_link(result.one())
        except IntegrityError as exc:
            if not unique_violation(exc):
                raise StoreError(f"cannot update link {link_id}: {describe(exc)}") from exc
            raise DuplicateLinkError(
                f"link {link_id} cannot become {state}: its BigPanda or ServiceNow incident "
                "already has a live link"
            ) from None

    async def move_link(
        self,
        link_id: int,
        to_bp_incident_id: str,
        now: datetime,
        *,
        bp_environment_id: str | None = None,
    ) -> Link:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                link = await self._get_link(conn, link_id, lock=True)
                if link.bp_incident_id == to_bp_incident_id:
                    return link  # moved already (a plan made again)
                if link.state not in LIVE_LINK_STATES:
                    raise StoreError(f"link {link_id} is {link.state}: only a live link moves")
                environment = bp_environment_id or link.bp_environment_id
                result = await conn.execute(
                    update(t.links)
                    .where(t.links.c.id == link_id)
                    .values(
                        bp_incident_id=to_bp_incident_id,
                        bp_environment_id=environment,
                        updated_at=now,
                    )
                    .returning(t.links)
                )
                return to_link(result.one())
        except IntegrityError as exc:
            if not unique_violation(exc):
                raise StoreError(f"cannot move link {link_id}: {describe(exc)}") from exc
            raise DuplicateLinkError(
                f"BigPanda incident {to_bp_incident_id} already has a live link"
            ) from None

    async def list_links(
        self, states: Collection[LinkState] | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[Link]:
        query = LINKS_NEWEST
        params: dict[str, Any] = {"b_limit": max(0, limit), "b_offset": max(0, offset)}
        if states is not None:
            query = LINKS_IN_NEWEST
            params["b_states"] = [LinkState(x).value for x in states]
        async with self._read() as conn:
            return [to_link(row) for row in await conn.execute(query, params)]

    async def count_links(self, states: Collection[LinkState] | None = None) -> int:
        query, params = COUNT_LINKS, {}
        if states is not None:
            query, params = COUNT_LINKS_IN, {"b_states": [LinkState(x).value for x in states]}
        async with self._read() as conn:
            return int((await conn.execute(query, params)).scalar_one())

    # --- field state

    async def field_states(self, link_id: int) -> dict[tuple[Side, str], FieldState]:
        return (await self.field_states_for([link_id]))[link_id]

    async def field_states_for(
        self, link_ids: Collection[int]
    ) -> dict[int, dict[tuple[Side, str], FieldState]]:
        wanted = sorted(set(link_ids))
        out: dict[int, dict[tuple[Side, str], FieldState]] = {lid: {} for lid in wanted}
        if not wanted:
            return out
        async with self._read() as conn:
            for start in range(0, len(wanted), FIELD_STATES_CHUNK):
                chunk = wanted[start : start + FIELD_STATES_CHUNK]
                for row in await conn.execute(FIELD_STATES_FOR, {"b_ids": chunk}):
                    fs = to_field_state(row)
                    out[fs.link_id][(fs.side, fs.name)] = fs
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
        await conn.execute(UPSERT_FIELD_STATE, rows)

    async def _record_many_states(
        self, conn: AsyncConnection, field_states: Sequence[FieldStates], now: datetime
    ) -> None:
        """Several links' and sides' field states in one statement (the foreign key
        refuses an unknown link)."""
        rows: list[dict[str, Any]] = [
            {"link_id": fs.link_id, "side": Side(fs.side).value, "name": name, "value": value}
            for fs in field_states
            for name, value in fs.values.items()
        ]
        for row in rows:
            row["synced_at"] = now
        if rows:
            await conn.execute(UPSERT_FIELD_STATE, rows)

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
        bp_environment_id: str | None = None,
    ) -> tuple[Link, OutboxItem]:
        now = as_utc(now)
        try:
            async with self._write() as conn:
                link = await self._insert_pending_link(
                    conn, bp_incident_id, now, previous_link_id, bp_environment_id
                )
                new = item_for(link)
                # the link was made in this transaction: no need to look it up again
                item = await self._enqueue_in(conn, new, now, check_link=new.link_id != link.id)
                return link, item
        except IntegrityError as exc:
            if not unique_violation(exc) or _outbox_key(exc):
                raise StoreError(f"cannot create link: {describe(exc)}") from exc
            raise DuplicateLinkError(
                f"BigPanda incident {bp_incident_id} already has a live link"
            ) from None

    async def _confirm_in(
        self, conn: AsyncConnection, confirm: LinkConfirmation, now: datetime
    ) -> Link:
        """``confirm_link`` and its audit entry, in the caller's transaction."""
        link = await self._confirm(conn, confirm.link_id, confirm.sn_sys_id, confirm.sn_number, now)
        if confirm.audit_outcome is not None:
            entry = NewAuditEntry(
                "action",
                confirm.audit_outcome,
                link_id=confirm.link_id,
                bp_incident_id=link.bp_incident_id,
                sn_sys_id=confirm.sn_sys_id,
            )
            await conn.execute(INSERT_AUDIT, audit_values(entry, now))
        return link

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
        confirm = LinkConfirmation(link_id, sn_sys_id, sn_number, audit_outcome)
        try:
            async with self._write() as conn:
                link = await self._confirm_in(conn, confirm, now)
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
            if not unique_violation(exc):
                raise StoreError(f"cannot confirm link {link_id}: {describe(exc)}") from exc
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
        confirm: LinkConfirmation | None = None,
    ) -> list[OutboxItem]:
        now = as_utc(now)
        for attempt in (1, 2):
            try:
                # no read of the links first: their foreign keys refuse an unknown one
                # (an IntegrityError, not a unique violation: StoreError below)
                async with self._write() as conn:
                    if confirm is not None:
                        await self._confirm_in(conn, confirm, now)
                    await self._record_many_states(conn, field_states, now)
                    items = [
                        await self._enqueue_in(conn, new, now, check_link=False)
                        for new in follow_ups
                    ]
                    await self._complete_in(conn, item_id, now)
                    return items
            except IntegrityError as exc:
                if confirm is not None and unique_violation(exc) and not _outbox_key(exc):
                    raise DuplicateLinkError(
                        f"ServiceNow incident {confirm.sn_sys_id} already has a live link"
                    ) from None
                # a concurrent enqueue of a follow-up's key won the race: once more (the
                # item it made is then found and returned)
                if attempt == 2 or not unique_violation(exc):
                    raise StoreError(f"cannot complete item {item_id}: {describe(exc)}") from exc
        raise AssertionError("unreachable: the loop returns or raises")

    # --- audit

    async def record_audit(self, entry: NewAuditEntry, now: datetime) -> None:
        values = audit_values(entry, as_utc(now))
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
            return [to_audit(row) for row in await conn.execute(query)]

    # --- cursors and checkpoints

    async def get_cursor(self, side: Side) -> Cursor:
        async with self._read() as conn:
            return await self._cursor_in(conn, Side(side))

    async def advance_cursor(self, cursor: Cursor, now: datetime) -> None:
        values = {
            "side": Side(cursor.side).value,
            "watermark": opt_utc(cursor.watermark),
            "seen": sorted(cursor.seen),
            "updated_at": as_utc(now),
        }
        async with self._write() as conn:
            await conn.execute(UPSERT_CURSOR, values)

    async def get_checkpoint(self, name: str) -> str | None:
        async with self._read() as conn:
            value = (await conn.execute(CHECKPOINT_VALUE, {"b_name": name})).scalar_one_or_none()
        return None if value is None else str(value)

    async def _put_checkpoint(
        self, conn: AsyncConnection, name: str, value: str, now: datetime
    ) -> None:
        await conn.execute(UPSERT_CHECKPOINT, {"name": name, "value": value, "updated_at": now})

    async def set_checkpoint(self, name: str, value: str, now: datetime) -> None:
        now = as_utc(now)
        async with self._write() as conn:
            await self._put_checkpoint(conn, name, value, now)


def _outbox_key(exc: IntegrityError) -> bool:
    """Whether a unique violation is the outbox's (a not-done idempotency key), not a link's."""
    return "outbox" in str(exc.orig).lower()


async def open_sql_store(url: str, *, check_schema: bool = True) -> SqlStore:
    """The store at ``url``; with ``check_schema``, StoreError unless at the newest migration."""
    engine = make_engine(url)
    try:
        if check_schema:
            await check_schema_engine(engine, url)
    except BaseException:
        await engine.dispose()
        raise
    return SqlStore(engine, url, thread_engine=make_sqlite_thread_engine(url))


__all__: Sequence[str] = ["SqlStore", "open_sql_store"]
