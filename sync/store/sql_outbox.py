"""``SqlOutbox``: the outbox and dead letters of :class:`sync.store.sql.SqlStore`.

- ``enqueue`` is idempotent on the key: a concurrent enqueue of the same key that wins
  the race (the unique index on not-done keys) has its item returned.
- Postgres: ``claim_due`` uses ``FOR UPDATE SKIP LOCKED`` so replicas never claim the
  same item.
- ``open_writes`` answers a cycle's whole batch of targets in one read (in chunks of
  :data:`OPEN_WRITES_CHUNK` targets, one transaction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

import sync.store.tables as t
from sync.errors import StoreError
from sync.store.base import NewOutboxItem, OutboxHead, OutboxItem, OutboxState, as_utc
from sync.store.engines import describe, foreign_key_violation, unique_violation
from sync.store.rows import inserted_item, new_item_values, to_head, to_item
from sync.store.sql_core import SqlCore
from sync.store.statements import (
    CLAIM_DUE,
    CLAIM_DUE_LOCKED,
    COMPLETE_ITEM,
    COUNT_OUTBOX,
    COUNT_OUTBOX_IN,
    INSERT_ITEM_UNLESS_OPEN,
    MARK_IN_FLIGHT,
    NOT_DONE_WITH_KEY,
    OPEN_WRITES,
    OUTBOX_BY_IDS,
    OUTBOX_HEADS_IN,
    OUTBOX_IN_OLDEST,
    OUTBOX_IN_OLDEST_FOR_TARGET,
    OUTBOX_OLDEST,
)

#: targets per statement of ``open_writes`` (bound parameters have a limit per statement)
OPEN_WRITES_CHUNK = 5000


class SqlOutbox(SqlCore):
    """The :class:`~sync.store.base.Outbox` part of ``SqlStore``."""

    def _not_done_with_key(self, key: str) -> Any:
        return select(t.outbox).where(
            t.outbox.c.idempotency_key == key, t.outbox.c.state != OutboxState.DONE.value
        )

    async def _enqueue_in(
        self, conn: AsyncConnection, new: NewOutboxItem, now: datetime, *, check_link: bool = True
    ) -> OutboxItem:
        if check_link and new.link_id is not None:
            await self._get_link(conn, new.link_id, lock=False)
        values = new_item_values(new, now)
        row = (await conn.execute(INSERT_ITEM_UNLESS_OPEN, values)).first()
        if row is not None:
            return inserted_item(row._mapping["id"], values)
        # the key's not-done item: that one
        return to_item(
            (await conn.execute(NOT_DONE_WITH_KEY, {"b_key": new.idempotency_key})).one()
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
        new = NewOutboxItem(
            kind, target, payload, idempotency_key, link_id, bp_incident_id, sn_sys_id
        )
        try:
            # no read of the link first: its foreign key refuses an unknown one
            async with self._write() as conn:
                return await self._enqueue_in(conn, new, now, check_link=False)
        except IntegrityError as exc:
            if link_id is not None and foreign_key_violation(exc):
                raise StoreError(f"no link {link_id}") from None
            # A concurrent enqueue of the same key won the race: return its item.
            if not unique_violation(exc):
                raise StoreError(f"cannot enqueue {kind}: {describe(exc)}") from exc
        async with self._read() as conn:
            row = (await conn.execute(self._not_done_with_key(idempotency_key))).first()
        if row is None:
            raise StoreError(f"outbox item {idempotency_key!r} vanished while being enqueued")
        return to_item(row)

    async def claim_due(self, now: datetime, *, limit: int, lease_s: float) -> list[OutboxItem]:
        now = as_utc(now)
        if limit <= 0:
            return []
        query = CLAIM_DUE_LOCKED if self._postgres else CLAIM_DUE
        params = {"b_now": now, "b_cutoff": now - timedelta(seconds=lease_s), "b_limit": limit}
        async with self._write() as conn:
            rows = list(await conn.execute(query, params))
            if not rows:
                return []
            ids = [row._mapping["id"] for row in rows]
            await conn.execute(MARK_IN_FLIGHT, {"b_ids": ids, "b_updated_at": now})
        return [
            dataclasses.replace(to_item(row), state=OutboxState.IN_FLIGHT, updated_at=now)
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
        return to_item(row)

    async def _complete_in(self, conn: AsyncConnection, item_id: int, now: datetime) -> None:
        result = await conn.execute(COMPLETE_ITEM, {"b_id": item_id, "updated_at": now})
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

    async def list_outbox(
        self,
        states: Collection[OutboxState] | None = None,
        *,
        limit: int = 100,
        target: str | None = None,
    ) -> list[OutboxItem]:
        query = OUTBOX_OLDEST
        params: dict[str, Any] = {"b_limit": max(0, limit)}
        if states is not None or target is not None:
            query = OUTBOX_IN_OLDEST
            params["b_states"] = [OutboxState(x).value for x in states or OutboxState]
        if target is not None:
            query = OUTBOX_IN_OLDEST_FOR_TARGET
            params["b_target"] = target
        async with self._read() as conn:
            return [to_item(row) for row in await conn.execute(query, params)]

    async def outbox_heads(self, states: Collection[OutboxState]) -> list[OutboxHead]:
        params = {"b_states": [OutboxState(x).value for x in states]}
        async with self._read() as conn:
            return [to_head(row) for row in await conn.execute(OUTBOX_HEADS_IN, params)]

    async def outbox_items(self, ids: Collection[int]) -> list[OutboxItem]:
        wanted = sorted(set(ids))
        items: list[OutboxItem] = []
        if not wanted:
            return items
        async with self._read() as conn:
            for start in range(0, len(wanted), OPEN_WRITES_CHUNK):
                params = {"b_ids": wanted[start : start + OPEN_WRITES_CHUNK]}
                items.extend(to_item(row) for row in await conn.execute(OUTBOX_BY_IDS, params))
        return items

    async def count_outbox(self, states: Collection[OutboxState] | None = None) -> int:
        query, params = COUNT_OUTBOX, {}
        if states is not None:
            query = COUNT_OUTBOX_IN
            params = {"b_states": [OutboxState(x).value for x in states]}
        async with self._read() as conn:
            return int((await conn.execute(query, params)).scalar_one())

    async def open_writes(
        self, targets: Collection[str], *, attempts: int
    ) -> dict[str, frozenset[str]]:
        wanted = sorted(set(targets))
        found: dict[str, set[str]] = {}
        if not wanted:
            return {}
        async with self._read() as conn:
            for start in range(0, len(wanted), OPEN_WRITES_CHUNK):
                params = {
                    "b_targets": wanted[start : start + OPEN_WRITES_CHUNK],
                    "b_attempts": attempts,
                }
                for target, kind in await conn.execute(OPEN_WRITES, params):
                    found.setdefault(target, set()).add(kind)
        return {target: frozenset(kinds) for target, kinds in found.items()}

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
