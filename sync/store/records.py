"""The store's records: what a caller hands in (``New...``) and gets back, as values
(:mod:`sync.store.base` has the protocols and the rules both stores follow)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sync.constants import Side


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
class OutboxHead:
    """An outbox item without its payload: what orders the writes to each target and
    says which dead items are due (:meth:`Outbox.outbox_heads`, read every cycle; the
    payloads, the bulk of a deep backlog, only of the items sent)."""

    id: int
    kind: str
    target: str
    state: OutboxState
    attempts: int
    updated_at: datetime
    link_id: int | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class NewOutboxItem:
    """A write to record (the arguments of :meth:`Outbox.enqueue` but ``now``)."""

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
class LinkConfirmation:
    """A create's outcome, recorded with its item's completion (``complete_and_enqueue``):
    the pending link gets its ServiceNow incident (``confirm_link``) and, when
    ``audit_outcome`` is set, an ``action`` audit entry with both ids."""

    link_id: int
    sn_sys_id: str
    sn_number: str
    audit_outcome: str | None = None


@dataclass(frozen=True, slots=True)
class CarriedRecord:
    """One row of the journal ledger to record (the arguments of ``record_carried``
    but ``now``)."""

    link_id: int
    side: Side
    entry_id: str
    digest: str


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
class NewAuditEntry:
    """An audit entry to record (:meth:`Audit.record_audit`; the store adds id and time)."""

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


@dataclass(frozen=True, slots=True)
class PushEvent:
    """A change a webhook announced (``sync.push``), recorded before its 202: a hint
    that the incident changed, one row per incident however many deliveries."""

    side: Side
    object_id: str
    """The BigPanda incident id or the ServiceNow sys_id."""
    received_at: datetime
    """When the latest delivery was recorded."""
    deliveries: int = 1
    """Deliveries recorded since the engine last took it."""
    version: str | None = None
    """As the latest delivery said (``updated_at``, ``sys_mod_count``), if it did."""
    environment_id: str | None = None
    """The BigPanda environment the delivery named, if any."""


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """The stored leader row: who took the newest epoch, and when."""

    epoch: int
    holder: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """What a cycle reports of the store, read at once
    (:meth:`sync.store.base.StatusReads.summary`)."""

    #: outbox items pending or in flight
    outbox_depth: int
    #: outbox items dead-lettered
    dead_letters: int
    #: each side's cursor (one without a watermark when the side was never polled)
    cursors: Mapping[Side, Cursor]


__all__ = [
    "AuditEntry",
    "CarriedRecord",
    "Cursor",
    "FieldStates",
    "LeaderRecord",
    "LinkConfirmation",
    "NewAuditEntry",
    "NewOutboxItem",
    "OutboxItem",
    "OutboxState",
    "PushEvent",
    "StoreSummary",
]
