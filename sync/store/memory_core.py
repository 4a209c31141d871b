"""The shared part of :class:`sync.store.memory.MemoryStore`: the data a database would
hold, and the open and fence checks every call starts with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sync.constants import Side
from sync.errors import StoreError
from sync.model import CarriedEntry, FieldState, Link
from sync.store.base import AuditEntry, Cursor, OutboxItem, PushEvent, fenced_error

#: the push events a database would hold, by side and incident id
PushRows = dict[tuple[Side, str], PushEvent]
#: the journal ledger a database would hold, by link, side and entry id
JournalRows = dict[tuple[int, Side, str], CarriedEntry]


@dataclass
class Data:
    """Everything a database would hold; shared by replicas of one MemoryStore."""

    links: dict[int, Link] = field(default_factory=dict)
    field_states: dict[tuple[int, Side, str], FieldState] = field(default_factory=dict)
    outbox: dict[int, OutboxItem] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    cursors: dict[Side, Cursor] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)
    epoch: int = 0
    holder: str | None = None
    leader_at: datetime | None = None
    next_link_id: int = 1
    next_outbox_id: int = 1
    next_audit_id: int = 1
    push_events: PushRows = field(default_factory=dict)
    journal: JournalRows = field(default_factory=dict)


class MemoryCore:
    """The data (shared by replicas), this store's fence, and the checks."""

    def __init__(self, *, _data: Data | None = None) -> None:
        self._data = _data if _data is not None else Data()
        self._fenced_epoch: int | None = None
        self._closed = False

    # --- lifecycle

    async def close(self) -> None:
        self._closed = True

    async def ping(self) -> None:
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def _write(self) -> Data:
        """Every write starts here: the store must be open and, when fenced, still lead."""
        self._check_open()
        if self._fenced_epoch is not None and self._data.epoch != self._fenced_epoch:
            raise fenced_error(self._data.epoch, self._fenced_epoch)
        return self._data

    def _read(self) -> Data:
        self._check_open()
        return self._data

    def _cursors(self) -> dict[Side, Cursor]:
        """Every side's cursor as stored, or one without a watermark (never polled)."""
        stored = self._read().cursors
        return {side: stored.get(side, Cursor(side=side, watermark=None)) for side in Side}


__all__ = ["Data", "JournalRows", "MemoryCore", "PushRows"]
