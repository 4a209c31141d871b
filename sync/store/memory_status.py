"""``MemoryStatus``: the status page's read-only views of
:class:`sync.store.memory.MemoryStore`, with the semantics of
:class:`sync.store.sql_status.SqlStatus` (``sync.store.base``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from sync.model import Link, LinkState
from sync.store.base import LeaderRecord, OutboxItem, OutboxState, StoreSummary
from sync.store.memory_core import MemoryCore


@dataclass(frozen=True, slots=True)
class StatusData:
    """What the views read of the shared data (after the store's open check)."""

    links: Mapping[int, Link]
    outbox: Mapping[int, OutboxItem]
    epoch: int
    holder: str | None
    leader_at: datetime | None


class MemoryStatus(MemoryCore):
    """The :class:`~sync.store.base.StatusReads` part of ``MemoryStore``."""

    def _status_data(self) -> StatusData:
        data = self._read()
        return StatusData(data.links, data.outbox, data.epoch, data.holder, data.leader_at)

    async def summary(self) -> StoreSummary:
        data = self._read()
        outbox = [item.state for item in data.outbox.values()]
        open_states = (OutboxState.PENDING, OutboxState.IN_FLIGHT)
        return StoreSummary(
            outbox_depth=sum(1 for state in outbox if state in open_states),
            dead_letters=sum(1 for state in outbox if state == OutboxState.DEAD),
            cursors=self._cursors(),
        )

    async def count_links_by_state(
        self, states: Collection[LinkState] | None = None
    ) -> dict[LinkState, int]:
        wanted = set(LinkState) if states is None else {LinkState(x) for x in states}
        counts = dict.fromkeys(LinkState, 0)
        for link in self._status_data().links.values():
            if link.state in wanted:
                counts[link.state] += 1
        return counts

    async def recent_outbox(
        self, *, limit: int, link_ids: Collection[int] | None = None
    ) -> list[OutboxItem]:
        wanted = None if link_ids is None else set(link_ids)
        items = sorted(self._status_data().outbox.values(), key=lambda x: -x.id)
        if wanted is not None:
            items = [x for x in items if x.link_id in wanted]
        return items[: max(0, limit)]

    async def links_for_sn_number(self, sn_number: str) -> list[Link]:
        links = self._status_data().links.values()
        return sorted((x for x in links if x.sn_number == sn_number), key=lambda x: -x.id)

    async def leader_record(self) -> LeaderRecord | None:
        data = self._status_data()
        if data.epoch == 0 or data.leader_at is None:
            return None
        return LeaderRecord(epoch=data.epoch, holder=data.holder, at=data.leader_at)
