"""The emulated tables: field definitions of ``incident`` and the seeded reference tables."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sync.constants import (
    SN_DATETIME_FORMAT,
    SN_DESCRIPTION_MAX,
    SN_JOURNAL_MAX,
    SN_SHORT_DESCRIPTION_MAX,
    SN_SYS_ID_PATTERN,
    SNState,
)

SYS_ID_RE = re.compile(SN_SYS_ID_PATTERN)
#: a client-supplied sys_id kept on insert (docs 3.1: "32-char id"), exactly as sent
SUPPLIED_SYS_ID_RE = re.compile(r"^[0-9A-Za-z]{32}$")

#: incident ``state`` values as the Table API stores them (sync.constants.SNState, as strings)
NEW = str(int(SNState.NEW))
IN_PROGRESS = str(int(SNState.IN_PROGRESS))
ON_HOLD = str(int(SNState.ON_HOLD))
RESOLVED = str(int(SNState.RESOLVED))
CLOSED = str(int(SNState.CLOSED))
CANCELED = str(int(SNState.CANCELED))

JOURNAL_LABELS: Mapping[str, str] = {
    "work_notes": "Work notes",
    "comments": "Additional comments",
}


@dataclass(frozen=True, slots=True)
class FieldDef:
    """One dictionary entry: ``kind`` is string|integer|boolean|datetime|reference|journal."""

    kind: str = "string"
    ref: str | None = None
    max_len: int | None = None
    label: str = ""
    default: str = ""


S = FieldDef()
I = FieldDef("integer")  # noqa: E741 - a one-letter schema alias, like S
B = FieldDef("boolean")
DT = FieldDef("datetime")
J = FieldDef("journal")


def _ref(table: str) -> FieldDef:
    return FieldDef("reference", ref=table)


def _str(max_len: int, label: str = "", default: str = "") -> FieldDef:
    return FieldDef("string", max_len=max_len, label=label, default=default)


_SYS_FIELDS: dict[str, FieldDef] = {
    "sys_id": S,
    "sys_created_on": DT,
    "sys_created_by": S,
    "sys_updated_on": DT,
    "sys_updated_by": S,
    "sys_mod_count": I,
    "sys_tags": S,
}

INCIDENT_FIELDS: dict[str, FieldDef] = {
    "parent": _ref("incident"),
    "made_sla": FieldDef("boolean", default="true"),
    "caused_by": S,
    "watch_list": S,
    "upon_reject": FieldDef(default="cancel"),
    "child_incidents": FieldDef("integer", default="0"),
    "hold_reason": FieldDef("integer", label="On hold reason"),
    "origin_table": S,
    "approval_history": J,
    "number": _str(40),
    "resolved_by": _ref("sys_user"),
    "opened_by": _ref("sys_user"),
    "user_input": S,
    "knowledge": FieldDef("boolean", default="false"),
    "order": S,
    "cmdb_ci": _ref("cmdb_ci"),
    "delivery_plan": S,
    "impact": FieldDef("integer", default="3"),
    "active": FieldDef("boolean", default="true"),
    "work_notes_list": S,
    "business_service": S,
    "priority": FieldDef("integer", default="5"),
    "time_worked": S,
    "expected_start": DT,
    "opened_at": DT,
    "business_duration": DT,
    "group_list": S,
    "work_end": DT,
    "caller_id": _ref("sys_user"),
    "reopened_time": DT,
    "resolved_at": DT,
    "approval_set": DT,
    "subcategory": _str(40),
    "work_notes": J,
    "short_description": _str(SN_SHORT_DESCRIPTION_MAX),
    "close_code": FieldDef(label="Resolution code"),
    "correlation_display": _str(100),
    "delivery_task": S,
    "work_start": DT,
    "assignment_group": _ref("sys_user_group"),
    "additional_assignee_list": S,
    "business_stc": S,
    "description": _str(SN_DESCRIPTION_MAX),
    "calendar_duration": DT,
    "close_notes": _str(4000, label="Close notes"),
    "notify": FieldDef("integer", default="1"),
    "sys_class_name": FieldDef(default="incident"),
    "closed_by": _ref("sys_user"),
    "follow_up": DT,
    "parent_incident": _ref("incident"),
    "contact_type": _str(40),
    "reopened_by": _ref("sys_user"),
    "incident_state": FieldDef("integer", default=NEW),
    "urgency": FieldDef("integer", default="3"),
    "problem_id": S,
    "company": S,
    "reassignment_count": FieldDef("integer", default="0"),
    "activity_due": DT,
    "assigned_to": _ref("sys_user"),
    "severity": FieldDef("integer", default="3"),
    "comments": J,
    "approval": FieldDef(default="not requested"),
    "sla_due": DT,
    "comments_and_work_notes": J,
    "due_date": DT,
    "reopen_count": FieldDef("integer", default="0"),
    "escalation": FieldDef("integer", default="0"),
    "upon_approval": FieldDef(default="proceed"),
    "correlation_id": _str(100),
    "location": S,
    "category": FieldDef(default="inquiry", max_len=40),
    "state": FieldDef("integer", default=NEW),
    "calendar_stc": S,
    "close_notes_count": S,
    "closed_at": DT,
    "rfc": S,
    "sys_domain": FieldDef("reference", ref="sys_user_group", default="global"),
    "sys_domain_path": FieldDef(default="/"),
    **_SYS_FIELDS,
}

SCHEMAS: dict[str, dict[str, FieldDef]] = {
    "incident": INCIDENT_FIELDS,
    "sys_user": {
        "user_name": S,
        "name": S,
        "first_name": S,
        "last_name": S,
        "email": S,
        "time_zone": S,
        "active": FieldDef("boolean", default="true"),
        **_SYS_FIELDS,
    },
    "sys_user_group": {
        "name": S,
        "description": S,
        "active": FieldDef("boolean", default="true"),
        "manager": _ref("sys_user"),
        **_SYS_FIELDS,
    },
    "cmdb_ci": {
        "name": S,
        "sys_class_name": FieldDef(default="cmdb_ci"),
        "ip_address": S,
        "operational_status": FieldDef("integer", default="1"),
        **_SYS_FIELDS,
    },
    "sys_choice": {
        "name": S,
        "element": S,
        "value": S,
        "label": S,
        "sequence": I,
        "inactive": FieldDef("boolean", default="false"),
        "language": FieldDef(default="en"),
        **_SYS_FIELDS,
    },
    "sys_journal_field": {
        "name": S,
        "element": S,
        "element_id": S,
        "value": _str(SN_JOURNAL_MAX),
        **_SYS_FIELDS,
    },
    "sys_properties": {"name": S, "value": S, "type": FieldDef(default="string"), **_SYS_FIELDS},
    "sys_dictionary": {
        "name": S,
        "element": S,
        "column_label": S,
        "internal_type": S,
        "max_length": I,
        "reference": S,
        **_SYS_FIELDS,
    },
}

#: incident fields defined on ``task`` (the table incident extends): the dictionary
#: lists them under ``name=task``, as a real instance does
TASK_FIELDS = frozenset(
    {
        "number", "short_description", "description", "work_notes", "comments",
        "assignment_group", "assigned_to", "cmdb_ci", "opened_by", "opened_at", "priority",
        "state", "impact", "urgency", "correlation_id", "correlation_display",
        "contact_type", "active", "close_notes", "closed_at", "closed_by", "parent",
        "watch_list", "work_notes_list", "due_date", "company", "location",
        "business_service", "sys_class_name", "sys_domain", "sys_domain_path",
    }
)  # fmt: skip

#: dictionary ``internal_type`` of each emulated field kind
INTERNAL_TYPES: Mapping[str, str] = {
    "string": "string",
    "integer": "integer",
    "boolean": "boolean",
    "datetime": "glide_date_time",
    "reference": "reference",
    "journal": "journal_input",
}

#: the field shown as a reference's display value
DISPLAY_FIELDS: Mapping[str, str] = {
    "incident": "number",
    "sys_user": "name",
    "sys_user_group": "name",
    "cmdb_ci": "name",
    "sys_choice": "label",
    "sys_journal_field": "value",
    "sys_properties": "name",
    "sys_dictionary": "element",
}


def stable_id(key: str) -> str:
    """A deterministic 32-hex sys_id for seeded rows (tests can compute it)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- values


def compare_key(value: str, numeric: bool) -> tuple[int, float, str]:
    """Sort/compare key: numbers as numbers on integer fields, strings otherwise."""
    if numeric:
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)
    return (1, 0.0, value)


def utc_str(when: datetime) -> str:
    return when.astimezone(UTC).strftime(SN_DATETIME_FORMAT)


def to_zone(value: str, zone: ZoneInfo) -> str:
    """A raw UTC date-time shown in ``zone`` (display values)."""
    if not value:
        return ""
    try:
        when = datetime.strptime(value, SN_DATETIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return value
    return when.astimezone(zone).strftime(SN_DATETIME_FORMAT)
