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
linked, merged into another incident      the merge table (:mod:`sync.merges`, on_merge)
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

Journals: the plan of a linked or resolved link starts with the journal entries of the
pair to carry, each once, never bpsync's own (:func:`sync.journal.plan_journal`).

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

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sync.actions import (
    Action,
    CreateServiceNowIncident,
    MarkLinkLinked,
    MarkLinkResolved,
    PlanInput,
    RefLookup,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
)
from sync.assignment import plan_assignee
from sync.bpql import compile_bpql
from sync.constants import (
    BP_COMMENT_MAX,
    MIRROR_MARKER,
    SN_JOURNAL_MAX,
    SN_RESOLVED_STATES,
    SNState,
)
from sync.describe import build_texts, clip, incident_links
from sync.fieldsync import LinkedPair, on_refused, on_success, sync_fields, text_updatable
from sync.followups import after_create, on_refusal
from sync.journal import plan_journal
from sync.mapping import (
    BP_INCIDENT_ATTRIBUTES,
    compile_rules,
    configured_create_fields,
    mapped_create_values,
    reference_lookups,
    static_fields,
    static_lookups,
)
from sync.merges import plan_merge
from sync.model import BPIncident, Link, LinkState, SNIncident
from sync.onhold import plan_hold
from sync.primary import parse_criteria, pick_primary_alert
from sync.sizes import DEFAULT_SIZES, FieldSizes, fit

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import Settings

__all__ = ["plan", "resolve_still_wanted", "share_decision"]


def plan(inp: PlanInput, settings: Settings, now: datetime) -> list[Action]:
    """The actions for one pair, in the order the executor should run them."""
    link = inp.link
    if link is None:
        # B1: no link yet -> create when BigPanda is active in a shared environment
        return _plan_create(inp, settings, now)
    if link.state is LinkState.PENDING:
        # a create is in flight: the executor's recovery confirms or retries it
        return []
    if link.state is LinkState.SUPERSEDED or link.sn_sys_id is None:
        # history only (a newer link carries the pair), or no ServiceNow side to act on
        return []
    pair = LinkedPair(inp, settings, now, link, link.sn_sys_id)
    if inp.merge is not None and link.state is LinkState.LINKED:
        # merged into another BigPanda incident: the merge table (sync.merges) instead
        actions = plan_merge(pair, inp.merge)
    elif link.state is LinkState.LINKED:
        actions = _plan_linked(pair)
    else:
        actions = _plan_resolved(pair)
    # the conversation first (sync.journal): an entry written before a resolve reads before it
    return [*plan_journal(pair, actions), *actions]


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


def share_decision(bp: BPIncident, settings: Settings, now: datetime) -> datetime | bool:
    """Does this BigPanda incident get a ServiceNow ticket now (``[share]``)? True: yes;
    False: not while it does not match ``share.filter``; a time: it matches, but it is
    younger than ``share.delay``: not before then. ``share.manual_tag`` set to ``true``
    (a person asked for a ticket) wins over the filter and the delay. Decided on the
    incident as the poll lists it (status, severity, tags): before its alerts are read.
    """
    share = settings.share
    if share.manual_tag and bp.tags.get(share.manual_tag, "").strip().lower() == "true":
        return True
    if share.filter and not compile_bpql(share.filter)(lambda name: _bpql_values(bp, name)):
        return False
    if share.delay > 0 and bp.start is not None:
        ready = datetime.fromtimestamp(bp.start, UTC) + timedelta(seconds=share.delay)
        if now < ready:
            return ready
    return True


def _bpql_values(bp: BPIncident, name: str) -> list[str]:
    if name in BP_INCIDENT_ATTRIBUTES:
        return [BP_INCIDENT_ATTRIBUTES[name](bp).lower()]
    value = bp.tags.get(name)
    return [] if value is None else [value]


def _plan_create(
    inp: PlanInput, settings: Settings, now: datetime, previous_link_id: int | None = None
) -> list[Action]:
    bp = inp.bp
    if bp is None or not bp.active:
        # nothing to create from: BigPanda unknown, or resolved before it was ever linked
        return []
    env = _shared_environment(inp, settings)
    if env is None:
        # not in an environment shared with ServiceNow
        return []
    if share_decision(bp, settings, now) is not True:
        # not shared by the [share] rules (yet): no ticket; an incident with a link
        # keeps syncing whatever the rules say (only creates ask)
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
            labels=inp.labels,
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
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> CreateServiceNowIncident:
    references = references or {}
    opts = settings.incidents
    rules = compile_rules(settings, sizes, labels)
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
        if name not in mapped.fields and name not in configured and text_updatable(settings, name):
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
        on_success=(after_create(bp.id, env, settings),),
        on_refused=on_refusal(bp.id, env, CreateServiceNowIncident.kind, None, settings),
    )


# --------------------------------------------------------------------------- lifecycle


def _plan_linked(pair: LinkedPair) -> list[Action]:
    inp, opts = pair.inp, pair.settings.incidents
    actions = sync_fields(pair)
    bp_active = inp.bp.active if inp.bp is not None else True  # linked: last seen active
    sn_resolved = inp.sn.resolved if inp.sn is not None else False
    if bp_active and not sn_resolved:
        actions += plan_hold(pair)  # On Hold <-> snooze (hold_to_snooze)
        actions += plan_assignee(pair)  # assignee <-> assigned_to (sync_assignee)
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


def _plan_resolved(pair: LinkedPair) -> list[Action]:
    inp, link, opts = pair.inp, pair.link, pair.settings.incidents
    bp_active = inp.bp.active if inp.bp is not None else False  # resolved: last seen resolved
    sn_state = inp.sn.state if inp.sn is not None else int(SNState.RESOLVED)
    sn_resolved = sn_state in SN_RESOLVED_STATES
    if bp_active:
        if not sn_resolved:
            # both sides open again: the pair is live again
            return [*sync_fields(pair), MarkLinkLinked(link_id=link.id)]
        in_window = link.reopen_deadline is not None and pair.now < link.reopen_deadline
        if opts.reopen_resolved and in_window and sn_state == SNState.RESOLVED:
            # B9: reopened inside the window -> reopen the same ServiceNow incident
            return [*sync_fields(pair), _reopen(pair), MarkLinkLinked(link_id=link.id)]
        # B9: closed/canceled, window over or reopen off -> a new incident, linked to the old
        return _plan_create(inp, pair.settings, pair.now, previous_link_id=link.id)
    if not sn_resolved:
        # ServiceNow reopened while BigPanda stays resolved: BigPanda has no reopen API;
        # leave both alone (the link turns live when BigPanda reopens too)
        return []
    if sn_state == SNState.RESOLVED:
        # both resolved: mapped fields still follow each other
        return sync_fields(pair)
    # ServiceNow closed or canceled: frozen
    return []


def _resolve_servicenow(pair: LinkedPair) -> ResolveServiceNow:
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
        on_success=on_success(pair),
        on_refused=on_refused(pair, ResolveServiceNow.kind),
    )


def _resolve_bigpanda(pair: LinkedPair, sn: SNIncident) -> ResolveBigPanda:
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


def _reopen(pair: LinkedPair) -> ReopenServiceNow:
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
        on_success=on_success(pair),
        on_refused=on_refused(pair, ReopenServiceNow.kind),
    )


# --------------------------------------------------------------------------- late resolves


def resolve_still_wanted(link: Link | None, *, other_side_resolved: bool | None) -> bool:
    """A resolve sent late (a retry, or queued behind another write of the target) is
    still wanted only while the pair is as it was planned: its link still live (not
    resolved, not superseded) and the side whose resolve it carries still resolved
    (``other_side_resolved``: None when it cannot be read, which does not stop it).
    Sent anyway it would resolve a reopened incident (B9), or mark a superseded link
    resolved next to the live one. The executor reads the facts; this decides."""
    if link is None or link.state != LinkState.LINKED:
        return False
    return other_side_resolved is not False
