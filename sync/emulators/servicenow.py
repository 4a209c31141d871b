"""A strict, in-memory emulator of the ServiceNow REST Table API and the ``incident`` table.

Contract (docs/servicenow-api.md sections 0-3; the checklist of section 7): an emulator
more forgiving than the real API hides client bugs, so where the real behaviour is known
the emulator is exactly as strict, and where it is uncertain it picks the stricter side
and says so below.

``create_app(clock=..., users=..., seed=..., **options)`` returns an ``aiohttp.web``
application. All time is read from the injected :class:`~sync.clock.Clock`. The in-memory
state is ``app[STATE_KEY]`` (:class:`SNState`: ``tables[name][sys_id] -> {field: str}``).
The shared ``/_emulator/stats|faults|reset`` control API (:mod:`sync.emulators.control`)
is installed; ``reset`` re-seeds the data (the switches below keep their current values).
``GET /_emulator/config`` shows the run-time switches (:data:`CONFIG_KEYS`) plus the
read-only ``semaphore_state`` (``in_flight``, ``queued``, ``rejected``, peaks);
``POST /_emulator/config`` with a partial JSON object changes them (all or nothing; 400
``{"error": ...}`` naming a bad or unknown key) and answers like GET.

Switches for what the docs leave open (``create_app`` keywords = config keys; every
default is the documented behaviour, or the strict one where the docs are silent;
``bpsync emulate servicenow`` has a flag for each):

- ``semaphores`` (int >= 1, default None = off) and ``semaphore_queue`` (int >= 0,
  default 50): the node's integration semaphore pool (docs 1.6, KB0635398, see
  :mod:`sync.emulators.sn_semaphore`). At most ``semaphores`` ``/api/...`` requests run at
  once, ``semaphore_queue`` more wait (FIFO), any further one is answered at once with
  429 ``Rate limit exceeded`` in the standard error body and **no** ``Retry-After`` or
  ``X-RateLimit-*`` header (the detail wording is not documented). Refused requests are
  not counted by rate-limit rules.
- ``processing_s`` (float >= 0, default 0): every ``/api/...`` request holds its semaphore
  this long before it is processed (``clock.sleep`` on the injected clock, like the
  ``latency_ms`` faults: real time on the system clock, advanced time on a FakeClock).
- ``short_pages`` (fraction 0..1, default 0): incident rows hidden from list pages
  *after* ``sysparm_limit``/``sysparm_offset`` apply, as read ACLs do (docs 1.5, 6.7):
  pages come back short or empty while more rows exist; ``X-Total-Count`` and ``Link``
  still count the unfiltered rows. Which rows are hidden is fixed per sys_id and seed
  (:meth:`SNState.hidden_from_lists`); reading or writing one record by sys_id is not
  affected (only the list symptom is emulated). A v1 page emptied this way is a 200
  ``[]`` (v1's 404 is for a query that matches nothing).
- ``user_time_zone`` (zone name, default None = ``GMT``; ``""`` = no zone, so
  ``glide.sys.default.tz`` applies): the login users' ``sys_user.time_zone``. Where it
  applies follows docs 2.4, 1.2 and 1.3: raw values (``sysparm_display_value=false``) are
  always UTC; a plain date-time literal in ``sysparm_query`` is compared as UTC; only
  ``javascript:gs.dateGenerate``/``daysAgo*``/``beginningOfToday``/``endOfToday`` values,
  display values of date-times (and journal headers) and date-time input with
  ``sysparm_input_display_value=true`` use the user's zone.
- ``oauth_client_auth`` (``"both"`` default, ``"form"``, ``"basic"``): where
  ``/oauth_token.do`` reads the client credentials: the form fields ``client_id``/
  ``client_secret`` (docs 1.7) or an ``Authorization: Basic`` header (RFC 6749 2.3.1,
  form-urlencoded id and secret); with both, they must agree.
- ``dictionary_access`` (``"read"`` default, ``"hidden"``, ``"forbidden"``): what the
  login users get from ``sys_dictionary`` (seeded from the incident schema, the fields
  incident inherits listed under ``name=task``, ``max_length`` as enforced): the rows,
  none (a read ACL), or 403 ``User Not Authorized``.
- ``shuffle_unordered``, ``rate_limit_per_hour``, ``user_rate_limits``: see below.

Emulated (section 7 items):

- Routes ``/api/now[/v1|/v2]/table/{table}[/{sys_id}]``: GET/HEAD/POST on a table,
  GET/HEAD/PUT/PATCH/DELETE on a record, 405 (standard error body, ``Allow``) otherwise,
  ``X-HTTP-Method-Override``. Unknown table: 400 ``Invalid table <t>``. Any other
  ``/api/...`` path: 400 ``Requested URI does not represent any resource``.
- ``{"result": ...}``; POST 201 + ``Location``; DELETE 204; ``X-no-response-body: true``
  (same status, empty body); an array body uses its first object only; malformed JSON
  400 ``Exception while reading request``; non-JSON (or missing) Content-Type on a body
  415; an ``Accept`` without ``application/json`` (or ``*/*``) 406 (XML is not emulated).
- Every value is a string, empty ``""``; date-times ``YYYY-MM-DD HH:MM:SS`` UTC.
- Encoded queries (:func:`parse_query`): ``^``, ``^OR``, ``^NQ``, ``ORDERBY``/
  ``ORDERBYDESC`` (several), ``^^`` = literal caret, ``^EQ`` ignored, dot-walking;
  operators ``= != > >= < <= LIKE NOT LIKE STARTSWITH ENDSWITH IN NOT IN ISEMPTY
  ISNOTEMPTY EMPTYSTRING ANYTHING BETWEEN SAMEAS NSAMEAS`` and the aliases ``* !* %``;
  ``javascript:`` values ``gs.getUserID()``, ``gs.getUserName()``,
  ``gs.dateGenerate(d, t|'start'|'end')`` (user's time zone -> UTC),
  ``gs.daysAgoStart/End(n)``, ``gs.beginningOfToday()``, ``gs.endOfToday()``. A condition
  on an unknown field, with an unknown operator or an unknown ``javascript:`` value is
  silently dropped (the rest still applies); option ``invalid_query="no_rows"`` emulates
  ``glide.invalid_query.returns_no_rows`` and ``invalid_query="forbidden"`` the 403
  ``Insufficient rights to query records``. Comparisons are case-sensitive (docs 2.1);
  integer fields compare as numbers; an empty value never satisfies ``> >= < <=``
  ``BETWEEN`` but does satisfy ``!=``, ``NOT IN`` and ``NOT LIKE``.
- ``sysparm_fields`` (unknown names ignored, ``ref.field`` keys), ``sysparm_display_value``
  ``false|true|all`` with the shapes of docs 1.3, ``sysparm_exclude_reference_link``,
  ``sysparm_input_display_value`` (references by display name, date-times from the user's
  zone), ``name=value`` filters (only without ``sysparm_query``; choice labels and
  reference display names accepted), ``sysparm_limit`` (default 10000, option
  ``default_limit``; a non-integer or negative value is a 400 here), ``sysparm_offset``,
  ``X-Total-Count``, ``Link`` (absolute, first/prev/next/last, omitted on a single page),
  ``sysparm_no_count``, ``sysparm_suppress_pagination_header``. Without ORDERBY the order
  is insertion order, or shuffled per request with ``shuffle_unordered=True``.
- v1 empty list: 404 ``No Record found``; unversioned = v2 (200 ``[]``).
- Auth: Basic, Bearer from ``POST /oauth_token.do`` (form-encoded body; client
  credentials in the form or a Basic header, option ``oauth_client_auth``; ``password``,
  ``refresh_token`` and, with ``client_credentials_user``, ``client_credentials`` grants;
  access tokens live 1800 s (``expires_in`` 1799), refresh tokens 8,640,000 s, both on
  the injected clock; asking again while a token lives returns it; failure 401
  ``{"error_description":"access_denied","error":"server_error"}``), ``x-sn-apikey``
  (header or query parameter, option ``api_keys``). Failure: 401 ``User Not
  Authenticated`` / ``Required to provide Auth information``.
- 404 ``No Record found`` / ``Record doesn't exist or ACL restricts the record retrieval``.
- Rate limit rules (off by default): ``rate_limit_per_hour`` (all users) and
  ``user_rate_limits`` (per user, takes precedence); hourly windows on the clock;
  ``X-RateLimit-Limit/Reset/Rule`` on every counted response, 429 + ``Retry-After`` +
  ``Rate limit exceeded`` when over.
- Incident business rules (:meth:`SNState.insert` / :meth:`SNState.update`): 32-hex
  sys_id; a client-supplied one of 32 letters or digits (any case: docs 3.1 only say
  "32-char id") is kept exactly as sent, a duplicate (ignoring case, as the database
  collation would [inferred]) is a 403, any other supplied value is ignored;
  ``INC0010001``..., defaults of the
  doc's example record, sys_* writes ignored, no-op updates skipped, ``sys_mod_count``,
  ``sys_updated_by``; priority from impact x urgency (on insert, and on update when impact
  or urgency is written: a direct priority write otherwise sticks, as the Data Lookup
  only reacts to its matcher fields); ``incident_state`` mirrors ``state``; Resolved sets
  ``resolved_at/by``; Closed sets ``closed_at/by`` (and resolved_* if empty); ``active``
  is false exactly in Closed/Canceled; Resolved -> New/In Progress/On Hold counts a
  reopen (``reopen_count``, ``reopened_by``, ``reopened_time``; ``resolved_*``, close
  code and notes are left as they were, not verified on a real instance); Closed is terminal
  (option ``terminal_states``, default Closed only): moving away is a 403 ``Operation
  Failed``. Data policy: state 6/7 needs a valid ``close_code`` (``close_codes=
  "current"`` default or ``"legacy"``, read from ``sys_choice``) and ``close_notes``, else
  403 ``Data Policy Exception: \\n\\tThe following fields are mandatory: ...`` naming only
  the missing ones; On Hold needs ``hold_reason`` (same error, ``On hold reason``).
- Journals: ``work_notes``/``comments`` append rows to ``sys_journal_field`` (queryable),
  never stored on the record: raw ``""``, display newest first
  ``"<ts> - <name> (Work notes)\\n<text>\\n\\n"`` (``(Additional comments)``).
- Seeded reference tables: ``sys_user`` (the login users, plus two people sharing one
  e-mail), ``sys_user_group``, ``cmdb_ci`` (two CIs named ``web01``), ``sys_choice``
  (incident state, close_code both sets, hold_reason, category, impact, urgency,
  priority, severity), ``sys_properties`` (``glide.sys.default.tz``).
- Field lengths (short_description 160, description/close_notes/journal 4000,
  correlation_id/correlation_display 100): ``overlong="truncate"`` (default, what the
  database column does) or ``"reject"`` (403 ``Operation Failed`` naming the field).

Not emulated: per-user ACLs, session cookies/serialisation, XML, ``sysparm_view``
(ignored), the auto-close job, date operators ``ON``/``RELATIVE*``/``DATEPART``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote_plus, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from sync.clock import Clock, SystemClock
from sync.constants import SN_DATETIME_FORMAT
from sync.emulators.control import BANNER_KEY, EmulatorControl, Handler
from sync.emulators.sn_semaphore import DEFAULT_QUEUE as DEFAULT_SEMAPHORE_QUEUE
from sync.emulators.sn_semaphore import PoolFullError, SemaphorePool

# --------------------------------------------------------------------------- constants

DEFAULT_USERS: Mapping[str, str] = {"bpsync": "bpsync", "admin": "admin"}
DEFAULT_OAUTH_CLIENTS: Mapping[str, str] = {"bpsync": "bpsync"}
DEFAULT_LIMIT = 10_000
ACCESS_TOKEN_LIFETIME_S = 1800
REFRESH_TOKEN_LIFETIME_S = 8_640_000
MAX_PAYLOAD_BYTES = 10_485_760
FIRST_INCIDENT_NUMBER = 10_001
RATE_LIMIT_WINDOW_S = 3600
RATE_LIMIT_RULE_ID = "a0c1e8f2db1b4010b8a3f7d5a1c0e9b7"
#: the detail of a semaphore-queue 429 (the real wording is not documented)
SEMAPHORE_QUEUE_FULL = (
    "Too many concurrent requests: the API_INT semaphores and their queue are full"
)
DEFAULT_SYSTEM_TZ = "America/Los_Angeles"

LEGACY_CLOSE_CODES = (
    "Solved (Work Around)",
    "Solved (Permanently)",
    "Solved Remotely (Work Around)",
    "Solved Remotely (Permanently)",
    "Not Solved (Not Reproducible)",
    "Not Solved (Too Costly)",
    "Closed/Resolved by Caller",
)
CURRENT_CLOSE_CODES = (
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
)

#: priority lookup rules (docs 3.3): (impact, urgency) -> priority
PRIORITY_MATRIX: Mapping[tuple[str, str], str] = {
    ("1", "1"): "1",
    ("1", "2"): "2",
    ("1", "3"): "3",
    ("2", "1"): "2",
    ("2", "2"): "3",
    ("2", "3"): "4",
    ("3", "1"): "3",
    ("3", "2"): "4",
    ("3", "3"): "5",
}

NEW, IN_PROGRESS, ON_HOLD, RESOLVED, CLOSED, CANCELED = "1", "2", "3", "6", "7", "8"
JOURNAL_LABELS: Mapping[str, str] = {
    "work_notes": "Work notes",
    "comments": "Additional comments",
}

SYS_ID_RE = re.compile(r"^[0-9a-f]{32}$")
#: a client-supplied sys_id kept on insert (docs 3.1: "32-char id"), exactly as sent
SUPPLIED_SYS_ID_RE = re.compile(r"^[0-9A-Za-z]{32}$")
_FIELD_RE = re.compile(r"[a-z0-9_.]+")


# --------------------------------------------------------------------------- schema


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
    "short_description": _str(160),
    "close_code": FieldDef(label="Resolution code"),
    "correlation_display": _str(100),
    "delivery_task": S,
    "work_start": DT,
    "assignment_group": _ref("sys_user_group"),
    "additional_assignee_list": S,
    "business_stc": S,
    "description": _str(4000),
    "calendar_duration": DT,
    "close_notes": _str(4000, label="Close notes"),
    "notify": FieldDef("integer", default="1"),
    "sys_class_name": FieldDef(default="incident"),
    "closed_by": _ref("sys_user"),
    "follow_up": DT,
    "parent_incident": _ref("incident"),
    "contact_type": _str(40),
    "reopened_by": _ref("sys_user"),
    "incident_state": FieldDef("integer", default="1"),
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
    "state": FieldDef("integer", default="1"),
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
        "value": _str(4000),
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


# --------------------------------------------------------------------------- errors


class SNError(Exception):
    """An HTTP error answer with ServiceNow's body."""

    def __init__(
        self,
        status: int,
        message: str,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.detail, self.headers)


def error_response(
    status: int,
    message: str,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return web.json_response(body, status=status, headers=headers)


def _not_found() -> SNError:
    return SNError(
        404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
    )


def _bad_request(detail: str) -> SNError:
    return SNError(400, "Exception while reading request", detail)


# --------------------------------------------------------------------------- encoded queries


OPERATORS = (  # longest first where one is a prefix of another (docs 2.2)
    "ISNOTEMPTY",
    "ISEMPTY",
    "EMPTYSTRING",
    "ANYTHING",
    "NOT LIKE",
    "NOT IN",
    "NSAMEAS",
    "SAMEAS",
    "STARTSWITH",
    "ENDSWITH",
    "BETWEEN",
    "LIKE",
    "IN",
    "!=",
    ">=",
    "<=",
    "!*",
    "=",
    ">",
    "<",
    "*",
    "%",
)
_ALIASES = {"*": "LIKE", "!*": "NOT LIKE", "%": "ENDSWITH"}
_UNARY_OPS = frozenset({"ISNOTEMPTY", "ISEMPTY", "EMPTYSTRING", "ANYTHING"})


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: str


@dataclass(slots=True)
class ParsedQuery:
    """``groups`` are OR-ed (``^NQ``); a group is an AND of OR-clauses (lists of conditions)."""

    groups: list[list[list[Condition]]] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)
    """(field, descending)"""
    invalid: list[str] = field(default_factory=list)
    """terms that could not be parsed"""


def split_terms(query: str) -> list[tuple[str, str]]:
    """Split on ``^`` joiners honouring ``^^`` (a literal caret).

    Returns ``(joiner, text)`` pairs: joiner ``""`` for the first term, ``"^"`` (AND),
    ``"^OR"``, ``"^NQ"``; ``ORDERBY`` terms keep their prefix in the text.
    """
    raw: list[str] = []
    current: list[str] = []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch == "^":
            if i + 1 < n and query[i + 1] == "^":
                current.append("^")
                i += 2
                continue
            raw.append("".join(current))
            current = []
            i += 1
            continue
        current.append(ch)
        i += 1
    raw.append("".join(current))
    terms: list[tuple[str, str]] = []
    for index, text in enumerate(raw):
        if index == 0:
            terms.append(("", text))
        elif text.startswith("ORDERBY"):
            terms.append(("^", text))
        elif text.startswith("OR"):
            terms.append(("^OR", text[2:]))
        elif text.startswith("NQ"):
            terms.append(("^NQ", text[2:]))
        else:
            terms.append(("^", text))
    return terms


def parse_condition(text: str) -> Condition | None:
    """``<field><OP><value>``; None when no field or operator can be read."""
    match = _FIELD_RE.match(text)
    if match is None:
        return None
    name = match.group(0)
    rest = text[match.end() :]
    for op in OPERATORS:
        if rest.startswith(op):
            value = rest[len(op) :]
            op_name = _ALIASES.get(op, op)
            if op_name in _UNARY_OPS and value:
                return None
            return Condition(name, op_name, value)
    return None


def parse_query(query: str) -> ParsedQuery:
    """Parse ``sysparm_query`` (field validity is checked later, against a table)."""
    parsed = ParsedQuery(groups=[[]])
    for joiner, text in split_terms(query):
        if text.startswith("ORDERBYDESC"):
            parsed.order.append((text[len("ORDERBYDESC") :], True))
            continue
        if text.startswith("ORDERBY"):
            parsed.order.append((text[len("ORDERBY") :], False))
            continue
        if joiner == "^NQ":
            parsed.groups.append([])
        if text in {"", "EQ"}:
            continue
        condition = parse_condition(text)
        if condition is None:
            parsed.invalid.append(text)
            continue
        group = parsed.groups[-1]
        if joiner == "^OR" and group:
            group[-1].append(condition)
        else:
            group.append([condition])
    return parsed


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class User:
    sys_id: str
    user_name: str


@dataclass(slots=True)
class Token:
    value: str
    user: str
    client_id: str
    expires_at: datetime


@dataclass(slots=True)
class Options:
    default_limit: int = DEFAULT_LIMIT
    close_codes: Literal["current", "legacy"] = "current"
    api_v1_404: bool = True
    invalid_query: Literal["ignore", "no_rows", "forbidden"] = "ignore"
    overlong: Literal["truncate", "reject"] = "truncate"
    terminal_states: frozenset[str] = frozenset({CLOSED})
    hold_reason_required: bool = True
    rate_limit_per_hour: int | None = None
    user_rate_limits: Mapping[str, int] = field(default_factory=dict)
    oauth_clients: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_OAUTH_CLIENTS))
    client_credentials_user: str | None = None
    api_keys: Mapping[str, str] = field(default_factory=dict)
    shuffle_unordered: bool = False
    user_time_zone: str | None = None
    """sys_user.time_zone of the login users; None = ``GMT`` (docs 2.4: set it to GMT)."""
    system_time_zone: str = DEFAULT_SYSTEM_TZ
    semaphores: int | None = None
    """integration semaphores per node (docs 1.6); None = no pool"""
    semaphore_queue: int = DEFAULT_SEMAPHORE_QUEUE
    processing_s: float = 0.0
    """how long every Table API request holds its semaphore (on the injected clock)"""
    short_pages: float = 0.0
    """fraction of incident rows hidden from list pages after the limit (ACL-like)"""
    oauth_client_auth: Literal["form", "basic", "both"] = "both"
    dictionary_access: Literal["read", "hidden", "forbidden"] = "read"
    """``sys_dictionary`` for the login users: readable, rows hidden by ACL (empty
    lists) or refused (403), as instances differ in what an integration user may read"""

    @property
    def login_time_zone(self) -> str:
        return "GMT" if self.user_time_zone is None else self.user_time_zone


class SNState:
    """The emulated instance: tables of string-valued records plus counters and tokens."""

    def __init__(
        self, clock: Clock, users: Mapping[str, str], seed: int | None, options: Options
    ) -> None:
        self.clock = clock
        self.passwords = dict(users)
        self.options = options
        self._seed = seed
        self.rng = random.Random(seed)
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.next_number = FIRST_INCIDENT_NUMBER
        self.access_tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}
        self.rate_counts: dict[tuple[str, int], int] = {}
        self._journal_seq = 0
        self.journal_order: dict[str, int] = {}
        self._choice_labels: dict[tuple[str, str, str], str] = {}
        self._valid_close_codes: set[str] = set()
        self.pool = SemaphorePool(options.semaphores, options.semaphore_queue)
        # short_pages: which rows an "ACL" hides is fixed per sys_id and seed
        self._hide_salt = str(seed) if seed is not None else f"{random.getrandbits(64):016x}"
        self.reset()

    # ------------------------------------------------------------------ seeding
    def reset(self) -> None:
        self.rng = random.Random(self._seed)
        self.tables = {name: {} for name in SCHEMAS}
        self.next_number = FIRST_INCIDENT_NUMBER
        self.access_tokens.clear()
        self.refresh_tokens.clear()
        self.rate_counts.clear()
        self.journal_order.clear()
        self._journal_seq = 0
        self.pool.reset_counters()
        self._seed_rows()
        self.refresh_choices()

    def set_login_time_zone(self, zone: str | None) -> None:
        """Option ``user_time_zone`` at run time: the login users' ``sys_user.time_zone``."""
        self.options.user_time_zone = zone
        logins = set(self.passwords) | {"admin"}
        for row in self.tables["sys_user"].values():
            if row["user_name"] in logins:
                row["time_zone"] = self.options.login_time_zone

    def hidden_from_lists(self, table: str, row: Mapping[str, str]) -> bool:
        """Option ``short_pages``: is this row filtered out of list pages (after the limit)?

        Only ``incident`` rows; the choice is stable per sys_id (like a read ACL) and
        follows the seed, and a row hidden at fraction p stays hidden at any larger p.
        """
        fraction = self.options.short_pages
        if fraction <= 0 or table != "incident":
            return False
        digest = hashlib.sha256(f"{self._hide_salt}:{row.get('sys_id', '')}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    def _seed_row(self, table: str, key: str, values: Mapping[str, str]) -> str:
        sys_id = stable_id(f"{table}:{key}")
        now = self.now_str()
        row = self.blank(table)
        row.update(values)
        row.update(
            sys_id=sys_id,
            sys_created_on=now,
            sys_created_by="system",
            sys_updated_on=now,
            sys_updated_by="system",
            sys_mod_count="0",
        )
        self.tables[table][sys_id] = row
        return sys_id

    def _seed_rows(self) -> None:
        logins = dict(self.passwords)
        logins.setdefault("admin", "")
        for user_name in logins:
            pretty = "System Administrator" if user_name == "admin" else user_name.title()
            self._seed_row(
                "sys_user",
                user_name,
                {
                    "user_name": user_name,
                    "name": pretty,
                    "first_name": pretty,
                    "email": f"{user_name}@example.com",
                    "time_zone": self.options.login_time_zone,
                },
            )
        people = [  # the last two share one e-mail on purpose (ambiguity handling)
            ("abel.tuter", "Abel Tuter", "abel.tuter@example.com", "America/New_York"),
            ("beth.anglin", "Beth Anglin", "beth.anglin@example.com", ""),
            ("beth.anglin2", "Beth Anglin", "beth.anglin@example.com", "Europe/Paris"),
        ]
        for user_name, name, email, tz in people:
            first, _, last = name.partition(" ")
            self._seed_row(
                "sys_user",
                user_name,
                {
                    "user_name": user_name,
                    "name": name,
                    "first_name": first,
                    "last_name": last,
                    "email": email,
                    "time_zone": tz,
                },
            )
        for name in ("Service Desk", "Network", "Database", "Software", "Hardware"):
            self._seed_row("sys_user_group", name, {"name": name})
        cis = [  # two CIs named web01 in different classes on purpose
            ("web01", "cmdb_ci_server"),
            ("web01", "cmdb_ci_linux_server"),
            ("db01", "cmdb_ci_linux_server"),
            ("lb01", "cmdb_ci_netgear"),
        ]
        for name, klass in cis:
            self._seed_row("cmdb_ci", f"{name}:{klass}", {"name": name, "sys_class_name": klass})
        for element, fdef in INCIDENT_FIELDS.items():
            owner = "task" if element in TASK_FIELDS or element.startswith("sys_") else "incident"
            self._seed_row(
                "sys_dictionary",
                f"{owner}:{element}",
                {
                    "name": owner,
                    "element": element,
                    "column_label": fdef.label or element.replace("_", " ").title(),
                    "internal_type": INTERNAL_TYPES[fdef.kind],
                    "max_length": str(4000 if fdef.kind == "journal" else fdef.max_len or 255),
                    "reference": fdef.ref or "",
                },
            )
        self._seed_row(
            "sys_properties",
            "glide.sys.default.tz",
            {"name": "glide.sys.default.tz", "value": self.options.system_time_zone},
        )
        choices: list[tuple[str, str, str]] = [
            ("state", "1", "New"),
            ("state", "2", "In Progress"),
            ("state", "3", "On Hold"),
            ("state", "6", "Resolved"),
            ("state", "7", "Closed"),
            ("state", "8", "Canceled"),
            ("incident_state", "1", "New"),
            ("incident_state", "2", "In Progress"),
            ("incident_state", "3", "On Hold"),
            ("incident_state", "6", "Resolved"),
            ("incident_state", "7", "Closed"),
            ("incident_state", "8", "Canceled"),
            ("hold_reason", "1", "Awaiting Caller"),
            ("hold_reason", "3", "Awaiting Problem"),
            ("hold_reason", "4", "Awaiting Vendor"),
            ("hold_reason", "5", "Awaiting Change"),
            ("impact", "1", "1 - High"),
            ("impact", "2", "2 - Medium"),
            ("impact", "3", "3 - Low"),
            ("urgency", "1", "1 - High"),
            ("urgency", "2", "2 - Medium"),
            ("urgency", "3", "3 - Low"),
            ("severity", "1", "1 - High"),
            ("severity", "2", "2 - Medium"),
            ("severity", "3", "3 - Low"),
            ("priority", "1", "1 - Critical"),
            ("priority", "2", "2 - High"),
            ("priority", "3", "3 - Moderate"),
            ("priority", "4", "4 - Low"),
            ("priority", "5", "5 - Planning"),
            ("category", "inquiry", "Inquiry / Help"),
            ("category", "software", "Software"),
            ("category", "hardware", "Hardware"),
            ("category", "network", "Network"),
            ("category", "database", "Database"),
        ]
        for seq, (element, value, label) in enumerate(choices):
            self._seed_row(
                "sys_choice",
                f"incident:{element}:{value}",
                {
                    "name": "incident",
                    "element": element,
                    "value": value,
                    "label": label,
                    "sequence": str(seq),
                },
            )
        current = self.options.close_codes == "current"
        for generation, codes in (("current", CURRENT_CLOSE_CODES), ("legacy", LEGACY_CLOSE_CODES)):
            active = (generation == "current") == current
            for seq, code in enumerate(codes):
                self._seed_row(
                    "sys_choice",
                    f"incident:close_code:{code}",
                    {
                        "name": "incident",
                        "element": "close_code",
                        "value": code,
                        "label": code,
                        "sequence": str(seq),
                        "inactive": "false" if active else "true",
                    },
                )

    def refresh_choices(self) -> None:
        """Rebuild the choice-label cache and the valid close codes from ``sys_choice``."""
        self._choice_labels = {}
        self._valid_close_codes = set()
        for row in self.tables["sys_choice"].values():
            key = (row["name"], row["element"], row["value"])
            if row.get("inactive") != "true" or key not in self._choice_labels:
                self._choice_labels[key] = row["label"]
            if (
                row["name"] == "incident"
                and row["element"] == "close_code"
                and row.get("inactive") != "true"
            ):
                self._valid_close_codes.add(row["value"])

    # ------------------------------------------------------------------ helpers
    def now(self) -> datetime:
        return self.clock.now().astimezone(UTC).replace(microsecond=0)

    def now_str(self) -> str:
        return self.now().strftime(SN_DATETIME_FORMAT)

    def new_sys_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    @staticmethod
    def blank(table: str) -> dict[str, str]:
        return {
            name: ("" if fdef.kind == "journal" else fdef.default)
            for name, fdef in SCHEMAS[table].items()
        }

    def user(self, user_name: str) -> User:
        for row in self.tables["sys_user"].values():
            if row["user_name"] == user_name:
                return User(row["sys_id"], user_name)
        return User("", user_name)

    def user_zone(self, user: User) -> ZoneInfo:
        row = self.tables["sys_user"].get(user.sys_id, {})
        names = [row.get("time_zone", "")]
        names += [
            p["value"]
            for p in self.tables["sys_properties"].values()
            if p["name"] == "glide.sys.default.tz"
        ]
        for name in names:
            if name:
                try:
                    return ZoneInfo(name)
                except (ZoneInfoNotFoundError, ValueError):
                    continue
        return ZoneInfo("UTC")

    def choice_label(self, table: str, element: str, value: str) -> str | None:
        return self._choice_labels.get((table, element, value))

    def display(self, table: str, sys_id: str) -> str:
        row = self.tables.get(table, {}).get(sys_id)
        if row is None:
            return ""
        return row.get(DISPLAY_FIELDS.get(table, "sys_id"), "")

    def resolve(self, table: str, row: Mapping[str, str], path: str) -> tuple[str, FieldDef, str]:
        """Value of a possibly dot-walked field: (value, its definition, its table)."""
        parts = path.split(".")
        schema = SCHEMAS[table]
        current: Mapping[str, str] | None = row
        for part in parts[:-1]:
            fdef = schema[part]
            assert fdef.ref is not None
            target = fdef.ref
            value = current.get(part, "") if current is not None else ""
            current = self.tables[target].get(value)
            table, schema = target, SCHEMAS[target]
        last = parts[-1]
        value = current.get(last, "") if current is not None else ""
        return value, schema[last], table

    @staticmethod
    def valid_path(table: str, path: str) -> bool:
        schema = SCHEMAS[table]
        parts = path.split(".")
        for part in parts[:-1]:
            fdef = schema.get(part)
            if fdef is None or fdef.kind != "reference" or fdef.ref not in SCHEMAS:
                return False
            schema = SCHEMAS[fdef.ref]
        return parts[-1] in schema

    # ------------------------------------------------------------------ journals
    def journal_text(self, table: str, sys_id: str, elements: Iterable[str], zone: ZoneInfo) -> str:
        wanted = set(elements)
        entries = [
            row
            for row in self.tables["sys_journal_field"].values()
            if row["element_id"] == sys_id and row["name"] == table and row["element"] in wanted
        ]
        entries.sort(
            key=lambda r: (r["sys_created_on"], self.journal_order.get(r["sys_id"], 0)),
            reverse=True,
        )
        parts = []
        for entry in entries:
            when = to_zone(entry["sys_created_on"], zone)
            who = self.user(entry["sys_created_by"])
            name = self.display("sys_user", who.sys_id) or entry["sys_created_by"]
            label = JOURNAL_LABELS.get(entry["element"], entry["element"])
            parts.append(f"{when} - {name} ({label})\n{entry['value']}\n\n")
        return "".join(parts)

    def _add_journal(self, table: str, sys_id: str, element: str, text: str, user: User) -> None:
        jid = self.new_sys_id()
        now = self.now_str()
        self._journal_seq += 1
        self.journal_order[jid] = self._journal_seq
        self.tables["sys_journal_field"][jid] = {
            **self.blank("sys_journal_field"),
            "sys_id": jid,
            "name": table,
            "element": element,
            "element_id": sys_id,
            "value": text,
            "sys_created_on": now,
            "sys_created_by": user.user_name,
            "sys_updated_on": now,
            "sys_updated_by": user.user_name,
            "sys_mod_count": "0",
        }

    # ------------------------------------------------------------------ writes
    def _clean(self, table: str, body: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
        """Writable values (strings) and journal entries; unknown and sys_* fields dropped."""
        schema = SCHEMAS[table]
        values: dict[str, str] = {}
        journals: dict[str, str] = {}
        for name, raw in body.items():
            fdef = schema.get(name)
            if fdef is None or name.startswith("sys_"):
                continue  # unknown fields and sys_* fields are ignored, like the platform
            text = _as_string(raw)
            text = self._fit(name, text, 4000 if fdef.kind == "journal" else fdef.max_len)
            if fdef.kind == "journal":
                if name in JOURNAL_LABELS and text.strip():
                    journals[name] = text
                continue
            values[name] = text
        return values, journals

    def _fit(self, name: str, text: str, max_len: int | None) -> str:
        if max_len is None or len(text) <= max_len:
            return text
        if self.options.overlong == "reject":
            raise SNError(
                403,
                "Operation Failed",
                f"Field {name} exceeds its maximum length of {max_len} characters",
            )
        return text[:max_len]

    def insert(self, table: str, body: Mapping[str, Any], user: User) -> dict[str, str]:
        values, journals = self._clean(table, body)
        supplied = body.get("sys_id")
        rows = self.tables[table]
        if isinstance(supplied, str) and SUPPLIED_SYS_ID_RE.fullmatch(supplied):
            folded = supplied.lower()  # the column's collation ignores case [inferred]
            if supplied in rows or any(key.lower() == folded for key in rows):
                raise SNError(
                    403,
                    "Operation Failed",
                    f"Error during insert of {table} (duplicate sys_id {supplied})",
                )
            sys_id = supplied
        else:
            sys_id = self.new_sys_id()
        row = self.blank(table)
        row.update(values)
        now = self.now_str()
        if table == "incident":
            if not values.get("number"):
                row["number"] = f"INC{self.next_number:07d}"
                self.next_number += 1
            row["opened_by"] = values.get("opened_by") or user.sys_id
            row["opened_at"] = values.get("opened_at") or now
            row["priority"] = PRIORITY_MATRIX.get((row["impact"], row["urgency"]), row["priority"])
            self._incident_rules(None, row, user, now)
        row.update(
            sys_id=sys_id,
            sys_created_on=now,
            sys_created_by=user.user_name,
            sys_updated_on=now,
            sys_updated_by=user.user_name,
            sys_mod_count="0",
        )
        rows[sys_id] = row
        for element, text in journals.items():
            self._add_journal(table, sys_id, element, text, user)
        if table == "sys_choice":
            self.refresh_choices()
        return row

    def update(
        self, table: str, sys_id: str, body: Mapping[str, Any], user: User
    ) -> dict[str, str]:
        old = self.tables[table].get(sys_id)
        if old is None:
            raise _not_found()
        values, journals = self._clean(table, body)
        row = dict(old)
        row.update(values)
        now = self.now_str()
        if table == "incident":
            if "impact" in values or "urgency" in values:
                row["priority"] = PRIORITY_MATRIX.get(
                    (row["impact"], row["urgency"]), row["priority"]
                )
            self._incident_rules(old, row, user, now)
        if row == old and not journals:
            return old  # a no-op update is skipped: no sys_mod_count, no sys_updated_on
        row["sys_mod_count"] = str(int(old.get("sys_mod_count") or "0") + 1)
        row["sys_updated_on"] = now
        row["sys_updated_by"] = user.user_name
        self.tables[table][sys_id] = row
        for element, text in journals.items():
            self._add_journal(table, sys_id, element, text, user)
        if table == "sys_choice":
            self.refresh_choices()
        return row

    def delete(self, table: str, sys_id: str) -> None:
        if self.tables[table].pop(sys_id, None) is None:
            raise _not_found()
        if table == "sys_choice":
            self.refresh_choices()

    def _incident_rules(
        self,
        old: Mapping[str, str] | None,
        row: dict[str, str],
        user: User,
        now: str,
    ) -> None:
        """Business rules and data policies of ``incident`` (docs 3.2-3.4)."""
        old_state = old["state"] if old is not None else None
        state = row["state"]
        if (
            old_state is not None
            and old_state in self.options.terminal_states
            and state != old_state
        ):
            raise SNError(
                403,
                "Operation Failed",
                f"Incident {row['number']} is {self._state_label(old_state)} and cannot "
                f"change state (a new incident must be created)",
            )
        missing = []
        if state in {RESOLVED, CLOSED}:
            if row["close_code"] not in self._valid_close_codes:
                missing.append("Resolution code")  # an invalid code counts as missing
            if not row["close_notes"].strip():
                missing.append("Close notes")
        if state == ON_HOLD and self.options.hold_reason_required and not row["hold_reason"]:
            missing.append("On hold reason")
        if missing:
            raise SNError(
                403,
                "Operation Failed",
                "Data Policy Exception: \n\tThe following fields are mandatory: "
                + ", ".join(missing),
            )
        row["incident_state"] = state
        row["active"] = "false" if state in {CLOSED, CANCELED} else "true"
        if state != old_state:
            if state == RESOLVED:
                row["resolved_at"] = now
                row["resolved_by"] = user.sys_id
            if state == CLOSED:
                row["closed_at"] = now
                row["closed_by"] = user.sys_id
                if not row["resolved_at"]:
                    row["resolved_at"] = now
                    row["resolved_by"] = user.sys_id
            if old_state == RESOLVED and state in {NEW, IN_PROGRESS, ON_HOLD}:
                row["reopen_count"] = str(int(row["reopen_count"] or "0") + 1)
                row["reopened_by"] = user.sys_id
                row["reopened_time"] = now

    def _state_label(self, state: str) -> str:
        return self.choice_label("incident", "state", state) or state

    # ------------------------------------------------------------------ reading
    def compile_query(
        self, table: str, parsed: ParsedQuery, user: User
    ) -> tuple[Callable[[Mapping[str, str]], bool] | None, list[tuple[str, bool]], bool]:
        """(predicate or None for all, valid sort terms, whether something was invalid)."""
        invalid = bool(parsed.invalid)
        groups: list[list[list[Callable[[Mapping[str, str]], bool]]]] = []
        for group in parsed.groups:
            clauses = []
            for clause in group:
                tests = []
                for condition in clause:
                    test = self._condition_test(table, condition, user)
                    if test is None:
                        invalid = True
                    else:
                        tests.append(test)
                if tests:
                    clauses.append(tests)
            groups.append(clauses)
        order = [(f, d) for f, d in parsed.order if self.valid_path(table, f)]
        if len(order) != len(parsed.order):
            invalid = True
        if any(not g for g in groups):
            return None, order, invalid  # an empty group matches everything

        def predicate(row: Mapping[str, str]) -> bool:
            for group in groups:  # plain loops: this runs once per row of a 10k-row table
                for clause in group:
                    for test in clause:
                        if test(row):
                            break
                    else:
                        break
                else:
                    return True
            return False

        return predicate, order, invalid

    def _condition_test(
        self, table: str, cond: Condition, user: User
    ) -> Callable[[Mapping[str, str]], bool] | None:
        if not self.valid_path(table, cond.field):
            return None
        path = cond.field
        _, fdef, _ = self.resolve(table, {}, path)
        numeric = fdef.kind == "integer"
        if "." in path:

            def get(row: Mapping[str, str]) -> str:
                return self.resolve(table, row, path)[0]
        else:

            def get(row: Mapping[str, str]) -> str:
                return row.get(path, "")

        op = cond.op
        if op == "ANYTHING":
            return lambda row: True
        if op in {"ISEMPTY", "EMPTYSTRING"}:
            return lambda row: get(row) == ""
        if op == "ISNOTEMPTY":
            return lambda row: get(row) != ""
        if op in {"SAMEAS", "NSAMEAS"}:
            other = cond.value
            if not self.valid_path(table, other):
                return None
            same = op == "SAMEAS"
            return lambda row: (get(row) == self.resolve(table, row, other)[0]) is same
        if op in {"IN", "NOT IN"}:
            resolved = [self._js(v, user) for v in cond.value.split(",")]
            if any(v is None for v in resolved):
                return None
            members = {v for v in resolved if v is not None}
            if op == "IN":
                return lambda row: get(row) in members
            return lambda row: get(row) not in members
        if op == "BETWEEN":
            ends = cond.value.split("@")
            if len(ends) != 2:
                return None
            low, high = self._js(ends[0], user), self._js(ends[1], user)
            if low is None or high is None:
                return None
            lo_key, hi_key = _key(low, numeric), _key(high, numeric)
            return lambda row: (v := get(row)) != "" and lo_key <= _key(v, numeric) <= hi_key
        value = self._js(cond.value, user)
        if value is None:
            return None
        if op == "=":
            return lambda row: get(row) == value
        if op == "!=":
            return lambda row: get(row) != value
        if op == "LIKE":
            return lambda row: value in get(row)
        if op == "NOT LIKE":
            return lambda row: value not in get(row)
        if op == "STARTSWITH":
            return lambda row: get(row).startswith(value)
        if op == "ENDSWITH":
            return lambda row: get(row).endswith(value)
        compare = _COMPARATORS.get(op)
        if compare is None:
            return None
        ref = _key(value, numeric)
        return lambda row: (v := get(row)) != "" and compare(_key(v, numeric), ref)

    def _js(self, value: str, user: User) -> str | None:
        """Evaluate the few ``javascript:`` helpers (None = unknown: the condition is dropped)."""
        if not value.strip().lower().startswith("javascript:"):
            return value
        expr = value.strip()[len("javascript:") :].strip().rstrip(";").strip()
        zone = self.user_zone(user)
        if expr == "gs.getUserID()":
            return user.sys_id
        if expr == "gs.getUserName()":
            return user.user_name
        local_today = self.now().astimezone(zone).date()
        match = re.fullmatch(
            r"gs\.dateGenerate\(\s*['\"]([^'\"]+)['\"]\s*,\s*['\"]([^'\"]+)['\"]\s*\)", expr
        )
        if match:
            day, time_part = match.groups()
            time_part = {"start": "00:00:00", "end": "23:59:59"}.get(time_part, time_part)
            try:
                local = datetime.strptime(f"{day} {time_part}", SN_DATETIME_FORMAT)
            except ValueError:
                return None
            return _utc_str(local.replace(tzinfo=zone))
        match = re.fullmatch(r"gs\.daysAgo(Start|End)\(\s*(-?\d+)\s*\)", expr)
        if match:
            which, days = match.group(1), int(match.group(2))
            return _day_edge(local_today - timedelta(days=days), zone, end=which == "End")
        if expr == "gs.beginningOfToday()":
            return _day_edge(local_today, zone, end=False)
        if expr == "gs.endOfToday()":
            return _day_edge(local_today, zone, end=True)
        return None


_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def _key(value: str, numeric: bool) -> tuple[int, float, str]:
    """Sort/compare key: numbers as numbers on integer fields, strings otherwise."""
    if numeric:
        try:
            return (0, float(value), "")
        except ValueError:
            return (1, 0.0, value)
    return (1, 0.0, value)


def _utc_str(when: datetime) -> str:
    return when.astimezone(UTC).strftime(SN_DATETIME_FORMAT)


def _day_edge(day: Any, zone: ZoneInfo, *, end: bool) -> str:
    clock_time = "23:59:59" if end else "00:00:00"
    local = datetime.strptime(f"{day.isoformat()} {clock_time}", SN_DATETIME_FORMAT)
    return _utc_str(local.replace(tzinfo=zone))


def to_zone(value: str, zone: ZoneInfo) -> str:
    """A raw UTC date-time shown in ``zone`` (display values)."""
    if not value:
        return ""
    try:
        when = datetime.strptime(value, SN_DATETIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return value
    return when.astimezone(zone).strftime(SN_DATETIME_FORMAT)


def _as_string(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (int, float)):
        return str(raw)
    if isinstance(raw, dict) and isinstance(raw.get("value"), (str, int)):
        return str(raw["value"])
    raise _bad_request(f"Unsupported value type {type(raw).__name__} in the payload")


# --------------------------------------------------------------------------- app


STATE_KEY: web.AppKey[SNState] = web.AppKey("servicenow_state", SNState)
USER_KEY: web.RequestKey[User] = web.RequestKey("servicenow_user", User)

_COLLECTION_METHODS = ("GET", "HEAD", "POST")
_RECORD_METHODS = ("GET", "HEAD", "PUT", "PATCH", "DELETE")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PASSTHROUGH_PARAMS = frozenset({"x-sn-apikey"})


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


class _Api:
    """Request handlers over one :class:`SNState`."""

    def __init__(self, state: SNState) -> None:
        self.state = state

    # ------------------------------------------------------------------ middleware
    @web.middleware
    async def semaphore_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Options ``semaphores``/``semaphore_queue``/``processing_s`` (docs 1.6)."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        state = self.state
        try:
            await state.pool.acquire()
        except PoolFullError:
            # no Retry-After, no X-RateLimit-*: this is not a rate limit rule
            return error_response(429, "Rate limit exceeded", SEMAPHORE_QUEUE_FULL)
        try:
            if state.options.processing_s > 0:
                await state.clock.sleep(state.options.processing_s)
            return await handler(request)
        finally:
            state.pool.release()

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        try:
            user = self._authenticate(request)
            request[USER_KEY] = user
            limit_headers = self._rate_limit(user)
        except SNError as exc:
            return exc.response()
        try:
            response = await handler(request)
        except SNError as exc:
            response = exc.response()
        response.headers.update(limit_headers)
        return response

    def _authenticate(self, request: web.Request) -> User:
        state = self.state
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        user_name: str | None = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            name, sep, password = decoded.partition(":")
            if sep and name in state.passwords and state.passwords[name] == password:
                user_name = name
        elif scheme.lower() == "bearer":
            token = state.access_tokens.get(credential.strip())
            if token is not None and state.now() < token.expires_at:
                user_name = token.user
        else:
            key = request.headers.get("x-sn-apikey") or request.query.get("x-sn-apikey")
            if key and key in state.options.api_keys:
                user_name = state.options.api_keys[key]
        if user_name is None:
            raise SNError(
                401,
                "User Not Authenticated",
                "Required to provide Auth information",
                {"WWW-Authenticate": 'BASIC realm="Service-now"'}
                if scheme.lower() != "bearer"
                else None,
            )
        return state.user(user_name)

    def _rate_limit(self, user: User) -> dict[str, str]:
        options = self.state.options
        limit = options.user_rate_limits.get(user.user_name, options.rate_limit_per_hour)
        if limit is None:
            return {}
        now = self.state.clock.now().timestamp()
        window = int(now // RATE_LIMIT_WINDOW_S)
        reset = (window + 1) * RATE_LIMIT_WINDOW_S
        key = (user.user_name, window)
        count = self.state.rate_counts.get(key, 0) + 1
        self.state.rate_counts[key] = count
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Rule": RATE_LIMIT_RULE_ID,
        }
        if count > limit:
            retry = max(1, math.ceil(reset - now))
            raise SNError(
                429,
                "Rate limit exceeded",
                f"Rate limit of {limit} requests per hour for Table API exceeded",
                {**headers, "Retry-After": str(retry)},
            )
        return headers

    # ------------------------------------------------------------------ OAuth
    async def oauth_token(self, request: web.Request) -> web.Response:
        failure = web.json_response(
            {"error_description": "access_denied", "error": "server_error"}, status=401
        )
        if request.content_type != "application/x-www-form-urlencoded":
            return failure
        form = await request.post()
        state = self.state
        client = self._oauth_client(request, form)
        if client is None:
            return failure
        client_id, secret = client
        if not client_id or state.options.oauth_clients.get(client_id) != secret:
            return failure
        grant = form.get("grant_type")
        now = state.now()
        user_name: str | None = None
        give_refresh = False
        if grant == "password":
            name, password = str(form.get("username", "")), str(form.get("password", ""))
            if name in state.passwords and state.passwords[name] == password:
                user_name, give_refresh = name, True
        elif grant == "refresh_token":
            refresh = state.refresh_tokens.get(str(form.get("refresh_token", "")))
            if refresh is not None and refresh.client_id == client_id and now < refresh.expires_at:
                user_name = refresh.user
        elif grant == "client_credentials":
            user_name = state.options.client_credentials_user
        if user_name is None:
            return failure
        access = self._current_or_new_access(user_name, client_id, now)
        body: dict[str, Any] = {
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": max(0, int((access.expires_at - now).total_seconds()) - 1),
            "access_token": access.value,
        }
        if give_refresh:
            refresh_value = _token_value(state)
            state.refresh_tokens[refresh_value] = Token(
                refresh_value,
                user_name,
                client_id,
                now + timedelta(seconds=REFRESH_TOKEN_LIFETIME_S),
            )
            body["refresh_token"] = refresh_value
        return web.json_response(body)

    def _oauth_client(
        self, request: web.Request, form: Mapping[str, Any]
    ) -> tuple[str, str] | None:
        """(client_id, client_secret) from the form and/or an HTTP Basic header.

        RFC 6749 2.3.1: the header carries ``form-urlencoded(id):form-urlencoded(secret)``.
        Option ``oauth_client_auth``: ``"both"`` (default) takes the header when there is
        one (form values, if also sent, must then agree with it) and the form otherwise;
        ``"form"`` ignores the header; ``"basic"`` requires the header.
        """
        mode = self.state.options.oauth_client_auth
        form_id = str(form.get("client_id", ""))
        form_secret = str(form.get("client_secret", ""))
        header: tuple[str, str] | None = None
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if mode != "form" and scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            raw_id, sep, raw_secret = decoded.partition(":")
            if not sep:
                return None
            header = (unquote_plus(raw_id), unquote_plus(raw_secret))
        if header is None:
            return None if mode == "basic" else (form_id, form_secret)
        if mode == "both" and (
            (form_id and form_id != header[0]) or (form_secret and form_secret != header[1])
        ):
            return None  # two different client authentications in one request
        return header

    def _current_or_new_access(self, user_name: str, client_id: str, now: datetime) -> Token:
        state = self.state
        for token in state.access_tokens.values():
            if token.user == user_name and token.client_id == client_id and now < token.expires_at:
                return token  # asking again within the lifetime returns the current token
        value = _token_value(state)
        token = Token(value, user_name, client_id, now + timedelta(seconds=ACCESS_TOKEN_LIFETIME_S))
        state.access_tokens[value] = token
        return token

    # ------------------------------------------------------------------ routing
    async def unknown_api(self, request: web.Request) -> web.Response:
        return error_response(400, "Requested URI does not represent any resource")

    async def collection(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, _COLLECTION_METHODS)

    async def record(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, _RECORD_METHODS)

    async def _dispatch(self, request: web.Request, allowed: tuple[str, ...]) -> web.StreamResponse:
        method = request.method
        override = request.headers.get("X-HTTP-Method-Override")
        if method == "POST" and override:
            method = override.strip().upper()
        if method not in allowed:
            return error_response(
                405,
                "Method not Supported",
                f"The {method} method is not supported for this resource",
                {"Allow": ", ".join(allowed)},
            )
        accept = request.headers.get("Accept", "application/json")
        if not _accepts_json(accept):
            return error_response(406, "Not Acceptable", f"Unsupported Accept header {accept!r}")
        table = request.match_info["table"]
        if table not in SCHEMAS:
            return error_response(400, f"Invalid table {table}")
        sys_id = request.match_info.get("sys_id")
        body: Any = None
        user = request[USER_KEY]
        if method in _BODY_METHODS:
            body = await self._read_body(request)
            if _truthy(request.query.get("sysparm_input_display_value")):
                body = self._input_display(table, body, user)
        if method in {"GET", "HEAD"}:
            if sys_id is None:
                return self._list(request, table, user)
            row = self.state.tables[table].get(sys_id)
            if row is None:
                raise _not_found()
            return self._json(request, self._render(request, table, row, user))
        if method == "POST":
            row = self.state.insert(table, body, user)
            location = f"{_origin(request)}/api/now/table/{table}/{row['sys_id']}"
            return self._json(
                request,
                self._render(request, table, row, user),
                status=201,
                headers={"Location": location},
                suppressible=True,
            )
        assert sys_id is not None
        if method == "DELETE":
            self.state.delete(table, sys_id)
            return web.Response(status=204)
        row = self.state.update(table, sys_id, body, user)
        return self._json(request, self._render(request, table, row, user), suppressible=True)

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise SNError(
                415, "Unsupported Media Type", f"Unsupported Content-Type {ctype or '(none)'}"
            )
        if request.content_length is not None and request.content_length > MAX_PAYLOAD_BYTES:
            raise _bad_request(
                f"Rejected large REST payload with content-length = {request.content_length} "
                f"bytes. Max allowed: {MAX_PAYLOAD_BYTES} bytes."
            )
        raw = await request.read()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad_request("The payload is not valid JSON.") from exc
        if isinstance(data, list):
            data = data[0] if data else None  # only the first record is processed
        if not isinstance(data, dict):
            raise _bad_request("The payload is not a JSON object.")
        return data

    def _json(
        self,
        request: web.Request,
        result: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        suppressible: bool = False,
    ) -> web.Response:
        if suppressible and _truthy(request.headers.get("X-no-response-body")):
            return web.Response(status=status, headers=headers)
        return web.json_response({"result": result}, status=status, headers=headers)

    # ------------------------------------------------------------------ list
    def _list(self, request: web.Request, table: str, user: User) -> web.Response:
        state = self.state
        query = request.query
        limit = _int_param(query, "sysparm_limit", state.options.default_limit)
        offset = _int_param(query, "sysparm_offset", 0)
        if "sysparm_query" in query:
            parsed = parse_query(query["sysparm_query"])
        else:
            parsed = self._name_value_query(table, query)
        predicate, order, invalid = state.compile_query(table, parsed, user)
        if table == "sys_dictionary" and state.options.dictionary_access == "forbidden":
            raise SNError(
                403, "User Not Authorized", "User does not have read access to sys_dictionary"
            )
        if invalid and state.options.invalid_query == "forbidden":
            raise SNError(
                403,
                "Insufficient rights to query records",
                "Field(s) present in the query do not have permission to be read",
            )
        rows: list[dict[str, str]]
        hidden = table == "sys_dictionary" and state.options.dictionary_access == "hidden"
        if hidden or (invalid and state.options.invalid_query == "no_rows"):
            rows = []
        else:
            source = state.tables[table].values()
            rows = list(source) if predicate is None else [r for r in source if predicate(r)]
        if order and len({descending for _, descending in order}) == 1:
            keys = [self._sort_key(table, name) for name, _ in order]
            rows.sort(key=lambda r: tuple(k(r) for k in keys), reverse=order[0][1])
        elif order:
            for name, descending in reversed(order):
                rows.sort(key=self._sort_key(table, name), reverse=descending)
        elif state.options.shuffle_unordered:
            state.rng.shuffle(rows)
        total = len(rows)
        page = rows[offset : offset + limit]
        window = len(page)  # rows within limit/offset, before the "ACL" filter
        if state.options.short_pages > 0:  # filtered after the limit, like ACLs (docs 1.5)
            page = [r for r in page if not state.hidden_from_lists(table, r)]
        headers: dict[str, str] = {}
        if not _truthy(query.get("sysparm_no_count")):
            headers["X-Total-Count"] = str(total)
        if not _truthy(query.get("sysparm_suppress_pagination_header")):
            link = _link_header(
                request,
                limit,
                offset,
                None if _truthy(query.get("sysparm_no_count")) else total,
                window,
            )
            if link:
                headers["Link"] = link
        if not window and request.match_info.get("version") == "v1" and state.options.api_v1_404:
            raise SNError(
                404,
                "No Record found",
                "Records matching query not found. Check query parameter or offset parameter",
                headers,
            )
        render = self._renderer(request, table, user)
        result = [render(r) for r in page]
        return web.json_response({"result": result}, headers=headers)

    def _sort_key(self, table: str, name: str) -> Callable[[Mapping[str, str]], Any]:
        _, fdef, _ = self.state.resolve(table, {}, name)
        numeric = fdef.kind == "integer"
        if "." in name:
            return lambda row: _sort_value(self.state.resolve(table, row, name)[0], numeric)
        if not numeric:
            return lambda row: row.get(name, "")  # "" sorts first, like NULLs ascending
        return lambda row: _sort_value(row.get(name, ""), numeric)

    def _name_value_query(self, table: str, query: Mapping[str, str]) -> ParsedQuery:
        """``&active=true&state=New``: display values accepted for choices and references."""
        parsed = ParsedQuery(groups=[[]])
        for name, value in query.items():
            if name.startswith("sysparm_") or name in _PASSTHROUGH_PARAMS:
                continue
            if not self.state.valid_path(table, name):
                parsed.invalid.append(f"{name}={value}")
                continue
            raw = self._from_display(table, name, value, strict=False)
            parsed.groups[0].append([Condition(name, "=", raw)])
        return parsed

    def _input_display(self, table: str, body: Mapping[str, Any], user: User) -> dict[str, Any]:
        """``sysparm_input_display_value=true``: labels, display names, user-zone times."""
        schema = SCHEMAS[table]
        zone = self.state.user_zone(user)
        out: dict[str, Any] = {}
        for name, raw in body.items():
            fdef = schema.get(name)
            if fdef is None or not isinstance(raw, str) or not raw:
                out[name] = raw
            elif fdef.kind == "datetime":
                try:
                    local = datetime.strptime(raw, SN_DATETIME_FORMAT).replace(tzinfo=zone)
                except ValueError:
                    out[name] = raw
                else:
                    out[name] = _utc_str(local)
            elif fdef.kind == "journal":
                out[name] = raw
            else:
                out[name] = self._from_display(table, name, raw, strict=True)
        return out

    def _from_display(self, table: str, name: str, value: str, *, strict: bool) -> str:
        """A choice label or reference display name turned into the stored value."""
        state = self.state
        if "." in name:
            return value
        fdef = SCHEMAS[table][name]
        if fdef.kind == "reference" and fdef.ref in SCHEMAS:
            target = fdef.ref
            if value in state.tables[target]:
                return value
            display = DISPLAY_FIELDS.get(target, "sys_id")
            hits = [r["sys_id"] for r in state.tables[target].values() if r.get(display) == value]
            if len(hits) == 1:
                return hits[0]
            return "" if strict else value
        for row in state.tables["sys_choice"].values():
            if row["name"] == table and row["element"] == name and row["label"] == value:
                return row["value"]
        return value

    # ------------------------------------------------------------------ rendering
    def _render(
        self, request: web.Request, table: str, row: Mapping[str, str], user: User
    ) -> dict[str, Any]:
        return self._renderer(request, table, user)(row)

    def _renderer(
        self, request: web.Request, table: str, user: User
    ) -> Callable[[Mapping[str, str]], dict[str, Any]]:
        """Render rows as the request asks (fields, display mode, links), set up once."""
        query = request.query
        mode = query.get("sysparm_display_value", "false").strip().lower()
        if mode not in {"true", "all"}:
            mode = "false"
        no_link = _truthy(query.get("sysparm_exclude_reference_link"))
        wanted = query.get("sysparm_fields")
        if wanted:
            names = [
                n for n in (x.strip() for x in wanted.split(",")) if self.state.valid_path(table, n)
            ]
        else:
            names = list(SCHEMAS[table])
        zone = self.state.user_zone(user)
        base = _origin(request)
        schema = SCHEMAS[table]
        plain = mode == "false" and all(
            "." not in n and schema[n].kind not in {"reference", "journal"} for n in names
        )

        def render(row: Mapping[str, str]) -> dict[str, Any]:
            if plain:
                return {name: row.get(name, "") for name in names}
            out: dict[str, Any] = {}
            for name in names:
                value, fdef, owner = self.state.resolve(table, row, name)
                out[name] = self._render_value(
                    table,
                    row,
                    name,
                    value,
                    fdef=fdef,
                    owner=owner,
                    mode=mode,
                    no_link=no_link,
                    zone=zone,
                    base=base,
                )
            return out

        return render

    def _render_value(
        self,
        table: str,
        row: Mapping[str, str],
        name: str,
        value: str,
        *,
        fdef: FieldDef,
        owner: str,
        mode: str,
        no_link: bool,
        zone: ZoneInfo,
        base: str,
    ) -> Any:
        element = name.rsplit(".", 1)[-1]
        if fdef.kind == "journal":
            if mode == "false" or "." in name:
                return "" if mode != "all" else {"display_value": "", "value": ""}
            elements = list(JOURNAL_LABELS) if element == "comments_and_work_notes" else [element]
            text = self.state.journal_text(table, row.get("sys_id", ""), elements, zone)
            return text if mode == "true" else {"display_value": text, "value": ""}
        if mode == "false":
            if fdef.kind == "reference" and value and not no_link:
                return {"link": f"{base}/api/now/table/{fdef.ref}/{value}", "value": value}
            return value
        display = self._display_value(owner, element, value, fdef, zone)
        if fdef.kind == "reference":
            link = f"{base}/api/now/table/{fdef.ref}/{value}"
            if mode == "true":
                if not value or no_link:
                    return display
                return {"display_value": display, "link": link}
            if not value:
                return {"display_value": "", "value": ""}
            shaped: dict[str, str] = {"display_value": display, "value": value}
            if not no_link:
                shaped["link"] = link
            return shaped
        if mode == "true":
            return display
        return {"display_value": display, "value": value}

    def _display_value(
        self, owner: str, element: str, value: str, fdef: FieldDef, zone: ZoneInfo
    ) -> str:
        if not value:
            return ""
        if fdef.kind == "reference":
            assert fdef.ref is not None
            shown = self.state.display(fdef.ref, value)
            return shown or (value if element == "sys_domain" else "")
        if fdef.kind == "datetime":
            return to_zone(value, zone)
        label = self.state.choice_label(owner, element, value)
        return label if label is not None else value


def _sort_value(value: str, numeric: bool) -> tuple[int, float, str]:
    if value == "":
        return (-1, 0.0, "")  # empty sorts first ascending (NULLs first)
    return _key(value, numeric)


def _token_value(state: SNState) -> str:
    return base64.urlsafe_b64encode(state.rng.getrandbits(256).to_bytes(32, "big")).decode()[:43]


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _accepts_json(accept: str) -> bool:
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in {"application/json", "*/*", "application/*", ""} or media.endswith("+json"):
            return True
    return False


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SNError(400, f"Invalid {name} value {raw!r}", None) from None
    if value < 0:
        raise SNError(400, f"Invalid {name} value {raw!r}", None)
    return value


def _link_header(
    request: web.Request, limit: int, offset: int, total: int | None, page_len: int
) -> str:
    """``Link`` with absolute URLs repeating every parameter (docs 1.5)."""
    if limit <= 0:
        return ""
    if total is None:
        has_next = page_len >= limit
        last_offset = None
    else:
        has_next = offset + limit < total
        last_offset = max(0, (total - 1) // limit * limit)
    if offset == 0 and not has_next:
        return ""  # everything fits on one page
    base = f"{_origin(request)}{request.path}"
    params = [(k, v) for k, v in request.query.items() if k != "sysparm_offset"]

    def url(at: int) -> str:
        return base + "?" + urlencode([*params, ("sysparm_offset", str(at))])

    links = [f'<{url(0)}>;rel="first"']
    if offset > 0:
        links.append(f'<{url(max(0, offset - limit))}>;rel="prev"')
    if has_next:
        links.append(f'<{url(offset + limit)}>;rel="next"')
    if last_offset is not None:
        links.append(f'<{url(last_offset)}>;rel="last"')
    return ",".join(links)


# --------------------------------------------------------------------------- run-time config

#: the switches ``GET/POST /_emulator/config`` reads and changes (all options of create_app)
CONFIG_KEYS = (
    "semaphores",
    "semaphore_queue",
    "processing_s",
    "short_pages",
    "user_time_zone",
    "oauth_client_auth",
    "shuffle_unordered",
    "rate_limit_per_hour",
    "user_rate_limits",
    "overlong",
    "dictionary_access",
)
_OAUTH_CLIENT_AUTH = ("form", "basic", "both")
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "oauth_client_auth": _OAUTH_CLIENT_AUTH,
    "overlong": ("truncate", "reject"),
    "dictionary_access": ("read", "hidden", "forbidden"),
}


def _count(name: str, value: Any, *, minimum: int, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "an integer" + (" or null" if nullable else "")
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")
    return value


def check_option(name: str, value: Any) -> Any:
    """The normalised value of one run-time switch; ValueError names the bad one."""
    if name == "semaphores":
        return _count(name, value, minimum=1, nullable=True)
    if name == "semaphore_queue":
        return _count(name, value, minimum=0, nullable=False)
    if name == "rate_limit_per_hour":
        return _count(name, value, minimum=0, nullable=True)
    if name in {"processing_s", "short_pages"}:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if name == "short_pages" and value > 1:
            raise ValueError(f"short_pages is a fraction between 0 and 1, got {value!r}")
        return float(value)
    if name == "user_time_zone":
        if value is None or value == "":
            return value  # None: GMT; "": no zone on the user (glide.sys.default.tz applies)
        if not isinstance(value, str):
            raise ValueError(f"user_time_zone must be a zone name or null, got {value!r}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"user_time_zone: unknown time zone {value!r}") from None
        return value
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {_CHOICES[name]}, got {value!r}")
        return value
    if name == "shuffle_unordered":
        if not isinstance(value, bool):
            raise ValueError(f"shuffle_unordered must be true or false, got {value!r}")
        return value
    if name == "user_rate_limits":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError("user_rate_limits must map user names to requests per hour")
        return {
            k: _count(f"user_rate_limits[{k}]", v, minimum=0, nullable=False)
            for k, v in value.items()
        }
    raise ValueError(f"unknown option {name!r}")


def config_json(state: SNState) -> dict[str, Any]:
    opts = state.options
    body: dict[str, Any] = {name: getattr(opts, name) for name in CONFIG_KEYS}
    body["user_rate_limits"] = dict(opts.user_rate_limits)
    body["semaphore_state"] = state.pool.to_json()
    return body


def apply_config(state: SNState, body: Any) -> None:
    """Apply a partial config (all or nothing); ValueError/TypeError for a bad one."""
    if not isinstance(body, dict):
        raise TypeError("the config must be a JSON object")
    if "semaphore_state" in body:
        raise ValueError("semaphore_state is read-only")
    unknown = set(body) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)} (known: {list(CONFIG_KEYS)})")
    values = {name: check_option(name, value) for name, value in body.items()}
    opts = state.options
    for name, value in values.items():
        if name == "user_time_zone":
            state.set_login_time_zone(value)
        else:
            setattr(opts, name, value)
    if {"semaphores", "semaphore_queue"} & set(values):
        state.pool.resize(opts.semaphores, opts.semaphore_queue)


def _config_handlers(state: SNState) -> tuple[Handler, Handler]:
    async def get_config(request: web.Request) -> web.Response:
        return web.json_response(config_json(state))

    async def set_config(request: web.Request) -> web.Response:
        try:
            apply_config(state, await request.json())
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(config_json(state))

    return get_config, set_config


def realism_banner(opts: Options) -> str | None:
    """One banner line naming the switches that differ from the strict defaults."""
    defaults = Options()
    changed = [
        f"{name}={getattr(opts, name)!r}"
        for name in CONFIG_KEYS
        if getattr(opts, name) != getattr(defaults, name)
    ]
    return "switches: " + ", ".join(changed) if changed else None


def create_app(
    *,
    clock: Clock | None = None,
    users: Mapping[str, str] | None = None,
    seed: int | None = None,
    **options: Any,
) -> web.Application:
    """The emulator app; ``options`` are the fields of :class:`Options` (see the docstring).

    ``users`` maps user_name -> password (default ``bpsync``/``bpsync`` and
    ``admin``/``admin``); each becomes a ``sys_user`` row.
    """
    known = set(Options.__dataclass_fields__)
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown ServiceNow emulator options: {sorted(unknown)}")
    opts = Options(**options)
    if opts.close_codes not in {"current", "legacy"}:
        raise ValueError("close_codes must be 'current' or 'legacy'")
    if opts.invalid_query not in {"ignore", "no_rows", "forbidden"}:
        raise ValueError("invalid_query must be 'ignore', 'no_rows' or 'forbidden'")
    for name in CONFIG_KEYS:
        setattr(opts, name, check_option(name, getattr(opts, name)))
    opts.terminal_states = frozenset(str(s) for s in opts.terminal_states)
    the_clock = clock or SystemClock()
    state = SNState(the_clock, users if users is not None else DEFAULT_USERS, seed, opts)
    api = _Api(state)
    app = web.Application(client_max_size=MAX_PAYLOAD_BYTES + 1024 * 1024)
    app[STATE_KEY] = state
    app.middlewares.append(api.semaphore_middleware)
    app.middlewares.append(api.auth_middleware)
    control = EmulatorControl(
        error_response=error_response,
        on_reset=state.reset,
        clock=the_clock,
        seed=seed,
    )
    control.install(app)
    get_config, set_config = _config_handlers(state)
    app.router.add_get("/_emulator/config", get_config)
    app.router.add_post("/_emulator/config", set_config)
    app.router.add_post("/oauth_token.do", api.oauth_token)
    for prefix in ("/api/now", "/api/now/{version:v[12]}"):
        app.router.add_route("*", prefix + "/table/{table}", api.collection)
        app.router.add_route("*", prefix + "/table/{table}/{sys_id}", api.record)
    app.router.add_route("*", "/api/{tail:.*}", api.unknown_api)
    banner = [f"user {name} / password {password}" for name, password in state.passwords.items()]
    banner += [
        f"OAuth client_id {cid} / client_secret {secret} (POST /oauth_token.do)"
        for cid, secret in opts.oauth_clients.items()
    ]
    banner.append(
        f"close codes: {opts.close_codes}; incidents number from INC{FIRST_INCIDENT_NUMBER:07d}"
    )
    switches = realism_banner(opts)
    if switches:
        banner.append(switches)
    app[BANNER_KEY] = banner
    return app
