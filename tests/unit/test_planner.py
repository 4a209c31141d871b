"""The planner's decision table (SPEC B1-B11): one test (or more) per branch."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sync.actions import (
    Action,
    CommentBigPanda,
    CreateServiceNowIncident,
    FreezeField,
    MarkLinkLinked,
    MarkLinkResolved,
    PlanInput,
    RecordConflict,
    RecordSynced,
    RefLookup,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import MIRROR_MARKER, Side
from sync.model import BPAlert, BPIncident, FieldState, Link, LinkState, SNIncident
from sync.planner import plan, resolve_still_wanted
from sync.settings import Settings, TagMappingRule

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
BP_ID = "65a0b1c2d3e4f5a6b7c8d9e0"
SYS_ID = "0123456789abcdef0123456789abcdef"
ENV = "env-prod"
SEVERITY_MAP = {"critical": "1", "warning": "2", "unknown": "3"}

RULES: list[dict[str, Any]] = [
    {
        "bigpanda_tag": "severity",
        "servicenow_field": "impact",
        "direction": "bp_to_sn",
        "value_map": SEVERITY_MAP,
    },
    {
        "bigpanda_tag": "severity",
        "servicenow_field": "urgency",
        "direction": "bp_to_sn",
        "value_map": SEVERITY_MAP,
    },
    {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"},
    {"bigpanda_tag": "group", "servicenow_field": "assignment_group", "direction": "sn_to_bp"},
]
ALERT = BPAlert(
    id="al-1",
    status="critical",
    start=100,
    primary_property="host",
    secondary_property="check",
    tags={"host": "db-1", "check": "cpu"},
)


def synced_values(record: Mapping[str, str | None]) -> dict[str, str | None]:
    """A write's recorded values without the flip-flop guard's memory ($flips:...)."""
    return {k: v for k, v in record.items() if not k.startswith("$")}


def make_settings(
    rows: list[dict[str, Any]] | None = None,
    *,
    environments: list[str] | None = None,
    **incidents: Any,
) -> Settings:
    return Settings(
        tag_mapping=[TagMappingRule(**row) for row in (RULES if rows is None else rows)],
        incidents=incidents,
        bigpanda={"environments": environments or [], "ui_url": "https://bp.example.com"},
    )


def make_bp(
    *,
    active: bool = True,
    severity: str = "critical",
    tags: Mapping[str, str] | None = None,
    updated_at: int | None = None,
    environments: tuple[str, ...] = (ENV,),
    alerts: tuple[BPAlert, ...] = (ALERT,),
    alert_ids: tuple[str, ...] = (),
) -> BPIncident:
    return BPIncident(
        id=BP_ID,
        status=severity if active else "ok",
        active=active,
        severity=severity,
        updated_at=updated_at if updated_at is not None else int(NOW.timestamp()) - 60,
        environments=environments,
        tags=dict({"team": "db"} if tags is None else tags),
        alerts=alerts,
        alert_ids=alert_ids,
    )


def make_sn(
    *,
    state: int = 2,
    fields: Mapping[str, str] | None = None,
    updated: datetime | None = None,
) -> SNIncident:
    base = {"impact": "1", "urgency": "1", "u_team": "db", "assignment_group": ""}
    base.update(fields or {})
    return SNIncident(
        sys_id=SYS_ID,
        number="INC0010001",
        state=state,
        active=state not in (7, 8),
        sys_mod_count=3,
        sys_updated_on=updated or NOW - timedelta(seconds=60),
        correlation_id=BP_ID,
        fields=base,
    )


def make_link(
    state: LinkState = LinkState.LINKED, *, reopen_deadline: datetime | None = None
) -> Link:
    return Link(
        id=7,
        bp_incident_id=BP_ID,
        sn_sys_id=SYS_ID,
        sn_number="INC0010001",
        state=state,
        created_at=NOW - timedelta(days=1),
        resolved_at=NOW - timedelta(minutes=10) if state is LinkState.RESOLVED else None,
        reopen_deadline=reopen_deadline,
    )


def make_synced(
    bp: Mapping[str, str | None] | None = None, sn: Mapping[str, str | None] | None = None
) -> dict[tuple[Side, str], FieldState]:
    """Last-synced state; defaults match make_bp() / make_sn() (nothing changed)."""
    bp_values = {"severity": "critical", "team": "db", "group": None}
    sn_values = {"impact": "1", "urgency": "1", "u_team": "db", "assignment_group": None}
    bp_values.update(bp or {})
    sn_values.update(sn or {})
    out: dict[tuple[Side, str], FieldState] = {}
    for side, values in ((Side.BIGPANDA, bp_values), (Side.SERVICENOW, sn_values)):
        for name, value in values.items():
            out[(side, name)] = FieldState(7, side, name, value, NOW - timedelta(hours=1))
    return out


def linked(
    bp: BPIncident | None,
    sn: SNIncident | None,
    *,
    link: Link | None = None,
    synced: dict[tuple[Side, str], FieldState] | None = None,
) -> PlanInput:
    return PlanInput(
        bp=bp,
        sn=sn,
        link=link or make_link(),
        synced=make_synced() if synced is None else synced,
        environment_id=ENV,
    )


def only(actions: list[Action], kind: type[Any]) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


# ====================================================================== create (B1)


def test_create_for_active_unlinked_incident() -> None:
    s = make_settings(
        assignment_group="DevOps",
        caller_id_email="caller@example.com",
        opened_by_email="opener@example.com",
        cmdb_ci_tag="host",
    )
    bp = make_bp(tags={"team": "db", "priority": "P1"})
    [action] = plan(PlanInput(bp=bp, sn=None, link=None, environment_id=ENV), s, NOW)
    assert isinstance(action, CreateServiceNowIncident)
    assert action.bp_incident_id == BP_ID
    assert action.environment_id == ENV
    assert action.previous_link_id is None
    fields = dict(action.fields)
    assert fields.pop("short_description") == "[P1] db-1 / cpu"
    assert fields.pop("description").startswith("Alert status: 1 Critical")
    assert fields == {
        "impact": "1",
        "urgency": "1",
        "u_team": "db",
        "correlation_id": BP_ID,
        "correlation_display": "BigPanda",
    }
    assert action.lookups == {
        "assignment_group": RefLookup("sys_user_group", "name", "DevOps"),
        "caller_id": RefLookup("sys_user", "email", "caller@example.com"),
        "opened_by": RefLookup("sys_user", "email", "opener@example.com"),
        "cmdb_ci": RefLookup("cmdb_ci", "name", "db-1"),
    }
    assert action.record_bp == {"severity": "critical", "team": "db", "group": None}
    assert action.record_sn == {
        "impact": "1",
        "urgency": "1",
        "u_team": "db",
        "assignment_group": None,
    }


def test_create_mapped_value_wins_over_static_lookup_and_texts_are_recorded() -> None:
    rows = [{"bigpanda_tag": "team", "servicenow_field": "assignment_group", "direction": "both"}]
    s = make_settings(
        rows,
        assignment_group="DevOps",
        update_fields="assignment_group, description",
        description_to_work_notes=True,
    )
    [action] = plan(PlanInput(bp=make_bp(), sn=None, link=None, environment_id=ENV), s, NOW)
    assert isinstance(action, CreateServiceNowIncident)
    assert action.fields["assignment_group"] == "db"
    assert "assignment_group" not in action.lookups
    assert action.fields["work_notes"].startswith(MIRROR_MARKER)
    # description is in update_fields: remembered to detect later changes; the others not
    assert action.record_sn["description"] == action.fields["description"]
    assert "short_description" not in action.record_sn
    assert "work_notes" not in action.record_sn


@pytest.mark.parametrize(
    ("bp", "environment_id", "environments"),
    [
        (make_bp(active=False), ENV, []),  # resolved before it was ever linked
        (None, ENV, []),  # BigPanda side unknown
        (make_bp(environments=("env-dev",)), "env-dev", ["env-prod"]),  # not shared
        (make_bp(environments=()), None, []),  # no environment known at all
    ],
)
def test_no_create(
    bp: BPIncident | None, environment_id: str | None, environments: list[str]
) -> None:
    s = make_settings(environments=environments)
    inp = PlanInput(bp=bp, sn=None, link=None, environment_id=environment_id)
    assert plan(inp, s, NOW) == []


def test_create_in_the_first_shared_environment() -> None:
    s = make_settings(environments=["env-b"])
    bp = make_bp(environments=("env-a", "env-b"))
    [action] = plan(PlanInput(bp=bp, sn=None, link=None, environment_id="env-a"), s, NOW)
    assert isinstance(action, CreateServiceNowIncident)
    assert action.environment_id == "env-b"


# ====================================================================== link states


@pytest.mark.parametrize("state", [LinkState.PENDING, LinkState.SUPERSEDED])
def test_pending_and_superseded_links_plan_nothing(state: LinkState) -> None:
    inp = linked(make_bp(tags={"team": "new"}), make_sn(), link=make_link(state))
    assert plan(inp, make_settings(), NOW) == []


def test_linked_without_changes_plans_nothing() -> None:
    s = make_settings()
    assert plan(linked(make_bp(), make_sn()), s, NOW) == []
    assert plan(linked(None, None), s, NOW) == []
    assert plan(linked(make_bp(), None), s, NOW) == []
    assert plan(linked(None, make_sn()), s, NOW) == []


# ====================================================================== field sync (B3-B6)


def test_bigpanda_change_updates_servicenow_in_one_action() -> None:
    bp = make_bp(severity="warning", tags={"team": "web"})
    actions = plan(linked(bp, make_sn()), make_settings(), NOW)
    [update] = actions
    assert isinstance(update, UpdateServiceNowFields)
    assert (update.link_id, update.sys_id, update.bp_incident_id) == (7, SYS_ID, BP_ID)
    assert update.fields == {"impact": "2", "urgency": "2", "u_team": "web"}
    assert update.record_bp == {"severity": "warning", "team": "web"}
    assert synced_values(update.record_sn) == {"impact": "2", "urgency": "2", "u_team": "web"}


def test_bigpanda_change_with_unchanged_servicenow_side_none() -> None:
    bp = make_bp(tags={"team": "web"})
    [update] = plan(linked(bp, None), make_settings(), NOW)
    assert isinstance(update, UpdateServiceNowFields)
    assert update.fields == {"u_team": "web"}


def test_servicenow_change_updates_bigpanda() -> None:
    sn = make_sn(fields={"u_team": "web", "assignment_group": "grp-sys-id"})
    [update] = plan(linked(None, sn), make_settings(), NOW)
    assert isinstance(update, UpdateBigPandaTags)
    assert (update.environment_id, update.sys_id) == (ENV, SYS_ID)
    assert update.tags == {"team": "web", "group": "grp-sys-id"}
    assert update.remove_tags == ()
    assert update.record_bp == {"team": "web", "group": "grp-sys-id"}
    assert synced_values(update.record_sn) == {"u_team": "web", "assignment_group": "grp-sys-id"}


def test_emptied_field_removes_the_tag_and_removed_tag_clears_the_field() -> None:
    s = make_settings()
    [to_bp] = plan(linked(make_bp(), make_sn(fields={"u_team": ""})), s, NOW)
    assert isinstance(to_bp, UpdateBigPandaTags)
    assert (dict(to_bp.tags), to_bp.remove_tags) == ({}, ("team",))
    assert to_bp.record_bp == {"team": None}
    [to_sn] = plan(linked(make_bp(tags={}), make_sn()), s, NOW)
    assert isinstance(to_sn, UpdateServiceNowFields)
    assert to_sn.fields == {"u_team": ""}  # ServiceNow clears a field sent as ""
    assert synced_values(to_sn.record_sn) == {"u_team": None}


def test_servicenow_field_not_fetched_counts_as_unchanged() -> None:
    sn = make_sn()
    partial = SNIncident(
        sys_id=sn.sys_id,
        number=sn.number,
        state=2,
        active=True,
        sys_mod_count=4,
        sys_updated_on=sn.sys_updated_on,
        fields={"impact": "1"},
    )
    assert plan(linked(make_bp(), partial), make_settings(), NOW) == []


def test_one_way_rules_only_record_changes_from_the_other_side() -> None:
    # impact is bp_to_sn only; group is sn_to_bp only
    sn = make_sn(fields={"impact": "3"})
    bp = make_bp(tags={"team": "db", "group": "mine"})
    [record] = plan(linked(bp, sn), make_settings(), NOW)
    assert record == RecordSynced(link_id=7, record_bp={"group": "mine"}, record_sn={"impact": "3"})


def test_update_fields_limits_updates_after_create() -> None:
    s = make_settings(update_fields=["impact"])
    bp = make_bp(severity="warning", tags={"team": "web"})
    actions = plan(linked(bp, make_sn()), s, NOW)
    update = only(actions, UpdateServiceNowFields)
    assert update.fields == {"impact": "2"}
    record = only(actions, RecordSynced)
    assert record.record_bp == {"team": "web"}  # seen, not written (u_team not listed)
    assert "severity" not in record.record_bp  # recorded by the write itself


def test_unmapped_value_is_recorded_not_written() -> None:
    bp = make_bp(severity="ok")  # "ok" is not in the value map
    [record] = plan(linked(bp, make_sn()), make_settings(), NOW)
    assert record == RecordSynced(link_id=7, record_bp={"severity": "ok"}, record_sn={})


def test_equal_values_on_both_sides_are_only_recorded() -> None:
    # both changed to the same value, or one side changed to what the other holds
    bp = make_bp(tags={"team": "web"})
    sn = make_sn(fields={"u_team": "web"})
    [record] = plan(linked(bp, sn), make_settings(), NOW)
    assert record == RecordSynced(link_id=7, record_bp={"team": "web"}, record_sn={"u_team": "web"})
    synced = make_synced(bp={"team": "db"}, sn={"u_team": "old"})
    [record2] = plan(linked(make_bp(), make_sn(), synced=synced), make_settings(), NOW)
    assert record2 == RecordSynced(link_id=7, record_bp={"team": "db"}, record_sn={"u_team": "db"})


CONFLICT_BP_TIME = int(NOW.timestamp()) - 10


@pytest.mark.parametrize(
    ("policy", "sn_updated", "winner"),
    [
        ("newest", NOW - timedelta(seconds=30), Side.BIGPANDA),  # BigPanda newer
        ("newest", NOW - timedelta(seconds=5), Side.SERVICENOW),  # ServiceNow newer
        ("newest", NOW - timedelta(seconds=10), Side.SERVICENOW),  # a tie: ServiceNow
        ("bigpanda", NOW, Side.BIGPANDA),
        ("servicenow", NOW - timedelta(hours=1), Side.SERVICENOW),
    ],
)
def test_conflict_policy(policy: str, sn_updated: datetime, winner: Side) -> None:
    s = make_settings(conflict_policy=policy)
    bp = make_bp(tags={"team": "bp-team"}, updated_at=CONFLICT_BP_TIME)
    sn = make_sn(fields={"u_team": "sn-team"}, updated=sn_updated)
    actions = plan(linked(bp, sn), s, NOW)
    conflict = only(actions, RecordConflict)
    assert conflict == RecordConflict(
        link_id=7,
        bp_incident_id=BP_ID,
        bp_tag="team",
        sn_field="u_team",
        bp_value="bp-team",
        sn_value="sn-team",
        winner=winner,
        policy=policy,
    )
    assert actions[0] is conflict  # audited before the write
    if winner is Side.BIGPANDA:
        update = only(actions, UpdateServiceNowFields)
        assert update.fields == {"u_team": "bp-team"}
        assert update.record_bp == {"team": "bp-team"}
        assert not [a for a in actions if isinstance(a, UpdateBigPandaTags)]
    else:
        tags = only(actions, UpdateBigPandaTags)
        assert tags.tags == {"team": "sn-team"}
        assert synced_values(tags.record_sn) == {"u_team": "sn-team"}
        assert not [a for a in actions if isinstance(a, UpdateServiceNowFields)]
    assert not [a for a in actions if isinstance(a, RecordSynced)]


def test_one_way_rule_conflict_source_wins_and_is_audited() -> None:
    bp = make_bp(severity="warning")
    sn = make_sn(fields={"impact": "3", "urgency": "1"})
    actions = plan(linked(bp, sn), make_settings(conflict_policy="servicenow"), NOW)
    conflict = only(actions, RecordConflict)
    assert (conflict.sn_field, conflict.winner, conflict.policy) == (
        "impact",
        Side.BIGPANDA,
        "bp_to_sn",
    )
    assert only(actions, UpdateServiceNowFields).fields == {"impact": "2", "urgency": "2"}


def test_written_tag_is_passed_on_to_rules_that_read_it() -> None:
    rows = [
        {"bigpanda_tag": "team", "servicenow_field": "u_team", "direction": "both"},
        {"bigpanda_tag": "team", "servicenow_field": "u_team_copy", "direction": "bp_to_sn"},
    ]
    sn = make_sn(fields={"u_team": "web", "u_team_copy": "db"})
    synced = make_synced(sn={"u_team_copy": "db"})
    actions = plan(linked(None, sn, synced=synced), make_settings(rows), NOW)
    assert only(actions, UpdateBigPandaTags).tags == {"team": "web"}
    update = only(actions, UpdateServiceNowFields)
    assert update.fields == {"u_team_copy": "web"}
    assert synced_values(update.record_sn) == {"u_team_copy": "web"}


# ====================================================================== generated texts


def test_description_rewritten_only_when_listed_and_changed() -> None:
    s = make_settings(update_fields="description", description_to_work_notes=True)
    bp = make_bp()
    [create] = plan(PlanInput(bp=bp, sn=None, link=None, environment_id=ENV), s, NOW)
    assert isinstance(create, CreateServiceNowIncident)
    old_text = create.fields["description"]
    synced = make_synced(sn={"description": old_text})
    # unchanged text: nothing
    assert plan(linked(bp, make_sn(fields={"description": old_text}), synced=synced), s, NOW) == []
    # an edit made in ServiceNow is left alone while the BigPanda text is the same
    edited = make_sn(fields={"description": "edited by a person"})
    assert plan(linked(bp, edited, synced=synced), s, NOW) == []
    # a new alert changes the text: rewritten (the work-notes copy is not listed)
    second = BPAlert(id="al-2", status="warning", start=200)
    bp2 = make_bp(alerts=(ALERT, second))
    [update] = plan(linked(bp2, make_sn(fields={"description": old_text}), synced=synced), s, NOW)
    assert isinstance(update, UpdateServiceNowFields)
    assert set(update.fields) == {"description"}
    assert "1 Critical, 1 Warning" in update.fields["description"]
    assert synced_values(update.record_sn) == {"description": update.fields["description"]}
    # alerts not expanded: the text cannot be built, nothing is rewritten
    unexpanded = make_bp(alerts=(), alert_ids=("al-1", "al-2"))
    assert plan(linked(unexpanded, None, synced=synced), s, NOW) == []


def test_work_notes_copy_appended_when_listed() -> None:
    s = make_settings(update_fields="work_notes", description_to_work_notes=True)
    [update] = plan(linked(make_bp(), make_sn(fields={"work_notes": ""})), s, NOW)
    assert isinstance(update, UpdateServiceNowFields)
    assert update.fields["work_notes"].startswith(f"{MIRROR_MARKER} Alert status:")
    synced = make_synced(sn={"work_notes": update.fields["work_notes"]})
    assert plan(linked(make_bp(), make_sn(fields={"work_notes": ""}), synced=synced), s, NOW) == []


# ====================================================================== resolve (B7, B8)


def test_bigpanda_resolved_resolves_servicenow() -> None:
    s = make_settings(resolved_by_email="resolver@example.com", close_code="Workaround provided")
    [action] = plan(linked(make_bp(active=False), None), s, NOW)
    assert action == ResolveServiceNow(
        link_id=7,
        bp_incident_id=BP_ID,
        sys_id=SYS_ID,
        close_code="Workaround provided",
        close_notes="Resolved in BigPanda",
        resolved_by=RefLookup("sys_user", "email", "resolver@example.com"),
        reopen_deadline=NOW + timedelta(minutes=30),
        # the plan's next steps: the link tag back after an error; B14 on refusal
        on_success=(SetLinkTag(BP_ID, ENV, "servicenow_link", None, 7, only_after_error=True),),
        on_refused=(
            CommentBigPanda(
                BP_ID, ENV, "[bpsync] ServiceNow refused the sn.resolve write", 7, with_error=True
            ),
            SetLinkTag(BP_ID, ENV, "servicenow_link", "error", 7),
        ),
    )


def test_a_create_plans_its_link_tag_and_its_error_report() -> None:
    [create] = plan(
        PlanInput(bp=make_bp(), sn=None, link=None, environment_id=ENV), make_settings(), NOW
    )
    assert isinstance(create, CreateServiceNowIncident)
    # the link tag takes the create's number and URL (value None: filled from the link)
    assert create.on_success == (SetLinkTag(BP_ID, ENV, "servicenow_link", None),)
    assert [type(step) for step in create.on_refused] == [CommentBigPanda, SetLinkTag]
    assert create.on_refused[1] == SetLinkTag(BP_ID, ENV, "servicenow_link", "error")


def test_bigpanda_resolved_without_resolve_servicenow() -> None:
    s = make_settings(resolve_servicenow=False)
    assert plan(linked(make_bp(active=False), make_sn()), s, NOW) == []


@pytest.mark.parametrize(("state", "word"), [(6, "resolved"), (7, "closed"), (8, "canceled")])
def test_servicenow_resolved_resolves_bigpanda_with_closure(state: int, word: str) -> None:
    sn = make_sn(state=state, fields={"close_code": "Solution provided", "close_notes": "Rebooted"})
    [action] = plan(linked(None, sn), make_settings(reopen_window="10m"), NOW)
    assert isinstance(action, ResolveBigPanda)
    assert action.comment == (
        f"{MIRROR_MARKER} ServiceNow incident INC0010001 was {word}. "
        "Close code: Solution provided. Close notes: Rebooted"
    )
    assert (action.environment_id, action.sys_id) == (ENV, SYS_ID)
    assert action.reopen_deadline == NOW + timedelta(minutes=10)


def test_servicenow_resolved_plain_comment_without_send_closure_code() -> None:
    sn = make_sn(state=6, fields={"close_code": "Solution provided", "close_notes": "x"})
    [action] = plan(linked(make_bp(), sn), make_settings(send_closure_code=False), NOW)
    assert isinstance(action, ResolveBigPanda)
    assert action.comment == f"{MIRROR_MARKER} ServiceNow incident INC0010001 was resolved."


def test_servicenow_resolved_without_resolve_bigpanda() -> None:
    s = make_settings(resolve_bigpanda=False)
    assert plan(linked(make_bp(), make_sn(state=6)), s, NOW) == []


def test_both_resolved_marks_the_link_resolved() -> None:
    [action] = plan(linked(make_bp(active=False), make_sn(state=6)), make_settings(), NOW)
    assert action == MarkLinkResolved(
        link_id=7, resolved_at=NOW, reopen_deadline=NOW + timedelta(minutes=30)
    )


def test_field_changes_go_before_the_resolve() -> None:
    bp = make_bp(active=False, tags={"team": "web"})
    actions = plan(linked(bp, make_sn()), make_settings(), NOW)
    assert [type(a) for a in actions] == [UpdateServiceNowFields, ResolveServiceNow]


# ====================================================================== reopen (B9)

IN_WINDOW = NOW + timedelta(minutes=5)
PAST_WINDOW = NOW - timedelta(minutes=5)


def resolved_link(deadline: datetime | None = IN_WINDOW) -> Link:
    return make_link(LinkState.RESOLVED, reopen_deadline=deadline)


def test_reopen_inside_the_window_reopens_the_same_incident() -> None:
    actions = plan(linked(make_bp(), make_sn(state=6), link=resolved_link()), make_settings(), NOW)
    assert [type(a) for a in actions] == [ReopenServiceNow, MarkLinkLinked]
    reopen = actions[0]
    assert isinstance(reopen, ReopenServiceNow)
    assert (reopen.link_id, reopen.sys_id) == (7, SYS_ID)
    assert reopen.work_note.startswith(f"{MIRROR_MARKER} BigPanda incident {BP_ID} was reopened")
    # the ServiceNow side unchanged since the resolve (None) counts as Resolved
    again = plan(linked(make_bp(), None, link=resolved_link()), make_settings(), NOW)
    assert [type(a) for a in again] == [ReopenServiceNow, MarkLinkLinked]


@pytest.mark.parametrize(
    ("sn_state", "deadline", "reopen_resolved"),
    [
        (6, PAST_WINDOW, True),  # the window is over
        (6, None, True),  # no deadline recorded: no reopen
        (7, IN_WINDOW, True),  # Closed is never reopened
        (8, IN_WINDOW, True),  # nor Canceled
        (6, IN_WINDOW, False),  # reopen_resolved off
    ],
)
def test_reopen_creates_a_new_incident(
    sn_state: int, deadline: datetime | None, reopen_resolved: bool
) -> None:
    s = make_settings(reopen_resolved=reopen_resolved)
    inp = linked(make_bp(), make_sn(state=sn_state), link=resolved_link(deadline))
    [action] = plan(inp, s, NOW)
    assert isinstance(action, CreateServiceNowIncident)
    assert action.previous_link_id == 7
    assert action.fields["correlation_id"] == BP_ID


def test_both_reopened_makes_the_link_live() -> None:
    inp = linked(make_bp(tags={"team": "web"}), make_sn(state=2), link=resolved_link())
    actions = plan(inp, make_settings(), NOW)
    assert [type(a) for a in actions] == [UpdateServiceNowFields, MarkLinkLinked]


def test_servicenow_reopened_while_bigpanda_resolved_is_left_alone() -> None:
    inp = linked(make_bp(active=False), make_sn(state=2), link=resolved_link())
    assert plan(inp, make_settings(), NOW) == []
    assert plan(linked(None, make_sn(state=1), link=resolved_link()), make_settings(), NOW) == []


def test_resolved_pair_still_syncs_fields_until_closed() -> None:
    bp = make_bp(active=False, tags={"team": "web"})
    actions = plan(linked(bp, make_sn(state=6), link=resolved_link()), make_settings(), NOW)
    assert [type(a) for a in actions] == [UpdateServiceNowFields]
    assert plan(linked(bp, make_sn(state=7), link=resolved_link()), make_settings(), NOW) == []
    assert plan(linked(None, None, link=resolved_link()), make_settings(), NOW) == []


# ====================================================================== purity


def test_plan_is_deterministic_and_does_not_mutate_its_input() -> None:
    inp = linked(make_bp(severity="warning"), make_sn(fields={"assignment_group": "g"}))
    before = repr(inp)
    assert plan(inp, make_settings(), NOW) == plan(inp, make_settings(), NOW)
    assert repr(inp) == before


PURE_MODULES = (
    "sync.planner",
    "sync.mapping",
    "sync.describe",
    "sync.primary",
    "sync.sizes",
    "sync.followups",
    "sync.fieldsync",
    "sync.bpql",
    "sync.onhold",
    "sync.assignment",
    "sync.flipflop",
    "sync.journal",
    "sync.merges",
)
IO_MODULES = ("aiohttp", "sqlalchemy", "asyncio", "asyncpg", "aiosqlite", "socket", "apscheduler")


def test_pure_modules_import_nothing_that_does_io() -> None:
    code = (
        "import json, sys\n"
        f"for name in {PURE_MODULES!r}: __import__(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert loaded.isdisjoint(IO_MODULES), loaded & set(IO_MODULES)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_only_pure_project_modules(module: str) -> None:
    path = Path(__file__).resolve().parents[2] / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    runtime_imports: set[str] = set()
    for node in tree.body:  # top level only: TYPE_CHECKING blocks are type hints
        if isinstance(node, ast.ImportFrom) and node.module:
            runtime_imports.add(node.module)
        elif isinstance(node, ast.Import):
            runtime_imports.update(alias.name for alias in node.names)
    allowed_project = {"sync.actions", "sync.constants", "sync.model", *PURE_MODULES}
    project = {name for name in runtime_imports if name.startswith("sync")}
    assert project <= allowed_project, project - allowed_project
    assert not {name.split(".")[0] for name in runtime_imports} & set(IO_MODULES)


# ====================================================================== late resolves


@pytest.mark.parametrize(
    ("state", "other_side_resolved", "wanted"),
    [
        (LinkState.LINKED, True, True),
        (LinkState.LINKED, None, True),  # the other side cannot be read: sent
        (LinkState.LINKED, False, False),  # reopened since it was planned (B9)
        (LinkState.RESOLVED, True, False),  # resolved already
        (LinkState.SUPERSEDED, True, False),  # another link carries the pair
    ],
)
def test_a_late_resolve_is_sent_only_while_the_pair_is_as_planned(
    state: LinkState, other_side_resolved: bool | None, wanted: bool
) -> None:
    link = Link(7, BP_ID, SYS_ID, "INC0010001", state, NOW)
    assert resolve_still_wanted(link, other_side_resolved=other_side_resolved) is wanted
    assert resolve_still_wanted(None, other_side_resolved=True) is False


# ====================================================================== flip-flop guard


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:8]


def _flips(values: list[str], field: str = "u_team", age_s: int = 60) -> dict[Any, FieldState]:
    """The guard's memory: ``values`` written, one a minute, the newest ``age_s`` ago."""
    synced = make_synced()
    now_s = int(NOW.timestamp())
    entries = [
        f"{now_s - age_s - 60 * (len(values) - 1 - i)}:{_digest(v)}" for i, v in enumerate(values)
    ]
    synced[(Side.SERVICENOW, f"$flips:{field}")] = FieldState(
        7, Side.SERVICENOW, f"$flips:{field}", " ".join(entries), NOW
    )
    return synced


def test_a_field_that_keeps_flipping_back_is_frozen_instead_of_written() -> None:
    bp = make_bp(tags={"team": "web"})
    # web, ops, web, ops, web, ops, web: the last four and this web are flips (5)
    history = ["web", "ops"] * 3
    [update] = plan(linked(bp, None, synced=_flips(history)), make_settings(), NOW)
    assert isinstance(update, UpdateServiceNowFields)
    assert update.fields == {"u_team": "web"}
    assert len((update.record_sn["$flips:u_team"] or "").split()) == 7
    # one more round: the 7th flip is not made; the field is frozen, once, with a comment
    actions = plan(linked(bp, None, synced=_flips([*history, "web", "ops"])), make_settings(), NOW)
    assert [type(a) for a in actions] == [FreezeField, CommentBigPanda]
    freeze = actions[0]
    assert isinstance(freeze, FreezeField) and (freeze.field, freeze.writes) == ("u_team", 7)
    assert "bpsync links release 7" in actions[1].text  # type: ignore[union-attr]


def test_a_field_that_moves_forward_is_never_frozen() -> None:
    history = [f"team-{n}" for n in range(20)]  # 20 writes, all new values
    [update] = plan(
        linked(make_bp(tags={"team": "web"}), None, synced=_flips(history)), make_settings(), NOW
    )
    assert isinstance(update, UpdateServiceNowFields)


def test_flips_older_than_the_window_do_not_count() -> None:
    history = ["web", "ops"] * 10
    old = _flips(history, age_s=3600)
    [update] = plan(linked(make_bp(tags={"team": "web"}), None, synced=old), make_settings(), NOW)
    assert isinstance(update, UpdateServiceNowFields)


def test_the_guard_memory_is_not_part_of_the_idempotency_key() -> None:
    """A write planned again (a refused one, deduplicated by its key) stays one write
    although the guard's memory of it carries the time it was planned."""
    from sync.executor.codec import new_outbox_item

    bp = make_bp(tags={"team": "web"})
    [first] = plan(linked(bp, None, synced=_flips([])), make_settings(), NOW)
    [again] = plan(linked(bp, None, synced=_flips([])), make_settings(), NOW + timedelta(seconds=5))
    assert isinstance(first, UpdateServiceNowFields) and isinstance(again, UpdateServiceNowFields)
    assert first.record_sn != again.record_sn
    assert (
        new_outbox_item(first, ENV)[0].idempotency_key
        == new_outbox_item(again, ENV)[0].idempotency_key
    )


def test_a_frozen_field_is_left_alone_both_ways_until_released() -> None:
    synced = make_synced()
    synced[(Side.SERVICENOW, "$frozen:u_team")] = FieldState(
        7, Side.SERVICENOW, "$frozen:u_team", "true", NOW
    )
    bp = make_bp(tags={"team": "web"})
    sn = make_sn(fields={"u_team": "ops"})
    assert plan(linked(bp, sn, synced=synced), make_settings(), NOW) == []
    released = {k: v for k, v in synced.items() if k[1] != "$frozen:u_team"}
    assert plan(linked(bp, sn, synced=released), make_settings(), NOW) != []
