"""Assignee <-> assigned_to in the pure planner (``sync.assignment``): one test per
branch of its decision table, on plain data."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from sync.actions import (
    AssignBigPanda,
    FreezeField,
    PlanInput,
    RecordConflict,
    RecordSynced,
    UpdateServiceNowFields,
)
from sync.assignment import ASSIGNED_TO, BP_ASSIGNEE, SN_ASSIGNEE, assignees, plan_assignee
from sync.constants import Side
from sync.fieldsync import LinkedPair
from sync.flipflop import FLIPS, FROZEN, Flips
from sync.model import AssigneeInput, FieldState
from sync.planner import plan

from .test_planner import (
    BP_ID,
    NOW,
    SYS_ID,
    linked,
    make_bp,
    make_link,
    make_settings,
    make_sn,
    make_synced,
)

ABEL_BP, CHEN_BP = "u-abel", "u-chen"
ABEL_SN, ADMIN_SN = "a" * 32, "b" * 32
ON = {"sync_assignee": True}


def synced_with(bp: str | None = None, sn: str | None = None, **extra: str | None) -> Any:
    out = make_synced()
    for side, name, value in (
        (Side.BIGPANDA, BP_ASSIGNEE, bp),
        (Side.SERVICENOW, SN_ASSIGNEE, sn),
        *((Side.SERVICENOW, k, v) for k, v in extra.items()),
    ):
        out[(side, name)] = FieldState(7, side, name, value, NOW - timedelta(hours=1))
    return out


def inp(
    *,
    bp_assignee: str | bool | None = False,
    sn_assignee: str | bool | None = False,
    synced: Any = None,
    found: AssigneeInput | None = None,
    sn_updated_s: int = 60,
    bp_updated_s: int = 60,
) -> PlanInput:
    """``False``: that side was not read this cycle."""
    bp = None
    if bp_assignee is not False:
        bp = dataclasses.replace(
            make_bp(updated_at=int(NOW.timestamp()) - bp_updated_s),
            assignee_id=bp_assignee or None,
        )
    sn = None
    if sn_assignee is not False:
        sn = make_sn(
            fields={ASSIGNED_TO: str(sn_assignee or "")},
            updated=NOW - timedelta(seconds=sn_updated_s),
        )
    base = linked(bp, sn, synced=synced if synced is not None else synced_with())
    return dataclasses.replace(base, assignee=found)


def run(data: PlanInput, **settings: Any) -> list[Any]:
    pair = LinkedPair(data, make_settings(**{**ON, **settings}), NOW, make_link(), SYS_ID)
    return plan_assignee(pair)


def test_nothing_moved_plans_nothing_and_needs_no_look_up() -> None:
    data = inp(bp_assignee=ABEL_BP, sn_assignee=ABEL_SN, synced=synced_with(ABEL_BP, ABEL_SN))
    assert not assignees(data.bp, data.sn, data.synced).moved
    assert run(data) == []


def test_off_by_default() -> None:
    data = inp(bp_assignee=ABEL_BP, found=AssigneeInput(sn_for_bp=ABEL_SN))
    pair = LinkedPair(data, make_settings(), NOW, make_link(), SYS_ID)
    assert plan_assignee(pair) == []


def test_bigpanda_assigned_sets_assigned_to() -> None:
    [write] = run(inp(bp_assignee=ABEL_BP, found=AssigneeInput(sn_for_bp=ABEL_SN)))
    assert isinstance(write, UpdateServiceNowFields)
    assert write.fields == {ASSIGNED_TO: ABEL_SN}
    assert write.record_bp == {BP_ASSIGNEE: ABEL_BP}
    assert write.record_sn[SN_ASSIGNEE] == ABEL_SN
    assert FLIPS + ASSIGNED_TO in write.record_sn  # the flip-flop guard's memory


def test_bigpanda_unassigned_clears_assigned_to() -> None:
    data = inp(bp_assignee=None, synced=synced_with(ABEL_BP, ABEL_SN), found=AssigneeInput(""))
    [write] = run(data)
    assert isinstance(write, UpdateServiceNowFields)
    assert write.fields == {ASSIGNED_TO: ""}
    assert write.record_sn[SN_ASSIGNEE] is None


def test_servicenow_assigned_assigns_bigpanda() -> None:
    [write] = run(inp(sn_assignee=ABEL_SN, found=AssigneeInput(bp_for_sn=ABEL_BP)))
    assert isinstance(write, AssignBigPanda)
    assert (write.user_id, write.environment_id, write.sys_id) == (ABEL_BP, "env-prod", SYS_ID)
    assert write.record_bp == {BP_ASSIGNEE: ABEL_BP}
    assert write.record_sn[SN_ASSIGNEE] == ABEL_SN


def test_servicenow_cleared_unassigns_bigpanda() -> None:
    data = inp(sn_assignee="", synced=synced_with(ABEL_BP, ABEL_SN), found=AssigneeInput(None, ""))
    [write] = run(data)
    assert isinstance(write, AssignBigPanda)
    assert write.user_id is None


@pytest.mark.parametrize(
    "data",
    [
        inp(bp_assignee=CHEN_BP, found=AssigneeInput(sn_for_bp=None)),  # no such sys_user
        inp(sn_assignee=ADMIN_SN, found=AssigneeInput(bp_for_sn=None)),  # no BigPanda user
    ],
    ids=["bigpanda-person-unknown-in-servicenow", "servicenow-person-unknown-in-bigpanda"],
)
def test_a_person_not_matched_leaves_the_other_side_and_is_remembered(data: PlanInput) -> None:
    [record] = run(data)
    assert isinstance(record, RecordSynced)
    moved = assignees(data.bp, data.sn, data.synced)
    assert record.record_bp == {BP_ASSIGNEE: moved.bp_now}
    assert record.record_sn == {SN_ASSIGNEE: moved.sn_now}


def test_already_the_same_person_is_only_remembered() -> None:
    data = inp(bp_assignee=ABEL_BP, synced=synced_with(None, ABEL_SN), found=AssigneeInput(ABEL_SN))
    assert run(data) == [RecordSynced(7, {BP_ASSIGNEE: ABEL_BP}, {SN_ASSIGNEE: ABEL_SN})]


def test_both_moved_to_the_same_person_is_only_remembered() -> None:
    found = AssigneeInput(sn_for_bp=ABEL_SN, bp_for_sn=ABEL_BP)
    [record] = run(inp(bp_assignee=ABEL_BP, sn_assignee=ABEL_SN, found=found))
    assert record == RecordSynced(7, {BP_ASSIGNEE: ABEL_BP}, {SN_ASSIGNEE: ABEL_SN})


def test_an_unknown_counterpart_is_no_agreement() -> None:
    """Unassigned in BigPanda while ServiceNow names someone BigPanda lacks: a conflict,
    not "both the same" (None is unknown, not unassigned)."""
    synced = synced_with(ABEL_BP, ABEL_SN)
    found = AssigneeInput(sn_for_bp="", bp_for_sn=None, sn_email="admin@example.com")
    actions = run(
        inp(bp_assignee=None, sn_assignee=ADMIN_SN, synced=synced, found=found),
        conflict_policy="bigpanda",
    )
    conflict, write = actions
    assert isinstance(conflict, RecordConflict) and conflict.winner is Side.BIGPANDA
    assert (conflict.sn_field, conflict.sn_value) == (ASSIGNED_TO, "admin@example.com")
    assert isinstance(write, UpdateServiceNowFields) and write.fields == {ASSIGNED_TO: ""}


@pytest.mark.parametrize(
    ("policy", "sn_updated_s", "winner"),
    [
        ("bigpanda", 1, Side.BIGPANDA),
        ("servicenow", 100, Side.SERVICENOW),
        ("newest", 100, Side.BIGPANDA),  # BigPanda changed 60 s ago, ServiceNow 100 s ago
        ("newest", 1, Side.SERVICENOW),
    ],
)
def test_both_moved_apart_the_conflict_policy_decides(
    policy: str, sn_updated_s: int, winner: Side
) -> None:
    found = AssigneeInput(ABEL_SN, CHEN_BP, "abel.tuter@example.com", "chen.wu@example.com")
    data = inp(bp_assignee=ABEL_BP, sn_assignee=ADMIN_SN, found=found, sn_updated_s=sn_updated_s)
    conflict, write = run(data, conflict_policy=policy)
    assert isinstance(conflict, RecordConflict)
    assert (conflict.winner, conflict.policy) == (winner, policy)
    if winner is Side.BIGPANDA:
        assert isinstance(write, UpdateServiceNowFields) and write.fields == {ASSIGNED_TO: ABEL_SN}
    else:
        assert isinstance(write, AssignBigPanda) and write.user_id == CHEN_BP


def test_not_looked_up_plans_nothing_and_records_nothing() -> None:
    assert run(inp(bp_assignee=ABEL_BP, found=None)) == []


def test_a_frozen_assigned_to_never_moves() -> None:
    synced = synced_with(**{FROZEN + ASSIGNED_TO: "3"})
    data = inp(bp_assignee=ABEL_BP, synced=synced, found=AssigneeInput(ABEL_SN))
    assert not assignees(data.bp, data.sn, data.synced).moved
    assert run(data) == []


def test_flipping_back_and_forth_freezes_assigned_to() -> None:
    """A write that would be flip ``flip_flop_changes`` + 1 (3 with 2 here: a value
    already written in the window) is not made: ``assigned_to`` is frozen instead."""
    base = make_settings(**ON)
    settings = base.model_copy(
        update={"guard": base.guard.model_copy(update={"flip_flop_changes": 2})}
    )
    synced = synced_with()
    for value in (ABEL_SN, ADMIN_SN, ABEL_SN):  # one flip so far
        _, history = Flips(synced, settings.guard, NOW).count(ASSIGNED_TO, value)
        synced = synced_with(**{FLIPS + ASSIGNED_TO: history})
    data = inp(bp_assignee=CHEN_BP, synced=synced, found=AssigneeInput(ADMIN_SN))
    [write] = plan_assignee(LinkedPair(data, settings, NOW, make_link(), SYS_ID))
    assert isinstance(write, UpdateServiceNowFields)  # the second flip is still made
    _, history = Flips(synced, settings.guard, NOW).count(ASSIGNED_TO, ADMIN_SN)
    synced = synced_with(**{FLIPS + ASSIGNED_TO: history})
    data = inp(bp_assignee=ABEL_BP, synced=synced, found=AssigneeInput(ABEL_SN))
    actions = plan_assignee(LinkedPair(data, settings, NOW, make_link(), SYS_ID))
    assert actions == [FreezeField(7, BP_ID, ASSIGNED_TO, 3)]


def test_the_planner_plans_it_only_for_a_live_pair() -> None:
    found = AssigneeInput(sn_for_bp=ABEL_SN)
    live = inp(bp_assignee=ABEL_BP, found=found)
    assert any(isinstance(a, UpdateServiceNowFields) for a in plan(live, make_settings(**ON), NOW))
    resolved = dataclasses.replace(live, sn=make_sn(state=6))
    actions = plan(resolved, make_settings(**ON), NOW)
    assert not any(
        isinstance(a, UpdateServiceNowFields) and ASSIGNED_TO in a.fields for a in actions
    )
