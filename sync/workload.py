"""A realistic workload from a real ServiceNow incident event log (``sync/data``).

Each incident of the sample is a sequence of audited versions. :func:`load_histories`
turns them into :class:`IncidentHistory` objects whose versions carry the ServiceNow
field values bpsync can write through the Table API (state codes, impact/urgency codes,
valid close codes), so the demo, the replay test and the benchmarks can drive the
emulator through real state sequences. Pure: reading the CSV is the only I/O.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from sync.constants import SNState

#: the event log's state labels -> (state, hold_reason) in the Helsinki+ model
STATE_MAP: Mapping[str, tuple[SNState, str]] = {
    "New": (SNState.NEW, ""),
    "Active": (SNState.IN_PROGRESS, ""),
    "Awaiting User Info": (SNState.ON_HOLD, "1"),  # Awaiting Caller
    "Awaiting Problem": (SNState.ON_HOLD, "3"),
    "Awaiting Vendor": (SNState.ON_HOLD, "4"),
    "Awaiting Evidence": (SNState.ON_HOLD, "1"),
    "Resolved": (SNState.RESOLVED, ""),
    "Closed": (SNState.CLOSED, ""),
}

#: the anonymised "code N" close codes -> the current out-of-box close_code choices
_CLOSE_CODES = (
    "Solution provided",
    "Workaround provided",
    "Resolved by caller",
    "Resolved by change",
    "Resolved by problem",
    "Resolved by request",
    "Known error",
    "Duplicate",
    "User error",
    "No resolution provided",
)

#: fields of a version that bpsync may map (plain strings on the incident table)
MAPPABLE_FIELDS = ("impact", "urgency", "category", "subcategory", "contact_type")


def close_code_for(label: str) -> str:
    """``"code 6"`` -> a valid close code (stable: the same label, the same code)."""
    digits = "".join(ch for ch in label if ch.isdigit())
    return _CLOSE_CODES[int(digits) % len(_CLOSE_CODES)] if digits else _CLOSE_CODES[0]


def _code(value: str) -> str:
    """``"2 - Medium"`` -> ``"2"``; ``"?"`` -> ``""``."""
    value = value.strip()
    if value in {"", "?"}:
        return ""
    return value.split(" - ", 1)[0].strip()


def _text(value: str) -> str:
    value = value.strip()
    return "" if value == "?" else value


def _when(value: str) -> datetime | None:
    try:
        return datetime.strptime(value.strip(), "%d-%m-%Y %H:%M").replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Version:
    """One audited version of an incident, as ServiceNow Table API values."""

    state: SNState
    hold_reason: str
    fields: Mapping[str, str]
    close_code: str
    updated_at: datetime | None
    mod_count: int

    def patch(self) -> dict[str, str]:
        """The PATCH body that moves an incident to this version."""
        body = {k: v for k, v in self.fields.items() if v}
        body["state"] = str(int(self.state))
        if self.state == SNState.ON_HOLD:
            body["hold_reason"] = self.hold_reason
        if self.state in (SNState.RESOLVED, SNState.CLOSED):
            body["close_code"] = self.close_code
            body["close_notes"] = f"Replayed from the event log ({self.close_code})"
        return body


@dataclass(frozen=True, slots=True)
class IncidentHistory:
    number: str
    versions: tuple[Version, ...] = field(default_factory=tuple)

    @property
    def resolved_at_end(self) -> bool:
        return bool(self.versions) and self.versions[-1].state in (
            SNState.RESOLVED,
            SNState.CLOSED,
        )


def default_csv() -> Path:
    """The event log sample shipped with bpsync."""
    return Path(str(resources.files("sync") / "data" / "incident_event_log_sample.csv"))


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def load_histories(path: Path | None = None, *, limit: int | None = None) -> list[IncidentHistory]:
    """Every incident of the log with its versions in order (sys_mod_count, then time).

    Consecutive versions that would not change anything bpsync sees (same state and
    mappable fields) are dropped, so each remaining version is a real change.
    """
    grouped: dict[str, list[dict[str, str]]] = {}
    for row in _rows(path or default_csv()):
        if row["incident_state"] not in STATE_MAP:
            continue
        grouped.setdefault(row["number"], []).append(row)
    out: list[IncidentHistory] = []
    for number, rows in grouped.items():
        rows.sort(key=lambda r: (int(r["sys_mod_count"] or 0), _when(r["sys_updated_at"]) or 0))
        versions: list[Version] = []
        for row in rows:
            state, hold = STATE_MAP[row["incident_state"]]
            fields = {
                "impact": _code(row["impact"]),
                "urgency": _code(row["urgency"]),
                "category": _text(row["category"]),
                "subcategory": _text(row["subcategory"]),
                "contact_type": _text(row["contact_type"]).lower(),
            }
            version = Version(
                state=state,
                hold_reason=hold,
                fields=fields,
                close_code=close_code_for(row["closed_code"]),
                updated_at=_when(row["sys_updated_at"]),
                mod_count=int(row["sys_mod_count"] or 0),
            )
            if versions and (versions[-1].state, versions[-1].fields) == (state, fields):
                continue
            if versions and versions[-1].state == SNState.CLOSED:
                break  # Closed is terminal; later audit rows are admin edits
            versions.append(version)
        out.append(IncidentHistory(number=number, versions=tuple(versions)))
        if limit is not None and len(out) >= limit:
            break
    return out
