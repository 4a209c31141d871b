"""``SqlJournal``: the journal ledger of :class:`sync.store.sql.SqlStore` (``sync.journal``).

- ``record_carried`` inserts one row per (link, side, entry id) and keeps the first:
  ``ON CONFLICT DO NOTHING`` (the primary key decides, whatever the races), ``RETURNING``
  tells whether this call made it; ``record_carried_many`` does so for a batch in one
  transaction (``bpsync backfill``'s history cutoffs: one per page, not two per incident).
- ``carried_entries`` joins the links of the given BigPanda incidents (their history
  too) in one read, in chunks of :data:`LEDGER_CHUNK` incidents.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import bindparam, select, text

import sync.store.tables as t
from sync.constants import Side
from sync.model import CarriedEntry
from sync.store.base import CarriedRecord, as_utc
from sync.store.sql_core import SqlCore

#: incidents per statement of ``carried_entries`` (bound parameters have a limit)
LEDGER_CHUNK = 1000

# text, the same on SQLite and Postgres, built once (an on_conflict statement is not cached)
RECORD_CARRIED = text(
    "INSERT INTO journal_ledger (link_id, side, entry_id, digest, recorded_at) "
    "VALUES (:link_id, :side, :entry_id, :digest, :recorded_at) "
    "ON CONFLICT (link_id, side, entry_id) DO NOTHING RETURNING link_id"
).bindparams(bindparam("recorded_at", type_=t.journal_ledger.c.recorded_at.type))
CARRIED_FOR_BPS = (
    select(t.journal_ledger, t.links.c.bp_incident_id)
    .join(t.links, t.links.c.id == t.journal_ledger.c.link_id)
    .where(t.links.c.bp_incident_id.in_(bindparam("b_values", expanding=True)))
    .order_by(
        t.journal_ledger.c.link_id,
        t.journal_ledger.c.recorded_at,
        t.journal_ledger.c.side,
        t.journal_ledger.c.entry_id,
    )
)


class SqlJournal(SqlCore):
    """The :class:`~sync.store.base.JournalLedger` part of ``SqlStore``."""

    async def record_carried(
        self, link_id: int, side: Side, entry_id: str, digest: str, now: datetime
    ) -> bool:
        values = {
            "link_id": link_id,
            "side": Side(side).value,
            "entry_id": entry_id,
            "digest": digest,
            "recorded_at": as_utc(now),
        }
        async with self._write() as conn:
            await self._get_link(conn, link_id, lock=False)
            return (await conn.execute(RECORD_CARRIED, values)).first() is not None

    async def record_carried_many(
        self, entries: Sequence[CarriedRecord], now: datetime
    ) -> list[bool]:
        now = as_utc(now)
        if not entries:
            return []
        fresh: list[bool] = []
        async with self._write() as conn:
            for link_id in dict.fromkeys(e.link_id for e in entries):
                await self._get_link(conn, link_id, lock=False)
            for e in entries:
                values = {
                    "link_id": e.link_id,
                    "side": Side(e.side).value,
                    "entry_id": e.entry_id,
                    "digest": e.digest,
                    "recorded_at": now,
                }
                fresh.append((await conn.execute(RECORD_CARRIED, values)).first() is not None)
        return fresh

    async def carried_entries(
        self, bp_incident_ids: Collection[str]
    ) -> dict[str, list[CarriedEntry]]:
        ids = sorted(set(bp_incident_ids))
        out: dict[str, list[CarriedEntry]] = {}
        if not ids:
            return out
        async with self._read() as conn:
            for start in range(0, len(ids), LEDGER_CHUNK):
                chunk = ids[start : start + LEDGER_CHUNK]
                for row in await conn.execute(CARRIED_FOR_BPS, {"b_values": chunk}):
                    m = row._mapping
                    out.setdefault(str(m["bp_incident_id"]), []).append(
                        CarriedEntry(
                            link_id=int(m["link_id"]),
                            side=Side(m["side"]),
                            entry_id=str(m["entry_id"]),
                            digest=str(m["digest"]),
                            at=m["recorded_at"],
                        )
                    )
        return out
