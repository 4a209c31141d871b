"""The BigPanda emulator's vocabulary: fixed ids and limits, errors, and the data it holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sync.constants import BPStatus

if TYPE_CHECKING:
    from sync.emulators.bigpanda.state import State

#: the incident tag the emulated AI incident analysis writes its summary into
DEFAULT_AIA_TAG = "ai_summary"
DEFAULT_ENVIRONMENT_ID = "5e1f0b1a2c3d4e5f60718293"
"""The seeded environment (filter ``*``: every incident)."""
ALL_INCIDENTS_ENVIRONMENT_ID = "5e1f0b1a2c3d4e5f60718200"
"""The built-in "All Incidents" environment."""
DEFAULT_USER_ID = "5e1f0b1a2c3d4e5f607182aa"
"""The user that owns the default API key."""

DEFAULT_API_KEY = "BPUbpsync-emulator"
DEFAULT_ORG_TOKEN = "bpsync-org-token"  # noqa: S105 (a well-known emulator token)

#: incident and alert statuses (sync.constants.BPStatus), least to most severe
STATUS_RANK = {
    BPStatus.OK.value: 0,
    BPStatus.UNKNOWN.value: 1,
    BPStatus.WARNING.value: 2,
    BPStatus.CRITICAL.value: 3,
}
INGEST_STATUSES = frozenset({*STATUS_RANK, "acknowledged"})
FOLDERS = frozenset({"active", "shared", "snoozed", "resolved", "unhandled", "maintenance"})
SORT_KEYS = frozenset({"last_change", "status", "start", "alerts"})
TAG_TYPES = frozenset({"Text", "MultiValue", "Priority", "ClosedListValuesMulti",
                       "ClosedListValuesSingle"})  # fmt: skip
PRIMARY_CANDIDATES = ("host", "service", "application", "device")
SECONDARY_CANDIDATES = ("check", "alert_name")
RESERVED_ALERT_KEYS = frozenset(
    {
        "app_key",
        "status",
        "timestamp",
        "description",
        "primary_property",
        "secondary_property",
        "incident_identifier",
    }
)
MAX_RESULTS = 10_000
MAX_PAGE_SIZE = 100
MAX_EXPANDED_PAGE_SIZE = 10
MAX_QUERY_CHARS = 2000
MAX_BATCH_RESOLVE_IDS = 500
MAX_EPOCH_S = 9_999_999_999  # 10 digits: anything longer is milliseconds
GENERIC_400 = "Call is missing parameters or malformed."
GENERIC_404 = "Requested endpoint or resource is not found."


class ApiError(Exception):
    """Becomes ``{"status": status, "errors": [message]}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"status": status, "errors": [message]}, status=status)


@dataclass
class TagValue:
    value: str
    name: str
    email: str
    timestamp: int


@dataclass
class TagDefinition:
    id: str
    name: str
    type: str = "Text"
    description: str = ""
    active: bool = True
    ordered_list: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    created_at: int = 0
    updated_at: int = 0

    def to_json(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.type == "Priority":
            config["ordered_list"] = list(self.ordered_list)
        if self.type.startswith("ClosedList"):
            config["incident_tag_values"] = list(self.values)
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "active": self.active,
            "config": config,
            "enrichment_config": {"items": [], "append_matching_items": False},
            "created_at": self.created_at,
            "created_by": DEFAULT_USER_ID,
            "updated_at": self.updated_at,
            "updated_by": DEFAULT_USER_ID,
        }


@dataclass
class Activity:
    id: str
    type: str
    timestamp: int
    created_by: str | None
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": self.timestamp,
            "created_by": self.created_by,
            "params": self.params,
        }


@dataclass
class Alert:
    id: str
    incident_id: str
    incident_key: str
    status: str
    active: bool
    start: int
    end: int | None
    changed_at: int
    updated_at: int
    last_event_at: int
    primary_property: str
    secondary_property: str | None
    source_system: str
    description: str
    tags: dict[str, str]
    last_event: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "alert_id": self.id,
            "status": self.status,
            "active": self.active,
            "start": self.start,
            "end": self.end,
            "changed_at": self.changed_at,
            "updated_at": self.updated_at,
            "last_event_at": self.last_event_at,
            "primary_property": self.primary_property,
            "secondary_property": self.secondary_property,
            "source_system": self.source_system,
            "incident_key": self.incident_key,
            "maintenance_plans": [],
            "description": self.description,
            "tags": [{"name": k, "value": v} for k, v in self.tags.items()],
        }


@dataclass
class Snooze:
    end_time: int
    cancel_on_incident_updates: bool


@dataclass
class Incident:
    id: str
    status: str
    """Lower case internally."""
    severity: str
    active: bool
    start: int
    end: int | None
    changed_at: int
    updated_at: int
    alert_ids: list[str] = field(default_factory=list)
    tags: dict[str, TagValue] = field(default_factory=dict)
    activities: list[Activity] = field(default_factory=list)
    snooze: Snooze | None = None
    shared: bool = False
    flapping: bool = False
    assignee: dict[str, str] | None = None
    assigner: dict[str, str] | None = None
    correlation_value: str | None = None
    correlation_log: list[dict[str, Any]] = field(default_factory=list)
    environments: tuple[str, ...] = ()
    raw_overrides: dict[str, Any] = field(default_factory=dict)
    """Fixture-only: keys merged over the served JSON (poison records)."""
    raw_remove: tuple[str, ...] = ()
    """Fixture-only: keys dropped from the served JSON (poison records)."""

    def folders(self) -> list[str]:
        if not self.active:
            return ["resolved"]
        out = ["active"]
        if self.shared:
            out.append("shared")
        if self.snooze is not None:
            out.append("snoozed")
        if self.assignee is not None:
            out.append("assigned")
        if not self.shared and self.assignee is None and self.snooze is None:
            out.append("unhandled")
        return out


@dataclass
class Environment:
    id: str
    name: str
    filter: str
    matcher: Callable[[Incident, State], bool]
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "filter": self.filter,
            "environment_group_id": None,
            "roles": [],
            "read_only_roles": [],
            "created_at": 0,
            "created_by": DEFAULT_USER_ID,
            "updated_at": 0,
            "updated_by": DEFAULT_USER_ID,
        }


@dataclass(frozen=True)
class IngestResult:
    """What one ingested event did (``state.ingest_alert``)."""

    alert_id: str | None
    incident_id: str | None
    action: str
    """``created``, ``joined``, ``updated``, ``reopened``, ``resolved``, ``duplicate``,
    ``ignored`` (an ``ok`` for an alert that does not exist)."""
