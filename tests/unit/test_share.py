"""[share] rules (pure): the filter, the delay, the manual tag; and the BPQL they use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync.bpql import compile_bpql
from sync.errors import ConfigError
from sync.model import BPIncident
from sync.planner import share_decision
from sync.settings import Settings, load_settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def incident(**kw: Any) -> BPIncident:
    base: dict[str, Any] = {
        "id": "a" * 24,
        "status": "Critical",
        "severity": "Critical",
        "active": True,
        "start": int((NOW - timedelta(minutes=1)).timestamp()),
        "tags": {"team": "db"},
    }
    base.update(kw)
    return BPIncident(**base)


def share(**kw: Any) -> Settings:
    return load_settings(None, {f"share.{k}": v for k, v in kw.items()}, env_file=None)


def test_no_rules_share_everything_at_once() -> None:
    assert share_decision(incident(), Settings(), NOW) is True


@pytest.mark.parametrize(
    ("query", "shared"),
    [
        ("status = critical", True),
        ("status = warning", False),
        ('severity = "Critical" AND team = db', True),
        ("team IN (web, app)", False),
        ("NOT team = web", True),
        ("team = d*", True),
        ("owner = anyone", False),  # a tag the incident lacks
    ],
)
def test_the_filter(query: str, shared: bool) -> None:
    assert share_decision(incident(), share(filter=query), NOW) is shared


def test_the_delay_waits_until_the_incident_is_old_enough() -> None:
    young = incident()  # one minute old
    decision = share_decision(young, share(delay="3m"), NOW)
    assert decision == NOW + timedelta(minutes=2)
    assert share_decision(young, share(delay="3m"), NOW + timedelta(minutes=2)) is True


def test_the_manual_tag_wins_over_filter_and_delay() -> None:
    rules = share(filter="status = warning", delay="1h", manual_tag="snow")
    assert share_decision(incident(tags={"snow": "True"}), rules, NOW) is True
    assert share_decision(incident(tags={"snow": "false"}), rules, NOW) is False


def test_a_bad_filter_is_refused_at_start_with_one_line() -> None:
    with pytest.raises(ConfigError, match=r"share\.filter is not valid BPQL"):
        share(filter="status = (")


def test_bpql_over_any_record() -> None:
    values = {"status": ["critical"], "tag": ["x", "y"]}
    predicate = compile_bpql("status = critical AND tag = y")
    assert predicate(lambda name: values.get(name, []))
    assert not compile_bpql("tag NOT IN (x)")(lambda name: values.get(name, []))
