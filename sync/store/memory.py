"""``MemoryStore``: the in-memory twin of the SQL link store, for engine tests.

It implements :class:`sync.store.base.LinkStore` with exactly the semantics of
:class:`sync.store.sql.SqlStore`, the ones :mod:`sync.store.base` lists; one contract
suite (``tests/store``) runs against both.

:meth:`MemoryStore.replica` gives a second store over the same data with its own
fence, the way two daemons share one database. Methods never await while they change
data, so each is atomic under asyncio, like a transaction.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sync.constants import Side
from sync.errors import StoreError
from sync.model import LIVE_LINK_STATES, FieldState, Link, LinkState
from sync.store.base import (
    PERMANENT_ERROR_PREFIX,
    DuplicateLinkError,
    FieldStates,
    LinkConfirmation,
    NewAuditEntry,
    NewOutboxItem,
    OutboxHead,
    OutboxItem,
    OutboxState,
    as_utc,
    link_times_for,
    opt_utc,
)
from sync.store.memory_core import Data
from sync.store.memory_journal import MemoryJournal
from sync.store.memory_push import MemoryPushEvents
from sync.store.memory_records import MemoryRecords
from sync.store.memory_status import MemoryStatus


def _is_open(item: OutboxItem, attempts: int) -> bool:
    """An item still to send: pending, in flight, or dead with attempts left (not refused
    for good) -- ``open_writes``' rule."""
    if item.state in (OutboxState.PENDING, OutboxState.IN_FLIGHT):
        return True
    return (
        item.state == OutboxState.DEAD
        and item.attempts < attempts
        and not (item.last_error or "").startswith(PERMANENT_ERROR_PREFIX)
    )


class MemoryStore(MemoryRecords, MemoryStatus, MemoryPushEvents, MemoryJournal):
    """A :class:`~sync.store.base.LinkStore` kept in process memory."""

    def replica(self) -> MemoryStore:
        """Another store over the same data, with its own fence (a second daemon)."""
        return MemoryStore(_data=self._data)

    # --- links

    def _link(self, data: Data, link_id: int) -> Link:
        link = data.links.get(link_id)
        if link is None:
            raise StoreError(f"no link {link_id}")
        return link

    async def get_link(self, link_id: int) -> Link | None:
        return self._read().links.get(link_id)

    async def live_link_for_bp(self, bp_incident_id: str) -> Link | None:
        for link in self._read().links.values():
            if link.bp_incident_id == bp_incident_id and link.state in LIVE_LINK_STATES:
                return link
        return None

    async def live_link_for_sn(self, sn_sys_id: str) -> Link | None:
        for link in self._read().links.values():
            if link.sn_sys_id == sn_sys_id and link.state in LIVE_LINK_STATES:
                return link
        return None

    async def live_links_for_bp(self, bp_incident_ids: Collection[str]) -> dict[str, Link]:
        wanted = set(bp_incident_ids)
        return {
            link.bp_incident_id: link
            for link in self._read().links.values()
            if link.bp_incident_id in wanted and link.state in LIVE_LINK_STATES
        }

    async def live_links_for_sn(self, sn_sys_ids: Collection[str]) -> dict[str, Link]:
        wanted = set(sn_sys_ids)
        return {
            link.sn_sys_id: link
            for link in self._read().links.values()
            if link.sn_sys_id in wanted and link.state in LIVE_LINK_STATES
        }

    async def links_for_bp(self, bp_incident_id: str) -> list[Link]:
        found = [x for x in self._read().links.values() if x.bp_incident_id == bp_incident_id]
        return sorted(found, key=lambda x: x.id, reverse=True)

    async def links_for_sn(self, sn_sys_id: str) -> list[Link]:
        """Every link ever confirmed with this sys_id, newest first (not in the protocol)."""
        found = [x for x in self._read().links.values() if x.sn_sys_id == sn_sys_id]
        return sorted(found, key=lambda x: x.id, reverse=True)

    def _live_conflict(
        self, data: Data, link_id: int, bp_incident_id: str, sn_sys_id: str | None
    ) -> None:
        for other in data.links.values():
            if other.id == link_id or other.state not in LIVE_LINK_STATES:
                continue
            if other.bp_incident_id == bp_incident_id:
                raise DuplicateLinkError(
                    f"BigPanda incident {bp_incident_id} already has live link {other.id}"
                )
            if sn_sys_id is not None and other.sn_sys_id == sn_sys_id:
                raise DuplicateLinkError(
                    f"ServiceNow incident {sn_sys_id} already has live link {other.id}"
                )

    async def create_pending_link(
        self,
        bp_incident_id: str,
        now: datetime,
        *,
        previous_link_id: int | None = None,
        bp_environment_id: str | None = None,
    ) -> Link:
        now = as_utc(now)
        data = self._write()
        if previous_link_id is not None:
            self._link(data, previous_link_id)
        self._live_conflict(data, 0, bp_incident_id, None)
        link = Link(
            id=data.next_link_id,
            bp_incident_id=bp_incident_id,
            sn_sys_id=None,
            sn_number=None,
            state=LinkState.PENDING,
            created_at=now,
            previous_link_id=previous_link_id,
            updated_at=now,
            bp_environment_id=bp_environment_id,
        )
        data.next_link_id += 1
        data.links[link.id] = link
        return link

    async def confirm_link(
        self, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link:
        now = as_utc(now)
        data = self._write()
        link = self._link(data, link_id)
        if link.state not in LIVE_LINK_STATES:
            raise StoreError(f"link {link_id} is {link.state}: it cannot be confirmed")
        self._live_conflict(data, link_id, link.bp_incident_id, sn_sys_id)
        state = LinkState.LINKED if link.state == LinkState.PENDING else link.state
        link = dataclasses.replace(
            link, sn_sys_id=sn_sys_id, sn_number=sn_number, state=state, updated_at=now
        )
        data.links[link_id] = link
        return link

    async def set_link_state(
        self,
        link_id: int,
        state: LinkState,
        now: datetime,
        *,
        resolved_at: datetime | None = None,
        reopen_deadline: datetime | None = None,
    ) -> Link:
        now = as_utc(now)
        resolved_at = opt_utc(resolved_at)
        reopen_deadline = opt_utc(reopen_deadline)
        data = self._write()
        link = self._link(data, link_id)
        state = LinkState(state)
        if state in LIVE_LINK_STATES and link.state not in LIVE_LINK_STATES:
            self._live_conflict(data, link_id, link.bp_incident_id, link.sn_sys_id)
        new_resolved, new_deadline = link_times_for(
            state,
            now,
            old_resolved_at=link.resolved_at,
            old_deadline=link.reopen_deadline,
            resolved_at=resolved_at,
            reopen_deadline=reopen_deadline,
        )
        link = dataclasses.replace(
            link,
            state=state,
            resolved_at=new_resolved,
            reopen_deadline=new_deadline,
            updated_at=now,
        )
        data.links[link_id] = link
        return link

    async def move_link(
        self,
        link_id: int,
        to_bp_incident_id: str,
        now: datetime,
        *,
        bp_environment_id: str | None = None,
    ) -> Link:
        data = self._write()
        link = self._link(data, link_id)
        if link.bp_incident_id == to_bp_incident_id:
            return link
        if link.state not in LIVE_LINK_STATES:
            raise StoreError(f"link {link_id} is {link.state}: only a live link moves")
        self._live_conflict(data, link_id, to_bp_incident_id, None)
        env = bp_environment_id or link.bp_environment_id
        link = dataclasses.replace(
            link, bp_incident_id=to_bp_incident_id, bp_environment_id=env, updated_at=as_utc(now)
        )
        data.links[link_id] = link
        return link

    async def list_links(
        self, states: Collection[LinkState] | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[Link]:
        links = sorted(self._read().links.values(), key=lambda x: x.id, reverse=True)
        if states is not None:
            wanted = {LinkState(s) for s in states}
            links = [x for x in links if x.state in wanted]
        return links[offset : offset + limit]

    async def count_links(self, states: Collection[LinkState] | None = None) -> int:
        links = self._read().links.values()
        if states is None:
            return len(links)
        wanted = {LinkState(s) for s in states}
        return sum(1 for x in links if x.state in wanted)

    # --- field state

    async def field_states(self, link_id: int) -> dict[tuple[Side, str], FieldState]:
        return {
            (side, name): fs
            for (lid, side, name), fs in self._read().field_states.items()
            if lid == link_id
        }

    async def field_states_for(
        self, link_ids: Collection[int]
    ) -> dict[int, dict[tuple[Side, str], FieldState]]:
        out: dict[int, dict[tuple[Side, str], FieldState]] = {lid: {} for lid in link_ids}
        for (lid, side, name), fs in self._read().field_states.items():
            if lid in out:
                out[lid][(side, name)] = fs
        return out

    async def record_field_states(
        self, link_id: int, side: Side, values: Mapping[str, str | None], now: datetime
    ) -> None:
        now = as_utc(now)
        data = self._write()
        self._link(data, link_id)
        side = Side(side)
        for name, value in values.items():
            data.field_states[(link_id, side, name)] = FieldState(
                link_id=link_id, side=side, name=name, value=value, synced_at=now
            )

    # --- several steps in one transaction

    async def create_pending_link_and_enqueue(
        self,
        bp_incident_id: str,
        now: datetime,
        item_for: Callable[[Link], NewOutboxItem],
        *,
        previous_link_id: int | None = None,
        bp_environment_id: str | None = None,
    ) -> tuple[Link, OutboxItem]:
        # nothing below awaits anything: the steps run as one (every check comes first)
        as_utc(now)
        self._write()
        link = await self.create_pending_link(
            bp_incident_id,
            now,
            previous_link_id=previous_link_id,
            bp_environment_id=bp_environment_id,
        )
        item = await self._enqueue_new(item_for(link), now)
        return link, item

    async def confirm_link_and_record(
        self,
        link_id: int,
        sn_sys_id: str,
        sn_number: str,
        now: datetime,
        *,
        audit_outcome: str | None = None,
        field_states: Sequence[FieldStates] = (),
    ) -> Link:
        data = self._write()
        for states in field_states:
            self._link(data, states.link_id)
        link = await self.confirm_link(link_id, sn_sys_id, sn_number, now)
        if audit_outcome is not None:
            entry = NewAuditEntry(
                "action",
                audit_outcome,
                link_id=link_id,
                bp_incident_id=link.bp_incident_id,
                sn_sys_id=sn_sys_id,
            )
            await self.record_audit(entry, now)
        for states in field_states:
            await self.record_field_states(states.link_id, states.side, states.values, now)
        return link

    async def complete_and_enqueue(
        self,
        item_id: int,
        now: datetime,
        *,
        follow_ups: Sequence[NewOutboxItem] = (),
        field_states: Sequence[FieldStates] = (),
        confirm: LinkConfirmation | None = None,
    ) -> list[OutboxItem]:
        data = self._write()
        self._item(data, item_id)
        for states in field_states:
            self._link(data, states.link_id)
        for new in follow_ups:
            if new.link_id is not None:
                self._link(data, new.link_id)
        if confirm is not None:  # checks all first: raises before anything is written
            await self.confirm_link_and_record(
                confirm.link_id,
                confirm.sn_sys_id,
                confirm.sn_number,
                now,
                audit_outcome=confirm.audit_outcome,
            )
        for states in field_states:
            await self.record_field_states(states.link_id, states.side, states.values, now)
        items = [await self._enqueue_new(new, now) for new in follow_ups]
        await self.complete(item_id, now)
        return items

    async def _enqueue_new(self, new: NewOutboxItem, now: datetime) -> OutboxItem:
        return await self.enqueue(
            new.kind,
            new.target,
            new.payload,
            new.idempotency_key,
            now,
            link_id=new.link_id,
            bp_incident_id=new.bp_incident_id,
            sn_sys_id=new.sn_sys_id,
        )

    # --- outbox and dead letters

    def _item(self, data: Data, item_id: int) -> OutboxItem:
        item = data.outbox.get(item_id)
        if item is None:
            raise StoreError(f"no outbox item {item_id}")
        return item

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
        data = self._write()
        for item in data.outbox.values():
            if item.idempotency_key == idempotency_key and item.state != OutboxState.DONE:
                return item
        if link_id is not None:
            self._link(data, link_id)
        item = OutboxItem(
            id=data.next_outbox_id,
            kind=kind,
            target=target,
            # a deep copy, as a JSON column would: later changes by the caller do not leak in
            payload=copy.deepcopy(dict(payload)),
            idempotency_key=idempotency_key,
            state=OutboxState.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            link_id=link_id,
            bp_incident_id=bp_incident_id,
            sn_sys_id=sn_sys_id,
        )
        data.next_outbox_id += 1
        data.outbox[item.id] = item
        return item

    async def claim_due(self, now: datetime, *, limit: int, lease_s: float) -> list[OutboxItem]:
        now = as_utc(now)
        data = self._write()
        lease_cutoff = now - timedelta(seconds=lease_s)
        due = [
            item
            for item in data.outbox.values()
            if (item.state == OutboxState.PENDING and item.next_attempt_at <= now)
            or (item.state == OutboxState.IN_FLIGHT and item.updated_at <= lease_cutoff)
        ]
        due.sort(key=lambda x: (x.next_attempt_at, x.id))
        claimed = []
        for old in due[: max(0, limit)]:
            item = dataclasses.replace(old, state=OutboxState.IN_FLIGHT, updated_at=now)
            data.outbox[item.id] = item
            claimed.append(item)
        return claimed

    async def complete(self, item_id: int, now: datetime) -> None:
        now = as_utc(now)
        data = self._write()
        item = self._item(data, item_id)
        data.outbox[item_id] = dataclasses.replace(item, state=OutboxState.DONE, updated_at=now)

    async def fail(
        self, item_id: int, error: str, next_attempt_at: datetime, now: datetime
    ) -> OutboxItem:
        now = as_utc(now)
        next_attempt_at = as_utc(next_attempt_at)
        data = self._write()
        old = self._item(data, item_id)
        item = dataclasses.replace(
            old,
            state=OutboxState.PENDING,
            attempts=old.attempts + 1,
            last_error=error,
            next_attempt_at=next_attempt_at,
            updated_at=now,
        )
        data.outbox[item_id] = item
        return item

    async def dead_letter(self, item_id: int, error: str, now: datetime) -> OutboxItem:
        now = as_utc(now)
        data = self._write()
        old = self._item(data, item_id)
        item = dataclasses.replace(
            old,
            state=OutboxState.DEAD,
            attempts=old.attempts + 1,
            last_error=error,
            updated_at=now,
        )
        data.outbox[item_id] = item
        return item

    async def list_outbox(
        self,
        states: Collection[OutboxState] | None = None,
        *,
        limit: int = 100,
        target: str | None = None,
    ) -> list[OutboxItem]:
        items = sorted(self._read().outbox.values(), key=lambda x: x.id)
        if states is not None:
            wanted = {OutboxState(s) for s in states}
            items = [x for x in items if x.state in wanted]
        if target is not None:
            items = [x for x in items if x.target == target]
        return items[: max(0, limit)]

    async def outbox_heads(self, states: Collection[OutboxState]) -> list[OutboxHead]:
        wanted = {OutboxState(s) for s in states}
        return [
            OutboxHead(
                x.id, x.kind, x.target, x.state, x.attempts, x.updated_at, x.link_id, x.last_error
            )
            for x in sorted(self._read().outbox.values(), key=lambda x: x.id)
            if x.state in wanted
        ]

    async def outbox_items(self, ids: Collection[int]) -> list[OutboxItem]:
        outbox = self._read().outbox
        return [outbox[i] for i in sorted(set(ids)) if i in outbox]

    async def count_outbox(self, states: Collection[OutboxState] | None = None) -> int:
        items = self._read().outbox.values()
        if states is None:
            return len(items)
        wanted = {OutboxState(s) for s in states}
        return sum(1 for x in items if x.state in wanted)

    async def open_writes(
        self, targets: Collection[str], *, attempts: int
    ) -> dict[str, frozenset[str]]:
        wanted = set(targets)
        found: dict[str, set[str]] = {}
        for item in self._read().outbox.values():
            if item.target in wanted and _is_open(item, attempts):
                found.setdefault(item.target, set()).add(item.kind)
        return {target: frozenset(kinds) for target, kinds in found.items()}

    async def retry_dead(self, item_id: int | None, now: datetime) -> int:
        now = as_utc(now)
        data = self._write()
        moved = 0
        for item in list(data.outbox.values()):
            if item.state != OutboxState.DEAD or (item_id is not None and item.id != item_id):
                continue
            data.outbox[item.id] = dataclasses.replace(
                item, state=OutboxState.PENDING, attempts=0, next_attempt_at=now, updated_at=now
            )
            moved += 1
        return moved

    async def drop_dead(self, item_id: int) -> bool:
        data = self._write()
        item = data.outbox.get(item_id)
        if item is None or item.state != OutboxState.DEAD:
            return False
        del data.outbox[item_id]
        return True
