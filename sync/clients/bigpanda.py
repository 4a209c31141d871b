"""BigPanda REST client (aiohttp), implementing :class:`sync.clients.base.BigPandaAPI`.

Contract (docs/bigpanda-api.md sections 0, 2-6 and 11; SPEC B13, B16, B19, B20):

- The session is injected (:func:`make_session` builds the right one: no cookie jar, a
  total timeout of ``bigpanda.timeout``, TLS verification unless ``verify_tls = false``).
- Auth: ``Authorization: Bearer <bigpanda.api_key>`` (the User API Key) on every
  ``/resources/v2.0`` call; ``Bearer <bigpanda.bearer_token>`` (the Org Token) on alert
  ingest ``/data/v2/alerts``. A missing API key is a :class:`ConfigError` when the client
  is built; a missing org token only when an alert is posted (the daemon never does).
- Endpoints (all under ``bigpanda.url``), by family (the pacer's buckets):

  - ``environments``: GET ``/resources/v2.0/environments`` (list_environments, check_auth)
  - ``search``: GET ``/resources/v2.0/environments/{env}/incidents`` (search_incidents,
    list_changed)
  - ``incident``: GET ``.../incidents/{id}``, ``expand=alerts`` optional (get_incident)
  - ``resolve``: POST ``.../incidents/{id}/resolve`` ``{"comments"}`` (resolve_incident)
  - ``comments``: POST ``.../incidents/{id}/comments`` ``{"comment"}`` (add_comment)
  - ``activities``: GET ``/resources/v2.0/incidents/{id}/activities`` (list_activities)
  - ``tags``: GET/POST/DELETE ``.../incidents/{id}/tags`` and ``.../tags/{tag_id}``
    (get_tags, set_tag, set_tags, delete_tag, delete_tags)
  - ``tag_definitions``: GET/POST ``/resources/v2.0/incidents/tags/definitions``
  - ``alerts``: POST ``/data/v2/alerts`` with the Org Token (post_alerts)

- Pacing (:mod:`sync.clients.pacing`): each family is paced at ``pacing.headroom`` x
  ``bigpanda.rate_limit_per_s`` (default 0.9 x 5 req/s), requests of a family evenly
  spaced, so that no limiter shape sees more than the ceiling in any second. BigPanda's
  limit is per endpoint (docs 3.3); a family groups the routes of one endpoint (all six
  incident-tag routes share one pace, which is conservative). A 429 carries no
  ``Retry-After`` (docs 11.8): the family slows down (multiplicatively) and waits,
  and the request is sent again; so is a GET that failed transiently (a 5xx, a timeout,
  a connection cut off: :func:`~sync.clients.pacing.resendable`). Only
  when every request of the side has failed for ``pacing.outage_after`` does the
  :class:`TransientError` reach the caller. Writes cut off by a reset or a timeout are
  not sent again here (they may have been applied): the executor decides.
- Every outcome goes through :func:`classify`, the single place that decides between
  success, :class:`TransientError`, :class:`PermanentError`/:class:`NotFoundError` and
  :class:`FatalError`. Apart from the throttling above, the client never retries.
- One malformed incident in a search answer (no id, an unknown status, a bad tag, a
  wrong type) is skipped with one WARNING naming it and the ``skipped`` observer called
  with a reason (``bpsync_skipped_records_total``); the others are returned.
- Vendor JSON is parsed into :class:`sync.model.BPIncident` / ``BPAlert`` by
  :func:`parse_incident`: statuses lower-cased (the API sends ``Critical`` and
  ``critical``), epoch seconds as ints, alerts as ``[{"alert_id"}]`` references or
  expanded objects (``id`` or ``alert_id``). A malformed shape is a
  :class:`PermanentError` naming the problem.

Classification decisions worth knowing:

- 500 is **transient**: BigPanda documents it as "server error, retry later" (docs 3.1),
  unlike ServiceNow's script-failure 500. 501 and above are transient (SPEC B13).
- 401 and 403 are **fatal** (bad key, or the key's user lacks a role permission).
- 404 is :class:`NotFoundError`, except BigPanda's ``NotExistTag`` (the tag has no
  definition): a :class:`PermanentError`, so the caller does not think the incident is
  gone.
- 409 on resolve means "already resolved" (docs 0): a success with ``status`` 409.
  Elsewhere 409 is permanent.
- 202 and 204 are successes whatever their body; a 200/201 whose body is not JSON (a
  proxy page) or is malformed JSON is transient; an empty 200 to a GET is transient.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import aiohttp

from sync.clients.base import (
    BigPandaAPI,
    BPActivity,
    BPEnvironment,
    BPSearchPage,
    BPTagDefinition,
    RequestObserver,
)
from sync.clients.http import (
    HttpAnswer,
    Parsed,
    classify_exception,
    new_session,
    one_line,
    parse_json_body,
    send,
    text_excerpt,
)
from sync.clients.pacing import (
    PacingPolicy,
    RatePacer,
    SideHealth,
    SkipObserver,
    ThrottleObserver,
    resendable,
)
from sync.clock import Clock
from sync.constants import BPStatus
from sync.errors import (
    ApiError,
    ConfigError,
    FatalError,
    MissingTagError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from sync.model import BPAlert, BPIncident
from sync.settings import BigPandaSettings, redact_url

log = logging.getLogger(__name__)

SIDE = "bigpanda"

V2 = "/resources/v2.0"
ENVIRONMENTS_PATH = f"{V2}/environments"
INCIDENTS_PATH = f"{V2}/environments/{{environment_id}}/incidents"
INCIDENT_PATH = f"{INCIDENTS_PATH}/{{incident_id}}"
RESOLVE_PATH = f"{INCIDENT_PATH}/resolve"
COMMENTS_PATH = f"{INCIDENT_PATH}/comments"
TAGS_PATH = f"{INCIDENT_PATH}/tags"
TAG_PATH = f"{TAGS_PATH}/{{tag_id}}"
ACTIVITIES_PATH = f"{V2}/incidents/{{incident_id}}/activities"  # no environment (docs 11.4)
TAG_DEFINITIONS_PATH = f"{V2}/incidents/tags/definitions"
ALERTS_PATH = "/data/v2/alerts"

#: search: largest page (10,000 reachable results = page 1000 at 100, docs 3.4)
SEARCH_PAGE_SIZE_MAX = 100
#: search with expand=alerts: larger pages are refused with 400 (docs 4.1)
SEARCH_EXPANDED_PAGE_SIZE_MAX = 10
#: search: results beyond this rank cannot be reached by paging (docs 3.4)
SEARCH_RESULT_CAP = 10_000
SEARCH_FOLDERS = frozenset({"active", "shared", "snoozed", "resolved", "unhandled", "maintenance"})
SEARCH_SORTS = frozenset({"last_change", "status", "start", "alerts"})
#: activities: items per page asked for, and a bound on pages read (1,000 activities)
ACTIVITIES_PER_PAGE = 100
ACTIVITIES_MAX_PAGES = 10
#: a 429 suggests waiting BASE * 2**(n-1) seconds for the n-th consecutive one, capped
RATE_LIMIT_BACKOFF_BASE_S = 1.0
RATE_LIMIT_BACKOFF_MAX_S = 60.0
#: an epoch value above this is milliseconds, not seconds (year 5138 in seconds)
_EPOCH_MS_THRESHOLD = 100_000_000_000

API_KEY_SETTING = "bigpanda.api_key"
ORG_TOKEN_SETTING = "bigpanda.bearer_token"  # noqa: S105 - a setting name, not a secret


class Family(StrEnum):
    """Endpoint families: one token bucket and one consecutive-429 count each."""

    ENVIRONMENTS = "environments"
    SEARCH = "search"
    INCIDENT = "incident"
    RESOLVE = "resolve"
    COMMENTS = "comments"
    ACTIVITIES = "activities"
    TAGS = "tags"
    TAG_DEFINITIONS = "tag_definitions"
    ALERTS = "alerts"


# --------------------------------------------------------------------------- session


def make_session(settings: BigPandaSettings) -> aiohttp.ClientSession:
    """The HTTP session the client expects; call from a coroutine and close it when done.

    No cookie jar: BigPanda authenticates every request by its bearer token, and a
    cookie set by a proxy must not leak between the API key and the org token.
    """
    return new_session(
        side="bigpanda",
        vendor="BigPanda",
        verify_tls=settings.verify_tls,
        timeout_s=settings.timeout,
    )


# --------------------------------------------------------------------------- pacing


def rate_limit_delay_s(consecutive_429s: int) -> float:
    """Suggested wait after the n-th consecutive 429 of a family: 1, 2, 4, ... 60 s."""
    exponent = max(0, consecutive_429s - 1)
    if exponent >= 16:  # 2**16 s is far past the cap; avoid huge floats
        return RATE_LIMIT_BACKOFF_MAX_S
    return min(RATE_LIMIT_BACKOFF_MAX_S, RATE_LIMIT_BACKOFF_BASE_S * float(2**exponent))


# --------------------------------------------------------------------------- classification


def vendor_message(data: Any) -> str | None:
    """BigPanda's words from ``{"status": N, "errors": [...]}`` (strings or objects),
    else a ``message``/``error`` member; None when the body says nothing."""
    if not isinstance(data, Mapping):
        return None
    parts: list[str] = []
    errors = data.get("errors")
    if isinstance(errors, str):
        errors = [errors]
    if isinstance(errors, Sequence):
        for item in errors:
            if isinstance(item, Mapping):
                name = one_line(item.get("name") or item.get("code") or item.get("type"))
                text = one_line(item.get("message") or item.get("description"))
                if name and text:
                    parts.append(f"{name}: {text}")
                elif name or text:
                    parts.append(name or text or "")
                else:
                    parts.append(json.dumps(item, sort_keys=True, default=str))
            elif item is not None:
                text = one_line(item)
                if text:
                    parts.append(text)
    if not parts:
        for key in ("message", "error", "msg"):
            text = one_line(data.get(key)) if isinstance(data.get(key), str) else None
            if text:
                parts.append(text)
                break
    return "; ".join(parts) or None


def classify(
    outcome: HttpAnswer | BaseException,
    *,
    method: str,
    url: str,
    consecutive_429s: int = 1,
    conflict_ok: bool = False,
    credential: str = API_KEY_SETTING,
) -> Parsed | ApiError:
    """Decide what one HTTP outcome means: a :class:`Parsed` success or the error to raise.

    ``consecutive_429s`` counts this answer if it is a 429 (sets the suggested delay);
    ``conflict_ok`` makes a 409 a success (resolve: already resolved); ``credential`` is
    the setting named when the token is refused. ``url`` must carry no secret.
    """
    if isinstance(outcome, BaseException):
        return classify_exception(
            outcome, side=SIDE, section="bigpanda", server="BigPanda", method=method, url=url
        )
    status, ctype, body = outcome.status, outcome.content_type, outcome.body

    data, json_problem = parse_json_body(ctype, body)

    if 200 <= status < 300:
        if status in (202, 204):  # accepted / no content: the status is the answer
            return Parsed(data, outcome.headers, status)
        if not body.strip():
            if method == "GET":
                return TransientError(
                    SIDE,
                    f"HTTP {status} with an empty body (expected JSON)",
                    status=status,
                    method=method,
                    url=url,
                )
            return Parsed(None, outcome.headers, status)
        if json_problem is not None:
            hint = " (a proxy page?)" if json_problem.startswith("expected JSON") else ""
            return TransientError(SIDE, json_problem + hint, status=status, method=method, url=url)
        return Parsed(data, outcome.headers, status)

    # --- failures: BigPanda's own words when it gave some
    message = vendor_message(data)
    detail: str | None = None
    if message is None:
        if json_problem is not None:
            message = f"HTTP {status} with a non-JSON body ({ctype or 'no content type'})"
            excerpt = text_excerpt(body) if ctype.startswith("text/") else ""
            detail = excerpt or None
        else:
            message = f"HTTP {status}"

    if status == 401:
        return FatalError(
            SIDE,
            f"authentication refused (check {credential}): {message}",
            status=status,
            detail=detail,
            method=method,
            url=url,
        )
    if status == 403:
        return FatalError(
            SIDE,
            f"permission refused (the user of {credential} lacks a role permission "
            f"for this environment or action): {message}",
            status=status,
            detail=detail,
            method=method,
            url=url,
        )
    if status == 404:
        if "notexisttag" in message.lower():
            return MissingTagError(
                SIDE,
                f"tag definition does not exist: {message}",
                status=status,
                detail=detail,
                method=method,
                url=url,
            )
        return NotFoundError(SIDE, message, status=status, detail=detail, method=method, url=url)
    if status == 409 and conflict_ok:
        return Parsed(data, outcome.headers, status)
    if status == 410:
        return NotFoundError(SIDE, message, status=status, detail=detail, method=method, url=url)
    if status == 429:
        return TransientError(
            SIDE,
            f"rate limited: {message}",
            retry_after_s=rate_limit_delay_s(consecutive_429s),
            status=status,
            detail=detail,
            method=method,
            url=url,
        )
    if status >= 500:  # 500 "server error, retry later" (docs 3.1); 501+ (SPEC B13)
        return TransientError(SIDE, message, status=status, detail=detail, method=method, url=url)
    return PermanentError(SIDE, message, status=status, detail=detail, method=method, url=url)


# --------------------------------------------------------------------------- parsing


class _ShapeError(ValueError):
    """A vendor object lacks a field or has a field of the wrong type."""


def _epoch(value: Any, name: str) -> int | None:
    """Epoch seconds as an int (docs 3.5); accepts floats and digit strings, converts an
    obvious millisecond value; None for null or missing."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _ShapeError(f"{name} is a boolean, expected epoch seconds")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _ShapeError(f"{name} is {value!r}, expected epoch seconds") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _ShapeError(f"{name} is {value!r}, expected epoch seconds")
    seconds = int(value)
    if abs(seconds) >= _EPOCH_MS_THRESHOLD:
        seconds //= 1000
    return seconds


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value if v is not None)
    return str(value)


def _status(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _ShapeError(f"{name} is {value!r}, expected a string")
    return value.strip().lower()


def _bool(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def _id(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise _ShapeError(f"missing or invalid {name}")
    return str(value)


def _alert_tags(value: Any) -> dict[str, str]:
    """``[{"name", "value"}]`` (values may be lists; a repeated name is joined) or a dict."""
    tags: dict[str, str] = {}
    if isinstance(value, Mapping):
        return {str(k): _text(v) or "" for k, v in value.items()}
    if not isinstance(value, list):
        return tags
    for item in value:
        if not isinstance(item, Mapping) or item.get("name") is None:
            continue
        name = str(item["name"])
        text = _text(item.get("value")) or ""
        tags[name] = f"{tags[name]}, {text}" if name in tags else text
    return tags


def _incident_tags(value: Any) -> dict[str, str]:
    """``[{"tag_id", "tag_value"}]`` (a MultiValue value may be a list) or a dict."""
    if isinstance(value, Mapping):
        return {str(k): _text(v) or "" for k, v in value.items()}
    tags: dict[str, str] = {}
    if isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item.get("tag_id") is not None:
                tags[str(item["tag_id"])] = _text(item.get("tag_value")) or ""
    return tags


_ALERT_REFERENCE_KEYS = frozenset({"alert_id", "id"})


def parse_alert(data: Mapping[str, Any]) -> BPAlert:
    """An expanded alert (docs 5.2); its id is ``id`` or ``alert_id`` (both occur)."""
    alert_id = _id(data.get("id", data.get("alert_id")), "alert id")
    return BPAlert(
        id=alert_id,
        status=_status(data.get("status"), f"alert {alert_id} status"),
        active=_bool(data.get("active"), True),
        start=_epoch(data.get("start"), f"alert {alert_id} start"),
        updated_at=_epoch(data.get("updated_at"), f"alert {alert_id} updated_at"),
        primary_property=_text(data.get("primary_property")),
        secondary_property=_text(data.get("secondary_property")),
        source_system=_text(data.get("source_system")),
        incident_key=_text(data.get("incident_key")),
        description=_text(data.get("description")),
        tags=_alert_tags(data.get("tags")),
    )


def _parse_incident(data: Any) -> BPIncident:
    if not isinstance(data, Mapping):
        raise _ShapeError(f"incident is a JSON {type(data).__name__}, expected an object")
    incident_id = _id(data.get("id"), "incident id")
    where = f"incident {incident_id}"
    raw_alerts = data.get("alerts") or []
    if not isinstance(raw_alerts, list):
        raise _ShapeError(f"{where}: alerts is not a list")
    alerts: list[BPAlert] = []
    alert_ids: list[str] = []
    for item in raw_alerts:
        if isinstance(item, str):  # a bare id: tolerated
            alert_ids.append(item)
            continue
        if not isinstance(item, Mapping):
            raise _ShapeError(f"{where}: an alert is a JSON {type(item).__name__}")
        if set(item) <= _ALERT_REFERENCE_KEYS:  # [{"alert_id": ...}] without expand
            alert_ids.append(_id(item.get("alert_id", item.get("id")), f"{where} alert id"))
            continue
        alert = parse_alert(item)
        alerts.append(alert)
        alert_ids.append(alert.id)
    environments = data.get("environments") or []
    folders = data.get("folders") or []
    return BPIncident(
        id=incident_id,
        status=_status(data.get("status"), f"{where} status"),
        active=_bool(data.get("active"), data.get("end") is None),
        severity=_status(data.get("severity"), f"{where} severity"),
        start=_epoch(data.get("start"), f"{where} start"),
        end=_epoch(data.get("end"), f"{where} end"),
        changed_at=_epoch(data.get("changed_at"), f"{where} changed_at"),
        updated_at=_epoch(data.get("updated_at"), f"{where} updated_at"),
        environments=tuple(str(e) for e in environments) if isinstance(environments, list) else (),
        folders=tuple(str(f) for f in folders) if isinstance(folders, list) else (),
        tags=_incident_tags(data.get("incident_tags")),
        alerts=tuple(alerts),
        alert_ids=tuple(alert_ids),
    )


def parse_incident(data: Any) -> BPIncident:
    """A v2 incident object (docs 5.1) as a :class:`BPIncident`; PermanentError if malformed."""
    try:
        return _parse_incident(data)
    except _ShapeError as exc:
        raise PermanentError(SIDE, f"unexpected incident shape: {exc}") from None


def _parse_activity(data: Any) -> BPActivity:
    if not isinstance(data, Mapping):
        raise _ShapeError(f"activity is a JSON {type(data).__name__}")
    params = data.get("params")
    created_by = data.get("created_by")
    if isinstance(created_by, Mapping):  # tolerate {"id": ..., "name": ...}
        created_by = created_by.get("id") or created_by.get("user_id")
    return BPActivity(
        id=_id(data.get("id"), "activity id"),
        type=str(data.get("type") or ""),
        timestamp=_epoch(data.get("timestamp"), "activity timestamp") or 0,
        created_by=None if created_by is None else str(created_by),
        params=dict(params) if isinstance(params, Mapping) else {},
    )


def parse_activity(data: Any) -> BPActivity:
    """An activity item (docs 4.6); PermanentError if malformed."""
    try:
        return _parse_activity(data)
    except _ShapeError as exc:
        raise PermanentError(SIDE, f"unexpected activity shape: {exc}") from None


#: statuses an incident may have (docs 5.1), compared lower-case
KNOWN_STATUSES = frozenset(BPStatus)


def poison_reason(data: Any) -> str | None:
    """Why a polled incident cannot be synced (a ``bpsync_skipped_records_total`` reason),
    or None: ``malformed`` (not an object, no id), ``no_alerts`` (no ``alerts`` list),
    ``unknown_status``, ``malformed_tag`` (an ``incident_tags`` item without ``tag_id``
    or with an object for a value)."""
    if not isinstance(data, Mapping) or data.get("id") in (None, ""):
        return "malformed"
    if not isinstance(data.get("alerts"), list):
        return "no_alerts"
    status = data.get("status")
    if not isinstance(status, str) or status.strip().lower() not in KNOWN_STATUSES:
        return "unknown_status"
    tags = data.get("incident_tags")
    if tags is not None and not isinstance(tags, (list, Mapping)):
        return "malformed_tag"
    for item in tags if isinstance(tags, list) else []:
        if (
            not isinstance(item, Mapping)
            or item.get("tag_id") in (None, "")
            or isinstance(item.get("tag_value"), Mapping)
        ):
            return "malformed_tag"
    return None


def parse_environment(data: Any) -> BPEnvironment:
    if not isinstance(data, Mapping) or data.get("id") in (None, ""):
        raise PermanentError(SIDE, "unexpected environment shape: missing id")
    return BPEnvironment(
        id=str(data["id"]), name=str(data.get("name") or ""), filter=str(data.get("filter") or "")
    )


def parse_tag_definition(data: Any) -> BPTagDefinition:
    if not isinstance(data, Mapping) or data.get("id") in (None, ""):
        raise PermanentError(SIDE, "unexpected tag definition shape: missing id")
    config = data.get("config")
    levels = config.get("ordered_list") if isinstance(config, Mapping) else None
    return BPTagDefinition(
        id=str(data["id"]),
        name=str(data.get("name") or data["id"]),
        type=str(data.get("type") or ""),
        active=_bool(data.get("active"), True),
        description=str(data.get("description") or ""),
        ordered_list=tuple(str(v) for v in levels) if isinstance(levels, list) else (),
    )


def _items(body: Any, what: str) -> list[Any]:
    """A list answer: a bare array or ``{"items": [...]}`` (both occur, docs 4.6)."""
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping) and isinstance(body.get("items"), list):
        return list(body["items"])
    shape = (
        f"an object with keys {sorted(body)[:5]}"
        if isinstance(body, Mapping)
        else f"a JSON {type(body).__name__}"
    )
    raise PermanentError(SIDE, f"unexpected answer shape for {what}: got {shape}, expected a list")


# --------------------------------------------------------------------------- client


def _segment(value: str, what: str) -> str:
    """One path segment, percent-encoded (tag ids may hold spaces); never empty."""
    if not isinstance(value, str) or not value.strip():
        raise PermanentError(SIDE, f"invalid {what}: {value!r}")
    return quote(value, safe="")


class BigPandaClient:
    """The BigPanda API client; see the module docstring for the contract."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: BigPandaSettings,
        clock: Clock,
        *,
        observer: RequestObserver | None = None,
        pacing: PacingPolicy | None = None,
        throttle_observer: ThrottleObserver | None = None,
        skip_observer: SkipObserver | None = None,
    ) -> None:
        if settings.api_key is None or not settings.api_key.get_secret_value():
            raise ConfigError(
                "missing setting bigpanda.api_key (the BigPanda User API Key, BPU...; "
                "env BPSYNC_BIGPANDA__API_KEY)",
                setting=API_KEY_SETTING,
            )
        self._session = session
        self._settings = settings
        self._clock = clock
        self._observer = observer
        self._base = settings.url.rstrip("/")
        self._shown_base = redact_url(self._base)
        self._policy = pacing or PacingPolicy()
        self._pacer = RatePacer(clock, settings.rate_limit_per_s, self._policy)
        self.health = SideHealth(SIDE, clock, self._policy, throttle_observer)
        self._rate_limited: dict[Family, int] = {}
        """Consecutive 429 answers per family."""
        self._skip_observer = skip_observer
        self._skipped: set[tuple[str, str]] = set()
        """(incident id, reason) of the records skipped and logged already."""
        self._failures: dict[Family, int] = {}
        """Consecutive transient failures (other than 429) per family."""

    def __repr__(self) -> str:
        return f"BigPandaClient({self._shown_base!r})"

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def pacer(self) -> RatePacer:
        return self._pacer

    # ------------------------------------------------------------------ transport
    async def _request(
        self,
        family: Family,
        method: str,
        template: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        org_token: bool = False,
        conflict_ok: bool = False,
    ) -> Parsed:
        """One API call, paced by ``family``'s bucket and classified by :func:`classify`."""
        if org_token:
            secret = self._settings.bearer_token
            if secret is None or not secret.get_secret_value():
                raise ConfigError(
                    "missing setting bigpanda.bearer_token (the BigPanda Org Token, needed "
                    "for alert ingest; env BPSYNC_BIGPANDA__BEARER_TOKEN)",
                    setting=ORG_TOKEN_SETTING,
                )
            credential = ORG_TOKEN_SETTING
        else:
            secret = self._settings.api_key
            assert secret is not None  # checked in __init__
            credential = API_KEY_SETTING
        headers = {
            "Accept": "application/json",
            "Authorization": f"Bearer {secret.get_secret_value()}",
        }
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        while True:
            sent_at = await self._pacer.acquire(family)
            outcome = await send(
                self._session,
                self._clock,
                self._observer,
                side=SIDE,
                method=method,
                template=template,
                url=self._base + path,
                params=params,
                data=data,
                headers=headers,
            )
            if isinstance(outcome, HttpAnswer) and outcome.status == 429:
                self._rate_limited[family] = self._rate_limited.get(family, 0) + 1
            else:
                self._rate_limited.pop(family, None)
            result = classify(
                outcome,
                method=method,
                url=self._shown_base + path,
                consecutive_429s=self._rate_limited.get(family, 0),
                conflict_ok=conflict_ok,
                credential=credential,
            )
            if isinstance(result, TransientError):
                safe = resendable(outcome, method)
                if self._delay_and_resend(family, result, safe, sent_at):
                    continue
                raise result
            self.health.succeeded()  # an answer, even a refusal: the side is up
            self._pacer.succeeded(family)
            self._failures.pop(family, None)
            if isinstance(result, ApiError):
                raise result
            return result

    def _delay_and_resend(
        self, family: Family, error: TransientError, safe: bool, sent_at: float
    ) -> bool:
        """A throttled or failed request that is safe to send again: hold the family and
        say so (True), unless the side has been failing for ``outage_after_s`` (False:
        the error goes to the caller). ``safe``: see :func:`resendable`."""
        throttled = error.status == 429
        self.health.failed()
        if not safe or self.health.in_outage():
            return False
        if throttled:
            hold = self._pacer.throttled(family, sent_at=sent_at)
            self.health.throttled(family.value, f"{self._pacer.rate_of(family):.2f} req/s")
        else:
            count = self._failures[family] = self._failures.get(family, 0) + 1
            hold = self._policy.hold_for(count)
            self._pacer.hold(family, hold)
        log.debug("BigPanda %s: %s; sending again in %.1f s", family.value, error, hold)
        return True

    @staticmethod
    def _incident_path(template: str, environment_id: str, incident_id: str) -> str:
        return template.format(
            environment_id=_segment(environment_id, "environment id"),
            incident_id=_segment(incident_id, "incident id"),
        )

    # ------------------------------------------------------------------ environments
    async def list_environments(self) -> list[BPEnvironment]:
        parsed = await self._request(
            Family.ENVIRONMENTS, "GET", ENVIRONMENTS_PATH, ENVIRONMENTS_PATH
        )
        return [parse_environment(item) for item in _items(parsed.body, "environments")]

    async def check_auth(self) -> None:
        """``GET /environments``: cheap, and needs the API key (401/403 are fatal)."""
        await self._request(Family.ENVIRONMENTS, "GET", ENVIRONMENTS_PATH, ENVIRONMENTS_PATH)

    # ------------------------------------------------------------------ incidents
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
        """One page of ``GET /environments/{env}/incidents`` (docs 4.1)."""
        limit = SEARCH_EXPANDED_PAGE_SIZE_MAX if expand_alerts else SEARCH_PAGE_SIZE_MAX
        if not 1 <= page_size <= limit:
            raise PermanentError(
                SIDE,
                f"search page_size must be 1..{limit}"
                + (" with expand=alerts" if expand_alerts else "")
                + f", got {page_size}",
            )
        if page < 1:
            raise PermanentError(SIDE, f"search page must be at least 1, got {page}")
        if folder is not None and folder not in SEARCH_FOLDERS:
            raise PermanentError(
                SIDE, f"search folder must be one of {sorted(SEARCH_FOLDERS)}, got {folder!r}"
            )
        if sort_by is not None and sort_by not in SEARCH_SORTS:
            raise PermanentError(
                SIDE, f"search sort_by must be one of {sorted(SEARCH_SORTS)}, got {sort_by!r}"
            )
        params: dict[str, str] = {"page": str(page), "page_size": str(page_size)}
        if query is not None:
            params["query"] = query
        if from_s is not None:
            params["from"] = str(int(from_s))
        if to_s is not None:
            params["to"] = str(int(to_s))
        if sort_by is not None:
            params["sort_by"] = sort_by
        if folder is not None:
            params["folder"] = folder
        if expand_alerts:
            params["expand"] = "alerts"
        path = INCIDENTS_PATH.format(environment_id=_segment(environment_id, "environment id"))
        parsed = await self._request(Family.SEARCH, "GET", INCIDENTS_PATH, path, params=params)
        body = parsed.body
        if not isinstance(body, Mapping) or not isinstance(body.get("items"), list):
            raise PermanentError(
                SIDE, "unexpected answer shape for an incident search: no 'items' list"
            )
        items: list[BPIncident] = []
        for raw in body["items"]:
            incident = self._parse_polled(raw)
            if incident is not None:
                items.append(incident)
        total = body.get("total")
        if isinstance(total, bool) or not isinstance(total, int):
            total = len(items) + (page - 1) * page_size
        return BPSearchPage(total=total, items=items)

    def _parse_polled(self, raw: Any) -> BPIncident | None:
        """One incident of a search answer, or None (skipped: one WARNING per record and
        reason for the life of the client, and the ``skipped`` observer)."""
        reason = poison_reason(raw)
        problem = reason
        incident: BPIncident | None = None
        if reason is None:
            try:
                incident = parse_incident(raw)
            except PermanentError as exc:
                reason, problem = "malformed", exc.message
        if reason is None:
            return incident
        name = str(raw.get("id", "?")) if isinstance(raw, Mapping) else "?"
        if (name, reason) not in self._skipped:
            self._skipped.add((name, reason))
            log.warning(
                "BigPanda incident %s skipped: %s",
                name,
                problem,
                extra={"side": SIDE, "reason": reason, "bp_incident_id": name},
            )
            if self._skip_observer is not None:
                self._skip_observer(SIDE, reason)
        return None

    async def get_incident(
        self, environment_id: str, incident_id: str, *, expand_alerts: bool = True
    ) -> BPIncident:
        path = self._incident_path(INCIDENT_PATH, environment_id, incident_id)
        params = {"expand": "alerts"} if expand_alerts else None
        parsed = await self._request(Family.INCIDENT, "GET", INCIDENT_PATH, path, params=params)
        return parse_incident(parsed.body)

    async def list_changed(
        self, environment_id: str, since_s: int | None, *, overlap_s: float, page_size: int
    ) -> list[BPIncident]:
        """Incidents updated at or after ``since_s - overlap_s`` (docs section 0).

        Searches with ``from`` = the floor ("active during the window" includes every
        incident still open or resolved after it) and ``sort_by=start``, and reads every
        page: it never stops at an old ``changed_at``, because a tag edit bumps only
        ``updated_at``; the filter on ``updated_at`` happens here. ``start`` never
        changes, so an incident updated while the pages are read does not move and
        shift others past a page boundary (``last_change`` order would); a new incident
        can only repeat an item, and repeats are de-duplicated (the newest
        ``updated_at`` wins). Incidents resolved before the floor are outside the
        window; the coordinator catches their late changes otherwise (docs section 0).
        Ordered by (updated_at, id).
        """
        floor = None if since_s is None else math.floor(since_s - overlap_s)
        size = max(1, min(page_size, SEARCH_PAGE_SIZE_MAX))
        found: dict[str, BPIncident] = {}
        page = 1
        while True:
            result = await self.search_incidents(
                environment_id, from_s=floor, sort_by="start", page=page, page_size=size
            )
            for incident in result.items:
                if floor is not None and (
                    incident.updated_at is not None and incident.updated_at < floor
                ):
                    continue
                seen = found.get(incident.id)
                if seen is None or (incident.updated_at or 0) >= (seen.updated_at or 0):
                    found[incident.id] = incident
            read = page * size
            if not result.items or read >= result.total:
                break
            if read >= SEARCH_RESULT_CAP:
                log.warning(
                    "BigPanda search in environment %s matched %s incidents; only the first "
                    "%s can be paged through (lower bigpanda cursor overlap or poll more often)",
                    environment_id,
                    result.total,
                    SEARCH_RESULT_CAP,
                )
                break
            page += 1
        return sorted(found.values(), key=lambda i: (i.updated_at or 0, i.id))

    async def resolve_incident(self, environment_id: str, incident_id: str, comment: str) -> bool:
        """``POST .../resolve {"comments"}``: True on 202, False on 409 (already resolved)."""
        path = self._incident_path(RESOLVE_PATH, environment_id, incident_id)
        parsed = await self._request(
            Family.RESOLVE,
            "POST",
            RESOLVE_PATH,
            path,
            json_body={"comments": comment},
            conflict_ok=True,
        )
        return parsed.status != 409

    async def add_comment(self, environment_id: str, incident_id: str, text: str) -> None:
        """``POST .../comments {"comment"}`` (singular, unlike resolve). Not idempotent."""
        path = self._incident_path(COMMENTS_PATH, environment_id, incident_id)
        await self._request(
            Family.COMMENTS, "POST", COMMENTS_PATH, path, json_body={"comment": text}
        )

    async def list_activities(
        self, incident_id: str, *, types: Sequence[str] | None = None
    ) -> list[BPActivity]:
        """Activities of an incident, newest first, every page (up to 1,000 items)."""
        path = ACTIVITIES_PATH.format(incident_id=_segment(incident_id, "incident id"))
        out: list[BPActivity] = []
        for page in range(1, ACTIVITIES_MAX_PAGES + 1):
            params = {"page": str(page), "per_page": str(ACTIVITIES_PER_PAGE)}
            if types:
                params["types"] = ",".join(types)
            parsed = await self._request(
                Family.ACTIVITIES, "GET", ACTIVITIES_PATH, path, params=params
            )
            items = _items(parsed.body, "activities")
            out.extend(parse_activity(item) for item in items)
            total = parsed.body.get("total") if isinstance(parsed.body, Mapping) else None
            if len(items) < ACTIVITIES_PER_PAGE or (
                isinstance(total, int) and page * ACTIVITIES_PER_PAGE >= total
            ):
                break
        return out

    # ------------------------------------------------------------------ incident tags
    async def get_tags(self, environment_id: str, incident_id: str) -> dict[str, str]:
        """``GET .../tags``: tag_id -> value."""
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        parsed = await self._request(Family.TAGS, "GET", TAGS_PATH, path)
        tags: dict[str, str] = {}
        for item in _items(parsed.body, "incident tags"):
            if not isinstance(item, Mapping) or item.get("tag_id") is None:
                raise PermanentError(SIDE, "unexpected incident tag shape: missing tag_id")
            tags[str(item["tag_id"])] = _text(item.get("tag_value")) or ""
        return tags

    async def set_tag(self, environment_id: str, incident_id: str, tag_id: str, value: str) -> None:
        """``POST .../tags/{tag_id} {"tag_value"}`` (upsert)."""
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        path += "/" + _segment(tag_id, "tag id")
        await self._request(Family.TAGS, "POST", TAG_PATH, path, json_body={"tag_value": value})

    async def set_tags(
        self, environment_id: str, incident_id: str, values: Mapping[str, str]
    ) -> None:
        """``POST .../tags`` with ``[{"tag_id", "tag_value"}]`` (upsert many); no call for {}."""
        if not values:
            return
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        body = [{"tag_id": tag_id, "tag_value": value} for tag_id, value in values.items()]
        await self._request(Family.TAGS, "POST", TAGS_PATH, path, json_body=body)

    async def delete_tag(self, environment_id: str, incident_id: str, tag_id: str) -> None:
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        path += "/" + _segment(tag_id, "tag id")
        await self._request(Family.TAGS, "DELETE", TAG_PATH, path)

    async def delete_tags(self, environment_id: str, incident_id: str) -> None:
        """``DELETE .../tags``: every tag of the incident."""
        path = self._incident_path(TAGS_PATH, environment_id, incident_id)
        await self._request(Family.TAGS, "DELETE", TAGS_PATH, path)

    # ------------------------------------------------------------------ tag definitions
    async def list_tag_definitions(
        self, *, active: bool | None = None, tag_type: str | None = None
    ) -> list[BPTagDefinition]:
        params: dict[str, str] = {}
        if active is not None:
            params["active"] = "true" if active else "false"
        if tag_type is not None:
            params["type"] = tag_type
        parsed = await self._request(
            Family.TAG_DEFINITIONS,
            "GET",
            TAG_DEFINITIONS_PATH,
            TAG_DEFINITIONS_PATH,
            params=params or None,
        )
        return [parse_tag_definition(item) for item in _items(parsed.body, "tag definitions")]

    async def create_tag_definition(
        self, name: str, *, tag_type: str = "Text", description: str = "", active: bool = True
    ) -> BPTagDefinition:
        """``POST /incidents/tags/definitions`` (for set-up and tests: the link tag)."""
        body = {"name": name, "type": tag_type, "description": description, "active": active}
        parsed = await self._request(
            Family.TAG_DEFINITIONS,
            "POST",
            TAG_DEFINITIONS_PATH,
            TAG_DEFINITIONS_PATH,
            json_body=body,
        )
        if isinstance(parsed.body, Mapping) and parsed.body.get("id"):
            return parse_tag_definition(parsed.body)
        return BPTagDefinition(id=name, name=name, type=tag_type, active=active)

    # ------------------------------------------------------------------ alert ingest
    async def post_alerts(self, alerts: Sequence[Mapping[str, Any]], *, app_key: str) -> Any:
        """``POST /data/v2/alerts`` with the Org Token: one alert, or the batch form
        ``{"app_key", "alerts": [...]}``. Returns the answer's JSON (None for 204, an
        exact duplicate). For tests and the demo; the daemon never ingests alerts."""
        if not alerts:
            return None
        if len(alerts) == 1:
            body: dict[str, Any] = {"app_key": app_key, **alerts[0]}
        else:
            body = {"app_key": app_key, "alerts": [dict(a) for a in alerts]}
        parsed = await self._request(
            Family.ALERTS, "POST", ALERTS_PATH, ALERTS_PATH, json_body=body, org_token=True
        )
        return parsed.body


def _conforms(client: BigPandaClient) -> BigPandaAPI:
    """Never called: makes mypy check that the client implements the Protocol."""
    return client
