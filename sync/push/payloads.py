"""What a webhook delivery says: the incident it is about (pure, no I/O).

A delivery is a hint, never the truth: only the incident's id (and, when given, its
version and BigPanda environment) is taken from it; the engine reads the incident from
its API. Every refusal is a :class:`PayloadError` whose message is one line for the 400.

BigPanda (``POST /webhooks/bigpanda``), any of:

- the Notifications Webhook payload, the incident object with its alerts expanded,
  wrapped (``{"incident": {...}, "trigger": ..., "environment": ...}``) or bare (the
  incident object itself, with ``event_type``): both are seen in the wild (docs 7.1);
- a Webhook v2 trigger body, whatever template the admin configured, as long as it
  carries the incident id as ``incident_id`` (or ``id``, or ``incident.id``); the
  template bpsync documents is ``{"incident_id": "{{incident.id}}", "environment_id":
  "<environment id>", "trigger": "incident#updated"}`` (docs 7.3).

ServiceNow (``POST /webhooks/servicenow``): ``{"table": "incident", "sys_id": "...",
"sys_mod_count": "...", "sys_updated_on": "..."}`` as the business rule of
``config/servicenow/`` sends it; ``table`` may be left out, ``sys_mod_count`` and
``sys_updated_on`` are optional.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sync.constants import BP_ID_PATTERN, Side

#: a sys_id bpsync can address (:data:`sync.pairs.SN_SYS_ID_FORM`)
_SYS_ID = re.compile(r"[A-Za-z0-9]{32}")
_BP_ID = re.compile(BP_ID_PATTERN)
#: an environment id as the path segment of the incident's URL
_ENVIRONMENT = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_VERSION = re.compile(r"[0-9]{1,20}")


class PayloadError(ValueError):
    """A delivery bpsync cannot use; the message is one line (the 400's reason)."""


@dataclass(frozen=True, slots=True)
class Hint:
    """The incident a delivery is about."""

    side: Side
    object_id: str
    """The BigPanda incident id or the ServiceNow sys_id."""
    version: str | None = None
    """``updated_at`` (BigPanda) or ``sys_mod_count`` (ServiceNow), when the body says."""
    environment_id: str | None = None
    """The BigPanda environment the body names, if any."""


def decode(body: bytes) -> Mapping[str, Any]:
    """The body as a JSON object, or PayloadError naming what is wrong with it."""
    if not body.strip():
        raise PayloadError("empty body: a JSON object is expected")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise PayloadError("malformed JSON: the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"malformed JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"a JSON object is expected, not {type(data).__name__}")
    return data


def _text(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def bigpanda_hint(data: Mapping[str, Any]) -> Hint:
    """The BigPanda incident a Notifications Webhook or Webhook v2 body is about."""
    wrapped = data.get("incident")
    incident: Mapping[str, Any] = wrapped if isinstance(wrapped, dict) else data
    candidates = (
        incident.get("id"),
        incident.get("incident_id"),
        data.get("incident_id"),
        data.get("id") if incident is not data else None,
    )
    raw = next((text for text in map(_text, candidates) if text is not None), None)
    if raw is None:
        raise PayloadError("no incident id: send the incident object or incident_id")
    if not _BP_ID.fullmatch(raw):
        raise PayloadError(f"incident id {raw[:40]!r} is not a BigPanda id (24 hex digits)")
    environment = _text(data.get("environment_id")) or _text(data.get("environment"))
    if environment is None:
        environments = incident.get("environments")
        if isinstance(environments, list) and environments:
            environment = _text(environments[0])
    if environment is not None and not _ENVIRONMENT.fullmatch(environment):
        raise PayloadError(f"environment {environment[:40]!r} is not an environment id")
    version = _text(incident.get("updated_at"))
    if version is not None and not _VERSION.fullmatch(version):
        version = None  # a hint only: an odd stamp is not worth refusing the delivery
    return Hint(Side.BIGPANDA, raw, version, environment)


def servicenow_hint(data: Mapping[str, Any], table: str) -> Hint:
    """The ServiceNow incident the business rule's body is about."""
    named = data.get("table")
    if named is not None and named != table:
        raise PayloadError(f"table {str(named)[:40]!r} is not synced (bpsync syncs {table})")
    sys_id = _text(data.get("sys_id"))
    if sys_id is None:
        raise PayloadError("no sys_id")
    if not _SYS_ID.fullmatch(sys_id):
        raise PayloadError(f"sys_id {sys_id[:40]!r} is not 32 letters and digits")
    version = _text(data.get("sys_mod_count"))
    if version is not None and not _VERSION.fullmatch(version):
        raise PayloadError(f"sys_mod_count {version[:40]!r} is not a number")
    return Hint(Side.SERVICENOW, sys_id, version)


__all__ = ["Hint", "PayloadError", "bigpanda_hint", "decode", "servicenow_hint"]
