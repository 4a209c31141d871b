"""The ``LinkStore`` protocol: everything the engine needs to remember across restarts.

Two implementations: ``sync.store.memory.MemoryStore`` (engine tests) and
``sync.store.sql.SqlStore`` (SQLite / Postgres via SQLAlchemy 2 async). One contract
test suite runs against both. Each method is one short transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from sync.constants import Side
from sync.errors import StoreError
from sync.model import FieldState, Link, LinkState


class DuplicateLinkError(StoreError):
    """A live link already exists for this BigPanda incident (or ServiceNow sys_id)."""


class FencedError(StoreError):
    """This replica's leader epoch is stale: another replica leads; it must not write."""


class OutboxState(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One write, recorded before it is sent (SPEC B15)."""

    id: int
    kind: str
    """Action kind, e.g. ``sn.create``, ``sn.update``, ``bp.tags``, ``bp.resolve``."""
    target: str
    """What it writes to, e.g. ``servicenow:<sys_id>`` or ``bigpanda:<incident id>``."""
    payload: Mapping[str, Any]
    idempotency_key: str
    state: OutboxState
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    link_id: int | None = None
    bp_incident_id: str | None = None
    sn_sys_id: str | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class NewOutboxItem:
    """A write to record (the arguments of :meth:`LinkStore.enqueue` but ``now``)."""

    kind: str
    target: str
    payload: Mapping[str, Any]
    idempotency_key: str
    link_id: int | None = None
    bp_incident_id: str | None = None
    sn_sys_id: str | None = None


@dataclass(frozen=True, slots=True)
class FieldStates:
    """Values to record as synced for one side of a link (:meth:`record_field_states`)."""

    link_id: int
    side: Side
    values: Mapping[str, str | None]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    kind: str
    """``action`` (an action taken) or ``conflict`` (a conflict decided), or others."""
    outcome: str
    link_id: int | None = None
    bp_incident_id: str | None = None
    sn_sys_id: str | None = None
    field: str | None = None
    bp_value: str | None = None
    sn_value: str | None = None
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Per side: the watermark and the ids already seen at it (SPEC B16)."""

    side: Side
    watermark: datetime | None
    seen: frozenset[str] = frozenset()
    """Keys already processed at the watermark (e.g. ``sys_id:mod_count``)."""


class LinkStore(Protocol):
    # --- lifecycle
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raises StoreError when the database is unreachable (for /readyz)."""
        ...

    # --- links
    async def get_link(self, link_id: int) -> Link | None: ...

    async def live_link_for_bp(self, bp_incident_id: str) -> Link | None: ...

    async def live_link_for_sn(self, sn_sys_id: str) -> Link | None: ...

    async def live_links_for_bp(self, bp_incident_ids: Collection[str]) -> dict[str, Link]:
        """The live link of each of these incidents that has one (one read)."""
        ...

    async def links_for_bp(self, bp_incident_id: str) -> list[Link]:
        """Every link of the incident, newest first (history across reopens)."""
        ...

    async def create_pending_link(
        self, bp_incident_id: str, now: datetime, *, previous_link_id: int | None = None
    ) -> Link:
        """Raises DuplicateLinkError if a live link exists (enforced by a unique index)."""
        ...

    async def confirm_link(
        self, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link: ...

    async def set_link_state(
        self,
        link_id: int,
        state: LinkState,
        now: datetime,
        *,
        resolved_at: datetime | None = None,
        reopen_deadline: datetime | None = None,
    ) -> Link:
        """SUPERSEDED frees the BigPanda incident for a new live link."""
        ...

    async def list_links(
        self, states: Collection[LinkState] | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[Link]: ...

    async def count_links(self, states: Collection[LinkState] | None = None) -> int: ...

    # --- field state (what was last synced, per side, so echoes are recognised)
    async def field_states(self, link_id: int) -> dict[tuple[Side, str], FieldState]: ...

    async def record_field_states(
        self, link_id: int, side: Side, values: Mapping[str, str | None], now: datetime
    ) -> None: ...

    # --- several steps in one transaction (all or nothing): the executor's hot paths
    async def create_pending_link_and_enqueue(
        self,
        bp_incident_id: str,
        now: datetime,
        item_for: Callable[[Link], NewOutboxItem],
        *,
        previous_link_id: int | None = None,
        checkpoint: tuple[str, str] | None = None,
    ) -> tuple[Link, OutboxItem]:
        """``create_pending_link``, then ``set_checkpoint(*checkpoint)``, then ``enqueue``
        of ``item_for(link)``, in one transaction: all of them or none. Raises
        DuplicateLinkError (nothing written) if a live link exists."""
        ...

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
        """``confirm_link``, then (when ``audit_outcome`` is set) an ``action`` audit
        entry for the link with both ids, then ``record_field_states`` of each, in one
        transaction."""
        ...

    async def complete_and_enqueue(
        self,
        item_id: int,
        now: datetime,
        *,
        follow_ups: Sequence[NewOutboxItem] = (),
        field_states: Sequence[FieldStates] = (),
    ) -> list[OutboxItem]:
        """``record_field_states`` of each, ``enqueue`` of each follow-up (idempotent as
        ``enqueue``), then ``complete(item_id)``, in one transaction: a follow-up is never
        lost (recorded before its item is done). Returns the follow-ups' items in order."""
        ...

    # --- outbox and dead letters
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
        """Idempotent on ``idempotency_key``: an existing not-done item is returned as is."""
        ...

    async def claim_due(self, now: datetime, *, limit: int, lease_s: float) -> list[OutboxItem]:
        """Pending items due at ``now`` (and in-flight ones whose lease expired: a crash)
        become in-flight; ``FOR UPDATE SKIP LOCKED`` on Postgres."""
        ...

    async def complete(self, item_id: int, now: datetime) -> None: ...

    async def fail(
        self, item_id: int, error: str, next_attempt_at: datetime, now: datetime
    ) -> OutboxItem:
        """One more failed attempt; back to pending until ``next_attempt_at``."""
        ...

    async def dead_letter(self, item_id: int, error: str, now: datetime) -> OutboxItem: ...

    async def list_outbox(
        self, states: Collection[OutboxState] | None = None, *, limit: int = 100
    ) -> list[OutboxItem]: ...

    async def count_outbox(self, states: Collection[OutboxState] | None = None) -> int: ...

    async def retry_dead(self, item_id: int | None, now: datetime) -> int:
        """Dead item(s) back to pending with attempts reset; None means all. Returns count."""
        ...

    async def drop_dead(self, item_id: int) -> bool: ...

    # --- audit
    async def append_audit(
        self,
        kind: str,
        outcome: str,
        now: datetime,
        *,
        link_id: int | None = None,
        bp_incident_id: str | None = None,
        sn_sys_id: str | None = None,
        field: str | None = None,
        bp_value: str | None = None,
        sn_value: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def list_audit(
        self, *, link_id: int | None = None, kind: str | None = None, limit: int = 100
    ) -> list[AuditEntry]: ...

    # --- cursors and checkpoints
    async def get_cursor(self, side: Side) -> Cursor: ...

    async def advance_cursor(self, cursor: Cursor, now: datetime) -> None: ...

    async def get_checkpoint(self, name: str) -> str | None:
        """Free-form resumable state (backfill progress)."""
        ...

    async def set_checkpoint(self, name: str, value: str, now: datetime) -> None: ...

    # --- high availability: fencing by epoch
    async def take_epoch(self, holder: str, now: datetime) -> int:
        """Increment the leader epoch, record the holder, and fence this store to it."""
        ...

    def fence(self, epoch: int | None) -> None:
        """From now on every write checks the stored epoch equals ``epoch`` (None: off)
        and raises FencedError otherwise."""
        ...
