"""Merges (pure): what bpsync does when BigPanda merges a linked incident into another.

Part of the planner. BigPanda's merge moves the alerts of the *source* incident into
the *destination* and resolves the source; the source's activities then hold
``incident_merged_source`` (``params.destination_incident``), the destination's
``incident_merged_destination``. How bpsync learns of it (:mod:`sync.merge_reads`, the
I/O): a linked pair whose BigPanda incident the poll shows resolved
(:func:`reads_merge`) has its activities of that one type read once, before it is
planned; a merge found there gives the pair's :class:`~sync.model.MergeFact`, with the
destination's live link. Idle cycles read nothing; a resolve of a linked incident costs
one activities read.

Decision table (S = the merged incident and its link, D = the destination;
``[incidents] on_merge``). Whatever the row, S's ticket gets a work note naming D; where
the ticket stays S's, S's last field changes reach it first (as in the lifecycle):

======================  ==============================  ================================
S's link, D's ticket    adopt (default)                 resolve_source
======================  ==============================  ================================
S linked, D none        the link tag on D, D and the    S's ticket resolved as a
                        ticket synced as a new link     duplicate (``merge_close_code``);
                        would be, then the link moves   D gets a ticket by the share
                        to D (MoveLink): S's ticket is  rules, as any new incident
                        D's from now on, open (D waits
                        for the move: no create of its
                        own this cycle)
S linked, D has one     D keeps its own; S's link is    D keeps its own; S's ticket
                        superseded, its ticket left     resolved as a duplicate
                        open
S's ticket resolved     the link is marked resolved (both sides are); nothing moves
S not linked            nothing of this table: S's ticket is resolved already (or its
                        create is still in flight) and the lifecycle rules apply
======================  ==============================  ================================

Exactly one ticket per destination (SPEC B2) holds across kills: the note and the link
tag are outbox writes (the note recorded in the journal ledger, never sent twice), the
move is one store transaction after them, and a plan cut short by a kill is planned
again from a link that has not moved. The store refuses a second live link for D, so a
move that finds D linked meanwhile supersedes S's link instead (the "D has one" row).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sync.actions import (
    Action,
    CarryEntryToServiceNow,
    MarkLinkResolved,
    MoveLink,
    RefLookup,
    ResolveServiceNow,
    SetLinkTag,
    SupersedeLink,
)
from sync.constants import MIRROR_MARKER, SN_JOURNAL_MAX, Side
from sync.describe import clip, incident_links
from sync.fieldsync import LinkedPair, on_refused, on_success, sync_fields
from sync.journal import digest
from sync.mapping import compile_rules
from sync.model import BPIncident, Link, LinkState, MergeFact, SNIncident

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import Settings

__all__ = [
    "MERGED_SOURCE",
    "destination_waits",
    "merge_destination",
    "plan_merge",
    "reads_merge",
]

#: BigPanda's activity type on the source incident of a merge
MERGED_SOURCE = "incident_merged_source"

#: where a merge's activity names the destination (the emulator's key first)
_DESTINATION_KEYS = ("destination_incident", "destination_incident_id", "destination")


def reads_merge(link: Link | None, bp: BPIncident | None) -> bool:
    """Is this pair's BigPanda incident worth an activities read for a merge? A linked
    pair whose incident the poll shows resolved: a merge resolves its source."""
    return (
        link is not None
        and link.state is LinkState.LINKED
        and link.sn_sys_id is not None
        and bp is not None
        and not bp.active
    )


def merge_destination(activities: Iterable[tuple[str, Mapping[str, Any]]]) -> str | None:
    """The destination named by the newest ``incident_merged_source`` activity (given
    newest first, as BigPanda lists them, as ``(type, params)``); None: no merge."""
    for type_, params in activities:
        if type_ != MERGED_SOURCE:
            continue
        for key in _DESTINATION_KEYS:
            value = params.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def destination_waits(fact: MergeFact, settings: Settings, sn: SNIncident | None) -> bool:
    """Does the destination take the source's ticket (so it must not be created a ticket
    of its own in this cycle)? ``adopt``, no live link of its own, and the source's
    ticket (``sn``, as read this cycle) not resolved already."""
    return (
        settings.incidents.on_merge == "adopt"
        and fact.destination_link is None
        and not (sn is not None and sn.resolved)
    )


def plan_merge(pair: LinkedPair, fact: MergeFact) -> list[Action]:
    """The actions for a linked pair whose BigPanda incident was merged (the table above);
    they replace the lifecycle's (no plain resolve of the source's ticket)."""
    opts = pair.settings.incidents
    dest = fact.destination_id
    dest_number = fact.destination_link.sn_number if fact.destination_link else None
    note = f"{MIRROR_MARKER} BigPanda merged incident {pair.link.bp_incident_id} into {dest}"
    env = fact.destination_environment or pair.environment_id
    if env:
        note += f" ({incident_links(pair.settings.bigpanda.ui_url, env, dest).incident})"
    note += "."
    if pair.inp.sn is not None and pair.inp.sn.resolved:
        # the source's ticket was resolved already: both sides are, nothing moves (its
        # last field changes reach it first, as in the lifecycle)
        note += " This ServiceNow incident was resolved already."
        resolved = MarkLinkResolved(
            link_id=pair.link.id, resolved_at=pair.now, reopen_deadline=pair.deadline
        )
        return [*sync_fields(pair), _note(pair, fact, note), resolved]
    if opts.on_merge == "resolve_source":
        # the source's ticket is a duplicate of the destination's (or of what D gets)
        of = f" of {dest_number}" if dest_number else ""
        note += f" This incident is resolved as a duplicate{of}."
        return [*sync_fields(pair), _note(pair, fact, note), _resolve_duplicate(pair, fact)]
    if fact.destination_link is not None:
        # adopt, D has its own ticket: it keeps it; this one stays open, no longer synced
        note += f" {dest} keeps its own ServiceNow incident {dest_number or ''}".rstrip()
        note += "; this one is left open and no longer synced."
        reason = f"merged into {dest}, which has its own ServiceNow incident"
        return [
            *sync_fields(pair),
            _note(pair, fact, note),
            SupersedeLink(
                link_id=pair.link.id, bp_incident_id=pair.link.bp_incident_id, reason=reason
            ),
        ]
    # adopt, D has none: the ticket follows D (the link tag and the reconcile first, the
    # move last: a kill in between plans all of it again from the link that has not moved)
    note += f" This incident follows {dest} from now on."
    return [
        _note(pair, fact, note),
        SetLinkTag(dest, env, opts.link_tag, None, link_id=pair.link.id),
        *_reconcile(pair, fact, env),
        MoveLink(
            link_id=pair.link.id,
            bp_incident_id=pair.link.bp_incident_id,
            to_bp_incident_id=dest,
            environment_id=env or None,
        ),
    ]


def _reconcile(pair: LinkedPair, fact: MergeFact, env: str) -> list[Action]:
    """The destination and the ticket it takes over, synced as a new link would be: the
    mapped fields' last-synced values of the source are forgotten, so each side's value
    counts as changed (one side empty: the other's value is written; both set and
    different: ``conflict_policy``). Needs both read in this cycle; else nothing here,
    and the destination's next change syncs against the source's last-synced values."""
    sn, destination = pair.inp.sn, fact.destination
    if sn is None or destination is None:
        return []
    rules = compile_rules(pair.settings, pair.inp.sizes, pair.inp.labels)
    mapped = {(Side.BIGPANDA, r.tag) for r in rules} | {(Side.SERVICENOW, r.field) for r in rules}
    link = replace(pair.link, bp_incident_id=fact.destination_id, bp_environment_id=env or None)
    inp = replace(
        pair.inp,
        bp=destination,
        link=link,
        synced={key: state for key, state in pair.inp.synced.items() if key not in mapped},
        environment_id=env or None,
        journal=None,
        merge=None,
    )
    return sync_fields(LinkedPair(inp, pair.settings, pair.now, link, pair.sys_id))


def _note(pair: LinkedPair, fact: MergeFact, text: str) -> CarryEntryToServiceNow:
    """The work note naming the destination: a journal entry of its own (ledger id
    ``merge:<destination>``), so a plan made again never writes it twice."""
    text = clip(text, SN_JOURNAL_MAX)
    return CarryEntryToServiceNow(
        link_id=pair.link.id,
        bp_incident_id=pair.link.bp_incident_id,
        sys_id=pair.sys_id,
        entry_id=f"merge:{fact.destination_id}",
        element="work_notes",
        text=text,
        digest=digest(text),
        on_success=on_success(pair),
        on_refused=on_refused(pair, CarryEntryToServiceNow.kind),
    )


def _resolve_duplicate(pair: LinkedPair, fact: MergeFact) -> ResolveServiceNow:
    opts = pair.settings.incidents
    resolved_by = None
    if opts.resolved_by_email:
        resolved_by = RefLookup(table="sys_user", column="email", value=opts.resolved_by_email)
    return ResolveServiceNow(
        link_id=pair.link.id,
        bp_incident_id=pair.link.bp_incident_id,
        sys_id=pair.sys_id,
        close_code=opts.merge_close_code,
        close_notes=f"Duplicate: BigPanda merged {pair.link.bp_incident_id} into "
        f"{fact.destination_id}",
        resolved_by=resolved_by,
        reopen_deadline=pair.deadline,
        on_success=on_success(pair),
        on_refused=on_refused(pair, ResolveServiceNow.kind),
    )
