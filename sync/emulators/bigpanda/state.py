"""The BigPanda emulator's state (:class:`State`) and the incident actions on it."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sync.clock import Clock, epoch_s
from sync.emulators.bigpanda.bpql import compile_bpql
from sync.emulators.bigpanda.fixtures import load_incident
from sync.emulators.bigpanda.ingest import apply_event, prepare_event
from sync.emulators.bigpanda.model import (
    DEFAULT_AIA_TAG,
    DEFAULT_USER_ID,
    STATUS_RANK,
    Activity,
    Alert,
    ApiError,
    Environment,
    Incident,
    IngestResult,
    Snooze,
    TagDefinition,
    TagValue,
)
from sync.emulators.bigpanda.search import SearchIndex
from sync.emulators.bigpanda.users import SEED_USERS, User


class State:
    """Everything the emulator holds in memory. Tests may read and mutate it directly
    (helpers below); every helper keeps ``updated_at``/``changed_at`` and activities
    exactly as the HTTP routes do."""

    assignee_email: bool = True
    """The incident's ``assignee`` carries the user's e-mail (docs 5.1 [C-code]); False:
    only ``user_id`` and ``name`` (the field is undocumented: a client must do without)."""

    def __init__(
        self,
        *,
        clock: Clock,
        seed: int | None,
        correlation_tag: str,
        correlation_window_s: int,
        reopen_window_s: int,
        max_alerts_per_incident: int,
        environments: list[tuple[str, str, str]],
        lowercase_status: bool,
        async_delay_s: float = 1.0,
        repeat_window_s: float = 10.0,
        aia_delay_s: float | None = None,
        aia_tag: str = DEFAULT_AIA_TAG,
    ) -> None:
        self.aia_delay_s = aia_delay_s
        """AI incident analysis: its summary tag is set this long after an incident
        forms (real AIA arrives 1-3 minutes later, docs 9); None = AIA off"""
        self.aia_tag = aia_tag
        self.async_delay_s = async_delay_s
        self.repeat_window_s = repeat_window_s
        self.listeners: list[Callable[[str, Incident], None]] = []
        """Called with (trigger, incident) on every webhook-worthy change
        (``incident#new``, ``#updated``, ``#reopen``, ``#closed``, ``#commented``,
        ``#snoozed``, ``incident-tag#upserted``/``#removed``)."""
        self.clock = clock
        self.seed = seed
        self.correlation_tag = correlation_tag
        self.correlation_window_s = correlation_window_s
        self.reopen_window_s = reopen_window_s
        self.max_alerts_per_incident = max_alerts_per_incident
        self.lowercase_status = lowercase_status
        self._env_specs = environments
        self.people: dict[str, User] = {user.id: user for user in SEED_USERS}
        """The organisation's users (the SCIM Users API, :mod:`.users`)."""
        self.users: dict[str, dict[str, str]] = {user.id: user.assignee() for user in SEED_USERS}
        self.reset()

    # ---- lifecycle

    def reset(self) -> None:
        """Forget every incident, alert and custom tag definition."""
        self._random = random.Random(self.seed)
        self.incidents: dict[str, Incident] = {}
        self.alerts: dict[str, Alert] = {}
        self.alerts_by_key: dict[str, str] = {}
        """incident_key -> id of the newest alert with that key."""
        self.open_by_correlation: dict[str, str] = {}
        """correlation value -> id of the active incident that new alerts may join."""
        self.snoozed: set[str] = set()
        self.pending: list[tuple[float, Callable[[], None]]] = []
        """Accepted merges/splits: (due on the monotonic clock, apply)."""
        self.recent_async: dict[tuple[str, ...], float] = {}
        self.search_index = SearchIndex()
        now = self.now()
        self.tag_definitions: dict[str, TagDefinition] = {
            "priority": TagDefinition(
                id="priority",
                name="priority",
                type="Priority",
                description="Incident priority (built in)",
                ordered_list=["P1", "P2", "P3", "P4", "P5"],
                created_at=now,
                updated_at=now,
            ),
        }
        self.environments: dict[str, Environment] = {}
        for env_id, name, flt in self._env_specs:
            self.environments[env_id] = Environment(env_id, name, flt, compile_bpql(flt))

    # ---- small utilities

    def now(self) -> int:
        return epoch_s(self.clock.now())

    def new_id(self, digits: int = 24) -> str:
        return f"{self._random.getrandbits(digits * 4):0{digits}x}"

    def display_status(self, status: str) -> str:
        return status if self.lowercase_status else status.title()

    def _touch(self, inc: Incident, *, changed: bool) -> None:
        now = self.now()
        inc.updated_at = max(inc.updated_at, now)
        if changed:
            inc.changed_at = max(inc.changed_at, now)
        inc.environments = tuple(
            env.id for env in self.environments.values() if env.matcher(inc, self)
        )
        self.search_index.touched(inc.id)

    def add_activity(
        self, inc: Incident, type_: str, params: dict[str, Any], *, by: str | None = None
    ) -> None:
        inc.activities.append(Activity(self.new_id(32), type_, self.now(), by, params))

    def emit(self, trigger: str, inc: Incident) -> None:
        for listener in self.listeners:
            listener(trigger, inc)

    def get(self, incident_id: str) -> Incident:
        """KeyError for an unknown id."""
        self.tick()
        return self.incidents[incident_id]

    def field_values(self, inc: Incident, name: str) -> list[str]:
        """Values of a BPQL field on an incident (incident fields, incident tags, then
        alert fields and tags)."""
        lower = name.casefold()
        if lower in {"status", "incident.status"}:
            return [inc.status]
        if lower in {"severity", "incident.severity"}:
            return [inc.severity]
        if lower in {"id", "incident_id", "incident.id"}:
            return [inc.id]
        if lower in {"active", "incident.active"}:
            return [str(inc.active).lower()]
        if lower.startswith("incident_tags."):
            tag = inc.tags.get(name.split(".", 1)[1])
            return [tag.value] if tag else []
        out: list[str] = []
        tag = inc.tags.get(name)
        if tag is not None:
            out.append(tag.value)
        for alert_id in inc.alert_ids:
            alert = self.alerts[alert_id]
            if lower in {"source_system", "primary_property", "incident_key", "description"}:
                out.append(str(getattr(alert, lower) or ""))
            value = alert.tags.get(name)
            if value is not None:
                out.append(value)
        return out

    # ---- JSON

    def incident_json(self, inc: Incident, *, expand_alerts: bool = False) -> dict[str, Any]:
        if expand_alerts:
            alerts: list[dict[str, Any]] = [self.alerts[a].to_json() for a in inc.alert_ids]
        else:
            alerts = [{"alert_id": a} for a in inc.alert_ids]
        snooze: dict[str, Any] = {"snoozed": False}
        if inc.snooze is not None:
            snooze = {
                "snoozed": True,
                "end_time": inc.snooze.end_time,
                "cancel_on_incident_updates": inc.snooze.cancel_on_incident_updates,
            }
        body: dict[str, Any] = {
            "id": inc.id,
            "status": self.display_status(inc.status),
            "severity": self.display_status(inc.severity),
            "active": inc.active,
            "flapping": inc.flapping,
            "shared": inc.shared,
            "snooze": snooze,
            "maintenance": None,
            "start": inc.start,
            "changed_at": inc.changed_at,
            "updated_at": inc.updated_at,
            "end": inc.end,
            "alerts": alerts,
            "environments": list(inc.environments),
            "folders": inc.folders(),
            "incident_tags": [{"tag_id": k, "tag_value": v.value} for k, v in inc.tags.items()],
            "correlation_matchers_log": [list(inc.correlation_log)],
        }
        if inc.assignee is not None:
            hidden = () if self.assignee_email else ("email",)
            body["assignee"] = {k: v for k, v in inc.assignee.items() if k not in hidden}
            body["assigner"] = dict(inc.assigner or {})
        for key in inc.raw_remove:
            body.pop(key, None)
        body.update(copy.deepcopy(inc.raw_overrides))
        return body

    def tag_json(self, inc: Incident, tag_id: str, tag: TagValue) -> dict[str, Any]:
        return {
            "tag_id": tag_id,
            "incident_id": inc.id,
            "tag_value": tag.value,
            "name": tag.name,
            "email": tag.email,
            "timestamp": tag.timestamp,
        }

    # ---- incident actions (shared by the routes and by tests)

    def resolve(self, incident_id: str, comments: str, *, by: str | None = None) -> bool:
        """Resolve by API; False when already resolved (the route's 409)."""
        inc = self.get(incident_id)
        if not inc.active:
            return False
        now = self.now()
        for alert_id in inc.alert_ids:
            alert = self.alerts[alert_id]
            if alert.active or alert.status != "ok":
                alert.status, alert.active, alert.end = "ok", False, now
                alert.changed_at = alert.updated_at = now
        self._close(inc, now)
        self.add_activity(inc, "incident_resolved_api", {"annotation": comments}, by=by)
        self._touch(inc, changed=True)
        self.emit("incident#closed", inc)
        return True

    def _close(self, inc: Incident, now: int) -> None:
        inc.active, inc.status, inc.end = False, "ok", now
        inc.snooze = None
        self.snoozed.discard(inc.id)
        value = inc.correlation_value
        if value is not None and self.open_by_correlation.get(value) == inc.id:
            del self.open_by_correlation[value]

    def comment(self, incident_id: str, text: str, *, by: str | None = DEFAULT_USER_ID) -> None:
        inc = self.get(incident_id)
        self.add_activity(inc, "incident_commented", {"comment": text}, by=by)
        self._touch(inc, changed=False)
        self.emit("incident#commented", inc)

    def check_tag(self, tag_id: str, value: Any) -> TagDefinition:
        """Validate a tag write; ApiError as the route answers it."""
        definition = self.tag_definitions.get(tag_id)
        if definition is None:
            raise ApiError(404, f"NotExistTag: tag {tag_id!r} is not defined")
        if not definition.active:
            raise ApiError(400, f"InactiveTag: tag {tag_id!r} is not active")
        if not isinstance(value, str):
            raise ApiError(400, f"TypeMismatch: tag_value of {tag_id!r} must be a string")
        if definition.type == "Priority" and definition.ordered_list:
            if value not in definition.ordered_list:
                raise ApiError(
                    400, f"EnumUniqueViolationConstraint: {value!r} is not a {tag_id} level"
                )
        elif definition.type.startswith("ClosedList"):
            if not (value.startswith("[") and value.endswith("]")):
                raise ApiError(400, f"TypeMismatch: {tag_id!r} values are written as [value]")
            items = [v.strip() for v in value[1:-1].split(",") if v.strip()]
            if definition.type == "ClosedListValuesSingle" and len(items) != 1:
                raise ApiError(400, f"TypeMismatch: {tag_id!r} takes a single value")
            bad = [v for v in items if v not in definition.values]
            if bad or not items:
                raise ApiError(400, f"EnumUniqueViolationConstraint: {bad or value!r} not allowed")
        return definition

    def set_tag(
        self,
        incident_id: str,
        tag_id: str,
        value: str,
        *,
        name: str = "bpsync",
        email: str = "bpsync@emulator.invalid",
        by: str | None = DEFAULT_USER_ID,
    ) -> None:
        """Set an incident tag as a user would (validates the definition)."""
        self.set_tags(incident_id, {tag_id: value}, name=name, email=email, by=by)

    def set_tags(
        self,
        incident_id: str,
        values: Mapping[str, Any],
        *,
        name: str = "bpsync",
        email: str = "bpsync@emulator.invalid",
        by: str | None = DEFAULT_USER_ID,
    ) -> None:
        inc = self.get(incident_id)
        for tag_id, value in values.items():
            self.check_tag(tag_id, value)
        now = self.now()
        for tag_id, value in values.items():
            inc.tags[tag_id] = TagValue(str(value), name, email, now)
            self.add_activity(
                inc, "incident_tag_updated", {"tag_id": tag_id, "tag_value": value}, by=by
            )
        self._touch(inc, changed=False)
        self.emit("incident-tag#upserted", inc)

    def delete_tag(
        self, incident_id: str, tag_id: str, *, by: str | None = DEFAULT_USER_ID
    ) -> None:
        """Remove one tag (no-op when unset); ApiError NotExistTag when undefined."""
        inc = self.get(incident_id)
        if tag_id not in self.tag_definitions:
            raise ApiError(404, f"NotExistTag: tag {tag_id!r} is not defined")
        if inc.tags.pop(tag_id, None) is not None:
            self.add_activity(inc, "incident_tag_removed", {"tag_id": tag_id}, by=by)
            self._touch(inc, changed=False)
            self.emit("incident-tag#removed", inc)

    def delete_all_tags(self, incident_id: str, *, by: str | None = DEFAULT_USER_ID) -> None:
        inc = self.get(incident_id)
        if not inc.tags:
            return
        for tag_id in list(inc.tags):
            del inc.tags[tag_id]
            self.add_activity(inc, "incident_tag_removed", {"tag_id": tag_id}, by=by)
        self._touch(inc, changed=False)
        self.emit("incident-tag#removed", inc)

    def define_tag(
        self,
        tag_id: str,
        *,
        type_: str = "Text",
        active: bool = True,
        values: Iterable[str] = (),
        description: str = "",
    ) -> TagDefinition:
        now = self.now()
        definition = TagDefinition(
            id=tag_id,
            name=tag_id,
            type=type_,
            description=description,
            active=active,
            ordered_list=list(values) if type_ == "Priority" else [],
            values=list(values) if type_.startswith("ClosedList") else [],
            created_at=now,
            updated_at=now,
        )
        self.tag_definitions[tag_id] = definition
        return definition

    def assign(self, incident_id: str, assignee: str, *, by: str = DEFAULT_USER_ID) -> None:
        inc = self.get(incident_id)
        user = self.users.get(assignee) or {
            "user_id": assignee,
            "name": assignee,
            "email": f"{assignee}@emulator.invalid",
        }
        inc.assignee = dict(user)
        inc.assigner = dict(self.users.get(by) or {"user_id": by, "name": by, "email": ""})
        self.add_activity(
            inc,
            "incident_assigned",
            {"assignee": {"id": user["user_id"], "username": user["name"]}},
            by=by,
        )
        self._touch(inc, changed=False)

    def unassign(self, incident_id: str, *, by: str = DEFAULT_USER_ID) -> bool:
        inc = self.get(incident_id)
        if inc.assignee is None:
            return False
        inc.assignee = inc.assigner = None
        self.add_activity(inc, "incident_unassigned", {}, by=by)
        self._touch(inc, changed=False)
        return True

    def snooze(
        self,
        incident_id: str,
        end_time: int,
        *,
        comment: str | None = None,
        cancel_on_incident_updates: bool = False,
        by: str | None = DEFAULT_USER_ID,
    ) -> None:
        inc = self.get(incident_id)
        inc.snooze = Snooze(end_time, cancel_on_incident_updates)
        self.snoozed.add(inc.id)
        params: dict[str, Any] = {"end_time": end_time}
        if comment:
            params["comment"] = comment
        self.add_activity(inc, "incident_snoozed", params, by=by)
        self._touch(inc, changed=True)
        self.emit("incident#snoozed", inc)

    def unsnooze(self, incident_id: str, *, by: str | None = DEFAULT_USER_ID) -> None:
        inc = self.incidents[incident_id]
        if inc.snooze is None:
            return
        inc.snooze = None
        self.snoozed.discard(inc.id)
        self.add_activity(inc, "incident_unsnoozed", {}, by=by)
        self._touch(inc, changed=True)

    def tick(self) -> None:
        """Apply what time has made due: delayed merges/splits, expired snoozes."""
        if self.pending:
            mono = self.clock.monotonic()
            due = [op for op in self.pending if op[0] <= mono]
            if due:
                self.pending = [op for op in self.pending if op[0] > mono]
                for _, apply in due:
                    apply()
        if not self.snoozed:
            return
        now = self.now()
        for inc_id in list(self.snoozed):
            snooze = self.incidents[inc_id].snooze
            if snooze is not None and snooze.end_time <= now:
                self.unsnooze(inc_id, by=None)

    # ---- merge / split (asynchronous: applied async_delay_s after acceptance)

    def _accept_async(self, key: tuple[str, ...], apply: Callable[[], None]) -> None:
        mono = self.clock.monotonic()
        last = self.recent_async.get(key)
        if last is not None and mono - last < self.repeat_window_s:
            raise ApiError(409, "An identical request is already being processed.")
        self.recent_async = {
            k: t for k, t in self.recent_async.items() if mono - t < self.repeat_window_s
        }
        self.recent_async[key] = mono
        self.pending.append((mono + self.async_delay_s, apply))
        if self.async_delay_s <= 0:
            self.tick()

    def merge(
        self,
        destination_id: str,
        source_ids: list[str],
        comment: str = "",
        *,
        by: str | None = DEFAULT_USER_ID,
    ) -> None:
        """Validate now, move the sources' alerts into the destination later."""
        dest = self.get(destination_id)
        if (
            not source_ids
            or destination_id in source_ids
            or len(set(source_ids)) != len(source_ids)
        ):
            raise ApiError(400, "source_incidents must be other, distinct incident ids")
        sources = []
        for source_id in source_ids:
            source = self.incidents.get(source_id)
            if source is None:
                raise ApiError(404, f"incident {source_id} not found")
            sources.append(source)
        total = len(dest.alert_ids) + sum(len(src.alert_ids) for src in sources)
        if total > self.max_alerts_per_incident:
            raise ApiError(
                400, f"a merged incident may hold at most {self.max_alerts_per_incident} alerts"
            )

        def apply() -> None:
            for source in sources:
                moved = [a for a in source.alert_ids if a not in dest.alert_ids]
                for alert_id in moved:
                    self.alerts[alert_id].incident_id = dest.id
                dest.alert_ids.extend(moved)
                dest.start = min(dest.start, source.start)
                source.alert_ids = []
                if source.active:
                    self._close(source, self.now())
                self.add_activity(
                    source,
                    "incident_merged_source",
                    {"destination_incident": dest.id, "comment": comment},
                    by=by,
                )
                self._touch(source, changed=True)
            self.add_activity(
                dest,
                "incident_merged_destination",
                {"source_incidents": [src.id for src in sources], "comment": comment},
                by=by,
            )
            if not dest.active and any(self.alerts[a].active for a in dest.alert_ids):
                self._reopen(dest)
            self.recompute(dest, changed=True)

        self._accept_async(("merge", dest.id, *sorted(source_ids)), apply)

    def split(
        self,
        incident_id: str,
        alert_ids: list[str],
        comment: str = "",
        *,
        by: str | None = DEFAULT_USER_ID,
    ) -> None:
        """Validate now; later move the alerts into a new incident."""
        source = self.get(incident_id)
        if not alert_ids or any(a not in source.alert_ids for a in alert_ids):
            raise ApiError(400, "alerts must be ids of this incident's alerts")
        if len(set(alert_ids)) >= len(source.alert_ids):
            raise ApiError(400, "a split must leave at least one alert behind")

        def apply() -> None:
            moving = [a for a in alert_ids if a in source.alert_ids]
            if not moving or len(moving) >= len(source.alert_ids):
                return  # changed meanwhile (merged, split): nothing sensible to do
            alerts = [self.alerts[a] for a in moving]
            now = self.now()
            new = Incident(
                id=self.new_id(),
                status="ok",
                severity="ok",
                active=True,
                start=min(a.start for a in alerts),
                end=None,
                changed_at=now,
                updated_at=now,
                correlation_value=source.correlation_value,
                correlation_log=list(source.correlation_log),
            )
            self.incidents[new.id] = new
            for alert in alerts:
                alert.incident_id = new.id
            new.alert_ids = moving
            source.alert_ids = [a for a in source.alert_ids if a not in moving]
            self.add_activity(
                source,
                "incident_splitted_source",
                {"destination_incident": new.id, "alerts": moving, "comment": comment},
                by=by,
            )
            self.add_activity(
                new,
                "incident_splitted_destination",
                {"source_incident": source.id, "alerts": moving, "comment": comment},
                by=by,
            )
            self.recompute(source, changed=True)
            if not any(a.active for a in alerts):
                new.end = now
                new.active = False
            self.recompute(new, changed=True)

        self._accept_async(("split", source.id, *sorted(alert_ids)), apply)

    # ---- alert ingest

    def ingest(self, body: Any) -> list[IngestResult]:
        """An ingest request body (single or batch form); ApiError 400 when invalid.
        Every event is validated before any is applied."""
        if not isinstance(body, dict):
            raise ApiError(400, "alert payload must be a JSON object")
        if "alerts" in body:
            events = body["alerts"]
            if not isinstance(events, list) or not events:
                raise ApiError(400, "alerts must be a non-empty array")
            app_key = body.get("app_key")
            merged = []
            for event in events:
                if not isinstance(event, dict):
                    raise ApiError(400, "every alert must be a JSON object")
                merged.append({"app_key": app_key, **event})
        else:
            merged = [body]
        prepared = [prepare_event(self, event) for event in merged]
        return [apply_event(self, event) for event in prepared]

    def ingest_alert(self, payload: Mapping[str, Any]) -> IngestResult:
        """Ingest one event (the same rules as ``POST /data/v2/alerts``); ApiError 400."""
        return self.ingest(dict(payload))[0]

    def _analyse_later(self, incident_id: str) -> None:
        if incident_id in self.incidents:  # gone by a reset: nothing to analyse
            self.analyse(incident_id)

    def analyse(self, incident_id: str) -> str:
        """AI incident analysis of one incident: its summary in the AIA tag (defined as
        BigPanda defines it when AIA is on), set as the analysis's own user would."""
        inc = self.get(incident_id)
        alerts = [self.alerts[a] for a in inc.alert_ids]
        active = [a for a in alerts if a.active]
        first = min(alerts, key=lambda a: (a.start, a.id)) if alerts else None
        title = (
            " / ".join(
                str(first.tags.get(p) or p)
                for p in (first.primary_property, first.secondary_property)
                if p
            )
            if first is not None
            else "no alert"
        )
        summary = (
            f"{len(active)} of {len(alerts)} alerts active, first {title}. "
            f"Probable root cause: {title} ({inc.status.lower()})."
        )
        if self.aia_tag not in self.tag_definitions:
            self.define_tag(self.aia_tag, description="AI incident analysis summary")
        self.set_tag(inc.id, self.aia_tag, summary, name="BigPanda AI", email="", by=None)
        return summary

    def _reopen(self, inc: Incident) -> None:
        inc.active, inc.end = True, None
        if inc.correlation_value is not None:
            self.open_by_correlation.setdefault(inc.correlation_value, inc.id)
        self.add_activity(inc, "incident_reopen", {})

    def recompute(self, inc: Incident, *, changed: bool, emit: bool = True) -> bool:
        """Status from the active alerts; auto-resolve when none is left. True when the
        incident was resolved now. Emits ``incident#closed`` or ``incident#updated``."""
        active = [self.alerts[a] for a in inc.alert_ids if self.alerts[a].active]
        status = max((a.status for a in active), key=STATUS_RANK.__getitem__, default="ok")
        if status != inc.status:
            changed = True
        inc.status = status
        if STATUS_RANK[status] > STATUS_RANK[inc.severity]:
            inc.severity = status
        resolved = False
        if inc.active and not active:
            self._close(inc, self.now())
            self.add_activity(inc, "incident_resolved_by_alerts", {})
            changed = resolved = True
        self._touch(inc, changed=changed)
        if emit and resolved:
            self.emit("incident#closed", inc)
        elif emit and changed:
            self.emit("incident#updated", inc)
        return resolved

    # ---- fixtures

    def load_incident(self, data: Mapping[str, Any]) -> Incident:
        """Load one fixture incident object (shape in the package docstring); ValueError."""
        return load_incident(self, data)

    # ---- search

    def search(
        self,
        env_id: str,
        *,
        query: str | None,
        from_s: int | None,
        to_s: int | None,
        sort_by: str,
        folder: str | None,
    ) -> list[str]:
        """Ids of the matching incidents in order (sort key, then id; newest first). The
        result is kept and brought up to date with the incidents changed since
        (:mod:`sync.emulators.bigpanda.search`): paging through a large result does not
        work every incident out again for each page."""
        self.tick()
        predicate = compile_bpql(query)

        def matches(inc_id: str) -> tuple[int, ...] | None:
            inc = self.incidents.get(inc_id)
            if inc is None or env_id not in inc.environments:
                return None
            if to_s is not None and inc.start > to_s:
                return None
            if from_s is not None and inc.end is not None and inc.end < from_s:
                return None
            if folder is not None and folder not in inc.folders():
                return None
            if not predicate(inc, self):
                return None
            return self._sort_key(inc, sort_by)

        params = (env_id, query, from_s, to_s, sort_by, folder)
        return self.search_index.search(params, matches, lambda: list(self.incidents))

    def _sort_key(self, inc: Incident, sort_by: str) -> tuple[int, ...]:
        if sort_by == "start":
            return (inc.start,)
        if sort_by == "status":
            return (STATUS_RANK[inc.status], inc.changed_at)
        if sort_by == "alerts":
            return (len(inc.alert_ids), inc.changed_at)
        return (inc.changed_at,)
