"""BigPanda's vendor JSON as typed models (:class:`sync.model.BPIncident`, ``BPAlert``,
:class:`~sync.clients.base.BPActivity`, ...): a malformed shape is a
:class:`~sync.errors.PermanentError` naming the problem."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sync.clients.base import BPActivity, BPEnvironment, BPTagDefinition, BPUser
from sync.clients.bigpanda.paths import SIDE
from sync.constants import BPStatus
from sync.errors import PermanentError
from sync.model import BPAlert, BPIncident

#: an epoch value above this is milliseconds, not seconds (year 5138 in seconds)
_EPOCH_MS_THRESHOLD = 100_000_000_000


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
        snoozed=_snoozed(data.get("snooze"), folders),
        **_assignee(data.get("assignee"), where),
    )


def _assignee(value: Any, where: str) -> dict[str, str | None]:
    """``assignee {user_id, name, email}`` (docs 5.1: present once assigned, absent or
    null when not) as the incident's ``assignee_id`` and ``assignee_email``."""
    if value is None or value == {}:
        return {"assignee_id": None, "assignee_email": None}
    if not isinstance(value, Mapping):
        raise _ShapeError(f"{where}: assignee is a JSON {type(value).__name__}")
    user_id = _id(value.get("user_id", value.get("id")), f"{where} assignee id")
    email = value.get("email")
    return {
        "assignee_id": user_id,
        "assignee_email": email.strip() if isinstance(email, str) and email.strip() else None,
    }


def _snoozed(snooze: Any, folders: Any) -> bool:
    """``snooze.snoozed`` (the docs' shape), else membership of the ``snoozed`` folder."""
    if isinstance(snooze, Mapping) and isinstance(snooze.get("snoozed"), bool):
        return bool(snooze["snoozed"])
    return isinstance(folders, list) and "snoozed" in folders


def parse_incident(data: Any) -> BPIncident:
    """A v2 incident object (docs 5.1) as a :class:`BPIncident`; PermanentError if malformed."""
    try:
        return _parse_incident(data)
    except _ShapeError as exc:
        raise PermanentError(SIDE, f"unexpected incident shape: {exc}") from None


def stamped_before(data: Any, floor: int) -> bool:
    """Is this raw search item's ``updated_at`` known and older than ``floor`` (epoch s),
    as :func:`parse_incident` would read it? A poll skips such an item unparsed (it is
    outside the window anyway); an item whose stamp cannot be read is parsed as usual."""
    if not isinstance(data, Mapping):
        return False
    try:
        stamp = _epoch(data.get("updated_at"), "updated_at")
    except _ShapeError:
        return False
    return stamp is not None and stamp < floor


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


#: the schema a SCIM 1.1 user answers with (docs 4.7)
SCIM_USER_SCHEMA = "urn:scim:schemas:core:1.0"


def parse_scim_user(data: Any) -> BPUser:
    """A SCIM 1.1 user resource (docs 4.7) as a :class:`BPUser`; PermanentError if
    malformed (no ``id`` or no ``userName``)."""
    if not isinstance(data, Mapping):
        raise PermanentError(SIDE, f"unexpected SCIM user shape: a JSON {type(data).__name__}")
    user_id, user_name = data.get("id"), data.get("userName")
    if not isinstance(user_id, str) or not user_id or not isinstance(user_name, str):
        raise PermanentError(SIDE, "unexpected SCIM user shape: missing id or userName")
    name = data.get("displayName")
    if not isinstance(name, str) or not name:
        parts = data.get("name")
        formatted = parts.get("formatted") if isinstance(parts, Mapping) else None
        name = formatted if isinstance(formatted, str) else ""
    raw_emails = data.get("emails")
    emails: list[str] = []
    for item in raw_emails if isinstance(raw_emails, list) else []:
        value = item.get("value") if isinstance(item, Mapping) else None
        if isinstance(value, str) and value:
            if isinstance(item, Mapping) and item.get("primary") is True:
                emails.insert(0, value)
            else:
                emails.append(value)
    return BPUser(
        id=user_id,
        user_name=user_name,
        name=name,
        emails=tuple(emails),
        active=_bool(data.get("active"), True),
    )


def parse_scim_list(body: Any) -> list[BPUser]:
    """A SCIM 1.1 list answer ``{totalResults, startIndex, itemsPerPage, Resources}``."""
    if not isinstance(body, Mapping) or not isinstance(body.get("totalResults"), int):
        raise PermanentError(SIDE, "unexpected SCIM list shape: no totalResults")
    resources = body.get("Resources", [])
    if not isinstance(resources, list):
        raise PermanentError(SIDE, "unexpected SCIM list shape: Resources is not a list")
    return [parse_scim_user(item) for item in resources]
