"""A strict, in-memory emulator of the ServiceNow REST Table API and the ``incident`` table.

Contract (docs/servicenow-api.md sections 0-3; the checklist of section 7): an emulator
more forgiving than the real API hides client bugs, so where the real behaviour is known
the emulator is exactly as strict, and where it is uncertain it picks the stricter side
and says so below.

``create_app(clock=..., users=..., seed=..., **options)`` returns an ``aiohttp.web``
application. All time is read from the injected :class:`~sync.clock.Clock`. The in-memory
state is ``app[STATE_KEY]`` (:class:`InstanceState`: ``tables[name][sys_id] -> {field: str}``).
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
  (:meth:`InstanceState.hidden_from_lists`); reading or writing one record by sys_id is not
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
- Incident business rules (:meth:`InstanceState.insert` / :meth:`InstanceState.update`): 32-hex
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

Push mode's business rule (off until given a URL): ``GET/POST /_emulator/business_rule``
configures an after insert/update rule on ``incident`` that POSTs ``{"table", "sys_id",
"sys_mod_count", "sys_updated_on"}`` with the configured headers, with drop, duplicate,
delay and reorder fault switches (:mod:`.rules`, :mod:`sync.emulators.delivery`).

Not emulated: per-user ACLs, session cookies/serialisation, XML, ``sysparm_view``
(ignored), the auto-close job, date operators ``ON``/``RELATIVE*``/``DATEPART``.

Modules: :mod:`.schema` (field definitions, value formats), :mod:`.query` (encoded
queries), :mod:`.state` (:class:`InstanceState`, options, seeding, business rules),
:mod:`.errors`, :mod:`.routes` (auth, OAuth, the Table API), :mod:`.config` (run-time
switches), :mod:`.app` (:func:`create_app`).
"""

from sync.emulators.servicenow.app import RULE_KEY, STATE_KEY, create_app
from sync.emulators.servicenow.config import (
    CONFIG_KEYS,
    apply_config,
    check_option,
    config_json,
    realism_banner,
)
from sync.emulators.servicenow.errors import SNError, error_response
from sync.emulators.servicenow.query import (
    Condition,
    ParsedQuery,
    compile_query,
    parse_condition,
    parse_query,
    split_terms,
)
from sync.emulators.servicenow.routes import SEMAPHORE_QUEUE_FULL, USER_KEY
from sync.emulators.servicenow.schema import (
    DISPLAY_FIELDS,
    INCIDENT_FIELDS,
    SCHEMAS,
    TASK_FIELDS,
    FieldDef,
    stable_id,
    to_zone,
)
from sync.emulators.servicenow.state import (
    DEFAULT_USERS,
    FIRST_INCIDENT_NUMBER,
    InstanceState,
    Options,
    Token,
    User,
)

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_USERS",
    "DISPLAY_FIELDS",
    "FIRST_INCIDENT_NUMBER",
    "INCIDENT_FIELDS",
    "RULE_KEY",
    "SCHEMAS",
    "SEMAPHORE_QUEUE_FULL",
    "STATE_KEY",
    "TASK_FIELDS",
    "USER_KEY",
    "Condition",
    "FieldDef",
    "InstanceState",
    "Options",
    "ParsedQuery",
    "SNError",
    "Token",
    "User",
    "apply_config",
    "check_option",
    "compile_query",
    "config_json",
    "create_app",
    "error_response",
    "parse_condition",
    "parse_query",
    "realism_banner",
    "split_terms",
    "stable_id",
    "to_zone",
]
