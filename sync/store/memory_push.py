"""``MemoryPushEvents``: the push events of :class:`sync.store.memory.MemoryStore`, with
the semantics of :class:`sync.store.sql_push.SqlPushEvents` (``sync.store.base``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime

from sync.constants import Side
from sync.store.base import PushEvent, as_utc
from sync.store.memory_core import MemoryCore, PushRows


class MemoryPushEvents(MemoryCore):
    """The :class:`~sync.store.base.PushEvents` part of ``MemoryStore``."""

    def _push_rows(self, *, fenced: bool) -> PushRows:
        """The shared rows, after the store's open (and, ``fenced``, epoch) check."""
        return (self._write() if fenced else self._read()).push_events

    async def record_push_event(
        self,
        side: Side,
        object_id: str,
        now: datetime,
        *,
        version: str | None = None,
        environment_id: str | None = None,
    ) -> PushEvent:
        rows = self._push_rows(fenced=False)
        key = (Side(side), object_id)
        old = rows.get(key)
        if old is None:
            event = PushEvent(key[0], object_id, as_utc(now), 1, version, environment_id)
        else:
            event = dataclasses.replace(
                old,
                received_at=as_utc(now),
                deliveries=old.deliveries + 1,
                version=version if version is not None else old.version,
                environment_id=environment_id or old.environment_id,
            )
        rows[key] = event
        return event

    async def pending_push_events(self, *, limit: int) -> list[PushEvent]:
        rows = self._push_rows(fenced=False)
        ordered = sorted(rows.values(), key=lambda e: (e.received_at, e.side.value, e.object_id))
        return ordered[: max(0, limit)]

    async def ack_push_events(self, events: Collection[PushEvent]) -> None:
        if not events:
            return
        rows = self._push_rows(fenced=True)
        for event in events:
            key = (Side(event.side), event.object_id)
            row = rows.get(key)
            if (
                row is not None
                and row.received_at == as_utc(event.received_at)
                and row.deliveries == event.deliveries
            ):
                del rows[key]

    async def count_push_events(self) -> int:
        return len(self._push_rows(fenced=False))
