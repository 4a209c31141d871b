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
- ``GET    /resources/v2.0/scim/Users`` (``filter=userName eq "<e-mail>"``, ``startIndex``,
  ``count``) -> 200 SCIM 1.1 list ``{"totalResults", "itemsPerPage", "startIndex",
  "Resources"}``; ``GET /resources/v2.0/scim/Users/{id}`` -> 200 user, 404 unknown; 2
  requests/s per route; seeded users in :mod:`sync.emulators.bigpanda.users`
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
       [{"tag_id", "tag_value"}], "assignee"?: "<user id>", "shared"?: bool,
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
  ``dlq``; ``POST /_emulator/webhook`` changes the config (``{"url": ...}`` turns it on,
  ``"headers"`` are sent as given, e.g. bpsync's ``Authorization: Bearer``; ``"envelope":
  "v2"`` sends Webhook v2 trigger bodies; ``"faults"``: drop, duplicate, delay, reorder,
  test switches of :mod:`sync.emulators.delivery`);
  ``DELETE /_emulator/webhook/dlq`` empties the DLQ.
- ``GET/POST /_emulator/config``: read or change ``rate_limit_per_s`` (null = off),
  ``rate_limit_shape`` (``token_bucket`` | ``sliding_window`` | ``fixed_window``),
  ``rate_limit_scope`` (``token_method_route`` | ``token_route`` | ``org_route``),
  ``batch_resolve_rate_limit_per_s``, ``scim_rate_limit_per_s``, ``reopen_window_s``,
  ``correlation_window_s``.
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
- users (SCIM, docs 4.7): ``userName`` is the e-mail, matched case-insensitively by
  ``filter=userName eq``; a deactivated user is listed with ``active: false``; an
  assigned incident's ``assignee`` is ``{user_id, name, email}`` (``assignee_email=False``
  leaves the e-mail out), absent when unassigned; ``PUT .../assignment`` takes any id.

Tests mutate BigPanda through ``app[STATE_KEY]`` (:class:`State`): ``ingest_alert``,
``set_tag``/``set_tags``/``delete_tag``, ``define_tag``, ``comment``, ``resolve``,
``assign``, ``snooze``, ``merge``/``split``, ``load_incident``, ``get``, ``search``.

Modules: :mod:`.model` (fixed ids, limits, errors, the dataclasses), :mod:`.bpql`,
:mod:`.state` (:class:`State` and its actions), :mod:`.ingest` (alert correlation),
:mod:`.fixtures`, :mod:`.webhooks` (AutoShare), :mod:`.routes` (the handlers),
:mod:`.users` (the organisation's users, SCIM) and :mod:`.app` (:func:`create_app`).
"""

from sync.emulators.bigpanda.app import create_app
from sync.emulators.bigpanda.bpql import compile_bpql
from sync.emulators.bigpanda.model import (
    ALL_INCIDENTS_ENVIRONMENT_ID,
    DEFAULT_AIA_TAG,
    DEFAULT_API_KEY,
    DEFAULT_ENVIRONMENT_ID,
    DEFAULT_ORG_TOKEN,
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
    error_response,
)
from sync.emulators.bigpanda.routes import CONFIG_KEY, LIMITER_KEY, STATE_KEY, WEBHOOKS_KEY
from sync.emulators.bigpanda.state import State
from sync.emulators.bigpanda.webhooks import (
    DEFAULT_WEBHOOK_TRIGGERS,
    WEBHOOK_TRIGGERS,
    WebhookConfig,
    Webhooks,
)

__all__ = [
    "ALL_INCIDENTS_ENVIRONMENT_ID",
    "CONFIG_KEY",
    "DEFAULT_AIA_TAG",
    "DEFAULT_API_KEY",
    "DEFAULT_ENVIRONMENT_ID",
    "DEFAULT_ORG_TOKEN",
    "DEFAULT_USER_ID",
    "DEFAULT_WEBHOOK_TRIGGERS",
    "LIMITER_KEY",
    "STATE_KEY",
    "STATUS_RANK",
    "WEBHOOKS_KEY",
    "WEBHOOK_TRIGGERS",
    "Activity",
    "Alert",
    "ApiError",
    "Environment",
    "Incident",
    "IngestResult",
    "Snooze",
    "State",
    "TagDefinition",
    "TagValue",
    "WebhookConfig",
    "Webhooks",
    "compile_bpql",
    "create_app",
    "error_response",
]
