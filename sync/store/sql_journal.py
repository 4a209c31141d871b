"""``SqlJournal``: the journal ledger of :class:`sync.store.sql.SqlStore` (``sync.journal``).

- ``record_carried`` inserts one row per (link, side, entry id) and keeps the first:
  ``ON CONFLICT DO NOTHING`` (the primary key decides, whatever the races), ``RETURNING``
  tells whether this call made it; ``record_carried_many`` does so for a batch in one
  transaction and one statement (``bpsync backfill``'s history cutoffs: one per page,
  not two per incident), unknown links refused by the foreign key.
- ``carried_entries`` joins the links of the given BigPanda incidents (their history
  too) in one read, in chunks of :data:`LEDGER_CHUNK` incidents.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.exc import IntegrityError

import sync.store.tables as t
from sync.constants import Side
from sync.errors import StoreError
from sync.model import CarriedEntry
from sync.store.base import CarriedRecord, as_utc
from sync.store.engines import describe, foreign_key_violation
from sync.store.sql_core import SqlCore

#: incidents per statement of ``carried_entries`` (bound parameters have a limit)
LEDGER_CHUNK = 1000

# text, the same on SQLite and Postgres, built once (an on_conflict statement is not cached)
RECORD_CARRIED = text(
    "INSERT INTO journal_ledger (link_id, side, entry_id, digest, recorded_at) "
    "VALUES (:link_id, :side, :entry_id, :digest, :recorded_at) "
    "ON CONFLICT (link_id, side, entry_id) DO NOTHING RETURNING link_id"
).bindparams(bindparam("recorded_at", type_=t.journal_ledger.c.recorded_at.type))
#: rows per statement of ``record_carried_many`` (bound parameters have a limit)
CARRIED_CHUNK = 500


@functools.cache
def _record_carried_rows(count: int) -> TextClause:
    """``RECORD_CARRIED`` for ``count`` rows in one statement (built once per count);
    ``RETURNING`` names the rows it made."""
    rows = ", ".join(f"(:l{n}, :s{n}, :e{n}, :d{n}, :recorded_at)" for n in range(count))
    # placeholders only: the values are bound
    sql = (
        "INSERT INTO journal_ledger (link_id, side, entry_id, digest, recorded_at) "  # noqa: S608
        f"VALUES {rows} ON CONFLICT (link_id, side, entry_id) DO NOTHING "
        "RETURNING link_id, side, entry_id"
    )
    return text(sql).bindparams(bindparam("recorded_at", type_=t.journal_ledger.c.recorded_at.type))


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
        keys = [(e.link_id, Side(e.side).value, e.entry_id) for e in entries]
        made: set[tuple[int, str, str]] = set()
        try:
            # no read of the links first: their foreign key refuses an unknown one
            async with self._write() as conn:
                for start in range(0, len(entries), CARRIED_CHUNK):
                    chunk = entries[start : start + CARRIED_CHUNK]
                    params: dict[str, Any] = {"recorded_at": now}
                    for n, e in enumerate(chunk):
                        params |= {
                            f"l{n}": e.link_id,
                            f"s{n}": Side(e.side).value,
                            f"e{n}": e.entry_id,
                            f"d{n}": e.digest,
                        }
                    for link_id, side, entry_id in await conn.execute(
                        _record_carried_rows(len(chunk)), params
                    ):
                        made.add((int(link_id), str(side), str(entry_id)))
        except IntegrityError as exc:
            if not foreign_key_violation(exc):
                raise StoreError(f"cannot record journal entries: {describe(exc)}") from exc
            known = await self._known_links({e.link_id for e in entries})
            unknown = sorted({e.link_id for e in entries} - known)
            raise StoreError(f"no link {', '.join(map(str, unknown))}") from None
        # a key twice in the batch: only its first row was made by this call
        fresh: list[bool] = []
        for key in keys:
            fresh.append(key in made)
            made.discard(key)
        return fresh

    async def _known_links(self, link_ids: Collection[int]) -> set[int]:
        query = select(t.links.c.id).where(t.links.c.id.in_(sorted(link_ids)))
        async with self._read() as conn:
            return {int(link_id) for (link_id,) in await conn.execute(query)}

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
