"""``SqlPushEvents``: the push events of :class:`sync.store.sql.SqlStore` (``sync.push``).

One row per (side, object id), upserted by each delivery (``ON CONFLICT DO UPDATE`` on
SQLite and Postgres alike), so a flood of deliveries for one incident stays one row.
Recording is not fenced: a standby replica behind the same load balancer records what it
receives and the leader works it. Taking is a plain read (only the leader works them);
the acknowledgement deletes a row only if no delivery came since it was read.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Row, delete, func, select

import sync.store.tables as t
from sync.constants import Side
from sync.store.base import PushEvent, as_utc
from sync.store.sql_core import SqlCore

_PE = t.push_events
_ORDER = (_PE.c.received_at, _PE.c.side, _PE.c.object_id)


def _to_event(row: Row[Any]) -> PushEvent:
    m = row._mapping
    return PushEvent(
        side=Side(m["side"]),
        object_id=m["object_id"],
        received_at=m["received_at"],
        deliveries=m["deliveries"],
        version=m["version"],
        environment_id=m["environment_id"],
    )


class SqlPushEvents(SqlCore):
    """The :class:`~sync.store.base.PushEvents` part of ``SqlStore``."""

    async def record_push_event(
        self,
        side: Side,
        object_id: str,
        now: datetime,
        *,
        version: str | None = None,
        environment_id: str | None = None,
    ) -> PushEvent:
        values = {
            "side": Side(side).value,
            "object_id": object_id,
            "version": version,
            "environment_id": environment_id,
            "received_at": as_utc(now),
            "deliveries": 1,
        }
        stmt = self._upsert(_PE).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["side", "object_id"],
            set_={
                "received_at": stmt.excluded.received_at,
                "deliveries": _PE.c.deliveries + 1,
                "version": func.coalesce(stmt.excluded.version, _PE.c.version),
                "environment_id": func.coalesce(stmt.excluded.environment_id, _PE.c.environment_id),
            },
        ).returning(*_PE.c)
        async with self._write(fenced=False) as conn:
            row = (await conn.execute(stmt)).one()
        return _to_event(row)

    async def pending_push_events(self, *, limit: int) -> list[PushEvent]:
        query = select(_PE).order_by(*_ORDER).limit(max(0, limit))
        async with self._read() as conn:
            return [_to_event(row) for row in await conn.execute(query)]

    async def ack_push_events(self, events: Collection[PushEvent]) -> None:
        if not events:
            return
        async with self._write() as conn:
            for event in events:
                await conn.execute(
                    delete(_PE).where(
                        _PE.c.side == Side(event.side).value,
                        _PE.c.object_id == event.object_id,
                        _PE.c.received_at == as_utc(event.received_at),
                        _PE.c.deliveries == event.deliveries,
                    )
                )

    async def count_push_events(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(select(func.count()).select_from(_PE))).scalar_one())
