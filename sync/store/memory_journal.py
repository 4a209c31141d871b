"""``MemoryJournal``: the journal ledger of :class:`sync.store.memory.MemoryStore`, with
the semantics of :class:`sync.store.sql_journal.SqlJournal` (``sync.store.base``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from sync.constants import Side
from sync.errors import StoreError
from sync.model import CarriedEntry, Link
from sync.store.base import CarriedRecord, as_utc
from sync.store.memory_core import JournalRows, MemoryCore


class MemoryJournal(MemoryCore):
    """The :class:`~sync.store.base.JournalLedger` part of ``MemoryStore``."""

    def _journal_data(self, *, write: bool) -> tuple[Mapping[int, Link], JournalRows]:
        """The shared links and ledger rows, after the store's open (and, ``write``,
        epoch) check."""
        data = self._write() if write else self._read()
        return data.links, data.journal

    async def record_carried(
        self, link_id: int, side: Side, entry_id: str, digest: str, now: datetime
    ) -> bool:
        now = as_utc(now)
        links, rows = self._journal_data(write=True)
        if link_id not in links:
            raise StoreError(f"no link {link_id}")
        key = (link_id, Side(side), entry_id)
        if key in rows:
            return False
        rows[key] = CarriedEntry(link_id, key[1], entry_id, digest, now)
        return True

    async def record_carried_many(
        self, entries: Sequence[CarriedRecord], now: datetime
    ) -> list[bool]:
        now = as_utc(now)
        links, _ = self._journal_data(write=True)
        missing = [e.link_id for e in entries if e.link_id not in links]
        if missing:
            raise StoreError(f"no link {missing[0]}")  # checked first: all or nothing
        return [
            await self.record_carried(e.link_id, e.side, e.entry_id, e.digest, now) for e in entries
        ]

    async def carried_entries(
        self, bp_incident_ids: Collection[str]
    ) -> dict[str, list[CarriedEntry]]:
        links, rows = self._journal_data(write=False)
        wanted = set(bp_incident_ids)
        out: dict[str, list[CarriedEntry]] = {}
        ordered = sorted(rows.values(), key=lambda r: (r.link_id, r.at, r.side.value, r.entry_id))
        for row in ordered:
            link = links.get(row.link_id)
            if link is not None and link.bp_incident_id in wanted:
                out.setdefault(link.bp_incident_id, []).append(row)
        return out
