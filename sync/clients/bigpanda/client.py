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
  - ``assignment``: PUT/DELETE ``.../incidents/{id}/assignment`` (assign_incident,
    unassign_incident: a DELETE of an unassigned incident answers 400: False)
  - ``users``, ``user``: the SCIM Users API (docs 4.7, SCIM 1.1), GET
    ``/resources/v2.0/scim/Users?filter=userName eq "<e-mail>"`` (find_user) and
    ``.../scim/Users/{id}`` (get_user), each paced at its own 2 req/s ceiling

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

Classification decisions worth knowing: see :mod:`sync.clients.bigpanda.classification`.
The incident tag and tag definition calls are in :mod:`sync.clients.bigpanda.tags`, the
assignment and SCIM Users calls in :mod:`sync.clients.bigpanda.people`, both mixed in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from sync.clients.base import (
    BigPandaAPI,
    BPActivity,
    BPEnvironment,
    BPSearchPage,
    RequestObserver,
)
from sync.clients.bigpanda.classification import classify
from sync.clients.bigpanda.parsing import (
    _items,
    parse_activity,
    parse_environment,
    parse_incident,
    poison_reason,
    stamped_before,
)
from sync.clients.bigpanda.paths import (
    ACTIVITIES_MAX_PAGES,
    ACTIVITIES_PATH,
    ACTIVITIES_PER_PAGE,
    ALERTS_PATH,
    API_KEY_SETTING,
    COMMENTS_PATH,
    ENVIRONMENTS_PATH,
    FAMILY_CEILINGS_PER_S,
    INCIDENT_PATH,
    INCIDENTS_PATH,
    ORG_TOKEN_SETTING,
    RESOLVE_PATH,
    SEARCH_EXPANDED_PAGE_SIZE_MAX,
    SEARCH_FOLDERS,
    SEARCH_PAGE_SIZE_MAX,
    SEARCH_RESULT_CAP,
    SEARCH_SORTS,
    SIDE,
    SNOOZE_PATH,
    Family,
    _segment,
)
from sync.clients.bigpanda.people import PeopleCalls
from sync.clients.bigpanda.tags import TagCalls
from sync.clients.http import HttpAnswer, Parsed, encode_json, new_session, send
from sync.clients.pacing import (
    PacingPolicy,
    RatePacer,
    SideHealth,
    SkipObserver,
    ThrottleObserver,
    held_error,
    resendable,
)
from sync.clock import Clock
from sync.errors import ApiError, ConfigError, PermanentError, TransientError
from sync.model import BPIncident
from sync.settings import BigPandaSettings, redact_url

# the package's name, as before the split: log filters and tests select on it
log = logging.getLogger("sync.clients.bigpanda")

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


# --------------------------------------------------------------------------- client


class BigPandaClient(PeopleCalls, TagCalls):
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
        self._pacer = RatePacer(
            clock, settings.rate_limit_per_s, self._policy, ceilings=FAMILY_CEILINGS_PER_S
        )
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

    def held_for(self, family: str) -> float:
        """Seconds before ``family``'s next request may go (:meth:`RatePacer.held_for`)."""
        return self._pacer.held_for(family)

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
            data = encode_json(json_body)
            headers["Content-Type"] = "application/json; charset=utf-8"
        while True:
            held = held_error(
                SIDE,
                family.value,
                self._pacer.held_for(family),
                self._policy,
                method=method,
                url=self._shown_base + path,
            )
            if held is not None:
                raise held
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
    async def _search_raw(
        self,
        environment_id: str,
        *,
        query: str | None,
        from_s: int | None,
        to_s: int | None,
        sort_by: str | None,
        folder: str | None,
        page: int,
        page_size: int,
        expand_alerts: bool,
    ) -> tuple[int, list[Any]]:
        """(total, the page's items unparsed) of one search (:meth:`search_incidents`)."""
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
        raws: list[Any] = body["items"]
        total = body.get("total")
        if isinstance(total, bool) or not isinstance(total, int):
            total = len(raws) + (page - 1) * page_size  # skipped items were on the page too
        return total, raws

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
        total, raws = await self._search_raw(
            environment_id,
            query=query,
            from_s=from_s,
            to_s=to_s,
            sort_by=sort_by,
            folder=folder,
            page=page,
            page_size=page_size,
            expand_alerts=expand_alerts,
        )
        items = [incident for raw in raws if (incident := self._parse_polled(raw)) is not None]
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
            total, raws = await self._search_raw(
                environment_id,
                query=None,
                from_s=floor,
                to_s=None,
                sort_by="start",
                folder=None,
                page=page,
                page_size=size,
                expand_alerts=False,
            )
            for raw in raws:
                # outside the window: not parsed (an idle poll reads every active incident)
                if floor is not None and stamped_before(raw, floor):
                    continue
                incident = self._parse_polled(raw)
                if incident is None:
                    continue
                seen = found.get(incident.id)
                if seen is None or (incident.updated_at or 0) >= (seen.updated_at or 0):
                    found[incident.id] = incident
            read = page * size
            if not raws or read >= total:
                break
            if read >= SEARCH_RESULT_CAP:
                log.warning(
                    "BigPanda search in environment %s matched %s incidents; only the first "
                    "%s can be paged through (lower bigpanda cursor overlap or poll more often)",
                    environment_id,
                    total,
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

    async def snooze_incident(
        self, environment_id: str, incident_id: str, end_time: int, comment: str | None = None
    ) -> None:
        """``PUT .../snooze {"end_time", "comment"?}`` (204; docs 4): until ``end_time``."""
        path = self._incident_path(SNOOZE_PATH, environment_id, incident_id)
        body: dict[str, Any] = {"end_time": int(end_time)}
        if comment:
            body["comment"] = comment
        await self._request(Family.SNOOZE, "PUT", SNOOZE_PATH, path, json_body=body)

    async def unsnooze_incident(self, environment_id: str, incident_id: str) -> None:
        """``DELETE .../snooze`` (204)."""
        path = self._incident_path(SNOOZE_PATH, environment_id, incident_id)
        await self._request(Family.SNOOZE, "DELETE", SNOOZE_PATH, path)

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
