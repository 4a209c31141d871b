"""``SqlStatus``: the read-only views of :class:`sync.store.sql.SqlStore` for the status
page (:class:`~sync.store.base.StatusReads`). Each is one short read on an index:
links by state (``ix_links_state``), the newest outbox items (the primary key, or
``ix_outbox_link_id``), links by ServiceNow number (``ix_links_sn_number``, 0005)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

import sync.store.tables as t
from sync.constants import Side
from sync.model import Link, LinkState
from sync.store.base import Cursor, LeaderRecord, OutboxItem, OutboxState, StoreSummary
from sync.store.rows import to_item, to_link
from sync.store.sql_core import SqlCore
from sync.store.statements import COUNT_OUTBOX_IN, CURSOR_OF_SIDE, LEADER_ID


class SqlStatus(SqlCore):
    """The :class:`~sync.store.base.StatusReads` part of ``SqlStore``."""

    async def _cursor_in(self, conn: AsyncConnection, side: Side) -> Cursor:
        row = (await conn.execute(CURSOR_OF_SIDE, {"b_side": side.value})).first()
        if row is None:
            return Cursor(side=side, watermark=None)
        m = row._mapping
        return Cursor(side=side, watermark=m["watermark"], seen=frozenset(m["seen"] or ()))

    async def summary(self) -> StoreSummary:
        async def count(statement: Any, states: Collection[OutboxState]) -> int:
            params = {"b_states": [state.value for state in states]}
            return int((await conn.execute(statement, params)).scalar_one())

        async with self._read() as conn:
            depth = await count(COUNT_OUTBOX_IN, [OutboxState.PENDING, OutboxState.IN_FLIGHT])
            dead = await count(COUNT_OUTBOX_IN, [OutboxState.DEAD])
            cursors = {side: await self._cursor_in(conn, side) for side in Side}
        return StoreSummary(depth, dead, cursors)

    async def cursors(self) -> dict[Side, Cursor]:
        async with self._read() as conn:
            return {side: await self._cursor_in(conn, side) for side in Side}

    async def count_links_by_state(
        self, states: Collection[LinkState] | None = None
    ) -> dict[LinkState, int]:
        query = select(t.links.c.state, func.count()).group_by(t.links.c.state)
        if states is not None:
            query = query.where(t.links.c.state.in_(sorted(LinkState(x).value for x in states)))
        async with self._read() as conn:
            rows = list(await conn.execute(query))
        counts = dict.fromkeys(LinkState, 0)
        for state, count in rows:
            counts[LinkState(state)] = int(count)
        return counts

    async def recent_outbox(
        self, *, limit: int, link_ids: Collection[int] | None = None
    ) -> list[OutboxItem]:
        query = select(t.outbox).order_by(t.outbox.c.id.desc()).limit(max(0, limit))
        if link_ids is not None:
            query = query.where(t.outbox.c.link_id.in_(sorted(set(link_ids))))
        async with self._read() as conn:
            return [to_item(row) for row in await conn.execute(query)]

    async def links_for_sn_number(self, sn_number: str) -> list[Link]:
        query = (
            select(t.links).where(t.links.c.sn_number == sn_number).order_by(t.links.c.id.desc())
        )
        async with self._read() as conn:
            return [to_link(row) for row in await conn.execute(query)]

    async def leader_record(self) -> LeaderRecord | None:
        query = select(t.leader).where(t.leader.c.id == LEADER_ID)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        return LeaderRecord(epoch=int(m["epoch"]), holder=m["holder"], at=m["updated_at"])
