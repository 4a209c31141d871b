"""Field sync of a linked pair (pure): the mapped fields and the generated texts.

Part of the planner (:mod:`sync.planner` holds the decision table and its rules for
fields; this module carries them out for one pair): each side's current value against
its last-synced one, conflicts by ``conflict_policy``, writes passed on to the rules
that read them, the generated texts that ``update_fields`` lists, and the write actions
with their follow-ups (:mod:`sync.followups`). No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sync.actions import (
    Action,
    CommentBigPanda,
    FollowUp,
    FreezeField,
    PlanInput,
    RecordConflict,
    RecordSynced,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import BP_COMMENT_MAX, MIRROR_MARKER, Side
from sync.describe import build_texts, clip
from sync.flipflop import FLIPS, Flips, frozen_fields
from sync.followups import after_servicenow_write, on_refusal
from sync.mapping import (
    UNMAPPED,
    FieldRule,
    bp_value,
    compile_rules,
    norm,
    reads_primary_alert,
    reference_lookups,
    updatable_after_create,
    updated_texts,
)
from sync.model import BPIncident, FieldState, Link, SNIncident
from sync.primary import parse_criteria, pick_primary_alert

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import Settings

__all__ = [
    "LinkedPair",
    "last_synced",
    "newest_wins",
    "on_refused",
    "on_success",
    "sync_fields",
    "text_updatable",
]


@dataclass(frozen=True, slots=True)
class LinkedPair:
    """One linked pair as the planner sees it: the input, the settings, the time."""

    inp: PlanInput
    settings: Settings
    now: datetime
    link: Link
    sys_id: str

    @property
    def environment_id(self) -> str:
        """Where BigPanda writes go: the poll's environment, else the incident's first."""
        if self.inp.environment_id:
            return self.inp.environment_id
        if self.inp.bp is not None and self.inp.bp.environments:
            return self.inp.bp.environments[0]
        return ""

    @property
    def deadline(self) -> datetime:
        return self.now + timedelta(seconds=self.settings.incidents.reopen_window)


def text_updatable(settings: Settings, name: str) -> bool:
    return name in updated_texts(settings.incidents)


def on_success(pair: LinkedPair) -> tuple[FollowUp, ...]:
    """After a ServiceNow write of the pair succeeds: the link tag back from ``error``."""
    link = pair.link
    return after_servicenow_write(link.bp_incident_id, pair.environment_id, link.id, pair.settings)


def on_refused(pair: LinkedPair, kind: str) -> tuple[FollowUp, ...]:
    """Once a ServiceNow write of the pair is refused for good: B14."""
    link = pair.link
    return on_refusal(link.bp_incident_id, pair.environment_id, kind, link.id, pair.settings)


@dataclass
class _FieldPlan:
    """Working state of one field sync: the writes of each side and what to record."""

    sn_writes: dict[str, str | None] = field(default_factory=dict)
    sn_record_bp: dict[str, str | None] = field(default_factory=dict)
    sn_record_sn: dict[str, str | None] = field(default_factory=dict)
    bp_writes: dict[str, str | None] = field(default_factory=dict)
    bp_record_bp: dict[str, str | None] = field(default_factory=dict)
    bp_record_sn: dict[str, str | None] = field(default_factory=dict)
    ack_bp: dict[str, str | None] = field(default_factory=dict)
    ack_sn: dict[str, str | None] = field(default_factory=dict)
    conflicts: list[RecordConflict] = field(default_factory=list)
    sources: dict[tuple[Side, str], tuple[Side, str]] = field(default_factory=dict)
    """Written key -> the key its value was mapped from."""


def last_synced(synced: Mapping[tuple[Side, str], FieldState], side: Side, name: str) -> str | None:
    """The value last synced on ``side`` for ``name`` (None: empty or never)."""
    state = synced.get((side, name))
    return norm(state.value) if state is not None else None


def newest_wins(bp: BPIncident | None, sn: SNIncident | None) -> Side:
    """``conflict_policy = "newest"``: the side changed last (ServiceNow on a tie)."""
    if bp is None or bp.updated_at is None:
        return Side.SERVICENOW
    if sn is None:
        return Side.BIGPANDA
    bp_time = datetime.fromtimestamp(bp.updated_at, UTC)
    return Side.BIGPANDA if bp_time > sn.sys_updated_on else Side.SERVICENOW


def sync_fields(pair: LinkedPair) -> list[Action]:
    inp, settings, link = pair.inp, pair.settings, pair.link
    opts = settings.incidents
    synced = inp.synced
    frozen = frozen_fields(synced)  # left alone until `bpsync links release`
    rules = tuple(
        r for r in compile_rules(settings, inp.sizes, inp.labels) if r.field not in frozen
    )

    bp_now: dict[str, str | None] = {}
    sn_now: dict[str, str | None] = {}
    bp = inp.bp
    # a primary alert's tag is known only when the alerts were read: else unchanged
    alerts_known = bp is not None and (bool(bp.alerts) or not bp.alert_ids)
    primary = (
        pick_primary_alert(bp.alerts, parse_criteria(opts.primary_alert))
        if bp is not None and alerts_known
        else None
    )
    for rule in rules:
        if rule.tag not in bp_now:
            bp_now[rule.tag] = (
                bp_value(bp, rule.tag, primary)
                if bp is not None and (alerts_known or not reads_primary_alert(rule.tag))
                else last_synced(synced, Side.BIGPANDA, rule.tag)
            )
        if rule.field not in sn_now:
            if inp.sn is not None and rule.field in inp.sn.fields:
                sn_now[rule.field] = norm(inp.sn.fields[rule.field])
            else:  # unchanged side, or a field the poll did not fetch
                sn_now[rule.field] = last_synced(synced, Side.SERVICENOW, rule.field)
    bp_changed = {t for t, v in bp_now.items() if v != last_synced(synced, Side.BIGPANDA, t)}
    sn_changed = {f for f, v in sn_now.items() if v != last_synced(synced, Side.SERVICENOW, f)}

    fp = _FieldPlan()

    def can_sn(rule: FieldRule) -> bool:
        return rule.to_servicenow and updatable_after_create(opts, rule.field)

    def write_sn(rule: FieldRule) -> bool:
        """SN field := the rule's mapping of the BigPanda value; False when not written."""
        target = rule.to_sn(bp_now[rule.tag])
        if target is UNMAPPED or rule.field in fp.sn_writes or target == sn_now[rule.field]:
            return False
        fp.sn_writes[rule.field] = target
        fp.sn_record_sn[rule.field] = target
        fp.sn_record_bp[rule.tag] = bp_now[rule.tag]
        fp.sources[(Side.SERVICENOW, rule.field)] = (Side.BIGPANDA, rule.tag)
        return True

    def write_bp(rule: FieldRule) -> bool:
        """BP tag := the rule's mapping of the ServiceNow value; False when not written."""
        target = rule.to_bp(sn_now[rule.field])
        if target is UNMAPPED or rule.tag in fp.bp_writes or target == bp_now[rule.tag]:
            return False
        fp.bp_writes[rule.tag] = target
        fp.bp_record_bp[rule.tag] = target
        fp.bp_record_sn[rule.field] = sn_now[rule.field]
        fp.sources[(Side.BIGPANDA, rule.tag)] = (Side.SERVICENOW, rule.field)
        return True

    for rule in rules:
        tag, fld = rule.tag, rule.field
        b, s = bp_now[tag], sn_now[fld]
        b_moved, s_moved = tag in bp_changed, fld in sn_changed
        if not b_moved and not s_moved:
            continue  # neither side changed
        if tag in fp.bp_writes or fld in fp.sn_writes:
            # an earlier row already writes one of these (two rows write one key, which
            # validate_mapping reports): the first row wins, this row's change is recorded
            if b_moved and tag not in fp.bp_writes:
                fp.ack_bp[tag] = b
            if s_moved and fld not in fp.sn_writes:
                fp.ack_sn[fld] = s
            continue
        if rule.agree(b, s):
            # both sides already correspond: remember, write nothing
            fp.ack_bp[tag], fp.ack_sn[fld] = b, s
            continue
        if b_moved and not s_moved:
            # B3: only BigPanda changed -> ServiceNow (if the rule and update_fields allow)
            if not (can_sn(rule) and write_sn(rule)):
                fp.ack_bp[tag] = b
            continue
        if s_moved and not b_moved:
            # B4: only ServiceNow changed -> BigPanda (if the rule allows)
            if not (rule.to_bigpanda and write_bp(rule)):
                fp.ack_sn[fld] = s
            continue
        # B6: both changed to values that do not correspond
        to_sn, to_bp = can_sn(rule), rule.to_bigpanda
        if not to_sn and not to_bp:
            fp.ack_bp[tag], fp.ack_sn[fld] = b, s  # nothing may be written: just remember
            continue
        if to_sn and to_bp:
            policy: str = opts.conflict_policy
            if policy == "bigpanda":
                winner = Side.BIGPANDA
            elif policy == "servicenow":
                winner = Side.SERVICENOW
            else:
                winner = newest_wins(inp.bp, inp.sn)
        else:
            policy = "bp_to_sn" if to_sn else "sn_to_bp"  # a one-way rule: its source wins
            winner = Side.BIGPANDA if to_sn else Side.SERVICENOW
        fp.conflicts.append(
            RecordConflict(
                link_id=link.id,
                bp_incident_id=link.bp_incident_id,
                bp_tag=tag,
                sn_field=fld,
                bp_value=b,
                sn_value=s,
                winner=winner,
                policy=policy,
            )
        )
        written = write_sn(rule) if winner is Side.BIGPANDA else write_bp(rule)
        if not written:  # e.g. the winner's value is unmapped: the decision is remembered
            fp.ack_bp[tag], fp.ack_sn[fld] = b, s

    _propagate(
        fp,
        rules,
        can_sn=can_sn,
        bp_now=bp_now,
        sn_now=sn_now,
        bp_changed=bp_changed,
        sn_changed=sn_changed,
    )
    _sync_texts(pair, fp)
    freezes = _guard_flips(pair, fp, rules)
    return [*_field_actions(pair, fp), *freezes]


def _guard_flips(pair: LinkedPair, fp: _FieldPlan, rules: tuple[FieldRule, ...]) -> list[Action]:
    """Count this plan's writes per ServiceNow field (:mod:`sync.flipflop`): remember
    them with the write, or freeze a field written too often and drop its writes."""
    flips = Flips(pair.inp.synced, pair.settings.guard, pair.now)
    tags_of: dict[str, set[str]] = {}
    for rule in rules:
        tags_of.setdefault(rule.field, set()).add(rule.tag)
    written = set(fp.sn_writes) | {
        field for field, tags in tags_of.items() if tags & fp.bp_writes.keys()
    }
    actions: list[Action] = []
    link = pair.link
    for name in sorted(written):
        if name in fp.sn_writes:
            value = fp.sn_writes[name]
        else:  # written on BigPanda: the value of the first tag mapped from it
            value = next(fp.bp_writes[t] for t in sorted(tags_of[name]) if t in fp.bp_writes)
        writes, history = flips.count(name, value)
        if not flips.too_many(writes):
            record = fp.sn_record_sn if name in fp.sn_writes else fp.bp_record_sn
            record[FLIPS + name] = history
            continue
        # nothing of the field is written or remembered: released, it syncs as usual
        fp.sn_writes.pop(name, None)
        fp.sn_record_sn.pop(name, None)
        fp.bp_record_sn.pop(name, None)
        fp.ack_sn.pop(name, None)
        for tag in tags_of.get(name, ()):
            fp.bp_writes.pop(tag, None)
            fp.bp_record_bp.pop(tag, None)
            fp.sn_record_bp.pop(tag, None)
            fp.ack_bp.pop(tag, None)
        actions.append(FreezeField(link.id, link.bp_incident_id, name, writes))
        if pair.environment_id:
            text = (
                f"{MIRROR_MARKER} bpsync stopped syncing {name}: it flipped back {writes} "
                f"times within {int(pair.settings.guard.flip_flop_window)} s (a rule on "
                "either side keeps changing it back). `bpsync links release "
                f"{link.id}` resumes it."
            )
            actions.append(
                CommentBigPanda(
                    link.bp_incident_id,
                    pair.environment_id,
                    clip(text, BP_COMMENT_MAX),
                    link_id=link.id,
                )
            )
    return actions


def _propagate(
    fp: _FieldPlan,
    rules: tuple[FieldRule, ...],
    *,
    can_sn: Callable[[FieldRule], bool],
    bp_now: Mapping[str, str | None],
    sn_now: Mapping[str, str | None],
    bp_changed: set[str],
    sn_changed: set[str],
) -> None:
    """Pass a written value on to the other rules that read it.

    A target that another write already sets is left alone, unless that write was mapped
    from the very key now being rewritten (then it follows the new value); a target that
    changed on its own side keeps its change.
    """
    queue: list[tuple[Side, str, str | None]] = [
        *((Side.BIGPANDA, t, v) for t, v in fp.bp_writes.items()),
        *((Side.SERVICENOW, f, v) for f, v in fp.sn_writes.items()),
    ]
    while queue:
        side, name, value = queue.pop(0)
        for rule in rules:
            if side is Side.BIGPANDA and rule.tag == name and can_sn(rule):
                key = (Side.SERVICENOW, rule.field)
                target = rule.to_sn(value)
                current, writes, record = sn_now[rule.field], fp.sn_writes, fp.sn_record_sn
                changed, acks = rule.field in sn_changed, fp.ack_sn
            elif side is Side.SERVICENOW and rule.field == name and rule.to_bigpanda:
                key = (Side.BIGPANDA, rule.tag)
                target = rule.to_bp(value)
                current, writes, record = bp_now[rule.tag], fp.bp_writes, fp.bp_record_bp
                changed, acks = rule.tag in bp_changed, fp.ack_bp
            else:
                continue
            target_name = key[1]
            if target_name in writes:
                if fp.sources.get(key) != (side, name) or writes[target_name] == target:
                    continue  # set by another write
                # its source was rewritten: follow the new value (or stay as it is)
                del writes[target_name]
                del record[target_name]
                del fp.sources[key]
                if target is UNMAPPED or target == current:
                    acks[target_name] = current
                    continue
            elif changed or target is UNMAPPED or target == current:
                continue  # changed on its own side, no counterpart, or already equal
            writes[target_name] = target
            record[target_name] = target
            fp.sources[key] = (side, name)
            queue.append((key[0], target_name, target))


def _sync_texts(pair: LinkedPair, fp: _FieldPlan) -> None:
    """Rewrite generated texts listed in ``update_fields`` when BigPanda changed them."""
    inp, settings = pair.inp, pair.settings
    bp = inp.bp
    wanted = updated_texts(settings.incidents)
    if bp is None or not wanted or (bp.alert_ids and not bp.alerts):
        return  # unchanged BigPanda side, nothing asked for, or alerts not expanded
    mapped = {rule.field for rule in compile_rules(settings) if rule.to_servicenow}
    texts = build_texts(bp, settings, pair.environment_id, inp.sizes)
    values = {
        "short_description": texts.short_description,
        "description": texts.description,
        "work_notes": texts.work_notes,
    }
    for name in wanted:
        new = norm(values[name])
        if name in mapped or name in fp.sn_writes or new is None:
            continue
        last = last_synced(inp.synced, Side.SERVICENOW, name)
        if new == last:
            continue  # bpsync's text did not change (an edit in ServiceNow stays)
        current = last
        if inp.sn is not None and name in inp.sn.fields and name != "work_notes":
            current = norm(inp.sn.fields[name])  # work_notes reads back empty: compare with last
        if new == current:
            fp.ack_sn[name] = new
            continue
        fp.sn_writes[name] = new
        fp.sn_record_sn[name] = new


def _field_actions(pair: LinkedPair, fp: _FieldPlan) -> list[Action]:
    link = pair.link
    actions: list[Action] = list(fp.conflicts)
    # a source value that is itself rewritten in this plan is recorded by that write
    for tag in fp.bp_writes:
        fp.sn_record_bp.pop(tag, None)
    for name in fp.sn_writes:
        fp.bp_record_sn.pop(name, None)
    if fp.sn_writes:
        # ServiceNow clears a field that is sent as ""; a reference field's name is
        # looked up (the record it names), never sent as text
        fields, lookups = reference_lookups(fp.sn_writes, pair.inp.references)
        actions.append(
            UpdateServiceNowFields(
                link_id=link.id,
                bp_incident_id=link.bp_incident_id,
                sys_id=pair.sys_id,
                fields=fields,
                lookups=lookups,
                record_bp=fp.sn_record_bp,
                record_sn=fp.sn_record_sn,
                on_success=on_success(pair),
                on_refused=on_refused(pair, UpdateServiceNowFields.kind),
            )
        )
    if fp.bp_writes:
        actions.append(
            UpdateBigPandaTags(
                link_id=link.id,
                bp_incident_id=link.bp_incident_id,
                environment_id=pair.environment_id,
                tags={tag: value for tag, value in fp.bp_writes.items() if value is not None},
                remove_tags=tuple(tag for tag, value in fp.bp_writes.items() if value is None),
                sys_id=pair.sys_id,
                record_bp=fp.bp_record_bp,
                record_sn=fp.bp_record_sn,
            )
        )
    # values recorded by a write are recorded when the write succeeds, not before
    recorded_bp = fp.sn_record_bp.keys() | fp.bp_record_bp.keys()
    recorded_sn = fp.sn_record_sn.keys() | fp.bp_record_sn.keys()
    ack_bp = {k: v for k, v in fp.ack_bp.items() if k not in recorded_bp}
    ack_sn = {k: v for k, v in fp.ack_sn.items() if k not in recorded_sn}
    if ack_bp or ack_sn:
        actions.append(RecordSynced(link_id=link.id, record_bp=ack_bp, record_sn=ack_sn))
    return actions
