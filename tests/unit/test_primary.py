"""Primary alert criteria (SPEC B11): a table of cases, parsing and malformed strings."""

from __future__ import annotations

import pytest

from sync.model import BPAlert
from sync.primary import Criterion, parse_criteria, pick_primary_alert, sort_alerts


def alert(
    alert_id: str,
    status: str = "warning",
    start: int | None = 100,
    updated_at: int | None = None,
    **tags: str,
) -> BPAlert:
    return BPAlert(id=alert_id, status=status, start=start, updated_at=updated_at, tags=tags)


OLD_WARN = alert("old-warn", "warning", 10)
NEW_WARN = alert("new-warn", "warning", 50)
OLD_CRIT = alert("old-crit", "critical", 20)
NEW_CRIT = alert("new-crit", "Critical", 40)  # BigPanda mixes the case of statuses
UNKNOWN = alert("unknown", "unknown", 5)
DB_HOST = alert("db-host", "warning", 30, host="db-prod-1")
WEB_HOST = alert("web-host", "critical", 35, host="web-1")
NO_START = alert("no-start", "critical", None)

CASES = [
    # (criteria, alerts, expected id)
    ("status=critical, startedOn", [OLD_WARN, NEW_CRIT, OLD_CRIT], "old-crit"),
    ("status=critical, -startedOn", [OLD_WARN, OLD_CRIT, NEW_CRIT], "new-crit"),
    ("status=critical, startedOn", [OLD_WARN, NEW_WARN], "old-warn"),  # none critical
    ("status=critical, status=warning, startedOn", [UNKNOWN, NEW_WARN, OLD_WARN], "old-warn"),
    ("status=critical, status=warning, startedOn", [UNKNOWN, NEW_WARN, NEW_CRIT], "new-crit"),
    ("status=critical, status=warning, startedOn", [UNKNOWN], "unknown"),
    ("Status=CRITICAL, startedOn", [OLD_WARN, NEW_CRIT], "new-crit"),  # any case
    ("startedOn", [NEW_WARN, OLD_CRIT, UNKNOWN], "unknown"),  # ascending: oldest
    ("-startedOn", [OLD_WARN, NEW_WARN, OLD_CRIT], "new-warn"),  # newest first
    ("+startedOn", [NEW_WARN, OLD_WARN], "old-warn"),
    ("status=crit*, startedOn", [OLD_WARN, NEW_CRIT], "new-crit"),  # wildcard
    ("host=db-*, startedOn", [WEB_HOST, DB_HOST, OLD_CRIT], "db-host"),  # alert tag
    ("host=*prod*", [WEB_HOST, DB_HOST], "db-host"),
    ("HOST=DB-PROD-1", [WEB_HOST, DB_HOST], "db-host"),  # tag names and values: any case
    ("host=nomatch, startedOn", [WEB_HOST, DB_HOST], "db-host"),  # no match: next criterion
    ("status=critical, startedOn", [NO_START, OLD_CRIT], "old-crit"),  # missing start last
    ("status=critical, -startedOn", [NO_START, OLD_CRIT], "old-crit"),
    ("", [NEW_WARN, OLD_CRIT], "new-warn"),  # no preference: first alert
    ("status=warning", [NEW_WARN, OLD_WARN], "new-warn"),  # tie: input order
    ("-updatedOn", [alert("a", updated_at=5), alert("b", updated_at=9)], "b"),
    ("status=critical, host", [WEB_HOST, alert("c2", "critical", 1, host="app-1")], "c2"),
    ("status=critical, -host", [alert("c2", "critical", 1, host="app-1"), WEB_HOST], "web-host"),
]


@pytest.mark.parametrize(("criteria", "alerts", "expected"), CASES)
def test_primary_alert_table(criteria: str, alerts: list[BPAlert], expected: str) -> None:
    chosen = pick_primary_alert(alerts, criteria)
    assert chosen is not None
    assert chosen.id == expected
    # the sorted order starts with the same alert
    assert sort_alerts(alerts, criteria)[0].id == expected


def test_no_alerts_gives_none() -> None:
    assert pick_primary_alert([], "status=critical, startedOn") is None


def test_sort_alerts_orders_by_preference() -> None:
    order = sort_alerts(
        [UNKNOWN, NEW_WARN, OLD_CRIT, NEW_CRIT, OLD_WARN],
        "status=critical, status=warning, startedOn",
    )
    assert [a.id for a in order] == ["old-crit", "new-crit", "old-warn", "new-warn", "unknown"]


def test_parse_criteria_shapes() -> None:
    assert parse_criteria(" status=critical ,  -startedOn, +host , x.y-z ") == (
        Criterion(name="status", kind="equals", pattern="critical"),
        Criterion(name="startedOn", kind="sort", descending=True),
        Criterion(name="host", kind="sort", descending=False),
        Criterion(name="x.y-z", kind="sort", descending=False),
    )


def test_parsed_criteria_can_be_reused() -> None:
    crits = parse_criteria("status=critical, startedOn")
    assert pick_primary_alert([OLD_WARN, OLD_CRIT], crits) == OLD_CRIT


def test_wildcard_is_the_only_special_character() -> None:
    dotted = alert("dotted", host="a.b")
    other = alert("other", host="axb")
    assert pick_primary_alert([other, dotted], "host=a.b") == dotted


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        ("status=critical,, startedOn", "term 2 is empty"),
        ("status=critical,", "term 2 is empty"),
        ("=critical", "not a field or tag name"),
        ("status=", "expected name=value"),
        ("status=a=b", "expected name=value"),
        ("-", "expected name=value, name, -name"),
        ("--startedOn", "expected name=value, name, -name"),
        ("started on", "expected name=value, name, -name"),
        ("-status=critical", "not a field or tag name"),
        ("host*", "expected name=value, name, -name"),
    ],
)
def test_malformed_criteria_raise(criteria: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_criteria(criteria)
    assert "primary_alert" in str(info.value)
