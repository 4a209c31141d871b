"""Audit, cursors, checkpoints and leadership of :class:`sync.store.memory.MemoryStore`,
with the semantics of the SQL store (``sync.store.base``)."""

from __future__ import annotations

import copy
from datetime import datetime

from sync.constants import Side
from sync.store.base import AuditEntry, Cursor, NewAuditEntry, as_utc, opt_utc
from sync.store.memory_core import MemoryCore


class MemoryRecords(MemoryCore):
    """The :class:`~sync.store.base.Audit`, :class:`~sync.store.base.Cursors` and
    :class:`~sync.store.base.Leadership` parts of ``MemoryStore``."""

    # --- audit

    async def record_audit(self, entry: NewAuditEntry, now: datetime) -> None:
        now = as_utc(now)
        data = self._write()
        data.audit.append(
            AuditEntry(
                id=data.next_audit_id,
                at=now,
                kind=entry.kind,
                outcome=entry.outcome,
                link_id=entry.link_id,
                bp_incident_id=entry.bp_incident_id,
                sn_sys_id=entry.sn_sys_id,
                field=entry.field,
                bp_value=entry.bp_value,
                sn_value=entry.sn_value,
                detail=copy.deepcopy(dict(entry.detail or {})),
            )
        )
        data.next_audit_id += 1

    async def list_audit(
        self, *, link_id: int | None = None, kind: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        found = [
            entry
            for entry in reversed(self._read().audit)
            if (link_id is None or entry.link_id == link_id)
            and (kind is None or entry.kind == kind)
        ]
        return found[:limit]

    # --- cursors and checkpoints

    async def get_cursor(self, side: Side) -> Cursor:
        return self._cursors()[Side(side)]

    async def cursors(self) -> dict[Side, Cursor]:
        return self._cursors()

    async def advance_cursor(self, cursor: Cursor, now: datetime) -> None:
        as_utc(now)
        data = self._write()
        side = Side(cursor.side)
        data.cursors[side] = Cursor(
            side=side, watermark=opt_utc(cursor.watermark), seen=frozenset(cursor.seen)
        )

    async def get_checkpoint(self, name: str) -> str | None:
        return self._read().checkpoints.get(name)

    async def set_checkpoint(self, name: str, value: str, now: datetime) -> None:
        as_utc(now)
        self._write().checkpoints[name] = value

    # --- high availability

    async def take_epoch(self, holder: str, now: datetime) -> int:
        as_utc(now)
        data = self._read()
        data.epoch += 1
        data.holder = holder
        data.leader_at = as_utc(now)
        self._fenced_epoch = data.epoch
        return data.epoch

    def fence(self, epoch: int | None) -> None:
        """From now on every write checks the stored epoch equals ``epoch`` (None: off)."""
        self._fenced_epoch = epoch


__all__ = ["MemoryRecords"]
