"""Short description, description and work-notes copy of a ServiceNow incident (SPEC B10).

Pure: no I/O. Built from the BigPanda incident and the ``[incidents]`` settings; the
text contains what the settings ask for and no more.

Short description (one line, within the field's size):
``[P1] `` when ``priority_in_short_description`` and the incident has a ``priority`` tag
(a bracketed ``[P1]`` tag value is unwrapped), then the primary alert's title: the
values of its primary and secondary properties (``db-1 / cpu_load``; BigPanda's
``primary_property`` names a tag such as ``host``), else the first line of its
description, else ``BigPanda incident <id>``. Whitespace runs are collapsed.

Description (at most 4000 characters), sections in this order, each only when asked
for and non-empty, separated by a blank line:

1. ``AI incident analysis:`` and the summary (``aia_in_description``), read from the
   incident tag ``aia_tag`` where BigPanda's AI analysis puts it (1-3 minutes after the
   incident forms: with ``description`` in ``update_fields`` it is added when it comes).
2. ``Alert status: 2 Critical, 1 Warning, 0 Resolved`` (``, 1 Unknown`` when any): the
   alerts counted by status (an inactive or ``ok`` alert counts as resolved), whenever
   the alerts are known. This is BigPanda's standard summary line, not a setting.
3. ``Incident tags:`` one ``name: value`` line per tag of ``description_incident_tags``
   that the incident has.
4. ``Alert i / N: <title> (<status>)`` then ``  name: value`` per tag of
   ``description_alert_tags``, for the first ``max_alerts_in_description`` alerts in
   primary-alert order (the primary alert first). Only when alert tags are configured.
5. Links (``links_in_description``), stable shapes built from ``bigpanda.ui_url``:
   ``{ui}/incidents/{environment}/{id}``, ``.../preview`` and ``.../timeline``.

Sizes are the fields' (:mod:`sync.sizes`: the dictionary's, else 160 and 4,000). When
the text is too long, the middle sections are cut (ending in the marker
``... [truncated by bpsync]``) so the links stay whole. The work-notes copy
(``description_to_work_notes``) is the description behind the mirror marker, so bpsync
never mirrors it back, within the journal limit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from sync.constants import MIRROR_MARKER, SN_DESCRIPTION_MAX
from sync.mapping import PRIORITY_TAG, bp_value
from sync.model import BPAlert, BPIncident
from sync.primary import parse_criteria, pick_primary_alert, sort_alerts
from sync.sizes import DEFAULT_SIZES, FieldSizes, fit

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import IncidentSettings, Settings

__all__ = [
    "IncidentLinks",
    "Texts",
    "alert_status_summary",
    "alert_title",
    "build_description",
    "build_short_description",
    "build_texts",
    "clip",
    "incident_links",
]

_ELLIPSIS = "..."
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class IncidentLinks:
    """Links into the BigPanda UI for one incident."""

    incident: str
    preview: str
    timeline: str


@dataclass(frozen=True, slots=True)
class Texts:
    """The generated ServiceNow texts of one incident."""

    short_description: str
    description: str
    work_notes: str | None
    """The description copy for ``work_notes``; None when ``description_to_work_notes`` is off."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    if len(text) <= limit:
        return text
    if limit <= len(_ELLIPSIS):
        return text[:limit]
    return text[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS


def incident_links(ui_url: str, environment_id: str, incident_id: str) -> IncidentLinks:
    """``{ui}/incidents/{env}/{id}`` and its ``/preview`` and ``/timeline`` pages."""
    base = f"{ui_url.rstrip('/')}/incidents/{quote(environment_id, safe='')}/"
    base += quote(incident_id, safe="")
    return IncidentLinks(incident=base, preview=f"{base}/preview", timeline=f"{base}/timeline")


def _tag(alert: BPAlert, name: str | None) -> str | None:
    if not name:
        return None
    if alert.tags.get(name):
        return alert.tags[name]
    lowered = name.lower()
    for tag, value in alert.tags.items():
        if tag.lower() == lowered and value:
            return value
    return None


def alert_title(alert: BPAlert) -> str | None:
    """``<primary value> / <secondary value>``, else the description's first line."""
    parts = [
        _tag(alert, prop) or prop
        for prop in (alert.primary_property, alert.secondary_property)
        if prop  # a property that is not a tag name is shown as it is
    ]
    if parts:
        return " / ".join(parts)
    if alert.description and alert.description.strip():
        return alert.description.strip().splitlines()[0]
    return None


def _priority(incident: BPIncident) -> str | None:
    value = (incident.tags.get(PRIORITY_TAG) or "").strip()
    if value.startswith("[") and value.endswith("]"):  # fixed-list tag values come bracketed
        value = value[1:-1].strip()
    return value or None


def build_short_description(
    incident: BPIncident,
    incidents: IncidentSettings,
    primary: BPAlert | None,
    sizes: FieldSizes = DEFAULT_SIZES,
) -> str:
    """One line, within the field's size (160 characters by default), cut with the
    marker (:func:`sync.sizes.fit`)."""
    prefix = ""
    priority = _priority(incident) if incidents.priority_in_short_description else None
    if priority:
        prefix = f"[{priority}] "
    title = (alert_title(primary) if primary is not None else None) or (
        f"BigPanda incident {incident.id}"
    )
    return fit(_SPACES.sub(" ", prefix + title).strip(), sizes.sn("short_description"))


def alert_status_summary(alerts: Sequence[BPAlert]) -> str:
    """``2 Critical, 1 Warning, 0 Resolved`` (``, 1 Unknown`` when there are any)."""
    counts = {"critical": 0, "warning": 0, "resolved": 0, "unknown": 0}
    for alert in alerts:
        status = alert.status.lower()
        if not alert.active or status == "ok":
            counts["resolved"] += 1
        elif status in ("critical", "warning"):
            counts[status] += 1
        else:
            counts["unknown"] += 1
    text = f"{counts['critical']} Critical, {counts['warning']} Warning, "
    text += f"{counts['resolved']} Resolved"
    if counts["unknown"]:
        text += f", {counts['unknown']} Unknown"
    return text


def _tag_lines(pairs: Sequence[tuple[str, str | None]]) -> list[str]:
    return [f"  {name}: {_SPACES.sub(' ', value)}" for name, value in pairs if value]


def build_description(
    incident: BPIncident,
    settings: Settings,
    environment_id: str,
    sizes: FieldSizes = DEFAULT_SIZES,
) -> str:
    """The description, within the field's size (4,000 characters by default)."""
    opts = settings.incidents
    sections: list[str] = []
    summary = bp_value(incident, opts.aia_tag) if opts.aia_in_description else None
    if summary and summary.strip():
        sections.append(f"AI incident analysis:\n{summary.strip()}")
    alerts = sort_alerts(incident.alerts, parse_criteria(opts.primary_alert))
    if alerts:
        sections.append(f"Alert status: {alert_status_summary(alerts)}")
    tag_lines = _tag_lines(
        [(name, bp_value(incident, name)) for name in opts.description_incident_tags]
    )
    if tag_lines:
        sections.append("Incident tags:\n" + "\n".join(tag_lines))
    if opts.description_alert_tags and opts.max_alerts_in_description > 0 and alerts:
        shown = alerts[: opts.max_alerts_in_description]
        blocks = []
        for number, alert in enumerate(shown, start=1):
            head = f"Alert {number} / {len(alerts)}: {alert_title(alert) or alert.id}"
            lines = [f"{head} ({alert.status.capitalize()})"]
            lines += _tag_lines([(name, _tag(alert, name)) for name in opts.description_alert_tags])
            blocks.append("\n".join(lines))
        sections.append("\n\n".join(blocks))
    tail = ""
    if opts.links_in_description:
        links = incident_links(settings.bigpanda.ui_url, environment_id, incident.id)
        tail = (
            f"BigPanda incident: {links.incident}\n"
            f"Preview: {links.preview}\nTimeline: {links.timeline}"
        )
    head = "\n\n".join(sections)
    limit = sizes.sn("description") or SN_DESCRIPTION_MAX
    if not tail:
        return fit(head, limit)
    if not head:
        return fit(tail, limit)
    room = limit - len(tail) - 2
    return fit(fit(head, max(room, 0)) + "\n\n" + tail, limit)


def build_texts(
    incident: BPIncident,
    settings: Settings,
    environment_id: str,
    sizes: FieldSizes = DEFAULT_SIZES,
) -> Texts:
    """Short description, description and (when asked for) the work-notes copy, each
    within its field's size."""
    primary = pick_primary_alert(incident.alerts, parse_criteria(settings.incidents.primary_alert))
    description = build_description(incident, settings, environment_id, sizes)
    work_notes = None
    if settings.incidents.description_to_work_notes and description:
        work_notes = fit(f"{MIRROR_MARKER} {description}", sizes.sn("work_notes"))
    return Texts(
        short_description=build_short_description(incident, settings.incidents, primary, sizes),
        description=description,
        work_notes=work_notes,
    )
