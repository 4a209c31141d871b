"""In-memory fakes of the two APIs, implementing the client Protocols (not mocks).

Both keep their data in plain dicts, stamp changes with the injected clock, and record
every write in ``writes``. They answer as the emulators do (which follow
docs/servicenow-api.md and docs/bigpanda-api.md): ``tests/contract`` runs the same
scenarios on these fakes and on the real clients over the emulators, so a fake cannot
drift from the vendor model the system tests use. What they model:

- ServiceNow: the incident table's defaults, business rules (priority from impact x
  urgency, ``active``, ``resolved_*``/``closed_*`` stamped with the API user, reopen
  count) and data policies (Resolved/Closed need a valid close code and close notes,
  On Hold a reason, Closed is terminal: 403 as :class:`PermanentError`); no-op updates
  are skipped (no ``sys_mod_count``/``sys_updated_on`` change); journal fields
  (``work_notes``, ``comments``) are entries, never stored values; values are cut to the
  field's size; ``field_dictionary`` with sizes and reference tables. Unlike the
  emulator's fixed out-of-box schema, any field name is kept (the engine tests map
  custom ``u_*`` fields, as a real instance may have them).
- BigPanda: incident tags must be defined (404 ``NotExistTag`` as
  :class:`MissingTagError`; inactive tags, Priority values outside the levels and bad
  definitions as :class:`PermanentError`; a duplicate definition 409); ``updated_at``
  moves on every change, ``changed_at`` only on status changes (resolve, reopen);
  comments, tags and resolves are recorded as activities (newest first); search is
  "active during [from, to]", ``sort_by`` start or last_change (``changed_at``), newest
  first; ``list_changed`` floors ``since - overlap`` to a whole second (but, unlike
  the client, still lists an incident resolved before that floor: see ``list_changed``).

Helpers for tests (what a person or a monitoring tool does; not recorded as writes)
are more lenient than the APIs: ``FakeServiceNow.change``/``add_incident`` apply the
business rules but not the data policies, ``FakeBigPanda.add_incident``/``change_tag``
define a tag they set when it is not defined yet (as the emulator's fixture loader).

Fault injection:

- ``fail_next(method, *errors)``: the next calls of ``method`` raise these errors, in order
  (a write that fails is NOT applied). As the clients, a :class:`TransientError` with a
  ``retry_after_s`` holds the method's family (ServiceNow: every method) that long
  (``held_for``): later calls wait it out, or are refused unsent while it lasts longer
  than the pacing's outage window.
- ``before_call``: a callable run at the start of every call with (method, args): a test
  can inspect the store while a write is in flight (SPEC B15: recorded before sent).

Echo detection (SPEC B5): a write whose every value already equals the target's current
value is appended to ``echoes``; tests assert it stays empty.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from sync.clients.base import (
    BPActivity,
    BPEnvironment,
    BPSearchPage,
    BPTagDefinition,
    BPUser,
    IncidentRow,
    SNRecord,
)
from sync.clients.bigpanda.paths import (
    SEARCH_EXPANDED_PAGE_SIZE_MAX,
    SEARCH_FOLDERS,
    SEARCH_PAGE_SIZE_MAX,
    SEARCH_SORTS,
    Family,
)
from sync.clients.pacing import PacingPolicy, held_error
from sync.clients.servicenow.parsing import parse_changed, parse_incident
from sync.clients.snquery import check_correlation_id, check_sys_id
from sync.clock import Clock, epoch_s
from sync.constants import MIRROR_MARKER, SN_DATETIME_FORMAT, SN_JOURNAL_MAX, SNState
from sync.emulators.bigpanda.users import SEED_USERS
from sync.errors import MissingTagError, NotFoundError, PermanentError, TransientError
from sync.model import BPAlert, BPIncident, JournalEntry, SNFieldInfo, SNIncident

Hook = Callable[[str, tuple[Any, ...]], Awaitable[None] | None]


class _Faults:
    #: the pacing family of each method (the clients' buckets); others: the method's name
    FAMILIES: ClassVar[Mapping[str, str]] = {}

    def __init__(self, side: str) -> None:
        self._side = side
        self._queued: dict[str, list[BaseException]] = {}
        self.before_call: Hook | None = None
        self.calls: list[tuple[str, float]] = []
        """(method, monotonic time) of every call, in order."""
        self._throttled: dict[str, float] = {}
        self.throttled_calls = 0
        self._holds: dict[str, float] = {}
        """family -> monotonic time its hold ends (a Retry-After handed to the caller)"""
        self.pacing = PacingPolicy()
        """how long a hold is waited out before a call is refused unsent (the clients')"""

    def _family(self, method: str) -> str:
        return self.FAMILIES.get(method, method)

    def _held_for(self, family: str, clock: Clock) -> float:
        return max(0.0, self._holds.get(family, 0.0) - clock.monotonic())

    def fail_next(self, method: str, *errors: BaseException) -> None:
        self._queued.setdefault(method, []).extend(errors)

    def throttle(self, methods: Collection[str], until_s: float) -> None:
        """Calls of ``methods`` before monotonic ``until_s`` are throttled, as the real
        clients meet a 429: held on the clock until the window has passed, then answered
        (a client sends a throttled request again after a pause; only an outage longer
        than ``pacing.outage_after`` reaches the caller, which these fakes leave to
        ``fail_next``)."""
        for method in methods:
            self._throttled[method] = max(self._throttled.get(method, 0.0), until_s)

    async def _enter(self, method: str, clock: Clock, *args: Any) -> None:
        family = self._family(method)
        held = held_error(
            self._side, family, self._held_for(family, clock), self.pacing, method=method, url=""
        )
        if held is not None:
            raise held  # as the clients: a hold past the outage window is not waited out
        until = max(self._throttled.get(method, 0.0), self._holds.get(family, 0.0))
        if until > clock.monotonic():
            self.throttled_calls += 1
            await clock.sleep(until - clock.monotonic())
        self.calls.append((method, clock.monotonic()))
        if self.before_call is not None:
            outcome = self.before_call(method, args)
            if inspect.isawaitable(outcome):
                await outcome
        queued = self._queued.get(method)
        if queued:
            error = queued.pop(0)
            if isinstance(error, TransientError) and error.retry_after_s:
                # as the clients: a Retry-After handed to the caller holds the family
                self._holds[family] = clock.monotonic() + error.retry_after_s
            raise error

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


# =========================================================================== ServiceNow

_NEW = str(int(SNState.NEW))
_IN_PROGRESS = str(int(SNState.IN_PROGRESS))
_ON_HOLD = str(int(SNState.ON_HOLD))
_RESOLVED = str(int(SNState.RESOLVED))
_CLOSED = str(int(SNState.CLOSED))
_CANCELED = str(int(SNState.CANCELED))
#: states an incident never leaves (docs 3.2; the emulator's default ``terminal_states``)
SN_TERMINAL_STATES = frozenset({_CLOSED})

#: the current out-of-box close codes (docs 3.4; the emulator's default choice list)
SN_CLOSE_CODES = frozenset(
    {
        "Duplicate",
        "Known error",
        "No resolution provided",
        "Resolved by caller",
        "Resolved by change",
        "Resolved by problem",
        "Resolved by request",
        "Solution provided",
        "Workaround provided",
        "User error",
    }
)

#: priority lookup rules (docs 3.3): (impact, urgency) -> priority
SN_PRIORITY = {
    (impact, urgency): str(min(5, int(impact) + int(urgency) - 1))
    for impact in "123"
    for urgency in "123"
}

#: journal_input fields: each write appends an entry; the record's value reads as ""
SN_JOURNAL_FIELDS = frozenset({"work_notes", "comments"})

#: the defaults of a new incident that are not empty (docs 3.1, the doc's POST example);
#: every other field of :data:`SN_DICTIONARY` starts as ""
SN_INCIDENT_DEFAULTS: Mapping[str, str] = {
    "state": _NEW,
    "incident_state": _NEW,
    "active": "true",
    "impact": "3",
    "urgency": "3",
    "priority": "5",
    "severity": "3",
    "category": "inquiry",
    "reopen_count": "0",
}


def _sn_field(kind: str, size: int = 255, reference: str | None = None) -> SNFieldInfo:
    return SNFieldInfo(kind, size, reference)


#: the incident table's dictionary (``sys_dictionary`` of incident and task) as the
#: emulator seeds it: types, ``max_length`` (255 where the table sets none) and the
#: tables of reference fields
SN_DICTIONARY: Mapping[str, SNFieldInfo] = {
    "number": _sn_field("string", 40),
    "short_description": _sn_field("string", 160),
    "description": _sn_field("string", 4000),
    "close_notes": _sn_field("string", 4000),
    "close_code": _sn_field("string"),
    "correlation_id": _sn_field("string", 100),
    "correlation_display": _sn_field("string", 100),
    "category": _sn_field("string", 40),
    "subcategory": _sn_field("string", 40),
    "contact_type": _sn_field("string", 40),
    "work_notes": _sn_field("journal_input", SN_JOURNAL_MAX),
    "comments": _sn_field("journal_input", SN_JOURNAL_MAX),
    **{
        name: _sn_field("integer")
        for name in (
            "state",
            "incident_state",
            "impact",
            "urgency",
            "priority",
            "severity",
            "hold_reason",
            "reopen_count",
        )
    },
    "active": _sn_field("boolean"),
    **{
        name: _sn_field("glide_date_time")
        for name in ("opened_at", "resolved_at", "closed_at", "sys_created_on", "sys_updated_on")
    },
    **{
        name: _sn_field("reference", reference="sys_user")
        for name in ("caller_id", "assigned_to", "opened_by", "resolved_by", "closed_by")
    },
    "assignment_group": _sn_field("reference", reference="sys_user_group"),
    "cmdb_ci": _sn_field("reference", reference="cmdb_ci"),
    "parent_incident": _sn_field("reference", reference="incident"),
}

#: sizes the table enforces (longer values are cut, the emulator's default ``overlong``)
SN_FIELD_SIZES: Mapping[str, int] = {
    name: info.max_length
    for name, info in SN_DICTIONARY.items()
    if info.internal_type == "string" and info.max_length and info.max_length != 255
}

#: fields the Table API always has on a record
SN_SYS_FIELDS = frozenset(
    {"sys_id", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by",
     "sys_mod_count", "sys_tags"}
)  # fmt: skip

#: the look-up tables of the instance and their columns (as the emulator seeds them); a
#: test's rows may bring more columns. Any other table is a 400 ``Invalid table``.
SN_LOOKUP_TABLES: Mapping[str, frozenset[str]] = {
    "sys_user": frozenset(
        {"user_name", "name", "first_name", "last_name", "email", "time_zone", "active"}
    ),
    "sys_user_group": frozenset({"name", "description", "active", "manager"}),
    "cmdb_ci": frozenset({"name", "sys_class_name", "ip_address", "operational_status"}),
    "sys_choice": frozenset(
        {"name", "element", "value", "label", "sequence", "inactive", "language"}
    ),
}

#: what the client always reads of a changed incident, whatever fields are asked for
SN_KEY_FIELDS = ("sys_id", "sys_updated_on", "sys_mod_count")


def as_records(rows: Sequence[IncidentRow]) -> list[SNRecord]:
    """``list_changed``'s rows as records (an incident's fields as the client parsed them,
    a malformed row as it came): for tests about which rows a listing holds."""
    return [dict(r.fields) if isinstance(r, SNIncident) else r.record for r in rows]


class FakeServiceNow(_Faults):
    """The ServiceNow Table API in memory (incident table plus look-up tables)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("servicenow")
        self.clock = clock
        self.incidents: dict[str, dict[str, str]] = {}
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.journal: list[tuple[str, str, str]] = []
        """(sys_id, field, text) of every journal entry (work notes, comments), in order."""
        self.writes: list[tuple[str, str, dict[str, str]]] = []
        self.echoes: list[tuple[str, str, dict[str, str]]] = []
        self.api_user = uuid.uuid4().hex
        """sys_id of the integration user the API writes as"""
        self.person = uuid.uuid4().hex
        """sys_id of the person behind :meth:`change` and :meth:`add_incident`"""
        self._number = 10000

    def _family(self, method: str) -> str:
        return "servicenow"  # ServiceNow limits the instance: one hold

    def held_for(self) -> float:
        return self._held_for("servicenow", self.clock)

    # --- helpers for tests
    def _now(self) -> str:
        return self.clock.now().strftime(SN_DATETIME_FORMAT)

    def add_incident(self, **values: str) -> dict[str, str]:
        """Create an incident directly (as a person or another tool would)."""
        return self._insert(values, user=self.person, enforce=False)

    def change(self, sys_id: str, **values: str) -> None:
        """A person edits the incident in ServiceNow (not recorded as a bpsync write;
        the business rules apply, the data policies do not)."""
        self._update(sys_id, values, user=self.person, enforce=False)

    def _create(self, values: Mapping[str, str]) -> dict[str, str]:
        """A create that reached ServiceNow (as the API user) whatever its answer."""
        return self._insert(values, user=self.api_user, enforce=True)

    def add_row(self, table: str, **values: str) -> dict[str, str]:
        """A record of a look-up table (``sys_user``, ``sys_user_group``, ...)."""
        row = {**values, "sys_id": values.get("sys_id") or uuid.uuid4().hex}
        self.tables.setdefault(table, []).append(row)
        return row

    # --- the instance: writes through its rules
    @staticmethod
    def _clean(fields: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Values to store (sys_* dropped, cut to size) and journal entries."""
        values: dict[str, str] = {}
        journals: dict[str, str] = {}
        for name, value in fields.items():
            if name.startswith("sys_"):
                continue  # written by the platform only
            if name in SN_JOURNAL_FIELDS:
                if value.strip():
                    journals[name] = value[:SN_JOURNAL_MAX]
                continue
            size = SN_FIELD_SIZES.get(name)
            values[name] = value if size is None else value[:size]
        return values, journals

    def _rules(
        self, old: Mapping[str, str] | None, row: dict[str, str], *, user: str, enforce: bool
    ) -> None:
        """Business rules and data policies of ``incident`` (docs 3.2-3.4)."""
        old_state = None if old is None else old.get("state", _NEW)
        state = row.get("state", _NEW)
        if enforce and old_state in SN_TERMINAL_STATES and state != old_state:
            raise PermanentError(
                "servicenow",
                "Operation Failed",
                status=403,
                detail=f"Incident {row.get('number')} is closed and cannot change state",
            )
        missing = []
        if state in {_RESOLVED, _CLOSED}:
            if row.get("close_code") not in SN_CLOSE_CODES:
                missing.append("Resolution code")  # an invalid code counts as missing
            if not row.get("close_notes", "").strip():
                missing.append("Close notes")
        if state == _ON_HOLD and not row.get("hold_reason"):
            missing.append("On hold reason")
        if enforce and missing:
            raise PermanentError(
                "servicenow",
                "Operation Failed",
                status=403,
                detail="Data Policy Exception: The following fields are mandatory: "
                + ", ".join(missing),
            )
        row["incident_state"] = state
        row["active"] = "false" if state in {_CLOSED, _CANCELED} else "true"
        if state == old_state:
            return
        now = self._now()
        if state == _RESOLVED:
            row["resolved_at"], row["resolved_by"] = now, user
        if state == _CLOSED:
            row["closed_at"], row["closed_by"] = now, user
            if not row.get("resolved_at"):
                row["resolved_at"], row["resolved_by"] = now, user
        if old_state == _RESOLVED and state in {_NEW, _IN_PROGRESS, _ON_HOLD}:
            row["reopen_count"] = str(int(row.get("reopen_count") or "0") + 1)
            row["reopened_by"], row["reopened_time"] = user, now

    def _insert(self, fields: Mapping[str, str], *, user: str, enforce: bool) -> dict[str, str]:
        values, journals = self._clean(fields)
        now = self._now()
        record = dict.fromkeys(SN_DICTIONARY, "")  # every field of the table is there
        record.update(SN_INCIDENT_DEFAULTS)
        record.update(values)
        record["priority"] = SN_PRIORITY.get(
            (record["impact"], record["urgency"]), record["priority"]
        )
        self._number += 1
        record["number"] = f"INC{self._number:07d}"
        self._rules(None, record, user=user, enforce=enforce)
        sys_id = uuid.uuid4().hex
        record.update(
            sys_id=sys_id,
            opened_by=values.get("opened_by") or user,
            opened_at=values.get("opened_at") or now,
            sys_created_on=now,
            sys_updated_on=now,
            sys_mod_count="0",
        )
        self.incidents[sys_id] = record
        self.journal.extend((sys_id, name, text) for name, text in journals.items())
        return record

    def _update(
        self, sys_id: str, fields: Mapping[str, str], *, user: str, enforce: bool
    ) -> dict[str, str]:
        old = self.incidents.get(sys_id)
        if old is None:
            raise NotFoundError("servicenow", "No Record found", status=404)
        values, journals = self._clean(fields)
        record = {**old, **values}
        if "impact" in values or "urgency" in values:
            record["priority"] = SN_PRIORITY.get(
                (record.get("impact", ""), record.get("urgency", "")), record.get("priority", "")
            )
        self._rules(old, record, user=user, enforce=enforce)
        if record == old and not journals:
            return old  # a no-op update is skipped: no sys_mod_count, no sys_updated_on
        record["sys_mod_count"] = str(int(old.get("sys_mod_count") or "0") + 1)
        record["sys_updated_on"] = self._now()
        old.update(record)  # in place: a test's reference to the record stays current
        self.journal.extend((sys_id, name, text) for name, text in journals.items())
        return old

    # --- ServiceNowAPI
    async def create_incident(self, fields: Mapping[str, str]) -> SNIncident:
        await self._enter("create_incident", self.clock, dict(fields))
        record = self._insert(fields, user=self.api_user, enforce=True)
        self.writes.append(("create", record["sys_id"], dict(fields)))
        return parse_incident(dict(record), "the created incident")

    async def get_incident(self, sys_id: str) -> SNIncident:
        await self._enter("get_incident", self.clock, sys_id)
        if check_sys_id(sys_id) not in self.incidents:
            raise NotFoundError("servicenow", "No Record found", status=404)
        return parse_incident(dict(self.incidents[sys_id]), f"incident {sys_id}")

    async def update_incident(self, sys_id: str, fields: Mapping[str, str]) -> SNIncident:
        await self._enter("update_incident", self.clock, sys_id, dict(fields))
        record = self.incidents.get(check_sys_id(sys_id))
        if record is None:
            raise NotFoundError("servicenow", "No Record found", status=404)
        values = dict(fields)
        compared = {k: v for k, v in values.items() if k not in SN_JOURNAL_FIELDS}
        echo = bool(compared) and all(record.get(k) == v for k, v in compared.items())
        updated = self._update(sys_id, values, user=self.api_user, enforce=True)
        if echo:
            self.echoes.append(("update", sys_id, values))
        self.writes.append(("update", sys_id, values))
        return parse_incident(dict(updated), f"incident {sys_id}")

    async def delete_incident(self, sys_id: str) -> None:
        await self._enter("delete_incident", self.clock, sys_id)
        if self.incidents.pop(check_sys_id(sys_id), None) is None:
            raise NotFoundError("servicenow", "No Record found", status=404)

    @staticmethod
    def _oldest_first(records: list[dict[str, str]]) -> list[IncidentRow]:
        """``ORDERBYsys_created_on^ORDERBYsys_id``, as the client asks."""
        ordered = sorted(records, key=lambda r: (r["sys_created_on"], r["sys_id"]))
        return [parse_changed(dict(r)) for r in ordered]

    async def find_by_correlation_id(
        self, correlation_id: str, *, active_only: bool = False
    ) -> list[IncidentRow]:
        await self._enter("find_by_correlation_id", self.clock, correlation_id)
        check_correlation_id(correlation_id)
        return self._oldest_first(
            [
                r
                for r in self.incidents.values()
                if r.get("correlation_id") == correlation_id
                and (not active_only or r.get("active") == "true")
            ]
        )

    async def find_by_correlation_ids(
        self, correlation_ids: Sequence[str], *, active_only: bool = False
    ) -> list[IncidentRow]:
        await self._enter("find_by_correlation_ids", self.clock, sorted(correlation_ids))
        wanted = {check_correlation_id(c) for c in correlation_ids}
        return self._oldest_first(
            [
                r
                for r in self.incidents.values()
                if r.get("correlation_id") in wanted
                and (not active_only or r.get("active") == "true")
            ]
        )

    async def list_changed(
        self, since: datetime | None, *, overlap_s: float, fields: Sequence[str] | None = None
    ) -> list[IncidentRow]:
        await self._enter("list_changed", self.clock, since)
        floor = None if since is None else since - timedelta(seconds=overlap_s)
        rows = [
            dict(r)
            for r in self.incidents.values()
            if r.get("correlation_id")
            and (floor is None or r["sys_updated_on"] >= floor.strftime(SN_DATETIME_FORMAT))
        ]
        rows.sort(key=lambda r: (r["sys_updated_on"], r["sys_id"]))
        if fields is not None:
            wanted = {*fields, *SN_KEY_FIELDS}
            rows = [{k: v for k, v in r.items() if k in wanted} for r in rows]
        return [parse_changed(r) for r in rows]

    async def query(
        self, table: str, conditions: Mapping[str, str], *, fields: Sequence[str], limit: int
    ) -> list[SNRecord]:
        await self._enter("query", self.clock, table, dict(conditions))
        if table == "incident":
            table_rows: list[dict[str, str]] = list(self.incidents.values())
            columns = {*SN_DICTIONARY, *SN_SYS_FIELDS}
        elif table in SN_LOOKUP_TABLES or table in self.tables:
            table_rows = self.tables.get(table, [])
            columns = {*SN_LOOKUP_TABLES.get(table, ()), *SN_SYS_FIELDS}
        else:
            raise PermanentError("servicenow", f"Invalid table {table}", status=400)
        columns.update(name for row in table_rows for name in row)
        # a condition on a field the table does not have is dropped, the rest still
        # applies (docs 2: glide.invalid_query.returns_no_rows is false by default)
        known = {k: v for k, v in conditions.items() if k in columns}
        rows = [r for r in table_rows if all(r.get(k) == v for k, v in known.items())]
        return [{f: r.get(f, "") for f in fields if f in columns} for r in rows[:limit]]

    async def check_auth(self) -> None:
        await self._enter("check_auth", self.clock)

    async def field_dictionary(self) -> dict[str, SNFieldInfo]:
        await self._enter("field_dictionary", self.clock)
        return dict(SN_DICTIONARY)

    # --- journals (sync.journal): ``journal`` as sys_journal_field rows
    def add_journal_entry(
        self, sys_id: str, element: str, text: str, *, by: str = "person.name"
    ) -> str:
        """A person writes a work note or an additional comment; returns the entry's id."""
        self._journal_stamps()
        self.change(sys_id, **{element: text})
        index = len(self.journal) - 1
        self._journal_stamps()[index] = (self._now(), by)
        return f"{index + 1:032x}"

    def _journal_stamps(self) -> dict[int, tuple[str, str]]:
        """Each journal entry's (sys_created_on, sys_created_by), stamped when first seen
        (entries bpsync wrote through ``update_incident``: its user name)."""
        stamps: dict[int, tuple[str, str]] = self.__dict__.setdefault("_stamps", {})
        for index, (_, _, text) in enumerate(self.journal):
            if index not in stamps:
                own = text.lstrip().startswith(MIRROR_MARKER)
                stamps[index] = (self._now(), "bpsync" if own else "person.name")
        return stamps

    async def list_journal(self, sys_id: str, elements: Sequence[str]) -> list[JournalEntry]:
        await self._enter("list_journal", self.clock, sys_id)
        stamps = self._journal_stamps()
        return [
            JournalEntry(
                f"{index + 1:032x}",
                element,
                text,
                stamps[index][1],
                datetime.strptime(stamps[index][0], SN_DATETIME_FORMAT).replace(tzinfo=UTC),
            )
            for index, (row_id, element, text) in enumerate(self.journal)
            if row_id == check_sys_id(sys_id) and element in elements
        ]


# =========================================================================== BigPanda

#: incident and alert statuses, least to most severe (docs 5.1)
BP_STATUS_RANK = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}
#: alert tags that name an alert's primary / secondary property by default (docs 6)
BP_PRIMARY_CANDIDATES = ("host", "service", "application", "device")
BP_SECONDARY_CANDIDATES = ("check", "alert_name")
BP_TAG_TYPES = frozenset(
    {"Text", "MultiValue", "Priority", "ClosedListValuesMulti", "ClosedListValuesSingle"}
)
BP_TAG_NAME_MAX = 20


@dataclasses.dataclass
class FakeBPIncident:
    id: str
    environment_id: str
    status: str = "critical"
    active: bool = True
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    updated_at: int = 0
    start: int = 0
    end: int | None = None
    alerts: list[BPAlert] = dataclasses.field(default_factory=list)
    comments: list[str] = dataclasses.field(default_factory=list)
    severity: str = ""
    """the highest status the incident ever reached"""
    changed_at: int = 0
    """moves on status changes only (not on tags or comments): ``sort_by=last_change``"""
    activities: list[BPActivity] = dataclasses.field(default_factory=list)
    """oldest first (the API answers newest first)"""
    snoozed_until: int | None = None
    assignee: BPUser | None = None

    def folders(self) -> tuple[str, ...]:
        """Never shared or assigned here: active and unhandled (or snoozed), or resolved."""
        if not self.active:
            return ("resolved",)
        return (
            ("snoozed", "unhandled") if self.snoozed_until is not None else ("active", "unhandled")
        )

    def snapshot(self, *, expand_alerts: bool) -> BPIncident:
        return BPIncident(
            id=self.id,
            status=self.status,
            active=self.active,
            severity=self.severity,
            start=self.start,
            end=self.end,
            changed_at=self.changed_at,
            updated_at=self.updated_at,
            environments=(self.environment_id,),
            folders=self.folders(),
            tags=dict(self.tags),
            alerts=tuple(self.alerts) if expand_alerts else (),
            alert_ids=tuple(a.id for a in self.alerts),
            snoozed=self.snoozed_until is not None,
            assignee_id=self.assignee.id if self.assignee is not None else None,
            assignee_email=self.assignee.email if self.assignee is not None else None,
        )


class FakeBigPanda(_Faults):
    """The BigPanda Incidents API v2 in memory."""

    FAMILIES: ClassVar[Mapping[str, str]] = {
        "list_environments": Family.ENVIRONMENTS,
        "check_auth": Family.ENVIRONMENTS,
        "search_incidents": Family.SEARCH,
        "list_changed": Family.SEARCH,
        "get_incident": Family.INCIDENT,
        "resolve_incident": Family.RESOLVE,
        "add_comment": Family.COMMENTS,
        "snooze_incident": Family.SNOOZE,
        "unsnooze_incident": Family.SNOOZE,
        "assign_incident": Family.ASSIGNMENT,
        "unassign_incident": Family.ASSIGNMENT,
        "list_activities": Family.ACTIVITIES,
        "get_tags": Family.TAGS,
        "set_tag": Family.TAGS,
        "set_tags": Family.TAGS,
        "delete_tag": Family.TAGS,
        "list_tag_definitions": Family.TAG_DEFINITIONS,
        "create_tag_definition": Family.TAG_DEFINITIONS,
        "find_user": Family.USERS,
        "get_user": Family.USER,
    }

    def __init__(self, clock: Clock, environments: Sequence[str] = ("env1",)) -> None:
        super().__init__("bigpanda")
        self.clock = clock
        self.environments = [BPEnvironment(e, e.upper()) for e in environments]
        self.incidents: dict[str, FakeBPIncident] = {}
        self.tag_definitions: dict[str, BPTagDefinition] = {
            "priority": BPTagDefinition(
                "priority", "priority", "Priority", ordered_list=("P1", "P2", "P3", "P4", "P5")
            )
        }
        self.writes: list[tuple[str, str, dict[str, str]]] = []
        self.echoes: list[tuple[str, str, dict[str, str]]] = []
        self.api_user = "bpsync"
        """``created_by`` of what the API key does"""
        self.person = "person"
        """``created_by`` of what the helpers do by hand"""
        self._next = 0
        self._activities = 0
        self.users: dict[str, BPUser] = {
            u.id: BPUser(u.id, u.email, u.name, (u.email,), u.active) for u in SEED_USERS
        }
        """The organisation's users (SCIM), by id: the emulator's seeded organisation"""

    def held_for(self, family: str) -> float:
        return self._held_for(family, self.clock)

    # --- helpers for tests
    def _now_s(self) -> int:
        return epoch_s(self.clock.now())

    def _activity(
        self, incident: FakeBPIncident, type_: str, params: Mapping[str, Any], by: str | None
    ) -> None:
        self._activities += 1
        incident.activities.append(
            BPActivity(f"{self._activities:032x}", type_, self._now_s(), by, dict(params))
        )

    def define_tags(self, *tags: str, tag_type: str = "Text") -> None:
        """An administrator defines incident tags (those not defined yet)."""
        for tag in tags:
            self.tag_definitions.setdefault(tag, BPTagDefinition(tag, tag, tag_type))

    def add_incident(
        self,
        environment_id: str = "env1",
        *,
        status: str = "critical",
        tags: Mapping[str, str] | None = None,
        alert_tags: Mapping[str, str] | None = None,
        source_system: str = "api.fake",
    ) -> FakeBPIncident:
        """An incident formed from one alert (``alert_tags``: its tags; the first of
        host/service/application/device is its primary property, check/alert_name its
        secondary). Undefined ``tags`` are defined (Text) first."""
        self._next += 1
        inc_id = f"{self._next:024x}"
        now = self._now_s()
        alert_tags = dict(alert_tags or {})
        primary = next((p for p in BP_PRIMARY_CANDIDATES if p in alert_tags), None)
        secondary = next((s for s in BP_SECONDARY_CANDIDATES if s in alert_tags), None)
        key = None
        if primary is not None:
            key = f"{alert_tags[primary]}|{alert_tags[secondary] if secondary else ''}"
        alert = BPAlert(
            id=f"a{self._next}",
            status=status,
            active=status != "ok",
            start=now,
            updated_at=now,
            primary_property=primary,
            secondary_property=secondary,
            source_system=source_system,
            incident_key=key,
            description="",
            tags=alert_tags,
        )
        self.define_tags(*(tags or {}))
        incident = FakeBPIncident(
            inc_id,
            environment_id,
            status=status,
            tags=dict(tags or {}),
            updated_at=now,
            start=now,
            alerts=[alert],
            severity=status,
            changed_at=now,
        )
        self._activity(incident, "incident_created", {}, None)
        self.incidents[inc_id] = incident
        return incident

    def change_tag(self, incident_id: str, tag: str, value: str) -> None:
        """A person edits a tag in BigPanda (not a bpsync write); defines it if needed."""
        incident = self.incidents[incident_id]
        self.define_tags(tag)
        incident.tags[tag] = value
        incident.updated_at = self._now_s()
        self._activity(
            incident, "incident_tag_updated", {"tag_id": tag, "tag_value": value}, self.person
        )

    def _close(self, incident: FakeBPIncident) -> None:
        now = self._now_s()
        incident.active = False
        incident.status = "ok"
        incident.end = incident.updated_at = incident.changed_at = now
        incident.alerts = [
            dataclasses.replace(a, status="ok", active=False, updated_at=now)
            for a in incident.alerts
        ]

    def resolve(self, incident_id: str) -> None:
        """The incident's alerts go ``ok``: BigPanda resolves it by itself."""
        incident = self.incidents[incident_id]
        self._close(incident)
        self._activity(incident, "incident_resolved_by_alerts", {}, None)

    def reopen(self, incident_id: str, status: str = "critical") -> None:
        """The incident's alerts fire again within the reopen window."""
        incident = self.incidents[incident_id]
        now = self._now_s()
        self._activity(incident, "incident_reopen", {}, None)
        incident.active = True
        incident.status = status
        if BP_STATUS_RANK.get(status, 0) > BP_STATUS_RANK.get(incident.severity, 0):
            incident.severity = status
        incident.end = None
        incident.updated_at = incident.changed_at = now
        incident.alerts = [
            dataclasses.replace(a, status=status, active=True, updated_at=now)
            for a in incident.alerts
        ]

    def merge(self, destination_id: str, source_id: str) -> None:
        """A person merges the source into the destination, applied (BigPanda's 202 and
        delay are the emulator's): the alerts move, the source resolves, both write
        their activity (as ``sync.emulators.bigpanda`` does)."""
        destination, source = self.incidents[destination_id], self.incidents[source_id]
        now = self._now_s()
        destination.alerts += source.alerts
        source.alerts = []
        source.active, source.status = False, "ok"
        source.end = source.updated_at = source.changed_at = now
        self._activity(
            source, "incident_merged_source", {"destination_incident": destination_id}, self.person
        )
        self._activity(
            destination,
            "incident_merged_destination",
            {"source_incidents": [source_id]},
            self.person,
        )
        destination.updated_at = destination.changed_at = now

    def _environment(self, environment_id: str) -> None:
        if environment_id not in {e.id for e in self.environments}:
            raise NotFoundError(
                "bigpanda", "Requested endpoint or resource is not found.", status=404
            )

    def _get(self, environment_id: str, incident_id: str) -> FakeBPIncident:
        incident = self.incidents.get(incident_id)
        if incident is None or incident.environment_id != environment_id:
            raise NotFoundError("bigpanda", f"incident {incident_id} not found", status=404)
        return incident

    def _check_tag(self, tag_id: str, value: str) -> None:
        """As BigPanda validates an incident tag write (docs 3.2, 4.5)."""
        definition = self.tag_definitions.get(tag_id)
        if definition is None:
            raise MissingTagError(
                "bigpanda",
                f"tag definition does not exist: NotExistTag: tag {tag_id!r} is not defined",
                status=404,
            )
        if not definition.active:
            raise PermanentError(
                "bigpanda", f"InactiveTag: tag {tag_id!r} is not active", status=400
            )
        levels = definition.ordered_list if definition.type == "Priority" else ()
        if levels and value not in levels:
            raise PermanentError(
                "bigpanda",
                f"EnumUniqueViolationConstraint: {value!r} is not a {tag_id} level",
                status=400,
            )

    # --- BigPandaAPI
    async def list_environments(self) -> list[BPEnvironment]:
        await self._enter("list_environments", self.clock)
        return list(self.environments)

    async def search_incidents(
        self,
        environment_id: str,
        *,
        query: str | None = None,
        from_s: int | None = None,
        to_s: int | None = None,
        sort_by: str | None = None,
        folder: str | None = None,
        page: int = 1,
        page_size: int = 10,
        expand_alerts: bool = False,
    ) -> BPSearchPage:
        await self._enter("search_incidents", self.clock, environment_id)
        limit = SEARCH_EXPANDED_PAGE_SIZE_MAX if expand_alerts else SEARCH_PAGE_SIZE_MAX
        if not 1 <= page_size <= limit or page < 1:
            raise PermanentError("bigpanda", f"search page {page} of size {page_size} refused")
        if (folder is not None and folder not in SEARCH_FOLDERS) or (
            sort_by is not None and sort_by not in SEARCH_SORTS
        ):
            raise PermanentError("bigpanda", f"search folder {folder!r} / sort {sort_by!r}")
        if query is not None:
            raise NotImplementedError("FakeBigPanda does not evaluate BPQL search queries")
        self._environment(environment_id)
        # as the API: incidents active at some point in [from, to]; sort_by start or
        # last_change (changed_at, the default), newest first, ties by id
        found = [
            i
            for i in self.incidents.values()
            if i.environment_id == environment_id
            and (to_s is None or i.start <= to_s)
            and (from_s is None or i.end is None or i.end >= from_s)
            and (folder is None or folder in i.folders())
        ]
        if sort_by == "start":
            found.sort(key=lambda i: (i.start, i.id), reverse=True)
        elif sort_by in (None, "last_change"):
            found.sort(key=lambda i: (i.changed_at, i.id), reverse=True)
        items = [i.snapshot(expand_alerts=expand_alerts) for i in found]
        start = (page - 1) * page_size
        return BPSearchPage(total=len(items), items=items[start : start + page_size])

    async def get_incident(
        self, environment_id: str, incident_id: str, *, expand_alerts: bool = True
    ) -> BPIncident:
        await self._enter("get_incident", self.clock, environment_id, incident_id)
        return self._get(environment_id, incident_id).snapshot(expand_alerts=expand_alerts)

    async def list_changed(
        self, environment_id: str, since_s: int | None, *, overlap_s: float, page_size: int
    ) -> list[BPIncident]:
        await self._enter("list_changed", self.clock, environment_id, since_s)
        # the client floors since - overlap to whole seconds (the search's ``from``).
        # KNOWN DIVERGENCE: the client's search ("active during [from, now]") leaves out
        # an incident resolved before the floor, whatever changed on it since (a tag
        # edit); this fake still lists it, because the engine has no other way to see
        # such a change yet and tests/engine/test_sync_machine.py expects it to sync
        # (tests/contract: test_bp_list_changed_leaves_out_incidents_resolved_before_...)
        floor = None if since_s is None else math.floor(since_s - overlap_s)
        found = [
            i.snapshot(expand_alerts=False)
            for i in self.incidents.values()
            if i.environment_id == environment_id and (floor is None or i.updated_at >= floor)
        ]
        found.sort(key=lambda i: (i.updated_at or 0, i.id))
        return found

    async def resolve_incident(self, environment_id: str, incident_id: str, comment: str) -> bool:
        await self._enter("resolve_incident", self.clock, environment_id, incident_id)
        incident = self._get(environment_id, incident_id)
        if not incident.active:
            return False
        self.writes.append(("resolve", incident_id, {"comment": comment}))
        self._close(incident)
        self._activity(incident, "incident_resolved_api", {"annotation": comment}, self.api_user)
        return True

    async def add_comment(self, environment_id: str, incident_id: str, text: str) -> None:
        await self._enter("add_comment", self.clock, environment_id, incident_id, text)
        incident = self._get(environment_id, incident_id)
        if not text:
            raise PermanentError("bigpanda", 'comment needs {"comment": "<text>"}', status=400)
        incident.comments.append(text)
        incident.updated_at = self._now_s()
        self._activity(incident, "incident_commented", {"comment": text}, self.api_user)
        self.writes.append(("comment", incident_id, {"text": text}))

    async def snooze_incident(
        self, environment_id: str, incident_id: str, end_time: int, comment: str | None = None
    ) -> None:
        await self._enter("snooze_incident", self.clock, environment_id, incident_id)
        incident = self._get(environment_id, incident_id)
        incident.snoozed_until = int(end_time)
        incident.updated_at = incident.changed_at = self._now_s()
        self._activity(incident, "incident_snoozed", {"end_time": end_time}, self.api_user)
        self.writes.append(("snooze", incident_id, {"end_time": str(end_time)}))

    async def assign_incident(self, environment_id: str, incident_id: str, user_id: str) -> None:
        await self._enter("assign_incident", self.clock, environment_id, incident_id)
        incident = self._get(environment_id, incident_id)
        incident.assignee = self.users.get(user_id) or BPUser(user_id, user_id)
        incident.updated_at = self._now_s()
        self._activity(incident, "incident_assigned", {"assignee": {"id": user_id}}, self.api_user)
        self.writes.append(("assign", incident_id, {"assignee": user_id}))

    async def unassign_incident(self, environment_id: str, incident_id: str) -> bool:
        await self._enter("unassign_incident", self.clock, environment_id, incident_id)
        incident = self._get(environment_id, incident_id)
        if incident.assignee is None:
            return False
        incident.assignee = None
        incident.updated_at = self._now_s()
        self._activity(incident, "incident_unassigned", {}, self.api_user)
        self.writes.append(("unassign", incident_id, {}))
        return True

    async def find_user(self, email: str) -> list[BPUser]:
        await self._enter("find_user", self.clock)
        return [u for u in self.users.values() if u.user_name.lower() == email.lower()]

    async def get_user(self, user_id: str) -> BPUser:
        await self._enter("get_user", self.clock)
        if user_id not in self.users:
            raise NotFoundError("bigpanda", f"user {user_id} not found", status=404)
        return self.users[user_id]

    async def unsnooze_incident(self, environment_id: str, incident_id: str) -> None:
        await self._enter("unsnooze_incident", self.clock, environment_id, incident_id)
        incident = self._get(environment_id, incident_id)
        if incident.snoozed_until is None:
            return
        incident.snoozed_until = None
        incident.updated_at = incident.changed_at = self._now_s()
        self._activity(incident, "incident_unsnoozed", {}, self.api_user)
        self.writes.append(("unsnooze", incident_id, {}))

    async def list_activities(
        self, incident_id: str, *, types: Sequence[str] | None = None
    ) -> list[BPActivity]:
        await self._enter("list_activities", self.clock, incident_id)
        incident = self.incidents.get(incident_id)
        if incident is None:
            raise NotFoundError("bigpanda", f"incident {incident_id} not found", status=404)
        return [a for a in reversed(incident.activities) if not types or a.type in types]

    async def get_tags(self, environment_id: str, incident_id: str) -> dict[str, str]:
        await self._enter("get_tags", self.clock, environment_id, incident_id)
        return dict(self._get(environment_id, incident_id).tags)

    async def set_tag(self, environment_id: str, incident_id: str, tag_id: str, value: str) -> None:
        await self.set_tags(environment_id, incident_id, {tag_id: value}, _method="set_tag")

    async def set_tags(
        self,
        environment_id: str,
        incident_id: str,
        values: Mapping[str, str],
        *,
        _method: str = "set_tags",
    ) -> None:
        if not values:
            return  # the client sends nothing
        await self._enter(_method, self.clock, environment_id, incident_id, dict(values))
        incident = self._get(environment_id, incident_id)
        for tag_id, value in values.items():  # all are checked before any is written
            self._check_tag(tag_id, value)
        if all(incident.tags.get(k) == v for k, v in values.items()):
            self.echoes.append(("tags", incident_id, dict(values)))
        self.writes.append(("tags", incident_id, dict(values)))
        incident.tags.update(values)
        incident.updated_at = self._now_s()
        for tag_id, value in values.items():
            self._activity(
                incident,
                "incident_tag_updated",
                {"tag_id": tag_id, "tag_value": value},
                self.api_user,
            )

    async def delete_tag(self, environment_id: str, incident_id: str, tag_id: str) -> None:
        await self._enter("delete_tag", self.clock, environment_id, incident_id, tag_id)
        incident = self._get(environment_id, incident_id)
        if tag_id not in self.tag_definitions:
            raise MissingTagError(
                "bigpanda",
                f"tag definition does not exist: NotExistTag: tag {tag_id!r} is not defined",
                status=404,
            )
        self.writes.append(("delete_tag", incident_id, {"tag": tag_id}))
        if incident.tags.pop(tag_id, None) is not None:
            incident.updated_at = self._now_s()
            self._activity(incident, "incident_tag_removed", {"tag_id": tag_id}, self.api_user)

    async def check_auth(self) -> None:
        await self._enter("check_auth", self.clock)

    async def list_tag_definitions(
        self, *, active: bool | None = None, tag_type: str | None = None
    ) -> list[BPTagDefinition]:
        await self._enter("list_tag_definitions", self.clock)
        return [
            d
            for d in self.tag_definitions.values()
            if (active is None or d.active == active) and (tag_type in (None, d.type))
        ]

    async def create_tag_definition(
        self, name: str, *, tag_type: str = "Text", description: str = "", active: bool = True
    ) -> BPTagDefinition:
        await self._enter("create_tag_definition", self.clock)
        if not 1 <= len(name) <= BP_TAG_NAME_MAX or tag_type not in BP_TAG_TYPES:
            raise PermanentError(
                "bigpanda", f"tag definition {name!r} ({tag_type}) refused", status=400
            )
        if name in self.tag_definitions:
            raise PermanentError("bigpanda", f"tag {name!r} already exists", status=409)
        definition = BPTagDefinition(name, name, tag_type, active, description)
        self.tag_definitions[name] = definition
        self.writes.append(("define_tag", name, {"type": tag_type}))
        return definition

    # --- journals (sync.journal)
    def comment(self, incident_id: str, text: str, *, by: str | None = None) -> str:
        """A person comments in BigPanda (not a bpsync write); returns the activity id."""
        incident = self.incidents[incident_id]
        incident.updated_at = self._now_s()
        self._activity(incident, "incident_commented", {"comment": text}, by or self.person)
        return incident.activities[-1].id
