"""The HTTP side: auth, rate limit rules, the semaphore pool, OAuth and the Table API."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus, urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from sync.constants import SN_DATETIME_FORMAT
from sync.emulators.control import Handler
from sync.emulators.servicenow.errors import SNError, bad_request, error_response, not_found
from sync.emulators.servicenow.query import Condition, ParsedQuery, compile_query, parse_query
from sync.emulators.servicenow.schema import (
    DISPLAY_FIELDS,
    JOURNAL_LABELS,
    SCHEMAS,
    FieldDef,
    compare_key,
    to_zone,
    utc_str,
)
from sync.emulators.servicenow.state import InstanceState, Token, User
from sync.emulators.sn_semaphore import PoolFullError

ACCESS_TOKEN_LIFETIME_S = 1800
REFRESH_TOKEN_LIFETIME_S = 8_640_000
MAX_PAYLOAD_BYTES = 10_485_760
RATE_LIMIT_WINDOW_S = 3600
RATE_LIMIT_RULE_ID = "a0c1e8f2db1b4010b8a3f7d5a1c0e9b7"
#: the detail of a semaphore-queue 429 (the real wording is not documented)
SEMAPHORE_QUEUE_FULL = (
    "Too many concurrent requests: the API_INT semaphores and their queue are full"
)

USER_KEY: web.RequestKey[User] = web.RequestKey("servicenow_user", User)

_COLLECTION_METHODS = ("GET", "HEAD", "POST")
_RECORD_METHODS = ("GET", "HEAD", "PUT", "PATCH", "DELETE")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_PASSTHROUGH_PARAMS = frozenset({"x-sn-apikey"})


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


class Api:
    """Request handlers over one :class:`InstanceState`."""

    def __init__(self, state: InstanceState) -> None:
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
                raise not_found()
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
            raise bad_request(
                f"Rejected large REST payload with content-length = {request.content_length} "
                f"bytes. Max allowed: {MAX_PAYLOAD_BYTES} bytes."
            )
        raw = await request.read()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request("The payload is not valid JSON.") from exc
        if isinstance(data, list):
            data = data[0] if data else None  # only the first record is processed
        if not isinstance(data, dict):
            raise bad_request("The payload is not a JSON object.")
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
        predicate, order, invalid = compile_query(state, table, parsed, user)
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
                    out[name] = utc_str(local)
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
    return compare_key(value, numeric)


def _token_value(state: InstanceState) -> str:
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
