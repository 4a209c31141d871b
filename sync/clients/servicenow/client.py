"""ServiceNow Table API client (aiohttp), implementing :class:`sync.clients.base.ServiceNowAPI`.

Contract (docs/servicenow-api.md sections 0, 1, 2 and 6; SPEC B13, B16, B19, B20):

- The session is injected (:func:`make_session` builds the right one: no cookie jar, so
  concurrent requests are not serialised on one ServiceNow session; a total timeout of
  ``servicenow.timeout``; TLS verification unless ``verify_tls = false``).
- Base URL from ``servicenow.url`` or ``servicenow.instance``; paths ``/api/now/table/...``.
- Auth: Basic (``username``/``password``) or, when ``client_id`` is set, the OAuth password
  grant at ``POST /oauth_token.do`` (form-encoded). The token is refreshed before it
  expires (by the injected clock) with the refresh grant (falling back to a new password
  grant when the refresh token is refused); a 401 on a bearer request triggers exactly one
  refresh and one replay. Secrets never reach a log line or an exception message.
- Sync reads always send ``sysparm_display_value=false`` and
  ``sysparm_exclude_reference_link=true`` (raw UTC values, references as bare sys_ids).
- Every query is built by :mod:`sync.clients.snquery` (escaped values, validated names).
- Concurrency is bounded by ``servicenow.max_concurrency`` and adapts
  (:class:`~sync.clients.pacing.ConcurrencyPacer`): a 429 (a rate rule with
  ``Retry-After``, or a full integration-semaphore queue without headers) halves the
  requests in flight and holds the side, and the request is sent again; so is a GET
  that failed transiently (:func:`~sync.clients.pacing.resendable`). The error reaches
  the caller only when every
  request has failed for ``pacing.outage_after`` or a ``Retry-After`` is longer than
  that; a ``Retry-After`` handed to the caller still holds the instance (``held_for``),
  and while a hold lasts longer than ``pacing.outage_after`` a request is refused at
  once, not sent. The optional observer is called once per HTTP request with the path template.
- Every outcome goes through :func:`classify`, the single place that decides between
  success, :class:`TransientError`, :class:`PermanentError`/:class:`NotFoundError` and
  :class:`FatalError`. Apart from throttling (above) and the single OAuth refresh, the
  client never retries; the executor decides.

Classification decisions worth knowing: see :mod:`sync.clients.servicenow.classification`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from sync.clients.base import IncidentRow, RequestObserver, SNRecord
from sync.clients.http import HttpAnswer, Parsed, encode_json, new_session, send
from sync.clients.pacing import (
    ConcurrencyPacer,
    PacingPolicy,
    SideHealth,
    ThrottleObserver,
    held_error,
    resendable,
)
from sync.clients.servicenow.classification import classify
from sync.clients.servicenow.journal import read_journal
from sync.clients.servicenow.oauth import OAuthTokens
from sync.clients.servicenow.parsing import (
    Page,
    check_payload,
    mod_count,
    parse_changed,
    parse_field_info,
    parse_incident,
    parse_page,
    parse_record,
)
from sync.clients.servicenow.paths import (
    CORRELATION_BATCH,
    KEY_FIELDS,
    RECORD_PATH,
    SIDE,
    SYNC_READ_PARAMS,
    TABLE_PATH,
)
from sync.clients.snquery import (
    EncodedQuery,
    Op,
    check_correlation_id,
    check_field,
    check_sn_datetime,
    check_sys_id,
    check_table,
    equality_query,
    sn_datetime,
)
from sync.clock import Clock
from sync.errors import ApiError, ConfigError, PermanentError, TransientError
from sync.model import JournalEntry, SNFieldInfo, SNIncident
from sync.settings import ServiceNowSettings, redact_url

# the package's name, as before the split: log filters and tests select on it
log = logging.getLogger("sync.clients.servicenow")

# --------------------------------------------------------------------------- session


def make_session(settings: ServiceNowSettings) -> aiohttp.ClientSession:
    """The HTTP session the client expects; call from a coroutine and close it when done.

    No cookie jar (``DummyCookieJar``): ServiceNow serialises the transactions of one
    session, so sharing its JSESSIONID would defeat the bounded concurrency (docs 6.8).
    """
    return new_session(
        side="servicenow",
        vendor="ServiceNow",
        verify_tls=settings.verify_tls,
        timeout_s=settings.timeout,
        limit=settings.max_concurrency + 1,  # +1: an OAuth token request may run alongside
    )


# --------------------------------------------------------------------------- client


class ServiceNowClient:
    """The Table API client; see the module docstring for the contract."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: ServiceNowSettings,
        clock: Clock,
        *,
        observer: RequestObserver | None = None,
        pacing: PacingPolicy | None = None,
        throttle_observer: ThrottleObserver | None = None,
    ) -> None:
        base = settings.base_url
        if not base:
            raise ConfigError(
                "missing setting servicenow.url (or servicenow.instance; "
                "env BPSYNC_SERVICENOW__URL)",
                setting="servicenow.url",
            )
        if not settings.username:
            raise ConfigError(
                "missing setting servicenow.username (or BPSYNC_SERVICENOW__USERNAME)",
                setting="servicenow.username",
            )
        if settings.password is None or not settings.password.get_secret_value():
            raise ConfigError(
                "missing setting servicenow.password (or BPSYNC_SERVICENOW__PASSWORD, "
                "or BPSYNC_SERVICENOW__PASSWORD_FILE)",
                setting="servicenow.password",
            )
        if settings.uses_oauth and (
            settings.client_secret is None or not settings.client_secret.get_secret_value()
        ):
            raise ConfigError(
                "missing setting servicenow.client_secret (OAuth needs it with client_id)",
                setting="servicenow.client_secret",
            )
        self._session = session
        self._settings = settings
        self._clock = clock
        self._observer = observer
        self._base = base.rstrip("/")
        self._shown_base = redact_url(self._base)
        self._table = check_table(settings.table)
        self._policy = pacing or PacingPolicy()
        self._pacer = ConcurrencyPacer(clock, settings.max_concurrency, self._policy)
        self.health = SideHealth(SIDE, clock, self._policy, throttle_observer)
        self._failures = 0
        """Consecutive transient failures (other than 429) of requests sent again."""
        self._basic: str | None = None
        self._oauth: OAuthTokens | None = None
        if settings.uses_oauth:
            self._oauth = OAuthTokens(
                settings, clock, self._send, base=self._base, shown_base=self._shown_base
            )
        else:
            pair = f"{settings.username}:{settings.password.get_secret_value()}"
            self._basic = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")

    def __repr__(self) -> str:
        return f"ServiceNowClient({self._shown_base!r}, table={self._table!r})"

    @property
    def base_url(self) -> str:
        return self._base

    def held_for(self) -> float:
        """Seconds before the next request may go (:meth:`ConcurrencyPacer.held_for`)."""
        return self._pacer.held_for()

    # ------------------------------------------------------------------ transport
    async def _send(
        self,
        method: str,
        template: str,
        url: str,
        *,
        params: Mapping[str, str] | None,
        data: bytes | Mapping[str, str] | None,
        headers: Mapping[str, str],
    ) -> HttpAnswer | BaseException:
        return await send(
            self._session,
            self._clock,
            self._observer,
            side=SIDE,
            method=method,
            template=template,
            url=url,
            params=params,
            data=data,
            headers=headers,
        )

    async def _request(
        self,
        method: str,
        template: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> Parsed:
        """One Table API call (plus at most one OAuth refresh and replay on a 401)."""
        data = None if json_body is None else encode_json(json_body)
        shown = self._shown_base + path
        replayed = False
        while True:
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            bearer = await self._oauth.bearer() if self._oauth is not None else None
            headers["Authorization"] = self._basic or f"Bearer {bearer}"
            held = held_error(
                SIDE, "servicenow", self._pacer.held_for(), self._policy, method=method, url=shown
            )
            if held is not None:
                raise held
            async with self._pacer.slot() as sent_at:
                outcome = await self._send(
                    method, template, self._base + path, params=params, data=data, headers=headers
                )
            if (
                self._oauth is not None
                and bearer is not None
                and not replayed
                and isinstance(outcome, HttpAnswer)
                and outcome.status == 401
            ):
                # the token expired early or was revoked: one refresh, one replay
                replayed = True
                await self._oauth.renew_after_401(bearer)
                continue
            result = classify(outcome, method=method, url=shown, now=self._clock.now())
            if isinstance(result, TransientError):
                if self._delay_and_resend(result, resendable(outcome, method), sent_at):
                    continue
                raise result
            self.health.succeeded()  # an answer, even a refusal: the instance is up
            self._pacer.succeeded()
            self._failures = 0
            if isinstance(result, ApiError):
                raise result
            return result

    def _delay_and_resend(self, error: TransientError, safe: bool, sent_at: float) -> bool:
        """A throttled or failed request that is safe to send again: wait and say so
        (True), unless every request has failed for ``outage_after_s`` or the server
        asks for a wait longer than that (False: the error goes to the caller).
        ``safe``: see :func:`~sync.clients.pacing.resendable`."""
        throttled = error.status == 429
        self.health.failed()
        wait = error.retry_after_s
        if not safe or self.health.in_outage() or (wait is not None and self._policy.refuses(wait)):
            if wait is not None:
                self._pacer.hold(wait)  # the server's word, for the caller too (held_for)
            return False
        if throttled:
            hold = self._pacer.throttled(wait, sent_at=sent_at)
            family = "rate_rule" if wait is not None else "semaphore"
            self.health.throttled(family, f"{self._pacer.limit} requests at once")
        else:
            self._failures += 1
            hold = self._policy.hold_for(self._failures, wait)
            self._pacer.hold(hold)
        log.debug("ServiceNow: %s; sending again in %.1f s", error, hold)
        return True

    # ------------------------------------------------------------------ generic table ops
    async def create(self, table: str, fields: Mapping[str, str]) -> SNRecord:
        """POST one record; returns the record as stored (after business rules)."""
        check_table(table)
        parsed = await self._request(
            "POST",
            TABLE_PATH,
            f"/api/now/table/{table}",
            params=SYNC_READ_PARAMS,
            json_body=check_payload(fields),
        )
        return parse_record(parsed.body, f"create on {table}")

    async def get(
        self, table: str, sys_id: str, *, fields: Sequence[str] | None = None
    ) -> SNRecord:
        """GET one record; NotFoundError when it does not exist (or an ACL hides it)."""
        check_table(table)
        check_sys_id(sys_id)
        params = dict(SYNC_READ_PARAMS)
        if fields:
            params["sysparm_fields"] = ",".join(check_field(f) for f in fields)
        parsed = await self._request(
            "GET", RECORD_PATH, f"/api/now/table/{table}/{sys_id}", params=params
        )
        return parse_record(parsed.body, f"{table} {sys_id}")

    async def update(self, table: str, sys_id: str, fields: Mapping[str, str]) -> SNRecord:
        """PATCH only ``fields``; returns the record as stored (after business rules)."""
        check_table(table)
        check_sys_id(sys_id)
        parsed = await self._request(
            "PATCH",
            RECORD_PATH,
            f"/api/now/table/{table}/{sys_id}",
            params=SYNC_READ_PARAMS,
            json_body=check_payload(fields),
        )
        return parse_record(parsed.body, f"{table} {sys_id}")

    async def delete(self, table: str, sys_id: str) -> None:
        """DELETE one record; NotFoundError when it does not exist."""
        check_table(table)
        check_sys_id(sys_id)
        await self._request("DELETE", RECORD_PATH, f"/api/now/table/{table}/{sys_id}")

    async def list_page(
        self,
        table: str,
        query: EncodedQuery | None,
        *,
        fields: Sequence[str] | None = None,
        limit: int,
        offset: int = 0,
    ) -> Page:
        """One GET of a list; ``total`` from ``X-Total-Count``."""
        check_table(table)
        if limit < 1:
            raise PermanentError(SIDE, f"list limit must be at least 1, got {limit}")
        params = dict(SYNC_READ_PARAMS)
        encoded = query.build() if query is not None else ""
        if encoded:
            params["sysparm_query"] = encoded
        if fields:
            params["sysparm_fields"] = ",".join(check_field(f) for f in fields)
        params["sysparm_limit"] = str(limit)
        if offset:
            params["sysparm_offset"] = str(offset)
        parsed = await self._request("GET", TABLE_PATH, f"/api/now/table/{table}", params=params)
        return parse_page(parsed.body, parsed.headers, table)

    async def list_records(
        self,
        table: str,
        query: EncodedQuery | None,
        *,
        fields: Sequence[str] | None = None,
        limit: int,
        offset: int = 0,
    ) -> list[SNRecord]:
        """The records of :meth:`list_page`."""
        page = await self.list_page(table, query, fields=fields, limit=limit, offset=offset)
        return page.records

    # ------------------------------------------------------------------ ServiceNowAPI
    async def create_incident(self, fields: Mapping[str, str]) -> SNIncident:
        return parse_incident(await self.create(self._table, fields), "the created incident")

    async def get_incident(self, sys_id: str) -> SNIncident:
        return parse_incident(await self.get(self._table, sys_id), f"incident {sys_id}")

    async def update_incident(self, sys_id: str, fields: Mapping[str, str]) -> SNIncident:
        return parse_incident(await self.update(self._table, sys_id, fields), f"incident {sys_id}")

    async def delete_incident(self, sys_id: str) -> None:
        await self.delete(self._table, sys_id)

    async def find_by_correlation_id(
        self, correlation_id: str, *, active_only: bool = False
    ) -> list[IncidentRow]:
        query = EncodedQuery().eq("correlation_id", check_correlation_id(correlation_id))
        if active_only:
            query.eq("active", "true")
        query.order_by("sys_created_on").order_by("sys_id")
        records = await self.list_records(self._table, query, limit=self._settings.page_size)
        return [parse_changed(record) for record in records]

    async def find_by_correlation_ids(
        self, correlation_ids: Sequence[str], *, active_only: bool = False
    ) -> list[IncidentRow]:
        ids = sorted({check_correlation_id(c) for c in correlation_ids})
        found: list[SNRecord] = []
        size = CORRELATION_BATCH
        for start in range(0, len(ids), size):
            query = EncodedQuery().in_("correlation_id", ids[start : start + size])
            if active_only:
                query.eq("active", "true")
            query.order_by("sys_created_on").order_by("sys_id")
            offset = 0
            while True:  # more than one incident per id is possible (foreign tools)
                page = await self.list_page(
                    self._table, query, limit=self._settings.page_size, offset=offset
                )
                found.extend(page.records)
                offset += self._settings.page_size
                # a short or empty page is not the end while X-Total-Count says more
                # rows match (ACLs hide rows after the limit is applied, docs 1.5)
                if (page.total is None and not page.records) or (
                    page.total is not None and offset >= page.total
                ):
                    break
        return [parse_changed(record) for record in found]

    async def query(
        self, table: str, conditions: Mapping[str, str], *, fields: Sequence[str], limit: int
    ) -> list[SNRecord]:
        return await self.list_records(
            table, equality_query(dict(conditions)), fields=fields, limit=limit
        )

    async def check_auth(self) -> None:
        await self.list_records(self._table, None, fields=["sys_id"], limit=1)

    async def list_journal(self, sys_id: str, elements: Sequence[str]) -> list[JournalEntry]:
        """The incident's journal entries, oldest first (:mod:`.journal`)."""
        size = self._settings.page_size
        return await read_journal(self, self._table, sys_id, elements, page_size=size)

    async def field_dictionary(self) -> dict[str, SNFieldInfo]:
        """The incident table's dictionary (``sys_dictionary``): element -> type, size,
        referenced table; the fields incident inherits are defined on ``task``, and the
        table's own entry wins. Empty when a read ACL hides the rows; a 403 raises."""
        tables = [self._table, "task"] if self._table == "incident" else [self._table]
        query = EncodedQuery().in_("name", tables).order_by("sys_id")
        fields = ["name", "element", "internal_type", "max_length", "reference"]
        own: dict[str, SNFieldInfo] = {}
        inherited: dict[str, SNFieldInfo] = {}
        offset, size = 0, self._settings.page_size
        while True:
            page = await self.list_page(
                "sys_dictionary", query, fields=fields, limit=size, offset=offset
            )
            for row in page.records:
                element = str(row.get("element") or "")
                if not element:
                    continue  # the table's own entry (no element)
                target = own if row.get("name") == self._table else inherited
                target[element] = parse_field_info(row)
            offset += size
            if (page.total is None and not page.records) or (
                page.total is not None and offset >= page.total
            ):
                return {**inherited, **own}

    @staticmethod
    def changed_query(floor: datetime | None, after: tuple[str, str] | None) -> EncodedQuery:
        """The incremental poll's query (docs section 0).

        First page: ``sys_updated_on>=<floor>^correlation_idISNOTEMPTY`` ordered by
        (sys_updated_on, sys_id). Later pages (keyset after ``(ts, sys_id)`` of the last
        row): ``sys_updated_on>ts^correlation_idISNOTEMPTY^NQsys_updated_on=ts^sys_id>id
        ^correlation_idISNOTEMPTY`` with the same ORDERBY terms: an ``^NQ`` group is an OR
        of complete conditions, so the restriction is repeated in each group, and the
        sort terms come once at the end and apply to the whole query.

        "Correlated with BigPanda" is ``correlation_idISNOTEMPTY`` rather than
        ``correlation_display=BigPanda``: bpsync always writes the BigPanda incident id
        into ``correlation_id`` (the field the idempotent create searches on), while
        ``correlation_display`` is a label that people, the native BigPanda integration
        or an import may leave empty or spell differently. Incidents correlated with
        another tool are filtered out by the engine through the link store.

        Every date-time is a plain ``YYYY-MM-DD HH:MM:SS`` literal in UTC (``floor`` is
        converted, ``ts`` is a raw value as returned with ``sysparm_display_value=false``).
        ServiceNow compares such literals as UTC whatever the integration user's time
        zone; only ``javascript:gs.dateGenerate(...)`` values would be read in that zone
        (docs 2.4), and none is ever sent. ``after`` must hold checked values: an odd
        sys_id or date-time raises :class:`~sync.clients.snquery.QueryError` here.
        """
        query = EncodedQuery()
        if after is None:
            if floor is not None:
                query.where("sys_updated_on", Op.GE, sn_datetime(floor))
            query.is_not_empty("correlation_id")
        else:
            ts, sys_id = after
            query.where("sys_updated_on", Op.GT, check_sn_datetime(ts))
            query.is_not_empty("correlation_id")
            query.new_group()
            query.eq("sys_updated_on", ts).where("sys_id", Op.GT, check_sys_id(sys_id))
            query.is_not_empty("correlation_id")
        return query.order_by("sys_updated_on").order_by("sys_id")

    async def list_changed(
        self, since: datetime | None, *, overlap_s: float, fields: Sequence[str] | None = None
    ) -> list[IncidentRow]:
        """Keyset-paged incremental listing; see :meth:`changed_query`.

        The loop ends when ``X-Total-Count`` shows the page covered every remaining row,
        or on an empty page when the header is missing. A page may be short (or empty)
        while rows remain when ServiceNow filters rows by ACL after applying the limit
        (docs 1.5): a short page is never taken as the end; the keyset continues after
        its last row, and an empty window is stepped over with an offset on the same
        keyset. An updated row moves behind the keyset and is read again;
        de-duplication keeps, per sys_id, the highest ``sys_mod_count``. The result is
        ordered by (sys_updated_on, sys_id).

        Time zones: the floor and the keyset are raw UTC values compared as UTC literals
        (docs 2.4), so the integration user's time zone does not matter.

        A row whose ``sys_id`` is not 32 lower-case hex digits, or whose
        ``sys_updated_on`` is missing or not a raw date-time, is kept in the result (the
        engine skips it, naming it; a row that is not an incident at all comes as a
        :class:`~sync.clients.base.MalformedRow`) but never goes into a query: the keyset
        moves to the page's last well-formed row (the odd rows behind it are read again and
        de-duplicated), or, when a page holds no well-formed row, the same keyset is
        asked again with an offset past that window.
        """
        floor = None if since is None else since - timedelta(seconds=overlap_s)
        wanted = None if fields is None else sorted({*fields, *KEY_FIELDS})
        limit = self._settings.page_size
        newest: dict[str, SNRecord] = {}
        after: tuple[str, str] | None = None
        offset = 0

        def keyset_key(record: SNRecord) -> tuple[str, str] | None:
            """(sys_updated_on, sys_id) when both are safe to put in a query, else None."""
            updated, sys_id = record.get("sys_updated_on"), record.get("sys_id")
            if not isinstance(updated, str) or not isinstance(sys_id, str):
                return None
            try:
                datetime.fromisoformat(check_sn_datetime(updated))
                return updated, check_sys_id(sys_id)
            except (PermanentError, ValueError):
                return None

        def identity(record: SNRecord) -> str:
            sys_id = record.get("sys_id")
            if isinstance(sys_id, str) and sys_id:
                return sys_id
            return "?" + json.dumps(record, sort_keys=True, default=str)

        while True:
            page = await self.list_page(
                self._table,
                self.changed_query(floor, after),
                fields=wanted,
                limit=limit,
                offset=offset,
            )
            previous_key = after
            last_good: tuple[str, str] | None = None
            for record in page.records:
                key = keyset_key(record)
                if key is None:
                    log.debug(
                        "ServiceNow: changed row with an unexpected sys_id or sys_updated_on "
                        "(%.40r at %.40r): kept, not used as a keyset",
                        record.get("sys_id"),
                        record.get("sys_updated_on"),
                    )
                else:
                    if previous_key is not None and key <= previous_key:
                        # a server ignoring ORDERBY or the keyset would make this loop forever
                        raise PermanentError(
                            SIDE,
                            "incremental listing out of order: ServiceNow did not honour "
                            f"ORDERBYsys_updated_on^ORDERBYsys_id (row {key[1]} at {key[0]})",
                        )
                    previous_key = last_good = key
                ident = identity(record)
                seen = newest.get(ident)
                if seen is None or mod_count(record) >= mod_count(seen):
                    newest[ident] = record
            covered = page.total is not None and offset + limit >= page.total
            if covered or (page.total is None and not page.records):
                break
            if last_good is not None:
                after = last_good  # a short page is not the end: go on after its last row
                offset = 0
            else:
                offset += limit  # a window hidden by ACLs (or only odd rows): step over it
        ordered = sorted(
            newest.values(),
            key=lambda r: (str(r.get("sys_updated_on") or ""), str(r.get("sys_id") or "")),
        )
        return [parse_changed(record) for record in ordered]
