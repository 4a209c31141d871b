"""The planner: what to do for one BigPanda / ServiceNow pair (SPEC B1-B11). Pure.

``plan(inp, settings, now) -> list[Action]``: no I/O, no awaits, no clock (``now`` is a
parameter), the same input always gives the same list. The executor carries the actions
out in order and records their outcomes.

Snapshots
=========
``inp.bp`` / ``inp.sn`` is None when that side did not change since the last sync. Its
mapped values are then the last-synced ones (``inp.synced``), and its status is the one
the link state implies: a ``linked`` link means "BigPanda active, ServiceNow not
resolved", a ``resolved`` link means "both resolved, ServiceNow in Resolved (6)". A
ServiceNow record that lacks a mapped field (not fetched) counts as unchanged for it.

Decision table
==============
========================================  ================================================
link / situation                          actions
========================================  ================================================
no link, BP active, shared environment    CreateServiceNowIncident (mapped fields, texts,
                                          static fields, look-ups; records both sides)
no link, BP inactive / not shared / None  nothing
pending                                   nothing: the executor's recovery finishes it
superseded                                nothing: history only
linked                                    field sync (below), then:
  BP resolved, SN resolved                MarkLinkResolved (deadline now + reopen_window)
  BP resolved, SN open                    ResolveServiceNow when resolve_servicenow
  BP active, SN resolved (6/7/8)          ResolveBigPanda when resolve_bigpanda (comment
                                          with close code and notes if send_closure_code)
resolved, BP active again:
  SN open again too                       field sync + MarkLinkLinked
  SN Resolved, reopen_resolved, in window ReopenServiceNow + MarkLinkLinked (+ field sync)
  SN Closed/Canceled, window over, or     CreateServiceNowIncident(previous_link_id=link)
  reopen_resolved off                     (a new incident; the old link is superseded)
resolved, BP resolved:
  SN Resolved                             field sync
  SN Closed/Canceled                      nothing (a closed incident is frozen)
  SN reopened (1/2/3)                     nothing: BigPanda has no reopen API; the link
                                          stays resolved and is live again once BigPanda
                                          reopens (row "SN open again too")
========================================  ================================================

A resolve action carries ``reopen_deadline``: once it succeeds both sides are resolved,
and the executor marks the link resolved with that deadline.

Field sync (per mapping rule; ``bp``/``sn`` now, compared with the last-synced value of
that side)
---------------------------------------------------------------------------------------
- neither side changed: nothing.
- both sides hold corresponding values (equal after the value map): RecordSynced.
- only BigPanda changed: UpdateServiceNowFields when the rule writes ServiceNow and the
  field is in ``update_fields``; otherwise the new value is only recorded.
- only ServiceNow changed: UpdateBigPandaTags when the rule writes BigPanda; otherwise
  recorded.
- both changed to different values: RecordConflict (audited, both values) and the
  winner's value is written. Two-way rules follow ``conflict_policy``: ``newest``
  compares BigPanda ``updated_at`` with ServiceNow ``sys_updated_on`` and a tie goes to
  ServiceNow (the ticket is where people work; both clocks have one-second
  resolution); ``bigpanda`` / ``servicenow`` always win. A one-way rule's source wins
  (policy recorded as ``bp_to_sn`` / ``sn_to_bp``).
- A value that cannot be mapped (:data:`sync.mapping.UNMAPPED`) is recorded, not written.
- A written tag or field that another rule reads is passed on in the same plan
  (``team`` written from ``u_team`` also updates a ``team -> u_team_copy`` field), unless
  that rule's target changed itself. When two rows write one key (a mapping that
  :func:`sync.mapping.validate_mapping` rejects), the first row wins and the other
  row's change is only recorded, so even then a second plan writes nothing.

All field writes of a side go in one action; no write ever carries a value equal to
the target's current value (no echoes, SPEC B5). The generated ``short_description``,
``description`` and ``work_notes`` copy are rewritten after the create only when
listed in ``update_fields`` and when their text changed since bpsync last wrote it (an
edit made in ServiceNow is left alone until the BigPanda side changes the text); they
need the alerts expanded (they are skipped when ``inp.bp`` lists alert ids but no alerts).

``primary_alert`` is parsed here: a malformed criteria string raises ValueError
(``bpsync config check`` reports it before the daemon starts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sync.actions import (
    Action,
    CreateServiceNowIncident,
    MarkLinkLinked,
    MarkLinkResolved,
    PlanInput,
    RecordConflict,
    RecordSynced,
    RefLookup,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import (
    BP_COMMENT_MAX,
    MIRROR_MARKER,
    SN_JOURNAL_MAX,
    SN_RESOLVED_STATES,
    Side,
    SNState,
)
from sync.describe import build_texts, clip, incident_links
from sync.mapping import (
    UNMAPPED,
    FieldRule,
    bp_value,
    compile_rules,
    configured_create_fields,
    mapped_create_values,
    norm,
    reads_primary_alert,
    reference_lookups,
    static_fields,
    static_lookups,
    updatable_after_create,
    updated_texts,
)
from sync.model import BPIncident, FieldState, Link, LinkState, SNIncident
from sync.primary import parse_criteria, pick_primary_alert
from sync.sizes import DEFAULT_SIZES, FieldSizes, fit

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import Settings

__all__ = ["plan"]


def plan(inp: PlanInput, settings: Settings, now: datetime) -> list[Action]:
    """The actions for one pair, in the order the executor should run them."""
    link = inp.link
    if link is None:
        # B1: no link yet -> create when BigPanda is active in a shared environment
        return _plan_create(inp, settings)
    if link.state is LinkState.PENDING:
        # a create is in flight: the executor's recovery confirms or retries it
        return []
    if link.state is LinkState.SUPERSEDED or link.sn_sys_id is None:
        # history only (a newer link carries the pair), or no ServiceNow side to act on
        return []
    if link.state is LinkState.LINKED:
        return _plan_linked(_Pair(inp, settings, now, link, link.sn_sys_id))
    return _plan_resolved(_Pair(inp, settings, now, link, link.sn_sys_id))


# --------------------------------------------------------------------------- create


def _shared_environment(inp: PlanInput, settings: Settings) -> str | None:
    """The environment to create in: the poll's own, else the incident's first shared one."""
    allowed = settings.bigpanda.environments
    candidates = [inp.environment_id] if inp.environment_id else []
    if inp.bp is not None:
        candidates += inp.bp.environments
    for env in candidates:
        if not allowed or env in allowed:
            return env
    return None


def _plan_create(
    inp: PlanInput, settings: Settings, previous_link_id: int | None = None
) -> list[Action]:
    bp = inp.bp
    if bp is None or not bp.active:
        # nothing to create from: BigPanda unknown, or resolved before it was ever linked
        return []
    env = _shared_environment(inp, settings)
    if env is None:
        # not in an environment shared with ServiceNow
        return []
    # a batched correlation check that found nothing spares the create its own search;
    # a replacement after a reopen searches anyway (the old incident shares the id)
    checked = inp.correlation_checked and inp.sn is None and previous_link_id is None
    return [
        _create_action(
            bp,
            env,
            settings,
            previous_link_id,
            checked_absent=checked,
            sizes=inp.sizes,
            references=inp.references,
        )
    ]


def _create_action(
    bp: BPIncident,
    env: str,
    settings: Settings,
    previous_link_id: int | None,
    *,
    checked_absent: bool = False,
    sizes: FieldSizes = DEFAULT_SIZES,
    references: Mapping[str, str] | None = None,
) -> CreateServiceNowIncident:
    references = references or {}
    opts = settings.incidents
    rules = compile_rules(settings, sizes)
    primary = pick_primary_alert(bp.alerts, parse_criteria(opts.primary_alert))
    texts = build_texts(bp, settings, env, sizes)
    mapped = mapped_create_values(bp, rules, primary)
    generated: dict[str, str] = {"short_description": texts.short_description}
    if texts.description:
        generated["description"] = texts.description
    if texts.work_notes:
        generated["work_notes"] = texts.work_notes
    configured = {
        name: fit(value, sizes.sn(name))
        for name, value in configured_create_fields(bp, opts).items()
    }
    # a mapped value for a reference field is a name to look up (the record it names)
    mapped_fields, mapped_lookups = reference_lookups(mapped.fields, references)
    # precedence: correlation (B2) > mapped values > static_fields, opened_at > texts
    fields = {**generated, **configured, **mapped_fields, **static_fields(bp.id)}
    lookups = {
        name: ref
        for name, ref in static_lookups(opts, primary).items()
        if name not in fields and name not in mapped_lookups
    }
    lookups.update(mapped_lookups)
    record_sn = dict(mapped.record_sn)
    for name, value in generated.items():
        # remember a generated text only when update_fields lets bpsync rewrite it later
        if name not in mapped.fields and name not in configured and _text_updatable(settings, name):
            record_sn[name] = value
    return CreateServiceNowIncident(
        bp_incident_id=bp.id,
        environment_id=env,
        fields=fields,
        lookups=lookups,
        previous_link_id=previous_link_id,
        record_bp=dict(mapped.record_bp),
        record_sn=record_sn,
        checked_absent=checked_absent,
    )


def _text_updatable(settings: Settings, name: str) -> bool:
    return name in updated_texts(settings.incidents)


# --------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True, slots=True)
class _Pair:
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


def _plan_linked(pair: _Pair) -> list[Action]:
    inp, opts = pair.inp, pair.settings.incidents
    actions = _sync_fields(pair)
    bp_active = inp.bp.active if inp.bp is not None else True  # linked: last seen active
    sn_resolved = inp.sn.resolved if inp.sn is not None else False
    if not bp_active and sn_resolved:
        # both resolved: the link is resolved; reopen allowed until the deadline (B9)
        actions.append(
            MarkLinkResolved(
                link_id=pair.link.id, resolved_at=pair.now, reopen_deadline=pair.deadline
            )
        )
    elif not bp_active:
        if opts.resolve_servicenow:
            # B7: BigPanda resolved -> resolve ServiceNow with close code and notes
            actions.append(_resolve_servicenow(pair))
    elif sn_resolved and opts.resolve_bigpanda:
        # B8: ServiceNow resolved/closed/canceled -> resolve BigPanda, closure as comment
        assert inp.sn is not None
        actions.append(_resolve_bigpanda(pair, inp.sn))
    return actions


def _plan_resolved(pair: _Pair) -> list[Action]:
    inp, link, opts = pair.inp, pair.link, pair.settings.incidents
    bp_active = inp.bp.active if inp.bp is not None else False  # resolved: last seen resolved
    sn_state = inp.sn.state if inp.sn is not None else int(SNState.RESOLVED)
    sn_resolved = sn_state in SN_RESOLVED_STATES
    if bp_active:
        if not sn_resolved:
            # both sides open again: the pair is live again
            return [*_sync_fields(pair), MarkLinkLinked(link_id=link.id)]
        in_window = link.reopen_deadline is not None and pair.now < link.reopen_deadline
        if opts.reopen_resolved and in_window and sn_state == SNState.RESOLVED:
            # B9: reopened inside the window -> reopen the same ServiceNow incident
            return [*_sync_fields(pair), _reopen(pair), MarkLinkLinked(link_id=link.id)]
        # B9: closed/canceled, window over or reopen off -> a new incident, linked to the old
        return _plan_create(inp, pair.settings, previous_link_id=link.id)
    if not sn_resolved:
        # ServiceNow reopened while BigPanda stays resolved: BigPanda has no reopen API;
        # leave both alone (the link turns live when BigPanda reopens too)
        return []
    if sn_state == SNState.RESOLVED:
        # both resolved: mapped fields still follow each other
        return _sync_fields(pair)
    # ServiceNow closed or canceled: frozen
    return []


def _resolve_servicenow(pair: _Pair) -> ResolveServiceNow:
    opts = pair.settings.incidents
    resolved_by = None
    if opts.resolved_by_email:
        resolved_by = RefLookup(table="sys_user", column="email", value=opts.resolved_by_email)
    return ResolveServiceNow(
        link_id=pair.link.id,
        bp_incident_id=pair.link.bp_incident_id,
        sys_id=pair.sys_id,
        close_code=opts.close_code,
        close_notes=opts.close_notes,
        resolved_by=resolved_by,
        reopen_deadline=pair.deadline,
    )


def _resolve_bigpanda(pair: _Pair, sn: SNIncident) -> ResolveBigPanda:
    name = sn.number or pair.link.sn_number or sn.sys_id
    state = "resolved" if sn.state == SNState.RESOLVED else SNState(sn.state).name.lower()
    text = f"{MIRROR_MARKER} ServiceNow incident {name} was {state}."
    if pair.settings.incidents.send_closure_code:
        code = sn.fields.get("close_code", "").strip() or "(none)"
        notes = sn.fields.get("close_notes", "").strip() or "(none)"
        text += f" Close code: {code}. Close notes: {notes}"
    return ResolveBigPanda(
        link_id=pair.link.id,
        bp_incident_id=pair.link.bp_incident_id,
        environment_id=pair.environment_id,
        comment=clip(text, BP_COMMENT_MAX),
        sys_id=pair.sys_id,
        reopen_deadline=pair.deadline,
    )


def _reopen(pair: _Pair) -> ReopenServiceNow:
    bp_id = pair.link.bp_incident_id
    note = f"{MIRROR_MARKER} BigPanda incident {bp_id} was reopened."
    if pair.environment_id:
        links = incident_links(pair.settings.bigpanda.ui_url, pair.environment_id, bp_id)
        note += f" {links.incident}"
    return ReopenServiceNow(
        link_id=pair.link.id,
        bp_incident_id=bp_id,
        sys_id=pair.sys_id,
        work_note=clip(note, SN_JOURNAL_MAX),
    )


# --------------------------------------------------------------------------- field sync


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


def _last(synced: Mapping[tuple[Side, str], FieldState], side: Side, name: str) -> str | None:
    state = synced.get((side, name))
    return norm(state.value) if state is not None else None


def _newest_wins(bp: BPIncident | None, sn: SNIncident | None) -> Side:
    if bp is None or bp.updated_at is None:
        return Side.SERVICENOW
    if sn is None:
        return Side.BIGPANDA
    bp_time = datetime.fromtimestamp(bp.updated_at, UTC)
    return Side.BIGPANDA if bp_time > sn.sys_updated_on else Side.SERVICENOW


def _sync_fields(pair: _Pair) -> list[Action]:
    inp, settings, link = pair.inp, pair.settings, pair.link
    opts = settings.incidents
    rules = compile_rules(settings, inp.sizes)
    synced = inp.synced

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
                else _last(synced, Side.BIGPANDA, rule.tag)
            )
        if rule.field not in sn_now:
            if inp.sn is not None and rule.field in inp.sn.fields:
                sn_now[rule.field] = norm(inp.sn.fields[rule.field])
            else:  # unchanged side, or a field the poll did not fetch
                sn_now[rule.field] = _last(synced, Side.SERVICENOW, rule.field)
    bp_changed = {t for t, v in bp_now.items() if v != _last(synced, Side.BIGPANDA, t)}
    sn_changed = {f for f, v in sn_now.items() if v != _last(synced, Side.SERVICENOW, f)}

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
                winner = _newest_wins(inp.bp, inp.sn)
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
    return _field_actions(pair, fp)


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


def _sync_texts(pair: _Pair, fp: _FieldPlan) -> None:
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
        last = _last(inp.synced, Side.SERVICENOW, name)
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


def _field_actions(pair: _Pair, fp: _FieldPlan) -> list[Action]:
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
