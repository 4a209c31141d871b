"""ServiceNow Table API answers as typed values (incidents, records, pages, dictionary
entries), and the field values sent: a malformed shape is a
:class:`~sync.errors.PermanentError` naming the problem."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sync.clients.base import IncidentRow, MalformedRow, SNRecord
from sync.clients.servicenow.paths import SIDE
from sync.clients.snquery import check_field
from sync.errors import PermanentError
from sync.model import SNFieldInfo, SNIncident


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: the records and ``X-Total-Count`` (None when not sent)."""

    records: list[SNRecord]
    total: int | None


def parse_record(value: Any, what: str) -> SNRecord:
    if not isinstance(value, dict):
        raise PermanentError(SIDE, f"unexpected answer shape for {what}: result is not an object")
    return value


class MalformedRecord(PermanentError, ValueError):  # noqa: N818 - reads as what it is
    """An incident record that is not an incident (a required field missing or odd).

    Also a ``ValueError``, as :meth:`SNIncident.from_record` raises: the engine skips such a
    record, naming it, wherever it reads one. Its text is the problem alone."""

    def __str__(self) -> str:
        return self.message


def parse_incident(value: Any, what: str) -> SNIncident:
    """An incident record as :class:`SNIncident` (:class:`MalformedRecord` naming the
    field when a required one is missing or malformed)."""
    record = parse_record(value, what)
    try:
        return SNIncident.from_record(record)
    except ValueError as exc:
        raise MalformedRecord(SIDE, str(exc)) from None


def parse_changed(record: SNRecord) -> IncidentRow:
    """A listed row: the incident, or the row that is not one."""
    try:
        return SNIncident.from_record(record)
    except ValueError as exc:
        return MalformedRow(str(record.get("sys_id") or "?"), str(exc), record)


def parse_page(body: Any, headers: Mapping[str, str], table: str) -> Page:
    """A list answer's records, and ``X-Total-Count`` (None when not sent or not a number)."""
    if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
        raise PermanentError(
            SIDE,
            f"unexpected answer shape for a list of {table}: result is not a list of objects",
        )
    total_raw = headers.get("X-Total-Count")
    total = int(total_raw) if total_raw and total_raw.strip().isdigit() else None
    return Page(records=body, total=total)


def parse_field_info(row: Mapping[str, Any]) -> SNFieldInfo:
    """One ``sys_dictionary`` row: type, size (None unless a positive number), referenced
    table."""
    length = str(row.get("max_length") or "").strip()
    return SNFieldInfo(
        internal_type=str(row.get("internal_type") or ""),
        max_length=int(length) if length.isdigit() and int(length) > 0 else None,
        reference=str(row.get("reference") or "") or None,
    )


def mod_count(record: Mapping[str, Any]) -> int:
    raw = str(record.get("sys_mod_count", "") or "0")
    return int(raw) if raw.isdigit() else 0


def check_payload(fields: Mapping[str, str]) -> dict[str, str]:
    """The fields of a write: checked names, string values."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        check_field(name)
        if not isinstance(value, str):
            raise PermanentError(
                SIDE, f"value of field {name} must be a string, not {type(value).__name__}"
            )
        out[name] = value
    return out
