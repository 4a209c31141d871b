"""In-memory fakes of the two APIs, implementing the client Protocols (not mocks).

Both keep their data in plain dicts, stamp changes with the injected clock, and record
every write in ``writes``. Fault injection:

- ``fail_next(method, *errors)``: the next calls of ``method`` raise these errors, in order
  (a write that fails is NOT applied).
- ``before_call``: a callable run at the start of every call with (method, args): a test
  can inspect the store while a write is in flight (SPEC B15: recorded before sent).

Echo detection (SPEC B5): a write whose every value already equals the target's current
value is appended to ``echoes``; tests assert it stays empty.
"""

from __future__ import annotations

import dataclasses
import inspect
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sync.clients.base import (
    BPActivity,
    BPEnvironment,
    BPSearchPage,
    BPTagDefinition,
    SNRecord,
)
from sync.clock import Clock, epoch_s
from sync.constants import SN_DATETIME_FORMAT
from sync.errors import NotFoundError
from sync.model import BPAlert, BPIncident, SNFieldInfo
from sync.sizes import SN_DEFAULT_SIZES

Hook = Callable[[str, tuple[Any, ...]], Awaitable[None] | None]


class _Faults:
    def __init__(self) -> None:
        self._queued: dict[str, list[BaseException]] = {}
        self.before_call: Hook | None = None
        self.calls: list[tuple[str, float]] = []
        """(method, monotonic time) of every call, in order."""
        self._throttled: dict[str, float] = {}
        self.throttled_calls = 0

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
        until = self._throttled.get(method, 0.0)
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
            raise queued.pop(0)

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)


class FakeServiceNow(_Faults):
    """The ServiceNow Table API in memory (incident table plus look-up tables)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.incidents: dict[str, dict[str, str]] = {}
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.writes: list[tuple[str, str, dict[str, str]]] = []
        self.echoes: list[tuple[str, str, dict[str, str]]] = []
        self._number = 10000

    # --- helpers for tests
    def _stamp(self, record: dict[str, str]) -> None:
        record["sys_updated_on"] = self.clock.now().strftime(SN_DATETIME_FORMAT)
        record["sys_mod_count"] = str(int(record.get("sys_mod_count", "-1")) + 1)

    def add_incident(self, **values: str) -> dict[str, str]:
        """Create an incident directly (as a person or another tool would)."""
        return self._create(dict(values))

    def change(self, sys_id: str, **values: str) -> None:
        """A person edits the incident in ServiceNow (not recorded as a bpsync write)."""
        record = self.incidents[sys_id]
        record.update(values)
        if values.get("state") in {"6", "7", "8"}:
            record["active"] = "false" if values["state"] in {"7", "8"} else "true"
        elif "state" in values:
            record["active"] = "true"
        self._stamp(record)

    def _create(self, values: dict[str, str]) -> dict[str, str]:
        self._number += 1
        sys_id = uuid.uuid4().hex
        now = self.clock.now().strftime(SN_DATETIME_FORMAT)
        record = {
            "state": "1",
            "active": "true",
            "correlation_id": "",
            **values,
            "sys_id": sys_id,
            "number": f"INC{self._number:07d}",
            "sys_created_on": now,
        }
        self._stamp(record)
        self.incidents[sys_id] = record
        return record

    # --- ServiceNowAPI
    async def create_incident(self, fields: Mapping[str, str]) -> SNRecord:
        await self._enter("create_incident", self.clock, dict(fields))
        record = self._create(dict(fields))
        self.writes.append(("create", record["sys_id"], dict(fields)))
        return dict(record)

    async def get_incident(self, sys_id: str) -> SNRecord:
        await self._enter("get_incident", self.clock, sys_id)
        if sys_id not in self.incidents:
            raise NotFoundError("servicenow", "No Record found", status=404)
        return dict(self.incidents[sys_id])

    async def update_incident(self, sys_id: str, fields: Mapping[str, str]) -> SNRecord:
        await self._enter("update_incident", self.clock, sys_id, dict(fields))
        record = self.incidents.get(sys_id)
        if record is None:
            raise NotFoundError("servicenow", "No Record found", status=404)
        values = dict(fields)
        journal = {"work_notes", "comments"}
        compared = {k: v for k, v in values.items() if k not in journal}
        if compared and all(record.get(k) == v for k, v in compared.items()):
            self.echoes.append(("update", sys_id, values))
        self.writes.append(("update", sys_id, values))
        state = values.get("state")
        record.update({k: v for k, v in values.items() if k not in journal})
        if state is not None:
            record["active"] = "false" if state in {"7", "8"} else "true"
        self._stamp(record)
        return dict(record)

    async def delete_incident(self, sys_id: str) -> None:
        await self._enter("delete_incident", self.clock, sys_id)
        if self.incidents.pop(sys_id, None) is None:
            raise NotFoundError("servicenow", "No Record found", status=404)

    async def find_by_correlation_id(
        self, correlation_id: str, *, active_only: bool = False
    ) -> list[SNRecord]:
        await self._enter("find_by_correlation_id", self.clock, correlation_id)
        return [
            dict(r)
            for r in self.incidents.values()
            if r.get("correlation_id") == correlation_id
            and (not active_only or r.get("active") == "true")
        ]

    async def find_by_correlation_ids(
        self, correlation_ids: Sequence[str], *, active_only: bool = False
    ) -> list[SNRecord]:
        await self._enter("find_by_correlation_ids", self.clock, sorted(correlation_ids))
        wanted = set(correlation_ids)
        return [
            dict(r)
            for r in self.incidents.values()
            if r.get("correlation_id") in wanted and (not active_only or r.get("active") == "true")
        ]

    async def list_changed(
        self, since: datetime | None, *, overlap_s: float, fields: Sequence[str] | None = None
    ) -> list[SNRecord]:
        await self._enter("list_changed", self.clock, since)
        floor = None if since is None else since - timedelta(seconds=overlap_s)
        rows = [
            dict(r)
            for r in self.incidents.values()
            if r.get("correlation_id")
            and (floor is None or r["sys_updated_on"] >= floor.strftime(SN_DATETIME_FORMAT))
        ]
        rows.sort(key=lambda r: (r["sys_updated_on"], r["sys_id"]))
        return rows

    async def query(
        self, table: str, conditions: Mapping[str, str], *, fields: Sequence[str], limit: int
    ) -> list[SNRecord]:
        await self._enter("query", self.clock, table, dict(conditions))
        rows = [
            r
            for r in self.tables.get(table, [])
            if all(r.get(k) == v for k, v in conditions.items())
        ]
        return [{f: r.get(f, "") for f in fields} for r in rows[:limit]]

    async def check_auth(self) -> None:
        await self._enter("check_auth", self.clock)

    async def field_dictionary(self) -> dict[str, SNFieldInfo]:
        await self._enter("field_dictionary", self.clock)
        return {name: SNFieldInfo("string", size) for name, size in SN_DEFAULT_SIZES.items()}


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

    def snapshot(self, *, expand_alerts: bool) -> BPIncident:
        return BPIncident(
            id=self.id,
            status=self.status,
            active=self.active,
            start=self.start,
            end=self.end,
            changed_at=self.updated_at,
            updated_at=self.updated_at,
            environments=(self.environment_id,),
            tags=dict(self.tags),
            alerts=tuple(self.alerts) if expand_alerts else (),
            alert_ids=tuple(a.id for a in self.alerts),
        )


class FakeBigPanda(_Faults):
    """The BigPanda Incidents API v2 in memory."""

    def __init__(self, clock: Clock, environments: Sequence[str] = ("env1",)) -> None:
        super().__init__()
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
        self._next = 0

    # --- helpers for tests
    def _now_s(self) -> int:
        return epoch_s(self.clock.now())

    def add_incident(
        self,
        environment_id: str = "env1",
        *,
        status: str = "critical",
        tags: Mapping[str, str] | None = None,
        alert_tags: Mapping[str, str] | None = None,
    ) -> FakeBPIncident:
        self._next += 1
        inc_id = f"{self._next:024x}"
        now = self._now_s()
        alert = BPAlert(id=f"a{self._next}", status=status, start=now, tags=dict(alert_tags or {}))
        incident = FakeBPIncident(
            inc_id,
            environment_id,
            status=status,
            tags=dict(tags or {}),
            updated_at=now,
            start=now,
            alerts=[alert],
        )
        self.incidents[inc_id] = incident
        return incident

    def change_tag(self, incident_id: str, tag: str, value: str) -> None:
        """A person edits a tag in BigPanda (not a bpsync write)."""
        incident = self.incidents[incident_id]
        incident.tags[tag] = value
        incident.updated_at = self._now_s()

    def resolve(self, incident_id: str) -> None:
        incident = self.incidents[incident_id]
        incident.active = False
        incident.status = "ok"
        incident.end = incident.updated_at = self._now_s()

    def reopen(self, incident_id: str) -> None:
        incident = self.incidents[incident_id]
        incident.active = True
        incident.status = "critical"
        incident.end = None
        incident.updated_at = self._now_s()

    def _get(self, environment_id: str, incident_id: str) -> FakeBPIncident:
        incident = self.incidents.get(incident_id)
        if incident is None or incident.environment_id != environment_id:
            raise NotFoundError("bigpanda", f"incident {incident_id} not found", status=404)
        return incident

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
        # as the API: incidents active at some point in [from, to]; sort_by=start is
        # newest first (ties by id)
        found = [
            i
            for i in self.incidents.values()
            if i.environment_id == environment_id
            and (to_s is None or i.start <= to_s)
            and (from_s is None or i.end is None or i.end >= from_s)
        ]
        if sort_by == "start":
            found.sort(key=lambda i: (i.start, i.id), reverse=True)
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
        floor = None if since_s is None else since_s - overlap_s
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
        self.resolve(incident_id)
        if comment:
            incident.comments.append(comment)
        return True

    async def add_comment(self, environment_id: str, incident_id: str, text: str) -> None:
        await self._enter("add_comment", self.clock, environment_id, incident_id, text)
        self._get(environment_id, incident_id).comments.append(text)
        self.writes.append(("comment", incident_id, {"text": text}))

    async def list_activities(
        self, incident_id: str, *, types: Sequence[str] | None = None
    ) -> list[BPActivity]:
        await self._enter("list_activities", self.clock, incident_id)
        return []

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
        await self._enter(_method, self.clock, environment_id, incident_id, dict(values))
        incident = self._get(environment_id, incident_id)
        if values and all(incident.tags.get(k) == v for k, v in values.items()):
            self.echoes.append(("tags", incident_id, dict(values)))
        self.writes.append(("tags", incident_id, dict(values)))
        incident.tags.update(values)
        incident.updated_at = self._now_s()

    async def delete_tag(self, environment_id: str, incident_id: str, tag_id: str) -> None:
        await self._enter("delete_tag", self.clock, environment_id, incident_id, tag_id)
        self._get(environment_id, incident_id).tags.pop(tag_id, None)
        self.writes.append(("delete_tag", incident_id, {"tag": tag_id}))

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
        definition = BPTagDefinition(name, name, tag_type, active, description)
        self.tag_definitions.setdefault(name, definition)
        self.writes.append(("define_tag", name, {"type": tag_type}))
        return self.tag_definitions[name]
