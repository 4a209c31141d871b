"""BigPanda assignee <-> ServiceNow ``assigned_to`` (pure; ``incidents.sync_assignee``).

Part of the planner. Each side's assignee is remembered as a field state like a mapped
field, by its own id (``$assignee``: the BigPanda user id; ``$assigned_to``: the
``sys_user`` sys_id; empty when unassigned), so a side *moved* when its id differs from
the one last synced, and bpsync's own assignment is never taken for a person's (B5).
Comparing ids needs no look-up: only a pair whose assignee moved has its people looked
up, before it is planned (:mod:`sync.assignee_reads`, cached), and the counterparts come
in as :class:`~sync.model.AssigneeInput`. People are matched by e-mail.

- Only BigPanda's moved: ServiceNow's ``assigned_to`` := the ``sys_user`` with that
  e-mail (unassigned: cleared).
- Only ServiceNow's moved: the BigPanda incident is assigned to the BigPanda user with
  that e-mail (``PUT .../assignment``; cleared: ``DELETE``).
- Both moved to people who differ: ``conflict_policy`` picks the winner (newest,
  bigpanda, servicenow), audited as a conflict like a mapped field's.
- The person cannot be matched (no user with that e-mail on the other side, a
  deactivated BigPanda user, two ``sys_user`` rows sharing the e-mail): the other side
  is left as it is (the look-up logged ONE warning) and the change is remembered, so
  it is not looked up again; the next change of the assignee syncs as usual.
- Both already name the same person: only remembered.
- The flip-flop guard (:mod:`sync.flipflop`) counts ``assigned_to`` writes like a
  mapped field's; frozen, the assignee is left alone until ``bpsync links release``.

Only for a live pair (BigPanda active, ServiceNow not resolved): a resolve wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sync.actions import (
    Action,
    AssignBigPanda,
    FreezeField,
    RecordConflict,
    RecordSynced,
    UpdateServiceNowFields,
)
from sync.constants import Side
from sync.fieldsync import LinkedPair, last_synced, newest_wins, on_refused, on_success
from sync.flipflop import FLIPS, Flips, frozen_fields
from sync.mapping import norm
from sync.model import AssigneeInput, BPIncident, FieldState, SNIncident

__all__ = ["ASSIGNED_TO", "BP_ASSIGNEE", "SN_ASSIGNEE", "Assignees", "assignees", "plan_assignee"]

#: the ServiceNow field, and the field state names of each side's assignee
ASSIGNED_TO = "assigned_to"
BP_ASSIGNEE = "$assignee"
SN_ASSIGNEE = "$assigned_to"


@dataclass(frozen=True, slots=True)
class Assignees:
    """Each side's assignee now (an id, None: unassigned) and whether it moved."""

    bp_now: str | None
    sn_now: str | None
    bp_moved: bool
    sn_moved: bool

    @property
    def moved(self) -> bool:
        return self.bp_moved or self.sn_moved


def assignees(
    bp: BPIncident | None,
    sn: SNIncident | None,
    synced: Mapping[tuple[Side, str], FieldState],
) -> Assignees:
    """The pair's assignees against the last synced ones; a side not read this cycle
    (None) is as last synced; a frozen ``assigned_to`` never moves."""
    bp_last = last_synced(synced, Side.BIGPANDA, BP_ASSIGNEE)
    sn_last = last_synced(synced, Side.SERVICENOW, SN_ASSIGNEE)
    if ASSIGNED_TO in frozen_fields(synced):
        return Assignees(bp_last, sn_last, bp_moved=False, sn_moved=False)
    bp_now = bp_last if bp is None else norm(bp.assignee_id)
    sn_now = sn_last
    if sn is not None and ASSIGNED_TO in sn.fields:
        sn_now = norm(sn.fields[ASSIGNED_TO])
    return Assignees(bp_now, sn_now, bp_now != bp_last, sn_now != sn_last)


def plan_assignee(pair: LinkedPair) -> list[Action]:
    """The pair's assignment actions (none unless ``sync_assignee``)."""
    inp, opts, link = pair.inp, pair.settings.incidents, pair.link
    if not opts.sync_assignee:
        return []
    now = assignees(inp.bp, inp.sn, inp.synced)
    found = inp.assignee
    if not now.moved or found is None:
        return []  # nothing moved, or not looked up (planned again with its next change)
    if now.bp_moved and now.sn_moved:
        if _same(found.sn_for_bp, now.sn_now) or _same(found.bp_for_sn, now.bp_now):
            return [_remember(pair, now)]  # both moved to the same person
        policy: str = opts.conflict_policy
        if policy == "bigpanda":
            winner = Side.BIGPANDA
        elif policy == "servicenow":
            winner = Side.SERVICENOW
        else:
            winner = newest_wins(inp.bp, inp.sn)
        conflict = RecordConflict(
            link_id=link.id,
            bp_incident_id=link.bp_incident_id,
            bp_tag=BP_ASSIGNEE,
            sn_field=ASSIGNED_TO,
            bp_value=found.bp_email or now.bp_now,
            sn_value=found.sn_email or now.sn_now,
            winner=winner,
            policy=policy,
        )
        follow = _to_servicenow if winner is Side.BIGPANDA else _to_bigpanda
        return [conflict, *follow(pair, now, found)]
    if now.bp_moved:
        return _to_servicenow(pair, now, found)
    return _to_bigpanda(pair, now, found)


def _same(counterpart: str | None, current: str | None) -> bool:
    """The counterpart names ``current`` (never when it is unknown: None)."""
    return counterpart is not None and norm(counterpart) == current


def _remember(pair: LinkedPair, now: Assignees) -> RecordSynced:
    """Nothing to write (the same person, or one who cannot be matched): remembered."""
    return RecordSynced(
        pair.link.id, record_bp={BP_ASSIGNEE: now.bp_now}, record_sn={SN_ASSIGNEE: now.sn_now}
    )


def _flips(pair: LinkedPair, value: str | None) -> tuple[FreezeField | None, str]:
    """The guard's count of an ``assigned_to`` write: a freeze, or the memory to keep."""
    flips = Flips(pair.inp.synced, pair.settings.guard, pair.now)
    writes, history = flips.count(ASSIGNED_TO, value)
    if flips.too_many(writes):
        return FreezeField(pair.link.id, pair.link.bp_incident_id, ASSIGNED_TO, writes), history
    return None, history


def _to_servicenow(pair: LinkedPair, now: Assignees, found: AssigneeInput) -> list[Action]:
    target = found.sn_for_bp
    if target is None or norm(target) == now.sn_now:
        return [_remember(pair, now)]  # not matched (one warning), or already that person
    value = norm(target)
    freeze, history = _flips(pair, value)
    if freeze is not None:
        return [freeze]
    link = pair.link
    return [
        UpdateServiceNowFields(
            link_id=link.id,
            bp_incident_id=link.bp_incident_id,
            sys_id=pair.sys_id,
            fields={ASSIGNED_TO: target},
            record_bp={BP_ASSIGNEE: now.bp_now},
            record_sn={SN_ASSIGNEE: value, FLIPS + ASSIGNED_TO: history},
            on_success=on_success(pair),
            on_refused=on_refused(pair, UpdateServiceNowFields.kind),
        )
    ]


def _to_bigpanda(pair: LinkedPair, now: Assignees, found: AssigneeInput) -> list[Action]:
    target = found.bp_for_sn
    if target is None or norm(target) == now.bp_now:
        return [_remember(pair, now)]
    freeze, history = _flips(pair, now.sn_now)
    if freeze is not None:
        return [freeze]
    link = pair.link
    return [
        AssignBigPanda(
            link_id=link.id,
            bp_incident_id=link.bp_incident_id,
            environment_id=pair.environment_id,
            user_id=norm(target),
            sys_id=pair.sys_id,
            record_bp={BP_ASSIGNEE: norm(target)},
            record_sn={SN_ASSIGNEE: now.sn_now, FLIPS + ASSIGNED_TO: history},
        )
    ]
