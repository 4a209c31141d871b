"""Merges in the planner (``sync.merges``): the decision table, one test per row, and a
Hypothesis property over every combination of setting, destination and snapshots."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.actions import (
    CarryEntryToServiceNow,
    CreateServiceNowIncident,
    MarkLinkResolved,
    MoveLink,
    PlanInput,
    ResolveServiceNow,
    SetLinkTag,
    SupersedeLink,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.merges import destination_waits, merge_destination, reads_merge
from sync.model import Link, LinkState, MergeFact
from sync.planner import plan
from tests.unit.test_planner import (
    BP_ID,
    ENV,
    NOW,
    SYS_ID,
    linked,
    make_bp,
    make_link,
    make_settings,
    make_sn,
)

DEST = "75a0b1c2d3e4f5a6b7c8d9e1"
DEST_LINK = Link(
    id=9,
    bp_incident_id=DEST,
    sn_sys_id="f" * 32,
    sn_number="INC0020002",
    state=LinkState.LINKED,
    created_at=NOW - timedelta(hours=2),
)


def merged(fact: MergeFact, *, link: Link | None = None) -> PlanInput:
    inp = linked(make_bp(active=False), None, link=link)
    return PlanInput(**{**{f: getattr(inp, f) for f in inp.__slots__}, "merge": fact})


def types(actions: list[object]) -> list[type]:
    return [type(a) for a in actions]


def test_adopt_a_destination_without_a_ticket_takes_the_link() -> None:
    settings = make_settings(on_merge="adopt")
    actions = plan(merged(MergeFact(DEST)), settings, NOW)
    assert types(actions) == [CarryEntryToServiceNow, SetLinkTag, MoveLink]
    note, tag, move = actions
    assert isinstance(note, CarryEntryToServiceNow) and note.sys_id == SYS_ID
    assert note.element == "work_notes" and note.entry_id == f"merge:{DEST}"
    assert DEST in note.text and "follows" in note.text
    assert isinstance(tag, SetLinkTag)
    assert (tag.bp_incident_id, tag.link_id, tag.value) == (DEST, 7, None)
    assert isinstance(move, MoveLink)
    assert (move.link_id, move.bp_incident_id, move.to_bp_incident_id) == (7, BP_ID, DEST)
    assert move.environment_id == ENV
    assert destination_waits(MergeFact(DEST), settings, None)
    assert not destination_waits(MergeFact(DEST), settings, make_sn(state=6))


def test_adopt_reconciles_the_destination_and_the_ticket_as_a_new_link() -> None:
    settings = make_settings(on_merge="adopt")
    destination = dataclasses.replace(make_bp(tags={}), id=DEST)  # no team tag yet
    fact = MergeFact(DEST, destination=destination, destination_environment=ENV)
    inp = linked(make_bp(active=False), make_sn(fields={"u_team": "net"}))
    inp = dataclasses.replace(inp, merge=fact)
    actions = plan(inp, settings, NOW)
    assert type(actions[-1]) is MoveLink
    tags = [a for a in actions if isinstance(a, UpdateBigPandaTags)]
    assert len(tags) == 1
    assert (tags[0].bp_incident_id, tags[0].link_id) == (DEST, 7)
    assert tags[0].tags["team"] == "net"  # the ticket's value reaches the empty tag
    # the source's last-synced team ("db") is forgotten: nothing empties the ticket
    assert not any(isinstance(a, UpdateServiceNowFields) for a in actions)
    assert actions.index(tags[0]) < len(actions) - 1


def test_adopt_a_destination_with_a_ticket_keeps_it_and_the_source_stays_open() -> None:
    settings = make_settings(on_merge="adopt")
    fact = MergeFact(DEST, DEST_LINK, "env-2")
    actions = plan(merged(fact), settings, NOW)
    assert types(actions) == [CarryEntryToServiceNow, SupersedeLink]
    note = actions[0]
    assert isinstance(note, CarryEntryToServiceNow)
    assert "INC0020002" in note.text and "left open" in note.text
    assert "/incidents/env-2/" in note.text  # the destination's own environment
    assert not destination_waits(fact, settings, None)


@pytest.mark.parametrize("dest_link", [None, DEST_LINK])
def test_resolve_source_resolves_the_ticket_as_a_duplicate(dest_link: Link | None) -> None:
    settings = make_settings(on_merge="resolve_source", merge_close_code="Duplicate")
    fact = MergeFact(DEST, dest_link)
    actions = plan(merged(fact), settings, NOW)
    assert types(actions) == [CarryEntryToServiceNow, ResolveServiceNow]
    resolve = actions[1]
    assert isinstance(resolve, ResolveServiceNow)
    assert resolve.close_code == "Duplicate" and DEST in resolve.close_notes
    assert resolve.reopen_deadline is not None
    assert not destination_waits(fact, settings, None)  # D gets a ticket by the share rules


@pytest.mark.parametrize("state", [LinkState.RESOLVED, LinkState.PENDING, LinkState.SUPERSEDED])
def test_a_source_that_is_not_linked_is_left_to_the_lifecycle(state: LinkState) -> None:
    inp = merged(MergeFact(DEST), link=make_link(state))
    actions = plan(inp, make_settings(), NOW)
    assert not any(isinstance(a, MoveLink | SupersedeLink) for a in actions)
    assert not any(isinstance(a, CarryEntryToServiceNow) for a in actions)


def test_reads_merge_only_for_a_linked_incident_seen_resolved() -> None:
    assert reads_merge(make_link(), make_bp(active=False))
    assert not reads_merge(make_link(), make_bp(active=True))
    assert not reads_merge(make_link(), None)
    assert not reads_merge(None, make_bp(active=False))
    assert not reads_merge(make_link(LinkState.RESOLVED), make_bp(active=False))


def test_merge_destination_reads_the_newest_merge_activity() -> None:
    activities = [
        ("incident_commented", {"comment": "x"}),
        ("incident_merged_source", {"destination_incident": DEST}),
        ("incident_merged_source", {"destination_incident": "older"}),
    ]
    assert merge_destination(activities) == DEST
    assert merge_destination([("incident_merged_source", {"destination": "d2"})]) == "d2"
    assert merge_destination([("incident_merged_source", {})]) is None
    assert merge_destination([("incident_resolved_api", {"destination_incident": DEST})]) is None
    assert merge_destination([]) is None


@given(
    on_merge=st.sampled_from(["adopt", "resolve_source"]),
    dest_linked=st.booleans(),
    sn_state=st.sampled_from([None, 1, 2, 3, 6]),
    resolve_servicenow=st.booleans(),
)
def test_a_merged_source_never_creates_and_the_destination_ends_with_one_ticket(
    on_merge: str, dest_linked: bool, sn_state: int | None, resolve_servicenow: bool
) -> None:
    settings = make_settings(on_merge=on_merge, resolve_servicenow=resolve_servicenow)
    fact = MergeFact(DEST, DEST_LINK if dest_linked else None)
    sn = None if sn_state is None else make_sn(state=sn_state)
    inp = linked(make_bp(active=False), sn)
    inp = PlanInput(**{**{f: getattr(inp, f) for f in inp.__slots__}, "merge": fact})
    actions = plan(inp, settings, NOW)
    assert plan(inp, settings, NOW) == actions  # the same input, the same plan
    assert not any(isinstance(a, CreateServiceNowIncident) for a in actions)
    notes = [a for a in actions if isinstance(a, CarryEntryToServiceNow)]
    assert len(notes) == 1 and DEST in notes[0].text  # one note naming the destination
    moves = [a for a in actions if isinstance(a, MoveLink)]
    # the destination ends with exactly one ticket: its own, the moved one, or (no ticket
    # and resolve_source) one the share rules may give it; never its own and a moved one
    assert len(moves) == (1 if destination_waits(fact, settings, sn) else 0)
    assert not (moves and dest_linked)
    resolves = [a for a in actions if isinstance(a, ResolveServiceNow)]
    sn_resolved = sn is not None and sn.resolved
    # a ticket resolved already is never resolved again, nor handed to the destination
    assert len(resolves) == (1 if on_merge == "resolve_source" and not sn_resolved else 0)
    if sn_resolved:
        assert types(actions)[-1] is MarkLinkResolved and not moves
    elif on_merge == "adopt" and dest_linked:
        assert types(actions)[-1] is SupersedeLink
    # the link changes only after the writes that name it are planned (kill-safe order)
    if moves:
        assert actions[-1] is moves[0]
