"""The writes: one handler per write action, looked up in :data:`HANDLERS` by its type.

A handler sends one write through the clients and records its effect; it decides
nothing else. What follows a ServiceNow write (the link tag after a create, B14's
comment and ``error`` tag after a refusal, the tag back after a success) is the plan's
(``on_success``/``on_refused``, :mod:`sync.followups`): :meth:`Writes.follow_ups` only
fills those steps in with the write's result. Field states a handler appends to
``call.records`` are recorded with the item's completion (one transaction, see
:mod:`sync.executor.delivery`).

Journal entries (``sync.journal``) have their handlers in
:mod:`sync.executor.journal_writes`: recorded in the ledger before they are sent, looked
for in the target's journal when they may have landed. Every comment bpsync writes
starts with the mirror marker, so journals never carry it back.

``call.recheck`` (a retry): the target is read first and only what still differs is
sent. The write may have landed in part before it failed, or a person may have set the
same value while it waited; resending it would be an echo (B5).

Idempotent create (B2, B15)
---------------------------
``previous_link_id`` -> that link becomes ``superseded`` (history kept) ->
``create_pending_link`` (``DuplicateLinkError``: another cycle or replica owns it, skip)
-> with the environment (``Link.bp_environment_id``) -> enqueue (these three in
one transaction: ``create_pending_link_and_enqueue``, :mod:`sync.executor.core`) -> search
``correlation_id`` (active incidents not already linked in this incident's history): one
found is adopted (its fields that differ from the plan are PATCHed), none -> create
with ``correlation_id`` = BigPanda id and ``correlation_display`` = ``BigPanda`` ->
``confirm_link`` with the audit entry and the field states, the plan's link tag
(``on_success``, its value filled in from the confirmed incident) and the create's
completion, in one transaction (``complete_and_enqueue(confirm=...)``): killed before
it, the create is sent again and adopts the incident it made (B2); after it, the link
tag is in the outbox. A first attempt after a batched check that found nothing
(``checked_absent``) does not read the link it has just made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync.actions import (
    AssignBigPanda,
    CarryEntryToBigPanda,
    CarryEntryToServiceNow,
    CommentBigPanda,
    CreateServiceNowIncident,
    FollowUp,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    SnoozeBigPanda,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.clients.base import BigPandaAPI, IncidentRow, ServiceNowAPI
from sync.clients.bigpanda.paths import Family
from sync.clock import Clock
from sync.constants import (
    LINK_TAG_ERROR_VALUE,
    MIRROR_MARKER,
    SN_CORRELATION_DISPLAY,
    Side,
    SNState,
)
from sync.errors import ApiError, MissingTagError, NotFoundError, PermanentError
from sync.executor.codec import (
    WriteAction,
    field_states,
    link_tag_value,
    ref_value,
)
from sync.executor.journal_writes import carry_to_bigpanda, carry_to_servicenow
from sync.followups import steps_after
from sync.journal import is_own
from sync.lookups import Lookups
from sync.model import Link, LinkState
from sync.planner import resolve_still_wanted
from sync.settings import Settings
from sync.store.base import FieldStates, LinkConfirmation, LinkStore
from sync.tagdefs import ensure_tag_definitions

# every line the executor logs is on "sync.executor" (log consumers filter on it)
log = logging.getLogger("sync.executor")


@dataclass(slots=True)
class Effects:
    """What a sent write leaves to record with its item's completion (one transaction,
    ``complete_and_enqueue``)."""

    records: list[FieldStates] = field(default_factory=list)
    """Field states to record."""
    confirm: LinkConfirmation | None = None
    """A create's: the pending link's ServiceNow incident and audit entry."""

    def clear(self) -> None:
        self.records.clear()
        self.confirm = None


@dataclass(frozen=True, slots=True)
class WriteCall:
    """One send of a write: what a handler gets besides the action."""

    env: str | None
    """The BigPanda environment of the pair (None: read the one remembered at create)."""
    meta: Mapping[str, Any]
    """The outbox payload besides the action (a create's pending ``link_id``)."""
    effects: Effects
    """What to record with the item's completion."""
    recheck: bool
    """A retry: read the target first and send only what still differs."""

    @property
    def records(self) -> list[FieldStates]:
        """Field states to record with the item's completion."""
        return self.effects.records


class Writes:
    """The clients, the store and the settings the handlers use, and the create's news."""

    def __init__(
        self,
        store: LinkStore,
        servicenow: ServiceNowAPI,
        bigpanda: BigPandaAPI,
        settings: Settings,
        clock: Clock,
        *,
        lookups: Lookups,
    ) -> None:
        self.store = store
        self.sn = servicenow
        self.bp = bigpanda
        self.settings = settings
        self.clock = clock
        self.lookups = lookups
        #: bp incident id -> (sys_id, link id) confirmed by a create, for its log line
        self.created: dict[str, tuple[str, int]] = {}
        #: bp incident ids whose create (in the current execute) adopted an incident
        self.adopted: set[str] = set()

    @property
    def base_url(self) -> str:
        return self.settings.servicenow.base_url or ""

    async def environment_of(self, bp_incident_id: str) -> str | None:
        """The BigPanda environment remembered for an incident: its newest link's, set
        at the link's create (``Link.bp_environment_id``)."""
        for link in await self.store.links_for_bp(bp_incident_id):  # newest first
            if link.bp_environment_id:
                return link.bp_environment_id
        return None

    def hold_of(self, action: WriteAction) -> tuple[str, float]:
        """The family the write goes through and its hold in seconds, as the client's
        pacer says (ServiceNow: the instance's one hold)."""
        if action.side is Side.SERVICENOW:
            return "servicenow", self.sn.held_for()
        family = BP_FAMILIES[type(action)]
        return f"bigpanda {family.value}", self.bp.held_for(family)

    async def apply(
        self,
        action: WriteAction,
        env: str | None,
        meta: Mapping[str, Any],
        effects: Effects,
        *,
        recheck: bool = False,
    ) -> None:
        """Send one write and record its effect (in ``effects``, saved by the caller)."""
        handler = HANDLERS[type(action)]
        await handler(self, action, WriteCall(env, meta, effects, recheck))

    async def record(
        self,
        link_id: int,
        record_bp: Mapping[str, str | None],
        record_sn: Mapping[str, str | None],
    ) -> None:
        now = self.clock.now()
        if record_bp:
            await self.store.record_field_states(link_id, Side.BIGPANDA, record_bp, now)
        if record_sn:
            await self.store.record_field_states(link_id, Side.SERVICENOW, record_sn, now)

    async def resolve_is_stale(
        self, action: ResolveServiceNow | ResolveBigPanda, env: str | None
    ) -> bool:
        """Reads what :func:`sync.planner.resolve_still_wanted` decides on: the link,
        and the side whose resolve this carries (BigPanda for a ServiceNow resolve)."""
        link = await self.store.get_link(action.link_id)
        resolved: bool | None = None
        if link is not None and link.state == LinkState.LINKED:
            resolved = await self._source_resolved(action, env)
        stale = not resolve_still_wanted(link, other_side_resolved=resolved)
        if stale:
            log.info(
                "%s dropped: the pair changed since it was planned",
                action.kind,
                extra={"bp_incident_id": action.bp_incident_id, "link_id": action.link_id},
            )
        return stale

    async def _source_resolved(
        self, action: ResolveServiceNow | ResolveBigPanda, env: str | None
    ) -> bool | None:
        """Is the side whose resolve ``action`` carries still resolved? None: unknown."""
        if isinstance(action, ResolveServiceNow):
            env = env or await self.environment_of(action.bp_incident_id)
            if env is None:
                return None
            try:
                bp = await self.bp.get_incident(env, action.bp_incident_id, expand_alerts=False)
            except NotFoundError:
                return None
            return not bp.active
        if action.sys_id is None:
            return None
        try:
            incident = await self.sn.get_incident(action.sys_id)
        except NotFoundError:
            return None
        return incident.resolved

    async def follow_ups(
        self,
        action: WriteAction,
        env: str | None,
        link_id: int | None,
        *,
        refusal: ApiError | None = None,
        retrying: bool = False,
        confirmed: LinkConfirmation | None = None,
    ) -> list[FollowUp]:
        """The plan's steps after ``action`` (``on_success``, or ``on_refused`` with the
        ``refusal``), filled in with what the write's result and the store say: the
        environment and link of the incident, the refusal's message (``retrying``: the
        write will be sent again, and the comment says so); a step that runs only after
        an ``error`` is left out unless the link tag says ``error``, and a refusal while
        the tag says ``error`` already adds nothing (one report per incident and
        outage, not one per attempt). A link tag of the link a create has just
        ``confirmed`` gets its value from that incident (not read again when sent)."""
        if not isinstance(
            action,
            CreateServiceNowIncident
            | UpdateServiceNowFields
            | ResolveServiceNow
            | ReopenServiceNow
            | CarryEntryToServiceNow,
        ):
            return []  # a BigPanda write has no follow-ups
        steps = steps_after(action, self.settings, refused=refusal is not None)
        if not steps:
            return []
        if refusal is not None and link_id is not None:
            tags = {s.tag_id for s in steps if isinstance(s, SetLinkTag) and s.value}
            for tag in tags:
                if await self._tag_says_error(link_id, tag):
                    return []  # this outage of the incident is reported already
        bp_id = action.bp_incident_id
        env = env or await self.environment_of(bp_id)
        out: list[FollowUp] = []
        for step in steps:
            where = step.environment_id or env
            if not where:
                log.warning(
                    "cannot write to BigPanda after the %s write: environment unknown",
                    action.kind,
                    extra={"bp_incident_id": bp_id},
                )
                return []
            step_link = step.link_id if step.link_id is not None else link_id
            if (
                isinstance(step, SetLinkTag)
                and step.only_after_error
                and (step_link is None or not await self._tag_says_error(step_link, step.tag_id))
            ):
                continue
            filled = dataclasses.replace(step, environment_id=where, link_id=step_link)
            if (
                isinstance(filled, SetLinkTag)
                and filled.value is None
                and confirmed is not None
                and confirmed.link_id == step_link
            ):
                value = link_tag_value(self.base_url, confirmed.sn_number, confirmed.sn_sys_id)
                filled = dataclasses.replace(filled, value=value)
            if isinstance(filled, CommentBigPanda) and filled.with_error and refusal is not None:
                message = refusal.message + (f" ({refusal.detail})" if refusal.detail else "")
                text = f"{filled.text}: {message}"
                if retrying:
                    text += " (bpsync tries again; the link returns when it succeeds)"
                filled = dataclasses.replace(filled, text=text, with_error=False)
            out.append(filled)
        return out

    async def _tag_says_error(self, link_id: int, tag: str) -> bool:
        state = (await self.store.field_states(link_id)).get((Side.BIGPANDA, tag))
        return state is not None and state.value == LINK_TAG_ERROR_VALUE

    async def find_existing(
        self, bp_incident_id: str, link_id: int, links: Sequence[Link] | None = None
    ) -> IncidentRow | None:
        """An active incident with this correlation_id that no older link of the incident
        owns (after a reopen past the window, the old incident has the same id).
        ``links``: the incident's links, when the caller has just read them."""
        found = await self.sn.find_by_correlation_id(bp_incident_id, active_only=True)
        if links is None:
            links = await self.store.links_for_bp(bp_incident_id)
        history = {old.sn_sys_id for old in links if old.id != link_id and old.sn_sys_id}
        candidates = [r for r in found if r.sys_id not in history]
        if not candidates:
            return None
        # the oldest wins, should a foreign tool have made two
        candidates.sort(key=lambda r: (r.fields.get("sys_created_on", ""), r.number))
        return candidates[0]

    async def apply_create(
        self, action: CreateServiceNowIncident, link_id: int, effects: Effects, *, recheck: bool
    ) -> None:
        links: list[Link] | None = None
        sn_sys_id: str | None = None
        if recheck or not action.checked_absent:
            # the incident's links (history for find_existing) hold this one: one read
            links = await self.store.links_for_bp(action.bp_incident_id)
            link = next((old for old in links if old.id == link_id), None)
            if link is None:
                link = await self.store.get_link(link_id)
            if link is None:
                raise PermanentError("bpsync", f"the pending link {link_id} no longer exists")
            if link.state == LinkState.SUPERSEDED:
                log.info("create dropped: its link was superseded", extra={"link_id": link_id})
                return
            sn_sys_id = link.sn_sys_id
        # else: the first attempt, just after this process made the pending link (the
        # confirm checks under lock that it is still live)
        adopted_now = False
        record_sn = action.record_sn
        if sn_sys_id is None:
            found = await self.lookups.resolve_fields(action.lookups)
            values = {**action.fields, **found}
            # a mapped name without a record leaves its field empty: remembered as such,
            # so the empty field is not taken for a change made in ServiceNow
            record_sn = {
                k: (None if k in action.lookups and k not in found else v)
                for k, v in action.record_sn.items()
            }
            # B2: search correlation_id unless a batched check just found nothing and
            # this is the first attempt (a retry may follow a create that went through)
            existing = (
                None
                if action.checked_absent and not recheck
                else await self.find_existing(action.bp_incident_id, link_id, links)
            )
            adopted = adopted_now = existing is not None
            if existing is not None:
                current = existing.fields
                differing = {k: v for k, v in values.items() if current.get(k) != v}
                record = existing
                if differing:
                    record = await self.sn.update_incident(existing.sys_id, differing)
            else:
                record = await self.sn.create_incident(
                    {
                        **values,
                        "correlation_id": action.bp_incident_id,
                        "correlation_display": SN_CORRELATION_DISPLAY,
                    }
                )
            sn_sys_id = record.sys_id or (existing.sys_id if existing else "")
            number = record.number or (existing.number if existing else "")
            # confirmed with the audit entry, the field states and the item's completion
            effects.confirm = LinkConfirmation(
                link_id, sn_sys_id, number, "adopted" if adopted else "created"
            )
            effects.records.extend(field_states(link_id, action.record_bp, record_sn))
        else:
            await self.record(link_id, action.record_bp, record_sn)
        self.created[action.bp_incident_id] = (sn_sys_id, link_id)
        if sn_sys_id and adopted_now:
            self.adopted.add(action.bp_incident_id)
        return  # the link tag is the plan's follow-up (on_success)


# --------------------------------------------------------------------------- handlers


async def _create(w: Writes, action: CreateServiceNowIncident, call: WriteCall) -> None:
    link_id = call.meta.get("link_id")
    if not isinstance(link_id, int):
        raise PermanentError("bpsync", "create without a pending link id")
    await w.apply_create(action, link_id, call.effects, recheck=call.recheck)


async def _update_servicenow(w: Writes, action: UpdateServiceNowFields, call: WriteCall) -> None:
    found = await w.lookups.resolve_fields(action.lookups)
    values = {**action.fields, **found}
    if values and call.recheck:
        current = await w.sn.get_incident(action.sys_id)
        values = {k: v for k, v in values.items() if ref_value(current.fields.get(k)) != v}
    if values:
        await w.sn.update_incident(action.sys_id, values)
    # a name without a record is not written: the field keeps its value, and its last
    # synced value stays what it was, so neither side reads as changed next cycle
    missed = action.lookups.keys() - found.keys()
    record_sn = {k: v for k, v in action.record_sn.items() if k not in missed}
    # recorded with the item's completion (one transaction, not one per side before it)
    call.records.extend(field_states(action.link_id, action.record_bp, record_sn))


async def _resolve_servicenow(w: Writes, action: ResolveServiceNow, call: WriteCall) -> None:
    if await w.resolve_is_stale(action, call.env):
        return
    values = {
        "state": str(int(SNState.RESOLVED)),
        "close_code": action.close_code,
        "close_notes": action.close_notes,
    }
    resolved_by = None
    if action.resolved_by is not None:
        resolved_by = await w.lookups.resolve(action.resolved_by)
        if resolved_by is not None:
            values["resolved_by"] = resolved_by
    record = await w.sn.update_incident(action.sys_id, values)
    if resolved_by is not None and ref_value(record.fields.get("resolved_by")) != resolved_by:
        # the Resolved business rule stamps the API user on the state change:
        # resolved_by_email's user is set once the incident is Resolved (B7)
        await w.sn.update_incident(action.sys_id, {"resolved_by": resolved_by})
    if action.reopen_deadline is not None:
        await w.store.set_link_state(
            action.link_id,
            LinkState.RESOLVED,
            w.clock.now(),
            resolved_at=w.clock.now(),
            reopen_deadline=action.reopen_deadline,
        )
    return


async def _reopen_servicenow(w: Writes, action: ReopenServiceNow, call: WriteCall) -> None:
    values = {"state": str(int(SNState.IN_PROGRESS))}
    if action.work_note:
        values["work_notes"] = action.work_note
    await w.sn.update_incident(action.sys_id, values)
    link = await w.store.get_link(action.link_id)
    if link is not None and link.state == LinkState.RESOLVED:
        await w.store.set_link_state(action.link_id, LinkState.LINKED, w.clock.now())


async def _defined(w: Writes, send: Callable[[], Awaitable[None]]) -> None:
    """A tag write; a tag that is no longer defined (someone deleted the definition)
    is defined again, with every other tag bpsync writes, and the write sent once more."""
    try:
        await send()
    except MissingTagError as exc:
        log.warning("a BigPanda tag bpsync writes is not defined (any more): %s", exc)
        await ensure_tag_definitions(w.bp, w.settings)
        await send()


async def _update_bigpanda_tags(w: Writes, action: UpdateBigPandaTags, call: WriteCall) -> None:
    tags, remove_tags = dict(action.tags), action.remove_tags
    if remove_tags or call.recheck:
        # with removals, several calls: even a first attempt may follow a partial
        # success of an earlier one, so send only what still differs
        current = await w.bp.get_tags(action.environment_id, action.bp_incident_id)
        tags = {k: v for k, v in tags.items() if current.get(k) != v}
        remove_tags = tuple(t for t in remove_tags if t in current)
    if tags:
        await _defined(w, lambda: w.bp.set_tags(action.environment_id, action.bp_incident_id, tags))
    for tag_id in remove_tags:
        await w.bp.delete_tag(action.environment_id, action.bp_incident_id, tag_id)
    call.records.extend(field_states(action.link_id, action.record_bp, action.record_sn))


async def _resolve_bigpanda(w: Writes, action: ResolveBigPanda, call: WriteCall) -> None:
    if await w.resolve_is_stale(action, call.env):
        return
    await w.bp.resolve_incident(action.environment_id, action.bp_incident_id, action.comment)
    if action.reopen_deadline is not None:
        await w.store.set_link_state(
            action.link_id,
            LinkState.RESOLVED,
            w.clock.now(),
            resolved_at=w.clock.now(),
            reopen_deadline=action.reopen_deadline,
        )
    return


async def _comment_bigpanda(w: Writes, action: CommentBigPanda, call: WriteCall) -> None:
    # bpsync's comments carry the mirror marker (the plan's do): journals never carry them back
    text = action.text if is_own(action.text) else f"{MIRROR_MARKER} {action.text}"
    await w.bp.add_comment(action.environment_id, action.bp_incident_id, text)


async def _snooze_bigpanda(w: Writes, action: SnoozeBigPanda, call: WriteCall) -> None:
    env, bp_id = action.environment_id, action.bp_incident_id
    want = action.end_time is not None
    current = await w.bp.get_incident(env, bp_id, expand_alerts=False) if call.recheck else None
    if current is None or current.snoozed != want:
        if action.end_time is not None:
            await w.bp.snooze_incident(env, bp_id, action.end_time)
        else:
            await w.bp.unsnooze_incident(env, bp_id)
    call.records.extend(field_states(action.link_id, action.record_bp, action.record_sn))


async def _assign_bigpanda(w: Writes, action: AssignBigPanda, call: WriteCall) -> None:
    env, bp_id = action.environment_id, action.bp_incident_id
    current = await w.bp.get_incident(env, bp_id, expand_alerts=False) if call.recheck else None
    if current is None or current.assignee_id != action.user_id:
        if action.user_id is not None:
            await w.bp.assign_incident(env, bp_id, action.user_id)
        else:  # not assigned any more (BigPanda's 400): nothing to undo
            await w.bp.unassign_incident(env, bp_id)
    call.records.extend(field_states(action.link_id, action.record_bp, action.record_sn))


async def _set_link_tag(w: Writes, action: SetLinkTag, call: WriteCall) -> None:
    value = action.value
    if value is None:  # the link's number and URL, as the create left them
        link = await w.store.get_link(action.link_id) if action.link_id is not None else None
        if link is None or not link.sn_sys_id:
            log.warning(
                "link tag not set: the link has no ServiceNow incident",
                extra={"bp_incident_id": action.bp_incident_id, "link_id": action.link_id},
            )
            return
        value = link_tag_value(w.base_url, link.sn_number or "", link.sn_sys_id)
        action = dataclasses.replace(action, value=value)
    # a retry, and B14's report and way back (rare: once per outage), read the tag first:
    # the incident may say so already (another write's report, an earlier link's)
    read_first = call.recheck or value == LINK_TAG_ERROR_VALUE or action.only_after_error
    current_tags = (
        await w.bp.get_tags(action.environment_id, action.bp_incident_id) if read_first else {}
    )
    if current_tags.get(action.tag_id) != value:
        await _defined(
            w,
            lambda: w.bp.set_tag(
                action.environment_id, action.bp_incident_id, action.tag_id, value
            ),
        )
    if action.link_id is not None:
        call.records.append(FieldStates(action.link_id, Side.BIGPANDA, {action.tag_id: value}))
    return


Handler = Callable[[Writes, Any, WriteCall], Awaitable[None]]

#: the write action's type -> its handler (every kind of ``codec.WRITE_CLASSES``)
HANDLERS: dict[type[WriteAction], Handler] = {
    CreateServiceNowIncident: _create,
    UpdateServiceNowFields: _update_servicenow,
    ResolveServiceNow: _resolve_servicenow,
    ReopenServiceNow: _reopen_servicenow,
    UpdateBigPandaTags: _update_bigpanda_tags,
    ResolveBigPanda: _resolve_bigpanda,
    CommentBigPanda: _comment_bigpanda,
    SetLinkTag: _set_link_tag,
    SnoozeBigPanda: _snooze_bigpanda,
    AssignBigPanda: _assign_bigpanda,
    CarryEntryToServiceNow: carry_to_servicenow,
    CarryEntryToBigPanda: carry_to_bigpanda,
}

#: a BigPanda write's type -> the endpoint family its handler writes through (the
#: client's pacing bucket, whose hold the write waits for: :meth:`Writes.hold_of`)
BP_FAMILIES: dict[type[WriteAction], Family] = {
    UpdateBigPandaTags: Family.TAGS,
    ResolveBigPanda: Family.RESOLVE,
    CommentBigPanda: Family.COMMENTS,
    SetLinkTag: Family.TAGS,
    SnoozeBigPanda: Family.SNOOZE,
    AssignBigPanda: Family.ASSIGNMENT,
    CarryEntryToBigPanda: Family.COMMENTS,
}
