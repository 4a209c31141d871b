"""Fixture incidents (``POST /_emulator/incidents``), poison records included."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sync.constants import BP_ID_PATTERN
from sync.emulators.bigpanda.model import (
    DEFAULT_USER_ID,
    PRIMARY_CANDIDATES,
    STATUS_RANK,
    Activity,
    Alert,
    Incident,
    TagValue,
)

if TYPE_CHECKING:
    from sync.emulators.bigpanda.state import State


def load_incident(st: State, data: Mapping[str, Any]) -> Incident:
    """Load one fixture incident object (shape in the package docstring); ValueError."""
    now = st.now()
    inc_id = str(data.get("id") or st.new_id())
    if not re.fullmatch(BP_ID_PATTERN, inc_id):
        raise ValueError(f"incident id {inc_id!r} is not 24 hex digits")
    if inc_id in st.incidents:
        raise ValueError(f"incident {inc_id} already exists")
    raw_alerts = data.get("alerts") or []
    if not isinstance(raw_alerts, list):
        raise TypeError("alerts must be a list")
    raw_overrides = data.get("raw_overrides") or {}
    if not isinstance(raw_overrides, dict):
        raise TypeError("raw_overrides must be an object")
    raw_remove = data.get("raw_remove") or []
    if not isinstance(raw_remove, list) or not all(isinstance(k, str) for k in raw_remove):
        raise TypeError("raw_remove must be a list of key names")
    start = int(data.get("start", now))
    inc = Incident(
        id=inc_id,
        status="ok",
        severity=str(data.get("severity", "ok")).lower(),
        active=True,
        start=start,
        end=None,
        changed_at=int(data.get("changed_at", now)),
        updated_at=int(data.get("updated_at", now)),
        raw_overrides=copy.deepcopy(raw_overrides),
        raw_remove=tuple(raw_remove),
    )
    if inc.severity not in STATUS_RANK:
        raise ValueError(f"bad severity {inc.severity!r}")
    for raw in raw_alerts:
        if not isinstance(raw, dict):
            raise TypeError("every alert must be an object")
        alert = _fixture_alert(st, inc, raw, now)
        inc.alert_ids.append(alert.id)
    status = str(data.get("status", "critical" if not raw_alerts else "")).lower()
    active_alerts = [st.alerts[a] for a in inc.alert_ids if st.alerts[a].active]
    computed = max((a.status for a in active_alerts), key=STATUS_RANK.__getitem__, default="ok")
    inc.status = status or computed
    if inc.status not in STATUS_RANK:
        raise ValueError(f"bad status {inc.status!r}")
    inc.active = bool(data.get("active", inc.status != "ok"))
    if STATUS_RANK[inc.status] > STATUS_RANK[inc.severity]:
        inc.severity = inc.status
    if not inc.active:
        inc.status = "ok"
        end = data.get("end")
        inc.end = int(end) if end is not None else now
    tags = data.get("incident_tags") or {}
    pairs = (
        [(t["tag_id"], t["tag_value"]) for t in tags]
        if isinstance(tags, list)
        else list(dict(tags).items())
    )
    for tag_id, value in pairs:
        if tag_id not in st.tag_definitions:
            st.define_tag(tag_id)
        inc.tags[str(tag_id)] = TagValue(str(value), "fixture", "", inc.updated_at)
    inc.shared = bool(data.get("shared", False))  # shared before (by hand or AutoShare)
    if data.get("assignee"):
        assignee = str(data["assignee"])
        inc.assignee = {"user_id": assignee, "name": assignee, "email": ""}
        inc.assigner = dict(st.users[DEFAULT_USER_ID])
    first_alert = st.alerts[inc.alert_ids[0]] if inc.alert_ids else None
    if first_alert is not None:
        inc.correlation_value = first_alert.tags.get(st.correlation_tag)
    if inc.active and inc.correlation_value is not None:
        st.open_by_correlation.setdefault(inc.correlation_value, inc.id)
    st.incidents[inc.id] = inc
    inc.activities.append(Activity(st.new_id(32), "incident_created", start, None, {}))
    inc.environments = tuple(env.id for env in st.environments.values() if env.matcher(inc, st))
    st.search_index.touched(inc.id)
    return inc


def _fixture_alert(st: State, inc: Incident, raw: Mapping[str, Any], now: int) -> Alert:
    raw_tags = raw.get("tags") or {}
    tags = (
        {str(t["name"]): str(t["value"]) for t in raw_tags}
        if isinstance(raw_tags, list)
        else {str(k): str(v) for k, v in dict(raw_tags).items()}
    )
    status = str(raw.get("status", "critical")).lower()
    if status not in STATUS_RANK:
        raise ValueError(f"bad alert status {status!r}")
    primary = str(
        raw.get("primary_property") or next((c for c in PRIMARY_CANDIDATES if c in tags), "host")
    )
    secondary = raw.get("secondary_property")
    key = str(
        raw.get("incident_key")
        or f"{tags.get(primary, '')}|{tags.get(secondary, '') if secondary else ''}"
    )
    start = int(raw.get("start", inc.start))
    alert = Alert(
        id=str(raw.get("id") or raw.get("alert_id") or st.new_id()),
        incident_id=inc.id,
        incident_key=key,
        status=status,
        active=bool(raw.get("active", status != "ok")),
        start=start,
        end=raw.get("end"),
        changed_at=int(raw.get("changed_at", now)),
        updated_at=int(raw.get("updated_at", now)),
        last_event_at=int(raw.get("last_event_at", start)),
        primary_property=primary,
        secondary_property=str(secondary) if secondary else None,
        source_system=str(raw.get("source_system", "api.fixture")),
        description=str(raw.get("description", "")),
        tags=tags,
    )
    st.alerts[alert.id] = alert
    st.alerts_by_key[key] = alert.id
    return alert
