"""Tag mapping rules: which BigPanda incident tag feeds which ServiceNow field (pure).

Built from the ``[[tag_mapping]]`` rows of the settings. No I/O.

Rules
=====
- A row maps one BigPanda incident tag (by tag id) to one ServiceNow incident field,
  ``bp_to_sn``, ``sn_to_bp`` or ``both``. Several rows per tag are fine (``severity`` ->
  ``impact`` and ``severity`` -> ``urgency``); one tag may be *written* from only one
  field and one field from only one tag (:func:`validate_mapping` reports it; at run
  time the first row wins).
- ``value_map`` maps BigPanda values to ServiceNow values. The reverse direction uses the
  inverse map (the first BigPanda value listed for a ServiceNow value, so keep it one to
  one for ``sn_to_bp``/``both``). BigPanda values are looked up exactly, then ignoring
  case (BigPanda mixes ``Critical`` and ``critical``).
- **A value missing from the map is not written** (:data:`UNMAPPED`): the target keeps
  its value and the source value is remembered as seen. A map describes a closed list
  (a choice field such as ``impact``, where a stray value would be refused or stored as
  garbage), so guessing is worse than leaving the field alone. A row *without* a map
  passes text through unchanged.
- **Empty values.** ``""`` and an absent tag/field are the same "empty" value (ServiceNow
  returns ``""`` for an empty field). Without a map, emptiness is synced: an empty tag
  clears the field (``""``) and an empty field removes the tag. With a map, an empty
  value is unmapped (choice fields cannot be cleared through the API).

Tags that are not plain Text tags
=================================
- The link tag (``incidents.link_tag``) is written by the executor only (the ServiceNow
  number and URL, or ``error``); a row on it is dropped and reported.
- ``priority`` is BigPanda's built-in *Priority*-type tag: read freely (``bp_to_sn``,
  the short description); written only through a ``value_map`` whose BigPanda values are
  its levels (``P1``-``P5``, checked against its definition at start-up,
  :mod:`sync.tagdefs`). A row writing it without a map is refused by the settings.
- Every other tag bpsync writes is a Text tag, defined at start-up when missing.
- ``severity`` and ``status`` name the incident's own attributes (read-only, lower-cased),
  so the seed's "severity -> impact and urgency" works without an enrichment tag.

Create-time static fields
=========================
``correlation_id`` = the BigPanda incident id and ``correlation_display`` = ``BigPanda``
(SPEC B2); look-ups (SPEC B12, resolved by the executor): ``assignment_group`` by
``sys_user_group.name``, ``caller_id`` and ``opened_by`` by ``sys_user.email``,
``cmdb_ci`` by ``cmdb_ci.name`` from the primary alert's ``cmdb_ci_tag`` tag. A mapped
value for the same field wins over the look-up.

``update_fields`` limits which ServiceNow fields are written *after* the create (None:
every mapped field); the create itself writes every mapped field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Final, Literal

from sync.actions import RefLookup
from sync.constants import SN_CORRELATION_DISPLAY, SN_DATETIME_FORMAT
from sync.model import BPAlert, BPIncident
from sync.sizes import DEFAULT_SIZES, FieldSizes, fit

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import IncidentSettings, Settings

__all__ = [
    "BP_INCIDENT_ATTRIBUTES",
    "DERIVED_FIELDS",
    "JOURNAL_FIELDS",
    "PRIMARY_ALERT_PREFIX",
    "PRIORITY_TAG",
    "SN_READ_ONLY_FIELDS",
    "UNMAPPED",
    "Converted",
    "FieldRule",
    "MappedValues",
    "Unmapped",
    "bp_value",
    "compile_rules",
    "configured_create_fields",
    "display_column",
    "mapped_create_values",
    "norm",
    "reads_primary_alert",
    "reference_lookups",
    "static_fields",
    "static_lookups",
    "updatable_after_create",
    "updated_texts",
    "validate_mapping",
]


class Unmapped(Enum):
    """Marker type of :data:`UNMAPPED`."""

    UNMAPPED = "unmapped"


#: "this value has no counterpart on the other side": nothing is written
UNMAPPED: Final = Unmapped.UNMAPPED

#: a converted value: text, None (empty: clear the target) or UNMAPPED (leave it alone)
Converted = str | None | Literal[Unmapped.UNMAPPED]

#: BigPanda's built-in Priority-type tag: written only through a value_map onto its levels
PRIORITY_TAG = "priority"

#: a mapping row's ``bigpanda_tag`` of this form reads a tag of the incident's primary
#: alert (``primary_alert.host``): read-only, known only when the alerts are read
PRIMARY_ALERT_PREFIX = "primary_alert."

#: incident attributes readable as if they were tags (read-only, compared lower-case)
BP_INCIDENT_ATTRIBUTES: Mapping[str, Callable[[BPIncident], str]] = {
    "severity": lambda incident: incident.severity,
    "status": lambda incident: incident.status,
}

#: append-only journal fields: never mapped (a write adds an entry, reading returns "")
JOURNAL_FIELDS = frozenset({"work_notes", "comments"})

#: fields ServiceNow or bpsync itself owns: never written from a tag
SN_READ_ONLY_FIELDS = frozenset(
    {"number", "priority", "state", "active", "correlation_id", "correlation_display"}
)

#: ServiceNow fields built by ``sync.describe`` that ``update_fields`` may list
DERIVED_FIELDS = ("short_description", "description", "work_notes")

#: create-time look-ups: ServiceNow field -> (table, column)
_LOOKUP_TARGETS: Mapping[str, tuple[str, str]] = {
    "assignment_group": ("sys_user_group", "name"),
    "caller_id": ("sys_user", "email"),
    "opened_by": ("sys_user", "email"),
    "cmdb_ci": ("cmdb_ci", "name"),
}


def norm(value: str | None) -> str | None:
    """The one "empty": ``""`` and None compare equal everywhere in the sync."""
    return value if value else None


def _tag_writable(tag: str, value_map: Mapping[str, str] | None) -> bool:
    """Text tags; the Priority tag only through a map onto its levels (checked against
    its definition at start-up, :mod:`sync.tagdefs`); never an attribute or an alert's."""
    if tag == PRIORITY_TAG:
        return bool(value_map)
    return tag not in BP_INCIDENT_ATTRIBUTES and not reads_primary_alert(tag)


def reads_primary_alert(tag: str) -> bool:
    """Does this mapped name read a tag of the primary alert (``primary_alert.<tag>``)?"""
    return tag.startswith(PRIMARY_ALERT_PREFIX)


def _sn_read_only(name: str) -> bool:
    return name in SN_READ_ONLY_FIELDS or name in JOURNAL_FIELDS or name.startswith("sys_")


@dataclass(frozen=True, slots=True)
class FieldRule:
    """One usable mapping row (directions already narrowed to what may be written)."""

    tag: str
    field: str
    to_servicenow: bool
    to_bigpanda: bool
    value_map: Mapping[str, str] | None = None
    sn_max: int | None = None
    """the ServiceNow field's size: longer values are cut (:func:`sync.sizes.fit`)"""
    bp_max: int | None = None
    """the BigPanda tag value limit: longer values are cut"""
    _folded: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _inverse: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        tag: str,
        field_name: str,
        *,
        to_servicenow: bool,
        to_bigpanda: bool,
        value_map: Mapping[str, str] | None = None,
        sn_max: int | None = None,
        bp_max: int | None = None,
    ) -> FieldRule:
        folded: dict[str, str] = {}
        inverse: dict[str, str] = {}
        for bp_val, sn_val in (value_map or {}).items():
            folded.setdefault(bp_val.casefold(), sn_val)
            inverse.setdefault(sn_val, bp_val)  # first listed BigPanda value wins
        return cls(
            tag=tag,
            field=field_name,
            to_servicenow=to_servicenow,
            to_bigpanda=to_bigpanda,
            value_map=dict(value_map) if value_map is not None else None,
            sn_max=sn_max,
            bp_max=bp_max,
            _folded=folded,
            _inverse=inverse,
        )

    def to_sn(self, bp: str | None) -> Converted:
        """The ServiceNow value for BigPanda value ``bp`` (None: empty), cut to the
        field's size."""
        bp = norm(bp)
        if self.value_map is None:
            return None if bp is None else fit(bp, self.sn_max)
        if bp is None:
            return UNMAPPED
        if bp in self.value_map:
            return norm(self.value_map[bp])
        found = self._folded.get(bp.casefold())
        return UNMAPPED if found is None else norm(found)

    def to_bp(self, sn: str | None) -> Converted:
        """The BigPanda value for ServiceNow value ``sn`` (None: empty), cut to the tag
        value limit."""
        sn = norm(sn)
        if self.value_map is None:
            return None if sn is None else fit(sn, self.bp_max)
        if sn is None:
            return UNMAPPED
        found = self._inverse.get(sn)
        return UNMAPPED if found is None else norm(found)

    def agree(self, bp: str | None, sn: str | None) -> bool:
        """Do the two sides already hold corresponding values?"""
        bp, sn = norm(bp), norm(sn)
        if self.value_map is None:  # equal, or one the cut of the other
            return bp == sn or self.to_sn(bp) == sn or self.to_bp(sn) == bp
        return self.to_sn(bp) == sn or (bp is not None and self.to_bp(sn) == bp)


#: compiled rules by the identity of (settings, sizes, labels): a process plans each of
#: its pairs with the same objects every time, so a pair's rules are compiled once, not
#: once per plan (the objects are held here, so their ids cannot be reused meanwhile;
#: settings are never changed in place: a new configuration is new objects)
_COMPILED: dict[tuple[int, int, int], tuple[tuple[object, ...], tuple[FieldRule, ...]]] = {}
#: entries kept (the oldest goes first): far more than a process has pairs
_COMPILED_KEEP = 1024


def compile_rules(
    settings: Settings,
    sizes: FieldSizes = DEFAULT_SIZES,
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[FieldRule, ...]:
    """The usable rules, in configuration order, values cut to ``sizes``; a ``label``
    row maps by ``labels`` (ServiceNow field -> {label: value}, read at start; a field
    without choices maps nothing).

    Rows on the link tag are dropped; writes into read-only tags (``priority``,
    ``severity``, ``status``) and read-only or journal fields are switched off. The rows
    themselves are reported by :func:`validate_mapping`.
    """
    key = (id(settings), id(sizes), id(labels))
    known = _COMPILED.get(key)
    if known is not None:
        return known[1]
    rules = _compile_rules(settings, sizes, labels)
    if len(_COMPILED) >= _COMPILED_KEEP:
        del _COMPILED[next(iter(_COMPILED))]
    _COMPILED[key] = ((settings, sizes, labels), rules)
    return rules


def _compile_rules(
    settings: Settings, sizes: FieldSizes, labels: Mapping[str, Mapping[str, str]] | None
) -> tuple[FieldRule, ...]:
    out: list[FieldRule] = []
    by_label = labels or {}
    for row in settings.tag_mapping:
        if row.bigpanda_tag == settings.incidents.link_tag:
            continue
        out.append(
            FieldRule.build(
                row.bigpanda_tag,
                row.servicenow_field,
                to_servicenow=row.direction in ("bp_to_sn", "both")
                and not _sn_read_only(row.servicenow_field),
                to_bigpanda=row.direction in ("sn_to_bp", "both")
                and _tag_writable(row.bigpanda_tag, row.value_map),
                value_map=by_label.get(row.servicenow_field, {}) if row.label else row.value_map,
                sn_max=sizes.sn(row.servicenow_field),
                bp_max=sizes.bigpanda_tag,
            )
        )
    return tuple(out)


def bp_value(incident: BPIncident, tag: str, primary: BPAlert | None = None) -> str | None:
    """The incident's value for a mapped tag name (attributes lower-cased; empty = None;
    ``primary_alert.<tag>``: that tag of ``primary``, the incident's primary alert)."""
    if reads_primary_alert(tag):
        name = tag[len(PRIMARY_ALERT_PREFIX) :]
        return _alert_tag(primary, name) if primary is not None and name else None
    attribute = BP_INCIDENT_ATTRIBUTES.get(tag)
    if attribute is not None:
        return norm(attribute(incident).lower())
    return norm(incident.tags.get(tag))


def updatable_after_create(incidents: IncidentSettings, field_name: str) -> bool:
    """May this (mapped) field be written after the create? (``update_fields``)."""
    return incidents.update_fields is None or field_name in incidents.update_fields


def updated_texts(incidents: IncidentSettings) -> tuple[str, ...]:
    """The generated texts (:data:`DERIVED_FIELDS`) rewritten after the create: those
    ``update_fields`` lists (``work_notes`` only with ``description_to_work_notes``)."""
    fields = incidents.update_fields
    if fields is None:
        return ()
    return tuple(
        name
        for name in DERIVED_FIELDS
        if name in fields and (name != "work_notes" or incidents.description_to_work_notes)
    )


@dataclass(frozen=True, slots=True)
class MappedValues:
    """The mapped part of a create: the fields to send and the values to remember."""

    fields: Mapping[str, str]
    record_bp: Mapping[str, str | None]
    record_sn: Mapping[str, str | None]


def mapped_create_values(
    incident: BPIncident, rules: tuple[FieldRule, ...], primary: BPAlert | None = None
) -> MappedValues:
    """Fields for the create from ``bp_to_sn``/``both`` rules, and what to record as synced.

    Every rule's tag is recorded with its BigPanda value; a field that is written is
    recorded with the written value, any other mapped field as empty (so a value
    ServiceNow fills in later, e.g. by an assignment rule, shows up as a change).
    """
    fields: dict[str, str] = {}
    record_bp: dict[str, str | None] = {}
    record_sn: dict[str, str | None] = {}
    for rule in rules:
        value = bp_value(incident, rule.tag, primary)
        record_bp.setdefault(rule.tag, value)
        record_sn.setdefault(rule.field, None)
        if not rule.to_servicenow or rule.field in fields:
            continue
        target = rule.to_sn(value)
        if target is UNMAPPED or target is None:
            continue
        fields[rule.field] = target
        record_sn[rule.field] = target
    return MappedValues(fields=fields, record_bp=record_bp, record_sn=record_sn)


def static_fields(bp_incident_id: str) -> dict[str, str]:
    """Fields every created incident carries (SPEC B2: the correlation)."""
    return {"correlation_id": bp_incident_id, "correlation_display": SN_CORRELATION_DISPLAY}


def configured_create_fields(incident: BPIncident, incidents: IncidentSettings) -> dict[str, str]:
    """What the settings add to every create: ``static_fields`` and ``opened_at`` (the
    BigPanda incident's start, UTC, unless ``opened_at_from_start`` is off)."""
    fields = dict(incidents.static_fields)
    if incidents.opened_at_from_start and incident.start:
        opened = datetime.fromtimestamp(incident.start, UTC).strftime(SN_DATETIME_FORMAT)
        fields.setdefault("opened_at", opened)
    return fields


#: the column a referenced table shows people (its display value)
DISPLAY_COLUMNS: Mapping[str, str] = {
    "incident": "number",
    "task": "number",
    "problem": "number",
    "change_request": "number",
    "sys_user": "name",
    "sys_user_group": "name",
    "cmdb_ci": "name",
    "cmn_location": "name",
    "core_company": "name",
}


def display_column(table: str) -> str:
    """The display column of a referenced table (``name`` unless known otherwise)."""
    return DISPLAY_COLUMNS.get(table, "name")


def reference_lookups(
    values: Mapping[str, str | None], references: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, RefLookup]]:
    """Split ServiceNow values to write into plain fields and look-ups: a non-empty
    value for a reference field (``references``: field -> table) is a display value
    (a group's name) to find as that table's record; an empty one clears the field."""
    fields: dict[str, str] = {}
    lookups: dict[str, RefLookup] = {}
    for name, value in values.items():
        table = references.get(name)
        if table is not None and value:
            lookups[name] = RefLookup(table=table, column=display_column(table), value=value)
        else:
            fields[name] = value or ""
    return fields, lookups


def _alert_tag(alert: BPAlert, name: str) -> str | None:
    if name in alert.tags:
        return norm(alert.tags[name])
    lowered = name.lower()
    for tag, value in alert.tags.items():
        if tag.lower() == lowered:
            return norm(value)
    return None


def static_lookups(incidents: IncidentSettings, primary: BPAlert | None) -> dict[str, RefLookup]:
    """Reference fields of the create, to be looked up by the executor (SPEC B12)."""
    wanted: dict[str, str | None] = {
        "assignment_group": incidents.assignment_group,
        "caller_id": incidents.caller_id_email,
        "opened_by": incidents.opened_by_email,
        "cmdb_ci": (
            _alert_tag(primary, incidents.cmdb_ci_tag)
            if primary is not None and incidents.cmdb_ci_tag
            else None
        ),
    }
    out: dict[str, RefLookup] = {}
    for name, value in wanted.items():
        if value:
            table, column = _LOOKUP_TARGETS[name]
            out[name] = RefLookup(table=table, column=column, value=value)
    return out


def validate_mapping(settings: Settings) -> list[str]:
    """Problems with ``[[tag_mapping]]`` and ``update_fields``, one readable line each."""
    problems: list[str] = []
    incidents = settings.incidents
    rows = settings.tag_mapping
    seen_pairs: dict[tuple[str, str], int] = {}
    tag_writer: dict[str, int] = {}
    field_writer: dict[str, int] = {}
    for index, row in enumerate(rows):
        where = f"tag_mapping[{index}] ({row.bigpanda_tag} <-> {row.servicenow_field})"
        to_sn = row.direction in ("bp_to_sn", "both")
        to_bp = row.direction in ("sn_to_bp", "both")
        pair = (row.bigpanda_tag, row.servicenow_field)
        if pair in seen_pairs:
            problems.append(f"{where}: the same pair is already mapped by row {seen_pairs[pair]}")
        seen_pairs.setdefault(pair, index)
        if row.bigpanda_tag == incidents.link_tag:
            problems.append(f"{where}: {row.bigpanda_tag} is the link tag; bpsync writes it itself")
            continue
        if row.servicenow_field in JOURNAL_FIELDS:
            problems.append(
                f"{where}: {row.servicenow_field} is a journal field (append-only) and "
                "cannot be mapped"
            )
        elif to_sn and _sn_read_only(row.servicenow_field):
            hint = " (map impact and urgency instead)" if row.servicenow_field == "priority" else ""
            problems.append(
                f"{where}: {row.servicenow_field} is set by ServiceNow or by bpsync itself; "
                f"use direction sn_to_bp{hint}"
            )
        writable = _tag_writable(row.bigpanda_tag, row.value_map)
        if to_bp and not writable:
            if row.bigpanda_tag == PRIORITY_TAG:
                kind = "a Priority-type tag, written only through a value_map onto its levels"
            elif reads_primary_alert(row.bigpanda_tag):
                kind = "a tag of the primary alert (read-only)"
            else:
                kind = "an incident attribute (read-only)"
            problems.append(f"{where}: {row.bigpanda_tag} is {kind}; use direction bp_to_sn")
        if to_bp and writable:
            if row.bigpanda_tag in tag_writer:
                problems.append(
                    f"{where}: tag {row.bigpanda_tag} already receives values from row "
                    f"{tag_writer[row.bigpanda_tag]}; a tag can be written from one field only"
                )
            tag_writer.setdefault(row.bigpanda_tag, index)
        if to_sn and not _sn_read_only(row.servicenow_field):
            if row.servicenow_field in field_writer:
                problems.append(
                    f"{where}: field {row.servicenow_field} already receives values from row "
                    f"{field_writer[row.servicenow_field]}; a field can be written from one "
                    "tag only"
                )
            field_writer.setdefault(row.servicenow_field, index)
        if to_bp and row.value_map:
            targets: dict[str, str] = {}
            for bp_val, sn_val in row.value_map.items():
                if sn_val in targets:
                    problems.append(
                        f"{where}: value_map sends both {targets[sn_val]!r} and {bp_val!r} "
                        f"to {sn_val!r}, so {sn_val!r} cannot be mapped back; make it one to "
                        "one or use direction bp_to_sn"
                    )
                targets.setdefault(sn_val, bp_val)
    if incidents.update_fields is not None:
        for name in incidents.update_fields:
            if name in DERIVED_FIELDS:
                if name == "work_notes" and not incidents.description_to_work_notes:
                    problems.append(
                        "incidents.update_fields lists work_notes but "
                        "description_to_work_notes is off"
                    )
                continue
            if name not in field_writer:
                problems.append(
                    f"incidents.update_fields lists {name}, which no bp_to_sn/both tag_mapping "
                    "row writes (and is not short_description, description or work_notes)"
                )
    return problems
