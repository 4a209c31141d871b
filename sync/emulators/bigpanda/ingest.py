"""Alert ingest (``POST /data/v2/alerts``): validation, correlation into incidents, reopen."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from sync.emulators.bigpanda.model import (
    INGEST_STATUSES,
    MAX_EPOCH_S,
    PRIMARY_CANDIDATES,
    RESERVED_ALERT_KEYS,
    SECONDARY_CANDIDATES,
    Alert,
    ApiError,
    Incident,
    IngestResult,
)

if TYPE_CHECKING:
    from sync.emulators.bigpanda.state import State


def prepare_event(st: State, event: dict[str, Any]) -> dict[str, Any]:
    app_key = event.get("app_key")
    if not isinstance(app_key, str) or not app_key:
        raise ApiError(400, "app_key is required")
    status = event.get("status")
    if not isinstance(status, str) or status.lower() not in INGEST_STATUSES:
        raise ApiError(400, "status must be one of ok, critical, warning, unknown, "
                       "acknowledged")  # fmt: skip
    timestamp = event.get("timestamp")
    if timestamp is None:
        ts = st.now()
    elif isinstance(timestamp, int) and not isinstance(timestamp, bool):
        if timestamp > MAX_EPOCH_S:
            raise ApiError(400, "timestamp must be in epoch seconds")
        ts = timestamp
    else:
        raise ApiError(400, "timestamp must be an integer (epoch seconds)")
    tags: dict[str, str] = {}
    for key, value in event.items():
        if key in RESERVED_ALERT_KEYS:
            continue
        if isinstance(value, dict):
            raise ApiError(400, f"nested objects are not supported (property {key!r})")
        if isinstance(value, list):
            if any(isinstance(v, dict | list) for v in value):
                raise ApiError(400, f"nested objects are not supported (property {key!r})")
            tags[key] = "|".join(str(v) for v in value)
        elif value is None:
            continue
        elif isinstance(value, bool):
            tags[key] = str(value).lower()
        else:
            tags[key] = str(value)
    primary = event.get("primary_property")
    if primary is None:
        primary = next((c for c in PRIMARY_CANDIDATES if c in tags), None)
    if not isinstance(primary, str) or primary not in tags:
        raise ApiError(400, "alert has no primary property (host, service, application, "
                       "device or the one named by primary_property)")  # fmt: skip
    secondary = event.get("secondary_property")
    if secondary is None:
        secondary = next((c for c in SECONDARY_CANDIDATES if c in tags), None)
    if secondary is not None and (not isinstance(secondary, str) or secondary not in tags):
        raise ApiError(400, "secondary_property names a property the alert lacks")
    identifier = event.get("incident_identifier")
    if identifier is not None and not isinstance(identifier, str):
        raise ApiError(400, "incident_identifier must be a string")
    description = event.get("description", "")
    if not isinstance(description, str) or len(description) > 2048:
        raise ApiError(400, "description must be a string of at most 2048 characters")
    key = identifier or "|".join([tags[primary], tags[secondary] if secondary is not None else ""])
    return {
        "app_key": app_key,
        "status": status.lower(),
        "timestamp": ts,
        "tags": tags,
        "primary": primary,
        "secondary": secondary,
        "incident_key": key,
        "description": description,
        "fingerprint": json.dumps(event, sort_keys=True, default=str) + f"@{ts}",
    }


def apply_event(st: State, ev: dict[str, Any]) -> IngestResult:
    key: str = ev["incident_key"]
    existing = st.alerts.get(st.alerts_by_key.get(key, ""))
    if existing is not None and existing.last_event == ev["fingerprint"]:
        return IngestResult(existing.id, existing.incident_id, "duplicate")
    now = st.now()
    if existing is not None:
        inc = st.incidents[existing.incident_id]
        if inc.active:
            return _update_alert(st, inc, existing, ev, "updated")
        in_window = inc.end is not None and now - inc.end <= st.reopen_window_s
        status = ev["status"]
        if status == "ok" or (status == "acknowledged" and existing.status == "ok"):
            existing.last_event, existing.last_event_at = ev["fingerprint"], ev["timestamp"]
            return IngestResult(existing.id, inc.id, "ignored")
        if in_window:
            st._reopen(inc)
            return _update_alert(st, inc, existing, ev, "reopened")
    if ev["status"] in {"ok", "acknowledged"}:
        return IngestResult(None, None, "ignored")
    return _new_alert(st, ev)


def _update_alert(
    st: State, inc: Incident, alert: Alert, ev: dict[str, Any], action: str
) -> IngestResult:
    now = st.now()
    status = alert.status if ev["status"] == "acknowledged" else ev["status"]
    status_changed = status != alert.status or alert.active != (status != "ok")
    alert.status, alert.active = status, status != "ok"
    alert.end = ev["timestamp"] if status == "ok" else None
    alert.tags = ev["tags"]
    alert.description = ev["description"] or alert.description
    alert.last_event_at = ev["timestamp"]
    alert.last_event = ev["fingerprint"]
    alert.updated_at = now
    if status_changed:
        alert.changed_at = now
    if status_changed and inc.snooze is not None and inc.snooze.cancel_on_incident_updates:
        st.unsnooze(inc.id, by=None)
    reopened = action == "reopened"
    resolved = st.recompute(inc, changed=status_changed or reopened, emit=not reopened)
    if reopened:
        st.emit("incident#reopen", inc)
    return IngestResult(alert.id, inc.id, "resolved" if resolved else action)


def _new_alert(st: State, ev: dict[str, Any]) -> IngestResult:
    now = st.now()
    ts: int = ev["timestamp"]
    value = ev["tags"].get(st.correlation_tag)
    inc: Incident | None = None
    if value is not None:
        candidate = st.incidents.get(st.open_by_correlation.get(value, ""))
        if (
            candidate is not None
            and candidate.active
            and ts - candidate.start <= st.correlation_window_s
            and len(candidate.alert_ids) < st.max_alerts_per_incident
        ):
            inc = candidate
    action = "joined"
    if inc is None:
        action = "created"
        inc = Incident(
            id=st.new_id(),
            status=ev["status"],
            severity=ev["status"],
            active=True,
            start=ts,
            end=None,
            changed_at=now,
            updated_at=now,
            correlation_value=value,
        )
        inc.correlation_log.append(
            {
                "time_window": st.correlation_window_s,
                "tags": [{"name": st.correlation_tag, "value": value}] if value is not None else [],
                "correlation_id": st.new_id(32),
                "source_system": f"api.{ev['app_key']}",
            }
        )
        st.incidents[inc.id] = inc
        if value is not None:
            st.open_by_correlation[value] = inc.id
        st.add_activity(inc, "incident_created", {})
    alert = Alert(
        id=st.new_id(),
        incident_id=inc.id,
        incident_key=ev["incident_key"],
        status=ev["status"],
        active=True,
        start=ts,
        end=None,
        changed_at=now,
        updated_at=now,
        last_event_at=ts,
        primary_property=ev["primary"],
        secondary_property=ev["secondary"],
        source_system=f"api.{ev['app_key']}",
        description=ev["description"],
        tags=ev["tags"],
        last_event=ev["fingerprint"],
    )
    st.alerts[alert.id] = alert
    st.alerts_by_key[alert.incident_key] = alert.id
    inc.alert_ids.append(alert.id)
    inc.start = min(inc.start, ts)
    st.recompute(inc, changed=True, emit=action != "created")
    if action == "created":
        st.emit("incident#new", inc)
        if st.aia_delay_s is not None:
            due = st.clock.monotonic() + st.aia_delay_s
            st.pending.append((due, functools.partial(st._analyse_later, inc.id)))
    return IngestResult(alert.id, inc.id, action)
