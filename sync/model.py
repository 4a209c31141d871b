"""Plain, frozen snapshots of both sides and of the link state.

These are what the pure planner reads. The clients parse vendor JSON into them; the
store returns :class:`Link` and :class:`FieldState`. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sync.constants import SN_DATETIME_FORMAT, SN_RESOLVED_STATES, Side

#: ``SN_DATETIME_FORMAT`` written in full (zero-padded): what ``fromisoformat`` reads
_SN_DATETIME_FULL = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


def sn_datetime(text: str) -> datetime:
    """A ServiceNow ``YYYY-MM-DD HH:MM:SS`` (naive, as written): what ``strptime`` with
    :data:`~sync.constants.SN_DATETIME_FORMAT` reads, the usual zero-padded form read
    without it (ten times faster; every polled record has one). ``ValueError`` as
    ``strptime``."""
    if _SN_DATETIME_FULL.fullmatch(text):
        return datetime.fromisoformat(text)
    return datetime.strptime(text, SN_DATETIME_FORMAT)


@dataclass(frozen=True, slots=True)
class BPAlert:
    """One alert of a BigPanda incident (expanded form)."""

    id: str
    status: str
    """Lower-case: critical, warning, unknown or ok."""
    active: bool = True
    start: int | None = None
    """Epoch seconds (the seed's ``startedOn``)."""
    updated_at: int | None = None
    primary_property: str | None = None
    secondary_property: str | None = None
    source_system: str | None = None
    incident_key: str | None = None
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    """Alert tags, name -> value (several values of one tag joined with ``", "``)."""


@dataclass(frozen=True, slots=True)
class BPIncident:
    """A BigPanda incident as the sync sees it."""

    id: str
    status: str
    """Lower-case current status: the worst among the active alerts."""
    active: bool
    severity: str = ""
    start: int | None = None
    end: int | None = None
    changed_at: int | None = None
    updated_at: int | None = None
    environments: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    """Incident tags, tag_id -> value."""
    alerts: tuple[BPAlert, ...] = ()
    """Expanded alerts; empty when the incident was fetched without ``expand=alerts``."""
    alert_ids: tuple[str, ...] = ()
    """The alerts' ids (known with or without ``expand=alerts``)."""
    snoozed: bool = False
    """Snoozed (``snooze.snoozed``; it sits in the ``snoozed`` folder, not ``active``)."""
    assignee_id: str | None = None
    """The assignee's BigPanda user id (``assignee.user_id``; None: unassigned)."""
    assignee_email: str | None = None
    """The assignee's e-mail as the incident carries it (``assignee.email``), if any."""


def flat_fields(record: Mapping[str, Any]) -> dict[str, str]:
    """A Table API record's fields as strings: a reference that still comes as
    ``{"link": ..., "value": ...}`` reduced to its value, None as ""."""
    flat: dict[str, str] = {}
    for key, raw in record.items():
        if type(raw) is str:  # nearly every field: no Mapping check (an ABC's is slow)
            flat[key] = raw
            continue
        value = raw.get("value", "") if isinstance(raw, Mapping) else raw
        flat[key] = "" if value is None else str(value)
    return flat


@dataclass(frozen=True, slots=True)
class SNIncident:
    """A ServiceNow incident (read with ``sysparm_display_value=false``)."""

    sys_id: str
    number: str
    state: int
    active: bool
    sys_mod_count: int
    sys_updated_on: datetime
    correlation_id: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    """Every field that was returned, as ServiceNow's strings."""

    @property
    def resolved(self) -> bool:
        return self.state in SN_RESOLVED_STATES

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SNIncident:
        """Build from a Table API record (display_value=false, exclude_reference_link=true).

        Reference fields that still come as ``{"link": ..., "value": ...}`` are reduced to
        their value. Raises ``ValueError`` naming the field when a required one is missing
        or malformed.
        """
        flat = flat_fields(record)
        try:
            sys_id = flat["sys_id"]
            updated = sn_datetime(flat["sys_updated_on"])
        except KeyError as exc:
            raise ValueError(f"ServiceNow record lacks field {exc.args[0]}") from None
        except ValueError:
            raise ValueError(
                f"ServiceNow record {flat.get('sys_id', '?')}: bad sys_updated_on "
                f"{flat.get('sys_updated_on')!r}"
            ) from None
        state_raw = flat.get("state", "") or "1"
        try:
            state = int(state_raw)
        except ValueError:
            raise ValueError(f"ServiceNow record {sys_id}: bad state {state_raw!r}") from None
        mod = flat.get("sys_mod_count", "") or "0"
        return cls(
            sys_id=sys_id,
            number=flat.get("number", ""),
            state=state,
            active=flat.get("active", "true") == "true",
            sys_mod_count=int(mod) if mod.isdigit() else 0,
            sys_updated_on=updated.replace(tzinfo=UTC),
            correlation_id=flat.get("correlation_id", ""),
            fields=flat,
        )


@dataclass(frozen=True, slots=True)
class SNFieldInfo:
    """One ServiceNow dictionary entry (``sys_dictionary``) of the incident table."""

    internal_type: str
    max_length: int | None = None
    reference: str | None = None
    """the referenced table of a ``reference`` field (``sys_user_group``, ...)"""


class LinkState(StrEnum):
    """Life of one BigPanda incident <-> ServiceNow incident pair."""

    PENDING = "pending"
    """Create intended and recorded, not yet confirmed (the sys_id may be unknown)."""
    LINKED = "linked"
    RESOLVED = "resolved"
    """Both sides resolved; may be reopened until ``reopen_deadline``."""
    SUPERSEDED = "superseded"
    """A newer link replaced this one after a reopen past the window (kept as history)."""


#: states in which a link is "live": at most one live link per BigPanda incident
LIVE_LINK_STATES = frozenset({LinkState.PENDING, LinkState.LINKED, LinkState.RESOLVED})


@dataclass(frozen=True, slots=True)
class Link:
    """One row of the link table."""

    id: int
    bp_incident_id: str
    sn_sys_id: str | None
    sn_number: str | None
    state: LinkState
    created_at: datetime
    resolved_at: datetime | None = None
    reopen_deadline: datetime | None = None
    previous_link_id: int | None = None
    updated_at: datetime | None = None
    bp_environment_id: str | None = None
    """The BigPanda environment of the incident, set when the link is created."""


@dataclass(frozen=True, slots=True)
class FieldState:
    """The last value bpsync synced for one mapped field on one side of a link."""

    link_id: int
    side: Side
    name: str
    """ServiceNow field name, or BigPanda tag id."""
    value: str | None
    synced_at: datetime


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One entry of an incident's conversation: a BigPanda comment (an
    ``incident_commented`` activity) or a ServiceNow journal entry (a
    ``sys_journal_field`` row)."""

    id: str
    """The activity id / the ``sys_journal_field`` row's sys_id."""
    kind: str
    """``comment`` (BigPanda), ``work_notes`` or ``comments`` (ServiceNow)."""
    text: str
    author: str
    """BigPanda user id / ServiceNow user name ("" when unknown)."""
    at: datetime
    """When it was written (aware UTC, whole seconds)."""


@dataclass(frozen=True, slots=True)
class CarriedEntry:
    """One row of the journal ledger: an entry bpsync carries to the other side,
    recorded before it is sent (``sync.journal``)."""

    link_id: int
    side: Side
    """The side the entry was read from."""
    entry_id: str
    """The entry's id on that side (or ``sync.journal.HISTORY``: a history cutoff)."""
    digest: str
    """Digest of the normalised text written to the other side."""
    at: datetime
    """When it was recorded (for a history cutoff: entries before it are history)."""


@dataclass(frozen=True, slots=True)
class JournalInput:
    """A linked pair's conversation as read in this cycle: each side's entries (None:
    not read), and the ledger of what was carried for its incident (every link)."""

    bigpanda: tuple[JournalEntry, ...] | None = None
    servicenow: tuple[JournalEntry, ...] | None = None
    carried: tuple[CarriedEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class MergeFact:
    """BigPanda merged the pair's incident (the source) into ``destination_id``, as its
    ``incident_merged_source`` activity says (:mod:`sync.merges`)."""

    destination_id: str
    destination_link: Link | None = None
    """The destination's live link when the merge was read (None: it has no ticket)."""
    destination_environment: str | None = None
    """The destination's BigPanda environment when this cycle saw it (else the source's)."""
    destination: BPIncident | None = None
    """The destination as this cycle saw it (None: not read): a ticket it takes over is
    reconciled with it in the same plan."""


@dataclass(frozen=True, slots=True)
class AssigneeInput:
    """The identities of a pair whose assignee moved, resolved before it is planned
    (:mod:`sync.assignee_reads`, cached look-ups; :mod:`sync.assignment` decides).

    Each counterpart is the other side's id for the moved side's person: ``""`` when
    that side is unassigned (the other side is cleared), None when the person cannot be
    matched (not found, or ambiguous): the other side is left as it is."""

    sn_for_bp: str | None = None
    """The ``sys_user`` sys_id of BigPanda's assignee (set when BigPanda's moved)."""
    bp_for_sn: str | None = None
    """The BigPanda user id of ServiceNow's ``assigned_to`` (set when ServiceNow's moved)."""
    bp_email: str = ""
    """BigPanda's assignee's e-mail ("" unassigned or unknown), for the audit."""
    sn_email: str = ""
    """ServiceNow's assignee's e-mail ("" unassigned or unknown), for the audit."""
