"""The HTTP handlers of the BigPanda API and of the emulator's ``/_emulator/`` hooks."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from sync.constants import BP_COMMENT_MAX
from sync.emulators.bigpanda.model import (
    DEFAULT_USER_ID,
    FOLDERS,
    GENERIC_400,
    GENERIC_404,
    MAX_BATCH_RESOLVE_IDS,
    MAX_EPOCH_S,
    MAX_EXPANDED_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_QUERY_CHARS,
    MAX_RESULTS,
    SORT_KEYS,
    TAG_TYPES,
    ApiError,
    Environment,
    Incident,
    TagDefinition,
)
from sync.emulators.bigpanda.state import State
from sync.emulators.bigpanda.webhooks import Webhooks
from sync.emulators.bplimits import RATE_LIMIT_SCOPES, RATE_LIMIT_SHAPES, RateLimiter, check_choice

STATE_KEY: web.AppKey[State] = web.AppKey("bigpanda_state", State)
WEBHOOKS_KEY: web.AppKey[Webhooks] = web.AppKey("bigpanda_webhooks", Webhooks)
CONFIG_KEY: web.AppKey[dict[str, Any]] = web.AppKey("bigpanda_config", dict)
LIMITER_KEY: web.AppKey[RateLimiter] = web.AppKey("bigpanda_limiter", RateLimiter)

ALERTS_PATH = "/data/v2/alerts"
_INCIDENT = "/resources/v2.0/environments/{env_id}/incidents/{incident_id}"


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


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
    return key_envs.get(bearer_token(request) or "")


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
    return api_keys.get(bearer_token(request) or "", DEFAULT_USER_ID)


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
    if not isinstance(comments, str) or len(comments) > BP_COMMENT_MAX:
        raise ApiError(400, f"comments must be at most {BP_COMMENT_MAX} characters")
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
            "scim_rate_limit_per_s": cfg["scim_rate_limit_per_s"],
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
        "scim_rate_limit_per_s",
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
    scim_rate = float(body.get("scim_rate_limit_per_s", cfg["scim_rate_limit_per_s"]))
    reopen_window_s = int(body.get("reopen_window_s", st.reopen_window_s))
    correlation_window_s = int(body.get("correlation_window_s", st.correlation_window_s))
    limiter.shape = shape  # a change of shape or scope forgets the counters
    limiter.scope = scope
    cfg["rate_limit_per_s"] = rate
    cfg["batch_resolve_rate_limit_per_s"] = batch_rate
    cfg["scim_rate_limit_per_s"] = scim_rate
    st.reopen_window_s = reopen_window_s
    st.correlation_window_s = correlation_window_s


async def set_config(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        _apply_config(_state(request), request.app[CONFIG_KEY], request.app[LIMITER_KEY], body)
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return await get_config(request)


def add_routes(router: web.UrlDispatcher) -> None:
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
    router.add_post(ALERTS_PATH, ingest_alerts)
    router.add_get("/resources/v1.0/incidents/{incident_id}", get_incident_v1)
    router.add_post("/resources/v1.0/incidents/{incident_id}", update_incident_v1)
    router.add_post("/_emulator/incidents", load_fixtures)
    router.add_get("/_emulator/incidents", dump_incidents)
    router.add_get("/_emulator/config", get_config)
    router.add_get("/_emulator/webhook", get_webhook)
    router.add_post("/_emulator/webhook", set_webhook)
    router.add_delete("/_emulator/webhook/dlq", clear_webhook_dlq)
    router.add_post("/_emulator/config", set_config)
