"""A strict local emulator of the BigPanda API (docs/bigpanda-api.md, checklist section 12).

Routes served (all JSON; errors are ``{"status": N, "errors": ["..."]}``):

User API Key (``Authorization: Bearer <api key>``), rate limited per token per endpoint:

- ``GET    /resources/v2.0/environments`` -> 200, bare array of ``{id, name, filter, ...}``
- ``GET    /resources/v2.0/environments/{env_id}`` -> 200 environment object
- ``GET    /resources/v2.0/environments/{env_id}/incidents`` (search: ``query``, ``from``,
  ``to``, ``sort_by``, ``page``, ``page_size``, ``expand=alerts``, ``folder``) -> 200
  ``{"total", "items"}``
- ``GET    /resources/v2.0/environments/{env_id}/incidents/{incident_id}`` (``?expand=alerts``)
  -> 200 bare incident object
- ``POST   .../incidents/{incident_id}/resolve`` ``{"comments": "..."}`` -> 202; 409 when
  already resolved
- ``POST   .../incidents/{incident_id}/comments`` ``{"comment": "..."}`` -> 204
- ``PUT    .../incidents/{incident_id}/assignment`` ``{"assignee": "<user id>"}`` -> 204
- ``DELETE .../incidents/{incident_id}/assignment`` -> 204 (400 when not assigned)
- ``PUT    .../incidents/{incident_id}/snooze`` ``{"end_time", "comment"?,
  "cancel_on_incident_updates"?}`` -> 204
- ``DELETE .../incidents/{incident_id}/snooze`` -> 204
- ``POST   .../incidents/{incident_id}/tags/{tag_id}`` ``{"tag_value": "..."}`` -> 204
- ``GET    .../incidents/{incident_id}/tags/{tag_id}`` -> 200 ``{tag_id, incident_id,
  tag_value, name, email, timestamp}``
- ``DELETE .../incidents/{incident_id}/tags/{tag_id}`` -> 204
- ``POST   .../incidents/{incident_id}/tags`` ``[{"tag_id", "tag_value"}, ...]`` -> 204
- ``GET    .../incidents/{incident_id}/tags`` -> 200 array
- ``DELETE .../incidents/{incident_id}/tags`` -> 204
- ``POST   .../incidents/{incident_id}/merge`` ``{"source_incidents": [...], "comment"?}``
  -> 202, applied ``async_delay_s`` later; an identical repeat within
  ``repeat_window_s`` -> 409; more than 300 alerts in the result -> 400
- ``POST   .../incidents/{incident_id}/split`` ``{"alerts": [...], "comment"?}`` -> 202,
  later moves the alerts into a new incident
- ``POST   /resources/v2.0/environments/{env_id}/batch-resolve/alerts`` ``{"ids",
  "comments"?}`` -> 202 (1 request/s, at most 500 ids)
- ``GET    /resources/v2.0/incidents/{incident_id}/activities`` (``page``, ``per_page``
  default 20, ``types``) -> 200 ``{"items": [...]}``, newest first
- ``GET    /resources/v2.0/incidents/tags/definitions`` (``active``, ``type``) -> 200 array
- ``POST   /resources/v2.0/incidents/tags/definitions`` -> 201 definition
- ``GET    /resources/v2.0/incidents/tags/definitions/{tag_id}`` -> 200 definition
- ``PUT    /resources/v2.0/incidents/tags/definitions/{tag_id}`` -> 200 definition

Org Token (``Authorization: Bearer <org token>`` or ``?access_token=<org token>``), not
rate limited:

- ``POST   /data/v2/alerts``: one event, or ``{"app_key", "alerts": [...]}`` -> 201
  ``{"status": 201, "data": {}}``; 204 for an exact duplicate event
- ``GET    /resources/v1.0/incidents/{incident_id}`` -> 200 legacy v1 object (camelCase)
- ``POST   /resources/v1.0/incidents/{incident_id}`` ``{"resolved": true, "comments"}``
  -> 200 v1 object; 409 when already resolved (150 requests/minute per token)

Test hooks (NOT BigPanda behaviour, no auth, not counted):

- ``GET/POST /_emulator/stats|faults|reset`` from :mod:`sync.emulators.control`
- ``POST /_emulator/incidents``: load fixtures. Body: a JSON list (or one object) whose
  items are either an *alert set*, i.e. any object with ``app_key`` (an ingest payload,
  single or batch form, run through the normal correlation), or an *incident object*::

      {"id"?: 24-hex, "status": "critical", "active"?: bool, "severity"?, "start"?,
       "end"?, "changed_at"?, "updated_at"?, "incident_tags"?: {"priority": "P1"} or
       [{"tag_id", "tag_value"}], "assignee"?: "<user id>",
       "alerts": [{"id"?, "status", "primary_property"?: "host", "secondary_property"?,
                   "source_system"?, "incident_key"?, "start"?, "description"?,
                   "tags": {"host": "db-1"} or [{"name", "value"}]}],
       "raw_remove"?: ["alerts"], "raw_overrides"?: {"status": "exploded"}}

  Undefined incident tags of a fixture are defined as ``Text`` tags. Answers 201
  ``{"incidents": [ids]}``. The fields above are validated and normalised. To serve a
  *poison record* (what a strict emulator would never produce), ``raw_remove`` names
  top-level keys dropped from the incident's served JSON and ``raw_overrides`` is merged
  over it (after the removal), verbatim, e.g. ``{"raw_remove": ["alerts"],
  "raw_overrides": {"status": "exploded", "incident_tags": [{"tag_value": {"a": 1}}]}}``.
  Both apply wherever the v2 incident object is served (search, get, webhook payloads,
  ``GET /_emulator/incidents``), for the incident's whole life; the emulator's own
  logic (search filters, sorting, actions) keeps using the normalised fields.
- ``GET /_emulator/incidents``: every incident, expanded, with ``activities``.
- ``GET /_emulator/webhook``: AutoShare webhook config, recent ``deliveries`` and the
  ``dlq``; ``POST /_emulator/webhook`` changes the config (``{"url": ...}`` turns it on);
  ``DELETE /_emulator/webhook/dlq`` empties the DLQ.
- ``GET/POST /_emulator/config``: read or change ``rate_limit_per_s`` (null = off),
  ``rate_limit_shape`` (``token_bucket`` | ``sliding_window`` | ``fixed_window``),
  ``rate_limit_scope`` (``token_method_route`` | ``token_route`` | ``org_route``),
  ``batch_resolve_rate_limit_per_s``, ``reopen_window_s``, ``correlation_window_s``.
  A bad value is 400 ``{"error": "<one line>"}``; a new shape or scope forgets the
  limiter's counters.

Conventions chosen where the doc leaves a gap (options: see :func:`create_app`):

- incident ``status``/``severity`` are title case (``Critical``; ``lowercase_status=True``
  switches), alert statuses lower case; expanded alerts carry both ``id`` and
  ``alert_id``; ids are 24 hex digits (activities, correlation ids: 32);
- rate limits are, by default, token buckets per (token, method, route): ``rate`` tokens
  refilled at ``rate``/s; options ``rate_limit_shape`` (``sliding_window``,
  ``fixed_window``) and ``rate_limit_scope`` (``token_route``, ``org_route``) switch to
  harsher readings of the undocumented limiter (:mod:`sync.emulators.bplimits`); a 429
  is bare (no ``Retry-After``, no ``X-RateLimit-*``); alert ingest is not limited;
- search: results past the 10,000th are not served (empty ``items``, true ``total``);
  ``page_size`` above 100 (10 with ``expand=alerts``), ``per_page`` above 100, a ``from``
  or ``to`` of more than 10 digits (milliseconds) and an upper-case ``folder`` are 400;
  ties in ``sort_by`` are broken by id, newest/largest first;
- ``updated_at`` moves on every change; ``changed_at`` on status, severity, alert,
  snooze, resolve and reopen changes only (not on tags, comments, assignment);
- ingest: an event without a primary property is rejected with 400 (a batch is
  validated as a whole); an ``ok`` for an alert that does not exist is accepted and
  ignored; alerts correlate into the active incident whose ``correlation_tag`` value
  (default ``host``) they share, while they start within ``correlation_window_s`` of it;
- tags: a definition's id is its name; GET of an unset tag is 404, DELETE of an unset
  (but defined) tag is 204.

Tests mutate BigPanda through ``app[STATE_KEY]`` (:class:`State`): ``ingest_alert``,
``set_tag``/``set_tags``/``delete_tag``, ``define_tag``, ``comment``, ``resolve``,
``assign``, ``snooze``, ``merge``/``split``, ``load_incident``, ``get``, ``search``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from sync.clock import Clock, SystemClock, epoch_s
from sync.emulators.bplimits import (
    DEFAULT_RATE_LIMIT_SCOPE,
    DEFAULT_RATE_LIMIT_SHAPE,
    RATE_LIMIT_SCOPES,
    RATE_LIMIT_SHAPES,
    RateLimiter,
    check_choice,
)
from sync.emulators.control import (
    BANNER_KEY,
    EmulatorControl,
    Handler,
    route_template,
)

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

STATUS_RANK = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}
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


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- BPQL

_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>!=|=|\(|\)|,)"""
    r"""|(?P<word>[^\s=!(),"']+))"""
)

Predicate = Callable[[Incident, "State"], bool]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"BPQL: unexpected character at {pos}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")[1:-1]
            tokens.append(("str", re.sub(r"\\(.)", r"\1", raw)))
        elif m.group("op") is not None:
            tokens.append(("op", m.group("op")))
        else:
            tokens.append(("word", m.group("word")))
    return tokens


def _value_matcher(pattern: str) -> Callable[[str], bool]:
    wanted = pattern.casefold()
    if "*" not in wanted:
        return lambda value: value.casefold() == wanted
    regex = re.compile(".*".join(re.escape(p) for p in wanted.split("*")) + r"\Z", re.DOTALL)
    return lambda value: regex.match(value.casefold()) is not None


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ValueError("BPQL: unexpected end of query")
        self.pos += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "word" and tok[1].upper() == word:
            self.pos += 1
            return True
        return False

    def expect_op(self, op: str) -> None:
        tok = self.take()
        if tok != ("op", op):
            raise ValueError(f"BPQL: expected {op!r}, got {tok[1]!r}")

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise ValueError(f"BPQL: unexpected {self.peek()!r}")
        return pred

    def or_expr(self) -> Predicate:
        parts = [self.and_expr()]
        while self.keyword("OR"):
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda inc, st: any(p(inc, st) for p in parts)

    def and_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.keyword("AND"):
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda inc, st: all(p(inc, st) for p in parts)

    def unary(self) -> Predicate:
        if self.keyword("NOT"):
            inner = self.unary()
            return lambda inc, st: not inner(inc, st)
        if self.peek() == ("op", "("):
            self.take()
            inner = self.or_expr()
            self.expect_op(")")
            return inner
        return self.comparison()

    def value(self) -> str:
        kind, text = self.take()
        if kind == "op":
            raise ValueError(f"BPQL: expected a value, got {text!r}")
        return text

    def comparison(self) -> Predicate:
        kind, name = self.take()
        if kind != "word":
            raise ValueError(f"BPQL: expected a field name, got {name!r}")
        negate = False
        if self.keyword("NOT"):
            negate = True
            if not self.keyword("IN"):
                raise ValueError("BPQL: expected IN after NOT")
            values = self.in_list()
        elif self.keyword("IN"):
            values = self.in_list()
        else:
            kind, op = self.take()
            if kind != "op" or op not in {"=", "!="}:
                raise ValueError(f"BPQL: expected = or != after {name!r}")
            negate = op == "!="
            values = [self.value()]
        matchers = [_value_matcher(v) for v in values]
        field_name = name

        def pred(inc: Incident, st: State) -> bool:
            found = any(m(v) for v in st.field_values(inc, field_name) for m in matchers)
            return found != negate

        return pred

    def in_list(self) -> list[str]:
        self.expect_op("(")
        values = [self.value()]
        while self.peek() == ("op", ","):
            self.take()
            values.append(self.value())
        self.expect_op(")")
        return values


def compile_bpql(query: str | None) -> Predicate:
    """A BPQL subset: ``=``, ``!=``, ``IN``/``NOT IN``, ``AND``/``OR``/``NOT``, parentheses,
    quoted or bare values, ``*`` wildcards; ``*`` or empty alone matches everything.
    Values compare case-insensitively. Raises ValueError."""
    text = (query or "").strip()
    if text in {"", "*"}:
        return lambda inc, st: True
    return _Parser(_tokenize(text)).parse()


# --------------------------------------------------------------------------- state


class State:
    """Everything the emulator holds in memory. Tests may read and mutate it directly
    (helpers below); every helper keeps ``updated_at``/``changed_at`` and activities
    exactly as the HTTP routes do."""

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
        self.users: dict[str, dict[str, str]] = {
            DEFAULT_USER_ID: {
                "user_id": DEFAULT_USER_ID,
                "name": "bpsync",
                "email": "bpsync@emulator.invalid",
            }
        }
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
        self.version = 0
        self._search_cache: dict[tuple[Any, ...], list[str]] = {}
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
        self.version += 1

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
            body["assignee"] = dict(inc.assignee)
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
        prepared = [self._prepare(event) for event in merged]
        return [self._apply(event) for event in prepared]

    def ingest_alert(self, payload: Mapping[str, Any]) -> IngestResult:
        """Ingest one event (the same rules as ``POST /data/v2/alerts``); ApiError 400."""
        return self.ingest(dict(payload))[0]

    def _prepare(self, event: dict[str, Any]) -> dict[str, Any]:
        app_key = event.get("app_key")
        if not isinstance(app_key, str) or not app_key:
            raise ApiError(400, "app_key is required")
        status = event.get("status")
        if not isinstance(status, str) or status.lower() not in INGEST_STATUSES:
            raise ApiError(400, "status must be one of ok, critical, warning, unknown, "
                           "acknowledged")  # fmt: skip
        timestamp = event.get("timestamp")
        if timestamp is None:
            ts = self.now()
        elif isinstance(timestamp, int) and not isinstance(timestamp, bool):
            if timestamp > MAX_EPOCH_S:
                raise ApiError(400, "timestamp must be in epoch seconds")
            ts = timestamp
        else:
            raise ApiError(400, "timestamp must be an integer (epoch seconds)")
        tags: dict[str, str] = {}
        for key, value in event.items():
            if key in RESERVED_ALERT_KEYS:
                continue
            if isinstance(value, dict):
                raise ApiError(400, f"nested objects are not supported (property {key!r})")
            if isinstance(value, list):
                if any(isinstance(v, dict | list) for v in value):
                    raise ApiError(400, f"nested objects are not supported (property {key!r})")
                tags[key] = "|".join(str(v) for v in value)
            elif value is None:
                continue
            elif isinstance(value, bool):
                tags[key] = str(value).lower()
            else:
                tags[key] = str(value)
        primary = event.get("primary_property")
        if primary is None:
            primary = next((c for c in PRIMARY_CANDIDATES if c in tags), None)
        if not isinstance(primary, str) or primary not in tags:
            raise ApiError(400, "alert has no primary property (host, service, application, "
                           "device or the one named by primary_property)")  # fmt: skip
        secondary = event.get("secondary_property")
        if secondary is None:
            secondary = next((c for c in SECONDARY_CANDIDATES if c in tags), None)
        if secondary is not None and (not isinstance(secondary, str) or secondary not in tags):
            raise ApiError(400, "secondary_property names a property the alert lacks")
        identifier = event.get("incident_identifier")
        if identifier is not None and not isinstance(identifier, str):
            raise ApiError(400, "incident_identifier must be a string")
        description = event.get("description", "")
        if not isinstance(description, str) or len(description) > 2048:
            raise ApiError(400, "description must be a string of at most 2048 characters")
        key = identifier or "|".join(
            [tags[primary], tags[secondary] if secondary is not None else ""]
        )
        return {
            "app_key": app_key,
            "status": status.lower(),
            "timestamp": ts,
            "tags": tags,
            "primary": primary,
            "secondary": secondary,
            "incident_key": key,
            "description": description,
            "fingerprint": json.dumps(event, sort_keys=True, default=str) + f"@{ts}",
        }

    def _apply(self, ev: dict[str, Any]) -> IngestResult:
        key: str = ev["incident_key"]
        existing = self.alerts.get(self.alerts_by_key.get(key, ""))
        if existing is not None and existing.last_event == ev["fingerprint"]:
            return IngestResult(existing.id, existing.incident_id, "duplicate")
        now = self.now()
        if existing is not None:
            inc = self.incidents[existing.incident_id]
            if inc.active:
                return self._update_alert(inc, existing, ev, "updated")
            in_window = inc.end is not None and now - inc.end <= self.reopen_window_s
            status = ev["status"]
            if status == "ok" or (status == "acknowledged" and existing.status == "ok"):
                existing.last_event, existing.last_event_at = ev["fingerprint"], ev["timestamp"]
                return IngestResult(existing.id, inc.id, "ignored")
            if in_window:
                self._reopen(inc)
                return self._update_alert(inc, existing, ev, "reopened")
        if ev["status"] in {"ok", "acknowledged"}:
            return IngestResult(None, None, "ignored")
        return self._new_alert(ev)

    def _update_alert(
        self, inc: Incident, alert: Alert, ev: dict[str, Any], action: str
    ) -> IngestResult:
        now = self.now()
        status = alert.status if ev["status"] == "acknowledged" else ev["status"]
        status_changed = status != alert.status or alert.active != (status != "ok")
        alert.status, alert.active = status, status != "ok"
        alert.end = ev["timestamp"] if status == "ok" else None
        alert.tags = ev["tags"]
        alert.description = ev["description"] or alert.description
        alert.last_event_at = ev["timestamp"]
        alert.last_event = ev["fingerprint"]
        alert.updated_at = now
        if status_changed:
            alert.changed_at = now
        if status_changed and inc.snooze is not None and inc.snooze.cancel_on_incident_updates:
            self.unsnooze(inc.id, by=None)
        reopened = action == "reopened"
        resolved = self.recompute(inc, changed=status_changed or reopened, emit=not reopened)
        if reopened:
            self.emit("incident#reopen", inc)
        return IngestResult(alert.id, inc.id, "resolved" if resolved else action)

    def _new_alert(self, ev: dict[str, Any]) -> IngestResult:
        now = self.now()
        ts: int = ev["timestamp"]
        value = ev["tags"].get(self.correlation_tag)
        inc: Incident | None = None
        if value is not None:
            candidate = self.incidents.get(self.open_by_correlation.get(value, ""))
            if (
                candidate is not None
                and candidate.active
                and ts - candidate.start <= self.correlation_window_s
                and len(candidate.alert_ids) < self.max_alerts_per_incident
            ):
                inc = candidate
        action = "joined"
        if inc is None:
            action = "created"
            inc = Incident(
                id=self.new_id(),
                status=ev["status"],
                severity=ev["status"],
                active=True,
                start=ts,
                end=None,
                changed_at=now,
                updated_at=now,
                correlation_value=value,
            )
            inc.correlation_log.append(
                {
                    "time_window": self.correlation_window_s,
                    "tags": [{"name": self.correlation_tag, "value": value}]
                    if value is not None
                    else [],
                    "correlation_id": self.new_id(32),
                    "source_system": f"api.{ev['app_key']}",
                }
            )
            self.incidents[inc.id] = inc
            if value is not None:
                self.open_by_correlation[value] = inc.id
            self.add_activity(inc, "incident_created", {})
        alert = Alert(
            id=self.new_id(),
            incident_id=inc.id,
            incident_key=ev["incident_key"],
            status=ev["status"],
            active=True,
            start=ts,
            end=None,
            changed_at=now,
            updated_at=now,
            last_event_at=ts,
            primary_property=ev["primary"],
            secondary_property=ev["secondary"],
            source_system=f"api.{ev['app_key']}",
            description=ev["description"],
            tags=ev["tags"],
            last_event=ev["fingerprint"],
        )
        self.alerts[alert.id] = alert
        self.alerts_by_key[alert.incident_key] = alert.id
        inc.alert_ids.append(alert.id)
        inc.start = min(inc.start, ts)
        self.recompute(inc, changed=True, emit=action != "created")
        if action == "created":
            self.emit("incident#new", inc)
            if self.aia_delay_s is not None:
                due = self.clock.monotonic() + self.aia_delay_s
                self.pending.append((due, functools.partial(self._analyse_later, inc.id)))
        return IngestResult(alert.id, inc.id, action)

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
        """Load one fixture incident object (shape in the module docstring); ValueError."""
        now = self.now()
        inc_id = str(data.get("id") or self.new_id())
        if not re.fullmatch(r"[0-9a-f]{24}", inc_id):
            raise ValueError(f"incident id {inc_id!r} is not 24 hex digits")
        if inc_id in self.incidents:
            raise ValueError(f"incident {inc_id} already exists")
        raw_alerts = data.get("alerts") or []
        if not isinstance(raw_alerts, list):
            raise TypeError("alerts must be a list")
        raw_overrides = data.get("raw_overrides") or {}
        if not isinstance(raw_overrides, dict):
            raise TypeError("raw_overrides must be an object")
        raw_remove = data.get("raw_remove") or []
        if not isinstance(raw_remove, list) or not all(isinstance(k, str) for k in raw_remove):
            raise TypeError("raw_remove must be a list of key names")
        start = int(data.get("start", now))
        inc = Incident(
            id=inc_id,
            status="ok",
            severity=str(data.get("severity", "ok")).lower(),
            active=True,
            start=start,
            end=None,
            changed_at=int(data.get("changed_at", now)),
            updated_at=int(data.get("updated_at", now)),
            raw_overrides=copy.deepcopy(raw_overrides),
            raw_remove=tuple(raw_remove),
        )
        if inc.severity not in STATUS_RANK:
            raise ValueError(f"bad severity {inc.severity!r}")
        for raw in raw_alerts:
            if not isinstance(raw, dict):
                raise TypeError("every alert must be an object")
            alert = self._fixture_alert(inc, raw, now)
            inc.alert_ids.append(alert.id)
        status = str(data.get("status", "critical" if not raw_alerts else "")).lower()
        active_alerts = [self.alerts[a] for a in inc.alert_ids if self.alerts[a].active]
        computed = max((a.status for a in active_alerts), key=STATUS_RANK.__getitem__, default="ok")
        inc.status = status or computed
        if inc.status not in STATUS_RANK:
            raise ValueError(f"bad status {inc.status!r}")
        inc.active = bool(data.get("active", inc.status != "ok"))
        if STATUS_RANK[inc.status] > STATUS_RANK[inc.severity]:
            inc.severity = inc.status
        if not inc.active:
            inc.status = "ok"
            end = data.get("end")
            inc.end = int(end) if end is not None else now
        tags = data.get("incident_tags") or {}
        pairs = (
            [(t["tag_id"], t["tag_value"]) for t in tags]
            if isinstance(tags, list)
            else list(dict(tags).items())
        )
        for tag_id, value in pairs:
            if tag_id not in self.tag_definitions:
                self.define_tag(tag_id)
            inc.tags[str(tag_id)] = TagValue(str(value), "fixture", "", inc.updated_at)
        if data.get("assignee"):
            assignee = str(data["assignee"])
            inc.assignee = {"user_id": assignee, "name": assignee, "email": ""}
            inc.assigner = dict(self.users[DEFAULT_USER_ID])
        first_alert = self.alerts[inc.alert_ids[0]] if inc.alert_ids else None
        if first_alert is not None:
            inc.correlation_value = first_alert.tags.get(self.correlation_tag)
        if inc.active and inc.correlation_value is not None:
            self.open_by_correlation.setdefault(inc.correlation_value, inc.id)
        self.incidents[inc.id] = inc
        inc.activities.append(Activity(self.new_id(32), "incident_created", start, None, {}))
        inc.environments = tuple(
            env.id for env in self.environments.values() if env.matcher(inc, self)
        )
        self.version += 1
        return inc

    def _fixture_alert(self, inc: Incident, raw: Mapping[str, Any], now: int) -> Alert:
        raw_tags = raw.get("tags") or {}
        tags = (
            {str(t["name"]): str(t["value"]) for t in raw_tags}
            if isinstance(raw_tags, list)
            else {str(k): str(v) for k, v in dict(raw_tags).items()}
        )
        status = str(raw.get("status", "critical")).lower()
        if status not in STATUS_RANK:
            raise ValueError(f"bad alert status {status!r}")
        primary = str(
            raw.get("primary_property")
            or next((c for c in PRIMARY_CANDIDATES if c in tags), "host")
        )
        secondary = raw.get("secondary_property")
        key = str(
            raw.get("incident_key")
            or f"{tags.get(primary, '')}|{tags.get(secondary, '') if secondary else ''}"
        )
        start = int(raw.get("start", inc.start))
        alert = Alert(
            id=str(raw.get("id") or raw.get("alert_id") or self.new_id()),
            incident_id=inc.id,
            incident_key=key,
            status=status,
            active=bool(raw.get("active", status != "ok")),
            start=start,
            end=raw.get("end"),
            changed_at=int(raw.get("changed_at", now)),
            updated_at=int(raw.get("updated_at", now)),
            last_event_at=int(raw.get("last_event_at", start)),
            primary_property=primary,
            secondary_property=str(secondary) if secondary else None,
            source_system=str(raw.get("source_system", "api.fixture")),
            description=str(raw.get("description", "")),
            tags=tags,
        )
        self.alerts[alert.id] = alert
        self.alerts_by_key[key] = alert.id
        return alert

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
        """Ids of the matching incidents in order; cached until the next mutation, so
        paging through a large result costs one sort, not one per page."""
        self.tick()
        cache_key = (self.version, env_id, query, from_s, to_s, sort_by, folder)
        cached = self._search_cache.get(cache_key)
        if cached is not None:
            return cached
        predicate = compile_bpql(query)
        rows: list[tuple[tuple[int, ...], str]] = []
        for inc in self.incidents.values():
            if env_id not in inc.environments:
                continue
            if to_s is not None and inc.start > to_s:
                continue
            if from_s is not None and inc.end is not None and inc.end < from_s:
                continue
            if folder is not None and folder not in inc.folders():
                continue
            if not predicate(inc, self):
                continue
            rows.append((self._sort_key(inc, sort_by), inc.id))
        rows.sort(reverse=True)
        ids = [inc_id for _, inc_id in rows]
        if len(self._search_cache) > 32 or any(k[0] != self.version for k in self._search_cache):
            self._search_cache.clear()
        self._search_cache[cache_key] = ids
        return ids

    def _sort_key(self, inc: Incident, sort_by: str) -> tuple[int, ...]:
        if sort_by == "start":
            return (inc.start,)
        if sort_by == "status":
            return (STATUS_RANK[inc.status], inc.changed_at)
        if sort_by == "alerts":
            return (len(inc.alert_ids), inc.changed_at)
        return (inc.changed_at,)


# --------------------------------------------------------------------------- webhooks

WEBHOOK_TRIGGERS = frozenset(
    {
        "incident#new",
        "incident#updated",
        "incident#reopen",
        "incident#closed",
        "incident#commented",
        "incident#snoozed",
        "incident-tag#upserted",
        "incident-tag#removed",
    }
)
#: comment updates are off by default (docs section 7.2)
DEFAULT_WEBHOOK_TRIGGERS = WEBHOOK_TRIGGERS - {"incident#commented"}
_WEBHOOK_LOG_SIZE = 1000


@dataclass
class WebhookConfig:
    """AutoShare to one notifications-webhook callback (off while ``url`` is None)."""

    url: str | None = None
    envelope: str = "incident"
    """``incident``: ``{"incident": {...}, "trigger", "environment", "sender"}``;
    ``bare``: the incident object itself, with ``event_type``."""
    headers: dict[str, str] = field(default_factory=dict)
    """Custom headers (auth, ``x-bp-*``) sent as they are."""
    triggers: frozenset[str] = DEFAULT_WEBHOOK_TRIGGERS
    environments: frozenset[str] | None = None
    """AutoShare rule: share incidents of these environments (None: all)."""
    share_target: str = "webhook.bpsync"
    retry_interval_s: float = 900.0
    attempts: int = 6
    dlq_after: int = 5
    timeout_s: float = 10.0

    def update(self, data: Mapping[str, Any]) -> None:
        """Apply a partial JSON config; ValueError/TypeError for a bad one."""
        unknown = set(data) - {
            "url", "envelope", "headers", "triggers", "environments", "share_target",
            "retry_interval_s", "attempts", "dlq_after", "timeout_s",
        }  # fmt: skip
        if unknown:
            raise ValueError(f"unknown webhook keys: {sorted(unknown)}")
        if "url" in data:
            self.url = None if data["url"] is None else str(data["url"])
        if "envelope" in data:
            if data["envelope"] not in {"incident", "bare"}:
                raise ValueError("envelope must be incident or bare")
            self.envelope = str(data["envelope"])
        if "headers" in data:
            self.headers = {str(k): str(v) for k, v in dict(data["headers"]).items()}
        if "triggers" in data:
            triggers = frozenset(str(t) for t in data["triggers"])
            if triggers - WEBHOOK_TRIGGERS:
                raise ValueError(f"unknown triggers: {sorted(triggers - WEBHOOK_TRIGGERS)}")
            self.triggers = triggers
        if "environments" in data:
            envs = data["environments"]
            self.environments = None if envs is None else frozenset(str(e) for e in envs)
        if "share_target" in data:
            self.share_target = str(data["share_target"])
        for name in ("retry_interval_s", "timeout_s"):
            if name in data:
                setattr(self, name, float(data[name]))
        for name in ("attempts", "dlq_after"):
            if name in data:
                setattr(self, name, max(1, int(data[name])))

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "envelope": self.envelope,
            "headers": dict(self.headers),
            "triggers": sorted(self.triggers),
            "environments": None if self.environments is None else sorted(self.environments),
            "share_target": self.share_target,
            "retry_interval_s": self.retry_interval_s,
            "attempts": self.attempts,
            "dlq_after": self.dlq_after,
            "timeout_s": self.timeout_s,
        }


class Webhooks:
    """Sends the incident (alerts expanded) to the callback on each trigger.

    Only shared incidents get updates; an ``incident#new`` (or a reopen) of an incident
    in a matching environment shares it (``incident_shared`` activity, ``shared``
    folder). Deliveries retry on status >= 501 and on socket errors, every
    ``retry_interval_s`` on the injected clock, up to ``attempts``; after ``dlq_after``
    failed attempts (or at once for other non-2xx answers) the delivery is in the DLQ;
    when the last attempt fails it is marked ``notified`` (BigPanda support would be).
    """

    def __init__(self, state: State, clock: Clock, config: WebhookConfig) -> None:
        self.state = state
        self.clock = clock
        self.config = config
        self.log: deque[dict[str, Any]] = deque(maxlen=_WEBHOOK_LOG_SIZE)
        self.dlq: list[dict[str, Any]] = []
        self._backlog: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._running = False
        state.listeners.append(self.on_event)

    def on_event(self, trigger: str, inc: Incident) -> None:
        cfg = self.config
        if cfg.url is None:
            return
        if cfg.environments is not None and not cfg.environments.intersection(inc.environments):
            return
        if trigger in {"incident#new", "incident#reopen"} and not inc.shared:
            first = not any(a.type == "incident_shared" for a in inc.activities)
            inc.shared = True
            self.state.add_activity(
                inc,
                "incident_shared",
                {
                    "share_target": cfg.share_target,
                    "share_auto": True,
                    "escalation_id": self.state.new_id(),
                    "firstTime": first,
                },
            )
            self.state._touch(inc, changed=False)
        if not inc.shared or trigger not in cfg.triggers:
            return
        if trigger == "incident#updated" and inc.snooze is not None:
            return  # updates are suppressed while snoozed (docs section 7.2)
        body = self.state.incident_json(inc, expand_alerts=True)
        env_id = next(iter(inc.environments), None)
        payload: dict[str, Any]
        if cfg.envelope == "bare":
            payload = {**body, "event_type": trigger}
        else:
            payload = {
                "incident": body,
                "trigger": trigger,
                "environment": env_id,
                "sender": "autoshare@bigpanda.io",
            }
        delivery: dict[str, Any] = {
            "id": self.state.new_id(32),
            "trigger": trigger,
            "incident_id": inc.id,
            "url": cfg.url,
            "payload": payload,
            "attempts": 0,
            "status": None,
            "error": None,
            "result": "pending",
            "notified": False,
        }
        self.log.append(delivery)
        self._backlog.append(delivery)
        self._flush()

    def _flush(self) -> None:
        if not self._running:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        backlog, self._backlog = self._backlog, []
        for delivery in backlog:
            task = loop.create_task(self._deliver(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def start(self, app: web.Application) -> None:
        self._running = True
        self._flush()

    async def stop(self, app: web.Application) -> None:
        self._running = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def idle(self) -> None:
        """Wait until every delivery in flight has finished (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver(self, delivery: dict[str, Any]) -> None:
        cfg = self.config
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {**cfg.headers, "X-BP-Trigger": delivery["trigger"]}
        for attempt in range(1, cfg.attempts + 1):
            delivery["attempts"] = attempt
            retryable = True
            try:
                async with self._session.post(
                    delivery["url"],
                    json=delivery["payload"],
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                ) as resp:
                    delivery["status"] = resp.status
                    await resp.read()
                if 200 <= resp.status < 300:
                    delivery["result"] = "delivered"
                    return
                retryable = resp.status >= 501
                delivery["error"] = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                delivery["status"] = None
                delivery["error"] = f"{type(exc).__name__}: {exc}"
            if (attempt >= cfg.dlq_after or not retryable) and delivery not in self.dlq:
                self.dlq.append(delivery)
            if not retryable:
                delivery["result"] = "failed"
                return
            if attempt < cfg.attempts:
                await self.clock.sleep(cfg.retry_interval_s)
        delivery["result"] = "failed"
        delivery["notified"] = True


# --------------------------------------------------------------------------- app

STATE_KEY: web.AppKey[State] = web.AppKey("bigpanda_state", State)
WEBHOOKS_KEY: web.AppKey[Webhooks] = web.AppKey("bigpanda_webhooks", Webhooks)
CONFIG_KEY: web.AppKey[dict[str, Any]] = web.AppKey("bigpanda_config", dict)
LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("bigpanda_limiter", RateLimiter)

_V2_PREFIX = "/resources/v2.0/"
_V1_PREFIX = "/resources/v1.0/"
_ALERTS_PATH = "/data/v2/alerts"
_INCIDENT = "/resources/v2.0/environments/{env_id}/incidents/{incident_id}"

_KNOWN_OPTIONS = frozenset(
    {
        "aia_delay_s",
        "aia_tag",
        "correlation_tag",
        "correlation_window_s",
        "reopen_window_s",
        "max_alerts_per_incident",
        "environments",
        "lowercase_status",
        "api_keys",
        "org_tokens",
        "rate_limit_burst",
        "rate_limit_shape",
        "rate_limit_scope",
        "batch_resolve_rate_limit_per_s",
        "async_delay_s",
        "repeat_window_s",
        "webhook",
    }
)


def create_app(
    *,
    clock: Clock | None = None,
    api_key: str = DEFAULT_API_KEY,
    org_token: str = DEFAULT_ORG_TOKEN,
    rate_limit_per_s: float | None = 5.0,
    seed: int | None = None,
    **options: Any,
) -> web.Application:
    """The BigPanda emulator app.

    ``rate_limit_per_s`` None turns the rate limits off (also at run time through
    ``POST /_emulator/config``). Options:

    - ``correlation_tag`` (``"host"``): alerts whose tag of that name is equal are
      correlated into one active incident ...
    - ``correlation_window_s`` (7200): ... while the alert starts within this many
      seconds of the incident's start;
    - ``reopen_window_s`` (1800): an event for a resolved incident's alert
      (same ``incident_key``) reopens it within this many seconds of its ``end``;
      afterwards a new incident is created;
    - ``max_alerts_per_incident`` (300);
    - ``environments``: extra environments, a list of ``{"id"?, "name", "filter"}``
      (default: one environment ``Production`` with id :data:`DEFAULT_ENVIRONMENT_ID`
      and filter ``*``; "All Incidents" always exists);
    - ``lowercase_status`` (False): incident ``status``/``severity`` in lower case;
    - ``api_keys``: extra User API Keys, a list (access to every environment) or a
      mapping key -> list of environment ids it may use (others answer 403);
    - ``org_tokens``: extra accepted org tokens;
    - ``async_delay_s`` (1.0): merges and splits are applied this long after their 202
      (on the injected clock, at the next request);
    - ``repeat_window_s`` (10.0): an identical merge/split within it answers 409;
    - ``webhook``: a :class:`WebhookConfig` JSON (``{"url", "envelope", "headers",
      "triggers", "environments", "retry_interval_s", "attempts", "dlq_after"}``) to
      simulate AutoShare to a notifications webhook (off by default; also
      ``POST /_emulator/webhook``);
    - ``rate_limit_burst`` (= the rate): bucket size of the ``token_bucket`` shape;
    - ``rate_limit_shape`` (``"token_bucket"``): the limiter's algorithm, one of
      ``"token_bucket"``, ``"sliding_window"`` (at most ``rate`` accepted requests in any
      trailing second), ``"fixed_window"`` (at most ``rate`` per calendar second of
      ``clock.now()``); v1 (150/min) and batch resolve (1/s) use the same shape;
    - ``rate_limit_scope`` (``"token_method_route"``): what one counter covers, one of
      ``"token_method_route"``, ``"token_route"`` (GET and POST of a path share it),
      ``"org_route"`` (every API key shares it);
    - ``batch_resolve_rate_limit_per_s`` (1.0);
    - ``aia_delay_s`` (None = off): AI incident analysis; this long after an incident
      forms (on the injected clock, at the next request) its summary is set in the
      ``aia_tag`` (``"ai_summary"``) incident tag, the tag defined (Text) on first use;
      ``POST .../incidents/{id}/ai/analysis`` (docs 4) runs it at once.

    Shapes and scopes are described in :mod:`sync.emulators.bplimits`; an unknown value
    is a ValueError. Both can be changed at run time through ``POST /_emulator/config``.
    """
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"unknown BigPanda emulator options: {sorted(unknown)}")
    clock = clock or SystemClock()
    env_specs: list[tuple[str, str, str]] = [
        (DEFAULT_ENVIRONMENT_ID, "Production", "*"),
        (ALL_INCIDENTS_ENVIRONMENT_ID, "All Incidents", "*"),
    ]
    for i, spec in enumerate(options.get("environments") or []):
        env_id = str(spec.get("id") or f"{0x5E1F0B1A2C3D4E5F60718300 + i:024x}")
        filter_text = str(spec.get("filter", "*"))
        compile_bpql(filter_text)  # fail early on a bad filter
        env_specs.append((env_id, str(spec["name"]), filter_text))
    state = State(
        clock=clock,
        seed=seed,
        correlation_tag=str(options.get("correlation_tag", "host")),
        correlation_window_s=int(options.get("correlation_window_s", 7200)),
        reopen_window_s=int(options.get("reopen_window_s", 1800)),
        max_alerts_per_incident=int(options.get("max_alerts_per_incident", 300)),
        environments=env_specs,
        lowercase_status=bool(options.get("lowercase_status", False)),
        async_delay_s=float(options.get("async_delay_s", 1.0)),
        repeat_window_s=float(options.get("repeat_window_s", 10.0)),
        aia_delay_s=(None if options.get("aia_delay_s") is None else float(options["aia_delay_s"])),
        aia_tag=str(options.get("aia_tag", DEFAULT_AIA_TAG)),
    )
    config: dict[str, Any] = {
        "rate_limit_per_s": rate_limit_per_s,
        "rate_limit_burst": options.get("rate_limit_burst"),
        "batch_resolve_rate_limit_per_s": float(options.get("batch_resolve_rate_limit_per_s", 1.0)),
    }
    api_keys = {api_key: DEFAULT_USER_ID}
    key_envs: dict[str, frozenset[str] | None] = {api_key: None}
    extra_keys = options.get("api_keys") or []
    for extra in extra_keys:
        api_keys[str(extra)] = DEFAULT_USER_ID
        envs = extra_keys[extra] if isinstance(extra_keys, Mapping) else None
        key_envs[str(extra)] = None if envs is None else frozenset(str(e) for e in envs)
    config["key_environments"] = key_envs
    org_tokens = {org_token, *(str(t) for t in options.get("org_tokens") or [])}
    config["api_keys"] = api_keys
    limiter = RateLimiter(
        clock,
        shape=options.get("rate_limit_shape", DEFAULT_RATE_LIMIT_SHAPE),
        scope=options.get("rate_limit_scope", DEFAULT_RATE_LIMIT_SCOPE),
    )

    def on_reset() -> None:
        state.reset()
        limiter.clear()
        webhooks.log.clear()
        webhooks.dlq.clear()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except web.HTTPNotFound:
            return error_response(404, GENERIC_404)
        except web.HTTPMethodNotAllowed:
            return error_response(405, "Method not allowed.")

    @web.middleware
    async def auth_and_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_emulator/"):
            return await handler(request)
        token = _bearer(request)
        state.tick()
        if path.startswith(_V1_PREFIX):
            if token not in org_tokens:
                raise ApiError(401, "Unauthorized: missing or invalid org token.")
            if config["rate_limit_per_s"] is not None and not limiter.allow(
                limiter.v1_key(token), 150 / 60, burst=150.0, window=60.0
            ):
                return web.Response(status=429)
            return await handler(request)
        if path == _ALERTS_PATH:
            token = token or request.query.get("access_token")
            if token not in org_tokens:
                raise ApiError(401, "Unauthorized: missing or invalid org token.")
            return await handler(request)
        if path.startswith(_V2_PREFIX):
            if token is None or token not in api_keys:
                raise ApiError(401, "Unauthorized: missing or invalid API key.")
            template = route_template(request)
            rate = config["rate_limit_per_s"]
            if template.endswith("/batch-resolve/alerts") and rate is not None:
                rate = config["batch_resolve_rate_limit_per_s"]
            if rate is not None and template != "unmatched":
                burst = float(config["rate_limit_burst"] or max(1.0, rate))
                key = limiter.key(token, request.method, template)
                if not limiter.allow(key, float(rate), burst=burst):
                    # BigPanda's 429 is bare: no Retry-After, no X-RateLimit-* headers
                    return web.Response(status=429)
            return await handler(request)
        raise ApiError(404, GENERIC_404)

    webhook_config = WebhookConfig()
    webhook_config.update(options.get("webhook") or {})
    webhooks = Webhooks(state, clock, webhook_config)

    app = web.Application(middlewares=[errors, auth_and_limits])
    app[STATE_KEY] = state
    app[WEBHOOKS_KEY] = webhooks
    app.on_startup.append(webhooks.start)
    app.on_cleanup.append(webhooks.stop)
    app[CONFIG_KEY] = config
    app[LIMITER_KEY] = limiter
    EmulatorControl(
        error_response=error_response, on_reset=on_reset, clock=clock, seed=seed
    ).install(app)
    app[BANNER_KEY] = [
        f"API key (User API Key, /resources/v2.0): {api_key}",
        f"Org token (/data/v2/alerts): {org_token}",
        f"Environment: {DEFAULT_ENVIRONMENT_ID} (Production); "
        f"{ALL_INCIDENTS_ENVIRONMENT_ID} (All Incidents)",
    ]
    _add_routes(app.router)
    return app


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# --------------------------------------------------------------------------- handlers


def _state(request: web.Request) -> State:
    return request.app[STATE_KEY]


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, GENERIC_400) from None


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"\d+", raw):
        raise ApiError(400, f"{name} must be a non-negative integer")
    return int(raw)


def _allowed_environments(request: web.Request) -> frozenset[str] | None:
    """The environments the request's API key may use (None: all)."""
    key_envs: dict[str, frozenset[str] | None] = request.app[CONFIG_KEY]["key_environments"]
    return key_envs.get(_bearer(request) or "")


def _environment(request: web.Request) -> Environment:
    env = _state(request).environments.get(request.match_info["env_id"])
    if env is None:
        raise ApiError(404, GENERIC_404)
    allowed = _allowed_environments(request)
    if allowed is not None and env.id not in allowed:
        raise ApiError(403, "Access denied: no permission for this environment.")
    return env


def _incident(request: web.Request) -> Incident:
    env = _environment(request)
    st = _state(request)
    st.tick()
    inc = st.incidents.get(request.match_info["incident_id"])
    if inc is None or env.id not in inc.environments:
        raise ApiError(404, GENERIC_404)
    return inc


def _user(request: web.Request) -> str:
    """The user id behind the request's API key."""
    api_keys: dict[str, str] = request.app[CONFIG_KEY]["api_keys"]
    return api_keys.get(_bearer(request) or "", DEFAULT_USER_ID)


def _no_content() -> web.Response:
    return web.Response(status=204)


async def list_environments(request: web.Request) -> web.Response:
    allowed = _allowed_environments(request)
    envs = _state(request).environments.values()
    return web.json_response([e.to_json() for e in envs if allowed is None or e.id in allowed])


async def get_environment(request: web.Request) -> web.Response:
    return web.json_response(_environment(request).to_json())


async def search_incidents(request: web.Request) -> web.Response:
    st = _state(request)
    env = _environment(request)
    query = request.query.get("query")
    if query is not None and len(query) > MAX_QUERY_CHARS:
        raise ApiError(400, "query is longer than 2000 characters")
    from_s = _int_param(request, "from", None)
    to_s = _int_param(request, "to", None)
    for name, value in (("from", from_s), ("to", to_s)):
        if value is not None and value > MAX_EPOCH_S:
            raise ApiError(400, f"{name} must be in epoch seconds, not milliseconds")
    sort_by = request.query.get("sort_by", "last_change")
    if sort_by not in SORT_KEYS:
        raise ApiError(400, f"sort_by must be one of {', '.join(sorted(SORT_KEYS))}")
    folder = request.query.get("folder")
    if folder is not None and folder not in FOLDERS:
        raise ApiError(400, f"folder must be one of {', '.join(sorted(FOLDERS))} (lower case)")
    page = _int_param(request, "page", 1) or 0
    page_size = _int_param(request, "page_size", 10) or 0
    if page < 1:
        raise ApiError(400, "page starts at 1")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ApiError(400, f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    expand = request.query.get("expand")
    if expand is not None and expand != "alerts":
        raise ApiError(400, "expand supports only alerts")
    if expand == "alerts" and page_size > MAX_EXPANDED_PAGE_SIZE:
        raise ApiError(400, "page_size must be at most 10 with expand=alerts")
    try:
        ids = st.search(
            env.id, query=query, from_s=from_s, to_s=to_s, sort_by=sort_by, folder=folder
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    first = (page - 1) * page_size
    last = min(first + page_size, MAX_RESULTS)
    items = [
        st.incident_json(st.incidents[i], expand_alerts=expand == "alerts") for i in ids[first:last]
    ]
    return web.json_response({"total": len(ids), "items": items})


async def get_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    expand = request.query.get("expand") == "alerts"
    return web.json_response(_state(request).incident_json(inc, expand_alerts=expand))


async def analyse_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    summary = _state(request).analyse(inc.id)
    return web.json_response({"status": 200, "data": {"summary": summary}})


async def resolve_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("comments"), str):
        raise ApiError(400, 'resolve needs {"comments": "<text>"}')
    if not _state(request).resolve(inc.id, body["comments"], by=_user(request)):
        raise ApiError(409, "Incident is already resolved.")
    return web.json_response({"status": 202, "data": {}}, status=202)


async def comment_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if (
        not isinstance(body, dict)
        or "comments" in body
        or not isinstance(body.get("comment"), str)
        or not body["comment"]
    ):
        raise ApiError(400, 'comment needs {"comment": "<text>"}')
    _state(request).comment(inc.id, body["comment"], by=_user(request))
    return _no_content()


async def assign_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if not isinstance(body, dict) or not isinstance(body.get("assignee"), str):
        raise ApiError(400, 'assignment needs {"assignee": "<user id>"}')
    _state(request).assign(inc.id, body["assignee"], by=_user(request))
    return _no_content()


async def unassign_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    if not _state(request).unassign(inc.id, by=_user(request)):
        raise ApiError(400, "Incident is not assigned.")
    return _no_content()


async def snooze_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, GENERIC_400)
    end_time = body.get("end_time")
    if not isinstance(end_time, int) or isinstance(end_time, bool) or end_time > MAX_EPOCH_S:
        raise ApiError(400, "end_time (epoch seconds) is required")
    comment = body.get("comment")
    cancel = body.get("cancel_on_incident_updates", False)
    if (comment is not None and not isinstance(comment, str)) or not isinstance(cancel, bool):
        raise ApiError(400, GENERIC_400)
    _state(request).snooze(
        inc.id, end_time, comment=comment, cancel_on_incident_updates=cancel, by=_user(request)
    )
    return _no_content()


async def unsnooze_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    _state(request).unsnooze(inc.id, by=_user(request))
    return _no_content()


async def list_activities(request: web.Request) -> web.Response:
    st = _state(request)
    inc = st.incidents.get(request.match_info["incident_id"])
    if inc is None:
        raise ApiError(404, GENERIC_404)
    allowed = _allowed_environments(request)
    if allowed is not None and not allowed.intersection(inc.environments):
        raise ApiError(403, "Access denied: no permission for this incident's environments.")
    page = _int_param(request, "page", 1) or 0
    per_page = _int_param(request, "per_page", 20) or 0
    if page < 1 or not 1 <= per_page <= MAX_PAGE_SIZE:
        raise ApiError(400, "page starts at 1; per_page is 1 to 100")
    types: set[str] = set()
    for raw in request.query.getall("types", []):
        types.update(t.strip() for t in raw.split(",") if t.strip())
    matching = [a for a in reversed(inc.activities) if not types or a.type in types]
    first = (page - 1) * per_page
    return web.json_response({"items": [a.to_json() for a in matching[first : first + per_page]]})


async def merge_incidents(request: web.Request) -> web.Response:
    dest = _incident(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, GENERIC_400)
    sources = body.get("source_incidents")
    comment = body.get("comment", "")
    if not isinstance(sources, list) or not all(isinstance(i, str) for i in sources):
        raise ApiError(400, 'merge needs {"source_incidents": ["<id>", ...]}')
    if not isinstance(comment, str):
        raise ApiError(400, GENERIC_400)
    env = _environment(request)
    st = _state(request)
    for source_id in sources:
        source = st.incidents.get(source_id)
        if source is not None and env.id not in source.environments:
            raise ApiError(404, f"incident {source_id} not found")
    st.merge(dest.id, sources, comment, by=_user(request))
    return web.json_response({"status": 202, "data": {}}, status=202)


async def split_incident(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, GENERIC_400)
    alerts = body.get("alerts")
    comment = body.get("comment", "")
    if not isinstance(alerts, list) or not all(isinstance(i, str) for i in alerts):
        raise ApiError(400, 'split needs {"alerts": ["<alert id>", ...]}')
    if not isinstance(comment, str):
        raise ApiError(400, GENERIC_400)
    _state(request).split(inc.id, alerts, comment, by=_user(request))
    return web.json_response({"status": 202, "data": {}}, status=202)


def _v1_json(st: State, inc: Incident) -> dict[str, Any]:
    snooze: dict[str, Any] = {"snoozed": inc.snooze is not None}
    if inc.snooze is not None:
        snooze["wake"] = inc.snooze.end_time
        snooze["autoCancel"] = inc.snooze.cancel_on_incident_updates
    return {
        "id": inc.id,
        "status": st.display_status(inc.status),
        "severity": st.display_status(inc.severity),
        "active": inc.active,
        "resolved": not inc.active,
        "startedOn": inc.start,
        "changedOn": inc.changed_at,
        "updatedOn": inc.updated_at,
        "endedOn": inc.end,
        "snooze": snooze,
        "links": [],
        "expandable": ["entities"],
    }


async def get_incident_v1(request: web.Request) -> web.Response:
    st = _state(request)
    inc = st.incidents.get(request.match_info["incident_id"])
    if inc is None:
        raise ApiError(404, GENERIC_404)
    return web.json_response(_v1_json(st, inc))


async def update_incident_v1(request: web.Request) -> web.Response:
    """Legacy resolve: ``{"resolved": true, "comments": "..."}`` -> 200 v1 object."""
    st = _state(request)
    inc = st.incidents.get(request.match_info["incident_id"])
    if inc is None:
        raise ApiError(404, GENERIC_404)
    body = await _body(request)
    if not isinstance(body, dict) or body.get("resolved") is not True:
        raise ApiError(400, 'v1 update needs {"resolved": true, "comments"?: "..."}')
    comments = body.get("comments", "")
    if not isinstance(comments, str):
        raise ApiError(400, GENERIC_400)
    if not st.resolve(inc.id, comments, by=None):
        raise ApiError(409, "Incident is already resolved.")
    return web.json_response(_v1_json(st, inc))


# ---- incident tags


async def upsert_tag(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if not isinstance(body, dict) or "tag_value" not in body:
        raise ApiError(400, 'tag write needs {"tag_value": "<value>"}')
    st = _state(request)
    user = st.users.get(_user(request), {})
    st.set_tag(
        inc.id,
        request.match_info["tag_id"],
        body["tag_value"],
        name=user.get("name", ""),
        email=user.get("email", ""),
        by=_user(request),
    )
    return _no_content()


async def upsert_tags(request: web.Request) -> web.Response:
    inc = _incident(request)
    body = await _body(request)
    if not isinstance(body, list) or not body:
        raise ApiError(400, 'body must be an array of {"tag_id", "tag_value"}')
    values: dict[str, Any] = {}
    for item in body:
        if not isinstance(item, dict) or not isinstance(item.get("tag_id"), str):
            raise ApiError(400, 'body must be an array of {"tag_id", "tag_value"}')
        if "tag_value" not in item:
            raise ApiError(400, f"tag_value missing for {item['tag_id']!r}")
        values[item["tag_id"]] = item["tag_value"]
    st = _state(request)
    user = st.users.get(_user(request), {})
    st.set_tags(
        inc.id,
        values,
        name=user.get("name", ""),
        email=user.get("email", ""),
        by=_user(request),
    )
    return _no_content()


async def get_tag(request: web.Request) -> web.Response:
    inc = _incident(request)
    tag_id = request.match_info["tag_id"]
    st = _state(request)
    if tag_id not in st.tag_definitions:
        raise ApiError(404, f"NotExistTag: tag {tag_id!r} is not defined")
    tag = inc.tags.get(tag_id)
    if tag is None:
        raise ApiError(404, f"tag {tag_id!r} is not set on incident {inc.id}")
    return web.json_response(st.tag_json(inc, tag_id, tag))


async def list_tags(request: web.Request) -> web.Response:
    inc = _incident(request)
    st = _state(request)
    return web.json_response([st.tag_json(inc, k, v) for k, v in inc.tags.items()])


async def delete_tag(request: web.Request) -> web.Response:
    inc = _incident(request)
    _state(request).delete_tag(inc.id, request.match_info["tag_id"], by=_user(request))
    return _no_content()


async def delete_tags(request: web.Request) -> web.Response:
    inc = _incident(request)
    _state(request).delete_all_tags(inc.id, by=_user(request))
    return _no_content()


# ---- tag definitions


def _definition_from(body: Any, tag_id: str | None, st: State) -> TagDefinition:
    if not isinstance(body, dict):
        raise ApiError(400, GENERIC_400)
    name = body.get("name", tag_id)
    if not isinstance(name, str) or not 1 <= len(name) <= 20:
        raise ApiError(400, "name must be 1 to 20 characters")
    type_ = body.get("type", "Text")
    if type_ not in TAG_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(sorted(TAG_TYPES))}")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 200:
        raise ApiError(400, "description must be at most 200 characters")
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise ApiError(400, GENERIC_400)
    values = config.get("ordered_list") or config.get("incident_tag_values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ApiError(400, "config values must be strings")
    return TagDefinition(
        id=tag_id or name,
        name=name,
        type=type_,
        description=description,
        active=bool(body.get("active", True)),
        ordered_list=list(values) if type_ == "Priority" else [],
        values=list(values) if type_.startswith("ClosedList") else [],
        created_at=st.now(),
        updated_at=st.now(),
    )


async def list_definitions(request: web.Request) -> web.Response:
    st = _state(request)
    active = request.query.get("active")
    type_ = request.query.get("type")
    out = [
        d.to_json()
        for d in st.tag_definitions.values()
        if (active is None or str(d.active).lower() == active.lower())
        and (type_ is None or d.type == type_)
    ]
    return web.json_response(out)


async def create_definition(request: web.Request) -> web.Response:
    st = _state(request)
    definition = _definition_from(await _body(request), None, st)
    if definition.id in st.tag_definitions or any(
        d.name == definition.name for d in st.tag_definitions.values()
    ):
        raise ApiError(409, f"tag {definition.name!r} already exists")
    st.tag_definitions[definition.id] = definition
    return web.json_response(definition.to_json(), status=201)


async def get_definition(request: web.Request) -> web.Response:
    definition = _state(request).tag_definitions.get(request.match_info["tag_id"])
    if definition is None:
        raise ApiError(404, "NotExistTag: tag is not defined")
    return web.json_response(definition.to_json())


async def update_definition(request: web.Request) -> web.Response:
    st = _state(request)
    tag_id = request.match_info["tag_id"]
    old = st.tag_definitions.get(tag_id)
    if old is None:
        raise ApiError(404, "NotExistTag: tag is not defined")
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, GENERIC_400)
    merged = {**old.to_json(), **body}
    if "config" not in body:
        merged["config"] = old.to_json()["config"]
    definition = _definition_from(merged, tag_id, st)
    definition.created_at = old.created_at
    st.tag_definitions[tag_id] = definition
    return web.json_response(definition.to_json())


# ---- batch resolve alerts


async def batch_resolve_alerts(request: web.Request) -> web.Response:
    env = _environment(request)
    st = _state(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise ApiError(400, GENERIC_400)
    ids = body.get("ids")
    comments = body.get("comments", "")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "ids must be a non-empty array of alert ids")
    if len(ids) > MAX_BATCH_RESOLVE_IDS:
        raise ApiError(400, f"at most {MAX_BATCH_RESOLVE_IDS} ids per call")
    if not isinstance(comments, str) or len(comments) > 1000:
        raise ApiError(400, "comments must be at most 1000 characters")
    touched: dict[str, list[str]] = {}
    for alert_id in ids:
        alert = st.alerts.get(alert_id)
        if alert is None or env.id not in st.incidents[alert.incident_id].environments:
            raise ApiError(404, f"alert {alert_id} not found")
        touched.setdefault(alert.incident_id, []).append(alert_id)
    now = st.now()
    for inc_id, alert_ids in touched.items():
        inc = st.incidents[inc_id]
        for alert_id in alert_ids:
            alert = st.alerts[alert_id]
            if alert.active:
                alert.status, alert.active, alert.end = "ok", False, now
                alert.changed_at = alert.updated_at = now
        st.add_activity(
            inc,
            "incident_alerts_resolved",
            {"annotation": comments, "resolution_type": "manual-api", "ids_to_resolve": alert_ids},
            by=_user(request),
        )
        st.recompute(inc, changed=True)
    return web.json_response({"status": 202, "data": {}}, status=202)


# ---- alert ingest


async def ingest_alerts(request: web.Request) -> web.Response:
    results = _state(request).ingest(await _body(request))
    if all(r.action == "duplicate" for r in results):
        return _no_content()
    return web.json_response({"status": 201, "data": {}}, status=201)


# ---- emulator hooks (not BigPanda behaviour)


async def load_fixtures(request: web.Request) -> web.Response:
    st = _state(request)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": "body must be JSON"}, status=400)
    items = body if isinstance(body, list) else [body]
    if not all(isinstance(item, dict) for item in items):
        return web.json_response({"error": "every fixture must be a JSON object"}, status=400)
    loaded: list[str] = []
    try:
        for item in items:
            if "app_key" in item:
                loaded.extend(r.incident_id for r in st.ingest(item) if r.incident_id)
            else:
                loaded.append(st.load_incident(item).id)
    except ApiError as exc:
        return web.json_response({"error": exc.message, "incidents": loaded}, status=400)
    except (ValueError, TypeError, KeyError) as exc:
        return web.json_response({"error": str(exc), "incidents": loaded}, status=400)
    return web.json_response({"incidents": list(dict.fromkeys(loaded))}, status=201)


async def dump_incidents(request: web.Request) -> web.Response:
    st = _state(request)
    st.tick()
    out = []
    for inc in st.incidents.values():
        body = st.incident_json(inc, expand_alerts=True)
        body["activities"] = [a.to_json() for a in reversed(inc.activities)]
        out.append(body)
    return web.json_response({"total": len(out), "incidents": out})


async def get_webhook(request: web.Request) -> web.Response:
    hooks = request.app[WEBHOOKS_KEY]
    return web.json_response(
        {"config": hooks.config.to_json(), "deliveries": list(hooks.log), "dlq": hooks.dlq}
    )


async def set_webhook(request: web.Request) -> web.Response:
    hooks = request.app[WEBHOOKS_KEY]
    try:
        body = await request.json()
        hooks.config.update(body if isinstance(body, dict) else {"?": body})
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"config": hooks.config.to_json()})


async def clear_webhook_dlq(request: web.Request) -> web.Response:
    request.app[WEBHOOKS_KEY].dlq.clear()
    return web.json_response({"dlq": []})


async def get_config(request: web.Request) -> web.Response:
    st = _state(request)
    cfg = request.app[CONFIG_KEY]
    limiter = request.app[LIMITER_KEY]
    return web.json_response(
        {
            "rate_limit_per_s": cfg["rate_limit_per_s"],
            "rate_limit_shape": limiter.shape,
            "rate_limit_scope": limiter.scope,
            "batch_resolve_rate_limit_per_s": cfg["batch_resolve_rate_limit_per_s"],
            "reopen_window_s": st.reopen_window_s,
            "correlation_tag": st.correlation_tag,
            "correlation_window_s": st.correlation_window_s,
        }
    )


_CONFIG_KEYS = frozenset(
    {
        "rate_limit_per_s",
        "rate_limit_shape",
        "rate_limit_scope",
        "batch_resolve_rate_limit_per_s",
        "reopen_window_s",
        "correlation_window_s",
    }
)


def _apply_config(st: State, cfg: dict[str, Any], limiter: RateLimiter, body: Any) -> None:
    """Validate the whole body first (ValueError/TypeError), then apply it."""
    if not isinstance(body, dict):
        raise TypeError("body must be an object")
    unknown = set(body) - _CONFIG_KEYS
    if unknown:
        raise ValueError(f"unknown keys: {sorted(unknown)}")
    shape = check_choice(
        "rate_limit_shape", body.get("rate_limit_shape", limiter.shape), RATE_LIMIT_SHAPES
    )
    scope = check_choice(
        "rate_limit_scope", body.get("rate_limit_scope", limiter.scope), RATE_LIMIT_SCOPES
    )
    rate = body.get("rate_limit_per_s", cfg["rate_limit_per_s"])
    rate = None if rate is None else float(rate)
    batch_rate = float(
        body.get("batch_resolve_rate_limit_per_s", cfg["batch_resolve_rate_limit_per_s"])
    )
    reopen_window_s = int(body.get("reopen_window_s", st.reopen_window_s))
    correlation_window_s = int(body.get("correlation_window_s", st.correlation_window_s))
    limiter.shape = shape  # a change of shape or scope forgets the counters
    limiter.scope = scope
    cfg["rate_limit_per_s"] = rate
    cfg["batch_resolve_rate_limit_per_s"] = batch_rate
    st.reopen_window_s = reopen_window_s
    st.correlation_window_s = correlation_window_s


async def set_config(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        _apply_config(_state(request), request.app[CONFIG_KEY], request.app[LIMITER_KEY], body)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return await get_config(request)


def _add_routes(router: web.UrlDispatcher) -> None:
    v2 = "/resources/v2.0"
    router.add_get(f"{v2}/environments", list_environments)
    router.add_get(f"{v2}/environments/{{env_id}}", get_environment)
    router.add_get(f"{v2}/environments/{{env_id}}/incidents", search_incidents)
    router.add_get(_INCIDENT, get_incident)
    router.add_post(f"{_INCIDENT}/resolve", resolve_incident)
    router.add_post(f"{_INCIDENT}/ai/analysis", analyse_incident)
    router.add_post(f"{_INCIDENT}/comments", comment_incident)
    router.add_put(f"{_INCIDENT}/assignment", assign_incident)
    router.add_delete(f"{_INCIDENT}/assignment", unassign_incident)
    router.add_put(f"{_INCIDENT}/snooze", snooze_incident)
    router.add_delete(f"{_INCIDENT}/snooze", unsnooze_incident)
    router.add_post(f"{_INCIDENT}/merge", merge_incidents)
    router.add_post(f"{_INCIDENT}/split", split_incident)
    router.add_post(f"{_INCIDENT}/tags", upsert_tags)
    router.add_get(f"{_INCIDENT}/tags", list_tags)
    router.add_delete(f"{_INCIDENT}/tags", delete_tags)
    router.add_post(f"{_INCIDENT}/tags/{{tag_id}}", upsert_tag)
    router.add_get(f"{_INCIDENT}/tags/{{tag_id}}", get_tag)
    router.add_delete(f"{_INCIDENT}/tags/{{tag_id}}", delete_tag)
    router.add_post(f"{v2}/environments/{{env_id}}/batch-resolve/alerts", batch_resolve_alerts)
    router.add_get(f"{v2}/incidents/tags/definitions", list_definitions)
    router.add_post(f"{v2}/incidents/tags/definitions", create_definition)
    router.add_get(f"{v2}/incidents/tags/definitions/{{tag_id}}", get_definition)
    router.add_put(f"{v2}/incidents/tags/definitions/{{tag_id}}", update_definition)
    router.add_get(f"{v2}/incidents/{{incident_id}}/activities", list_activities)
    router.add_post(_ALERTS_PATH, ingest_alerts)
    router.add_get("/resources/v1.0/incidents/{incident_id}", get_incident_v1)
    router.add_post("/resources/v1.0/incidents/{incident_id}", update_incident_v1)
    router.add_post("/_emulator/incidents", load_fixtures)
    router.add_get("/_emulator/incidents", dump_incidents)
    router.add_get("/_emulator/config", get_config)
    router.add_get("/_emulator/webhook", get_webhook)
    router.add_post("/_emulator/webhook", set_webhook)
    router.add_delete("/_emulator/webhook/dlq", clear_webhook_dlq)
    router.add_post("/_emulator/config", set_config)


__all__ = [
    "ALL_INCIDENTS_ENVIRONMENT_ID",
    "CONFIG_KEY",
    "DEFAULT_API_KEY",
    "DEFAULT_ENVIRONMENT_ID",
    "DEFAULT_ORG_TOKEN",
    "DEFAULT_USER_ID",
    "LIMITER_KEY",
    "STATE_KEY",
    "ApiError",
    "IngestResult",
    "State",
    "compile_bpql",
    "create_app",
]
