"""Short description, description and work-notes copy (SPEC B10): what is asked, no more."""

from __future__ import annotations

from typing import Any

import pytest

from sync.constants import MIRROR_MARKER, SN_DESCRIPTION_MAX, SN_SHORT_DESCRIPTION_MAX
from sync.describe import (
    alert_status_summary,
    alert_title,
    build_description,
    build_short_description,
    build_texts,
    clip,
    incident_links,
)
from sync.model import BPAlert, BPIncident
from sync.settings import Settings

BP_ID = "65a0b1c2d3e4f5a6b7c8d9e0"
ENV = "env-prod"

ALERTS = (
    BPAlert(
        id="al-1",
        status="warning",
        start=10,
        primary_property="host",
        secondary_property="check",
        tags={"host": "web-1", "check": "disk", "dc": "east", "team": "web"},
    ),
    BPAlert(
        id="al-2",
        status="critical",
        start=20,
        primary_property="host",
        secondary_property="check",
        tags={"host": "db-1", "check": "cpu_load", "dc": "west", "team": "dba"},
    ),
    BPAlert(id="al-3", status="ok", start=5, active=False, description="Old\nsecond line"),
    BPAlert(id="al-4", status="unknown", start=30, tags={"dc": "north"}),
)


def make_settings(**incidents: Any) -> Settings:
    return Settings(incidents=incidents, bigpanda={"ui_url": "https://bp.example.com/"})


def make_incident(**kwargs: Any) -> BPIncident:
    base: dict[str, Any] = {
        "id": BP_ID,
        "status": "critical",
        "active": True,
        "tags": {
            "priority": "P1",
            "owner": "ops",
            "region": "eu",
            "ai_summary": "Disk pressure on the database.",
        },
        "alerts": ALERTS,
    }
    base.update(kwargs)
    return BPIncident(**base)


# ------------------------------------------------------------------ short description


def test_short_description_priority_then_primary_alert_properties() -> None:
    s = make_settings()
    inc = make_incident()
    # default criteria status=critical, startedOn -> al-2 is the primary alert
    assert build_short_description(inc, s.incidents, ALERTS[1]) == "[P1] db-1 / cpu_load"


def test_short_description_without_priority_when_switched_off_or_absent() -> None:
    inc = make_incident()
    off = make_settings(priority_in_short_description=False)
    assert build_short_description(inc, off.incidents, ALERTS[1]) == "db-1 / cpu_load"
    no_tag = make_incident(tags={})
    assert build_short_description(no_tag, make_settings().incidents, ALERTS[1]) == (
        "db-1 / cpu_load"
    )


def test_short_description_unwraps_bracketed_priority_and_falls_back() -> None:
    s = make_settings().incidents
    inc = make_incident(tags={"priority": "[P2]"})
    assert build_short_description(inc, s, ALERTS[2]) == "[P2] Old"  # description's 1st line
    assert build_short_description(inc, s, None) == f"[P2] BigPanda incident {BP_ID}"
    bare = BPAlert(id="x", status="critical", primary_property="service", tags={})
    assert build_short_description(inc, s, bare) == "[P2] service"  # not a tag: as it is


def test_short_description_is_one_line_within_the_limit() -> None:
    long_alert = BPAlert(
        id="x", status="critical", primary_property="host", tags={"host": "h\n" + "x" * 300}
    )
    text = build_short_description(make_incident(), make_settings().incidents, long_alert)
    assert len(text) == SN_SHORT_DESCRIPTION_MAX
    assert "\n" not in text
    assert text.endswith("... [truncated by bpsync]")


def test_alert_title() -> None:
    assert alert_title(ALERTS[0]) == "web-1 / disk"
    assert alert_title(BPAlert(id="n", status="ok")) is None


# ------------------------------------------------------------------ description


def test_description_with_defaults_has_status_summary_and_links_only() -> None:
    text = build_description(make_incident(), make_settings(), ENV)
    base = f"https://bp.example.com/incidents/{ENV}/{BP_ID}"
    assert text == (
        "Alert status: 1 Critical, 1 Warning, 1 Resolved, 1 Unknown\n\n"
        f"BigPanda incident: {base}\nPreview: {base}/preview\nTimeline: {base}/timeline"
    )
    # nothing that was not asked for
    for absent in ("AI incident", "Disk pressure", "Incident tags", "owner", "Alert 1", "dc:"):
        assert absent not in text


def test_description_with_everything_asked() -> None:
    s = make_settings(
        aia_in_description=True,
        description_incident_tags="owner, missing, severity",
        description_alert_tags=["dc", "team"],
        max_alerts_in_description=2,
        primary_alert="status=critical, status=warning, startedOn",
    )
    text = build_description(make_incident(severity="Critical"), s, ENV)
    assert text.startswith("AI incident analysis:\nDisk pressure on the database.\n\n")
    assert "Incident tags:\n  owner: ops\n  severity: critical\n\n" in text
    assert "missing" not in text
    assert "region" not in text  # an incident tag not listed
    # two alerts, in primary-alert order (critical, then warning), only the listed tags
    assert "Alert 1 / 4: db-1 / cpu_load (Critical)\n  dc: west\n  team: dba" in text
    assert "Alert 2 / 4: web-1 / disk (Warning)\n  dc: east\n  team: web" in text
    assert "Alert 3" not in text
    assert "north" not in text
    assert "check:" not in text
    assert text.index("AI incident") < text.index("Alert status") < text.index("Incident tags")
    assert text.index("Incident tags") < text.index("Alert 1") < text.index("BigPanda incident:")


def test_description_without_links_or_alert_tags() -> None:
    s = make_settings(links_in_description=False, max_alerts_in_description=0)
    text = build_description(make_incident(), s, ENV)
    assert text == "Alert status: 1 Critical, 1 Warning, 1 Resolved, 1 Unknown"
    # alert tags configured but max 0 alerts: no alert section
    s2 = make_settings(
        links_in_description=False, max_alerts_in_description=0, description_alert_tags="dc"
    )
    assert build_description(make_incident(), s2, ENV) == text


def test_description_of_incident_without_alerts_is_empty_when_nothing_asked() -> None:
    s = make_settings(links_in_description=False)
    assert build_description(make_incident(alerts=()), s, ENV) == ""


def test_long_description_is_cut_before_the_links() -> None:
    s = make_settings(aia_in_description=True)
    text = build_description(make_incident(tags={"ai_summary": "y" * 10_000}), s, ENV)
    assert len(text) <= SN_DESCRIPTION_MAX
    assert "y ... [truncated by bpsync]" in text
    assert text.endswith(f"/incidents/{ENV}/{BP_ID}/timeline")


def test_alert_status_summary_counts() -> None:
    assert alert_status_summary(ALERTS) == "1 Critical, 1 Warning, 1 Resolved, 1 Unknown"
    inactive_critical = BPAlert(id="z", status="critical", active=False)
    assert alert_status_summary([inactive_critical]) == "0 Critical, 0 Warning, 1 Resolved"


def test_incident_links_shapes() -> None:
    links = incident_links("https://a.bigpanda.io/", "env 1", BP_ID)
    assert links.incident == f"https://a.bigpanda.io/incidents/env%201/{BP_ID}"
    assert links.preview == links.incident + "/preview"
    assert links.timeline == links.incident + "/timeline"


# ------------------------------------------------------------------ texts, work notes


def test_work_notes_copy_only_when_asked() -> None:
    inc = make_incident()
    assert build_texts(inc, make_settings(), ENV).work_notes is None
    texts = build_texts(inc, make_settings(description_to_work_notes=True), ENV)
    assert texts.work_notes == f"{MIRROR_MARKER} {texts.description}"
    assert texts.short_description == "[P1] db-1 / cpu_load"


def test_texts_follow_the_primary_alert_criteria() -> None:
    s = make_settings(primary_alert="status=warning")
    assert build_texts(make_incident(), s, ENV).short_description == "[P1] web-1 / disk"


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("abc", 3, "abc"), ("abcdef", 5, "ab..."), ("abcdef", 2, "ab"), ("ab   cdef", 6, "ab...")],
)
def test_clip(text: str, limit: int, expected: str) -> None:
    assert clip(text, limit) == expected
