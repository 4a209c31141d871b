"""The outbox codec: pure functions from a write to its outbox item and back.

No I/O here. An outbox item's payload is the serialised action (:func:`encode_action`,
datetimes, look-ups and follow-up actions tagged so :func:`decode_action` restores them
exactly; follow-up fields at their defaults left out, so older items keep their keys) plus the
BigPanda environment and, for a create, the pending link id. Its target
(:func:`target_of`) orders the writes to one incident; its idempotency key
(:func:`idempotency_key`) is a hash of kind, target and payload.

The link tag holds ``"<number> <url>"`` (SPEC B1: the ServiceNow number and URL), with
``url = {servicenow.base_url}/nav_to.do?uri=incident.do?sys_id=<sys_id>``, the form
that opens the incident inside ServiceNow's frame (:func:`link_tag_value`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any

from sync.actions import (
    Action,
    AssignBigPanda,
    CarryEntryToBigPanda,
    CarryEntryToServiceNow,
    CommentBigPanda,
    CreateServiceNowIncident,
    RefLookup,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    SnoozeBigPanda,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import Side
from sync.store.base import FieldStates, NewOutboxItem

#: checkpoint key prefix remembering a BigPanda incident's environment
BP_ENV_CHECKPOINT = "bp_env:"

WriteAction = (
    CreateServiceNowIncident
    | UpdateServiceNowFields
    | UpdateBigPandaTags
    | ResolveServiceNow
    | ResolveBigPanda
    | ReopenServiceNow
    | SnoozeBigPanda
    | AssignBigPanda
    | CommentBigPanda
    | SetLinkTag
    | CarryEntryToServiceNow
    | CarryEntryToBigPanda
)

#: every write action class by its kind
WRITE_CLASSES: dict[str, type[Any]] = {
    cls.kind: cls
    for cls in (
        CreateServiceNowIncident,
        UpdateServiceNowFields,
        ResolveServiceNow,
        ReopenServiceNow,
        UpdateBigPandaTags,
        ResolveBigPanda,
        SnoozeBigPanda,
        AssignBigPanda,
        CommentBigPanda,
        SetLinkTag,
        CarryEntryToServiceNow,
        CarryEntryToBigPanda,
    )
}

#: the side each write kind goes to
SIDE_OF_KIND: dict[str, Side] = {kind: cls.side for kind, cls in WRITE_CLASSES.items()}


_KEEP = object()

#: fields left out of the payload while they hold their default: items written before
#: the field existed keep their idempotency key
_OMITTED_DEFAULTS: dict[str, Any] = {
    "on_success": (),
    "on_refused": (),
    "with_error": False,
    "only_after_error": False,
}


#: values that are JSON as they are (checked first: most of a payload)
_PLAIN = (str, int, float, type(None))


def _encode_value(value: Any) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, CommentBigPanda | SetLinkTag):
        return {"$action": encode_action(value)}
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, RefLookup):
        return {"$ref": [value.table, value.column, value.value]}
    if isinstance(value, Mapping):
        return {str(k): _encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$dt"}:
            return datetime.fromisoformat(value["$dt"])
        if set(value) == {"$action"}:
            return decode_action(value["$action"])
        if set(value) == {"$ref"}:
            table, column, ref_value = value["$ref"]
            return RefLookup(str(table), str(column), str(ref_value))
        return {k: _decode_value(v) for k, v in value.items()}
    if isinstance(value, list):  # the actions' sequences are tuples
        return tuple(_decode_value(v) for v in value)
    return value


def encode_action(action: WriteAction) -> dict[str, Any]:
    """The action as JSON-safe data (datetimes and look-ups tagged)."""
    assert is_dataclass(action)
    return {
        "kind": action.kind,
        **{
            f.name: _encode_value(value)
            for f in fields(action)
            if (value := getattr(action, f.name)) != _OMITTED_DEFAULTS.get(f.name, _KEEP)
        },
    }


def decode_action(data: Mapping[str, Any]) -> WriteAction:
    """Inverse of :func:`encode_action`; ValueError for an unknown kind or shape."""
    kind = str(data.get("kind", ""))
    cls = WRITE_CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"unknown outbox action kind {kind!r}")
    try:
        action = cls(**{k: _decode_value(v) for k, v in data.items() if k != "kind"})
    except TypeError as exc:
        raise ValueError(f"malformed {kind} payload: {exc}") from None
    assert isinstance(action, WRITE_CLASSES[kind])
    return action  # type: ignore[no-any-return]


def target_of(action: WriteAction) -> str:
    """The outbox target: writes to one target are sent in queue order."""
    if isinstance(action, CreateServiceNowIncident):
        return f"servicenow:create:{action.bp_incident_id}"
    if isinstance(
        action,
        UpdateServiceNowFields | ResolveServiceNow | ReopenServiceNow | CarryEntryToServiceNow,
    ):
        return f"servicenow:{action.sys_id}"
    return f"bigpanda:{action.bp_incident_id}"


def idempotency_key(kind: str, target: str, payload: Mapping[str, Any]) -> str:
    """A stable hash of the write's content and ids."""
    blob = json.dumps(
        {"kind": kind, "target": target, "payload": payload}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:40]


def _without_memory(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The payload the idempotency key is made of: without what a write remembers for
    the guards (``record_*`` entries named ``$...``, e.g. the flip-flop guard's times),
    which differ each time the same write is planned again."""
    action = payload.get("action")
    if not isinstance(action, Mapping):
        return payload
    trimmed = dict(action)
    for name in ("record_bp", "record_sn"):
        record = trimmed.get(name)
        if isinstance(record, Mapping):
            trimmed[name] = {k: v for k, v in record.items() if not str(k).startswith("$")}
    return {**payload, "action": trimmed}


def new_outbox_item(
    action: WriteAction, env: str | None, extra: Mapping[str, Any] | None = None
) -> tuple[NewOutboxItem, dict[str, Any]]:
    """The outbox item of a write (its payload: the action and ``meta``) and meta."""
    meta: dict[str, Any] = {"environment_id": env, **(extra or {})}
    payload = {"action": encode_action(action), **meta}
    target = target_of(action)
    key = idempotency_key(action.kind, target, _without_memory(payload))
    bp_id, sn_id, link_id = ids_of(action)
    link_id = link_id if link_id is not None else meta.get("link_id")
    new = NewOutboxItem(action.kind, target, payload, key, link_id, bp_id, sn_id)
    return new, meta


def incident_url(base_url: str, sys_id: str) -> str:
    """The URL that opens a ServiceNow incident (inside the ServiceNow frame)."""
    return f"{base_url.rstrip('/')}/nav_to.do?uri=incident.do?sys_id={sys_id}"


def link_tag_value(base_url: str, number: str, sys_id: str) -> str:
    """The link tag's value: ``"<number> <url>"`` (SPEC B1)."""
    url = incident_url(base_url, sys_id)
    return f"{number} {url}" if number else url


def ids_of(action: Action) -> tuple[str | None, str | None, int | None]:
    """The action's BigPanda id, ServiceNow sys_id and link id (None where it has none)."""
    bp = getattr(action, "bp_incident_id", None)
    sn = getattr(action, "sys_id", None)
    link = getattr(action, "link_id", None)
    return bp, sn, link


def ref_value(value: Any) -> str:
    """A reference field's sys_id, whether bare or ``{"link", "value"}``."""
    if isinstance(value, Mapping):
        value = value.get("value")
    return "" if value is None else str(value)


def field_states(
    link_id: int, record_bp: Mapping[str, str | None], record_sn: Mapping[str, str | None]
) -> list[FieldStates]:
    """The field states to record for a link (no entry for an empty side)."""
    out = []
    if record_bp:
        out.append(FieldStates(link_id, Side.BIGPANDA, record_bp))
    if record_sn:
        out.append(FieldStates(link_id, Side.SERVICENOW, record_sn))
    return out
