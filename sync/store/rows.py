"""Rows and records: table rows to the store's records, and records to row values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from sync.constants import Side
from sync.model import FieldState, Link, LinkState
from sync.store.base import (
    AuditEntry,
    NewAuditEntry,
    NewOutboxItem,
    OutboxHead,
    OutboxItem,
    OutboxState,
)

#: a state column's text to its enum member: a dict look-up costs a tenth of the enum's
#: own constructor, which a deep outbox read runs per row (an unknown text still goes
#: to the constructor, and its ValueError)
_LINK_STATES: dict[str, LinkState] = {s.value: s for s in LinkState}
_OUTBOX_STATES: dict[str, OutboxState] = {s.value: s for s in OutboxState}


def _link_state(text: str) -> LinkState:
    found = _LINK_STATES.get(text)
    return LinkState(text) if found is None else found


def _outbox_state(text: str) -> OutboxState:
    found = _OUTBOX_STATES.get(text)
    return OutboxState(text) if found is None else found


def to_link(row: Row[Any]) -> Link:
    m = row._mapping
    return Link(
        id=m["id"],
        bp_incident_id=m["bp_incident_id"],
        sn_sys_id=m["sn_sys_id"],
        sn_number=m["sn_number"],
        state=_link_state(m["state"]),
        created_at=m["created_at"],
        resolved_at=m["resolved_at"],
        reopen_deadline=m["reopen_deadline"],
        previous_link_id=m["previous_link_id"],
        updated_at=m["updated_at"],
        bp_environment_id=m["bp_environment_id"],
    )


def to_item(row: Row[Any]) -> OutboxItem:
    m = row._mapping
    return _item(m["id"], m)


def inserted_item(item_id: int, values: Mapping[str, Any]) -> OutboxItem:
    """The item of a row just inserted with ``values`` (``new_item_values``): what a read
    would give back, without the read (its payload is JSON-shaped already)."""
    return _item(item_id, values)


def _item(item_id: int, m: Mapping[Any, Any]) -> OutboxItem:
    return OutboxItem(
        id=item_id,
        kind=m["kind"],
        target=m["target"],
        payload=m["payload"],
        idempotency_key=m["idempotency_key"],
        state=_outbox_state(m["state"]),
        attempts=m["attempts"],
        next_attempt_at=m["next_attempt_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        link_id=m["link_id"],
        bp_incident_id=m["bp_incident_id"],
        sn_sys_id=m["sn_sys_id"],
        last_error=m["last_error"],
    )


def to_head(row: Sequence[Any]) -> OutboxHead:
    """A row of ``OUTBOX_HEADS_IN`` (its columns in that order)."""
    item_id, kind, target, state, attempts, updated_at, link_id, last_error = row
    return OutboxHead(
        item_id, kind, target, _outbox_state(state), attempts, updated_at, link_id, last_error
    )


def to_audit(row: Row[Any]) -> AuditEntry:
    m = row._mapping
    return AuditEntry(
        id=m["id"],
        at=m["at"],
        kind=m["kind"],
        outcome=m["outcome"],
        link_id=m["link_id"],
        bp_incident_id=m["bp_incident_id"],
        sn_sys_id=m["sn_sys_id"],
        field=m["field"],
        bp_value=m["bp_value"],
        sn_value=m["sn_value"],
        detail=m["detail"] or {},
    )


def to_field_state(row: Row[Any]) -> FieldState:
    m = row._mapping
    return FieldState(
        link_id=m["link_id"],
        side=Side(m["side"]),
        name=m["name"],
        value=m["value"],
        synced_at=m["synced_at"],
    )


def pending_link_values(
    bp_incident_id: str,
    now: datetime,
    previous_link_id: int | None,
    bp_environment_id: str | None = None,
) -> dict[str, Any]:
    """The row of a new pending link."""
    return {
        "bp_incident_id": bp_incident_id,
        "sn_sys_id": None,
        "sn_number": None,
        "state": LinkState.PENDING.value,
        "created_at": now,
        "updated_at": now,
        "resolved_at": None,
        "reopen_deadline": None,
        "previous_link_id": previous_link_id,
        "bp_environment_id": bp_environment_id,
    }


def new_item_values(new: NewOutboxItem, now: datetime) -> dict[str, Any]:
    """The row of a new outbox item: pending, due ``now``, no attempt yet."""
    return {
        "kind": new.kind,
        "target": new.target,
        "payload": dict(new.payload),
        "idempotency_key": new.idempotency_key,
        "state": OutboxState.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "last_error": None,
        "link_id": new.link_id,
        "bp_incident_id": new.bp_incident_id,
        "sn_sys_id": new.sn_sys_id,
        "created_at": now,
        "updated_at": now,
    }


def audit_values(entry: NewAuditEntry, now: datetime) -> dict[str, Any]:
    """The row of an audit entry recorded at ``now``."""
    return {
        "at": now,
        "kind": entry.kind,
        "outcome": entry.outcome,
        "link_id": entry.link_id,
        "bp_incident_id": entry.bp_incident_id,
        "sn_sys_id": entry.sn_sys_id,
        "field": entry.field,
        "bp_value": entry.bp_value,
        "sn_value": entry.sn_value,
        "detail": dict(entry.detail or {}),
    }
