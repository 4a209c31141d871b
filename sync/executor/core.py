"""The executor: carries out the planner's actions through the clients, durably.

Contract
========

Per pair, :meth:`Executor.execute` runs the action list in order and records each
outcome in the store on its own: one incident's failure never undoes another's, and a
failed write of a pair does not stop the pair's other writes (except a failed create,
which everything after it depends on).

Store-only actions (link state, field states, conflicts) are applied here. Every write
goes through the outbox (:mod:`sync.executor.delivery`: attempts, backoff, dead letters),
is sent by its handler (:mod:`sync.executor.writes`), and a write failed for good is
reported (:mod:`sync.executor.alerts`); :mod:`sync.executor.codec` turns a write into its
outbox item and back.

A create starts here: ``previous_link_id`` -> that link becomes ``superseded`` ->
the pending link with its environment (``Link.bp_environment_id``) and the create's outbox
item in one transaction (``create_pending_link_and_enqueue``; ``DuplicateLinkError``:
another cycle or replica owns it, skip); the rest of the protocol is the create handler's.
:meth:`Executor.recover_pending_links` finds pending links without an outbox item
(a crash between the link and the enqueue, or a dropped dead letter): not found by
``correlation_id`` -> superseded and handed back for re-planning; found -> handed back,
and :meth:`Executor.adopt` confirms it with the steps the caller planned for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sync.actions import (
    STORE_ONLY_KINDS,
    Action,
    CreateServiceNowIncident,
    FollowUp,
    FreezeField,
    MarkLinkLinked,
    MarkLinkResolved,
    MoveLink,
    RecordConflict,
    RecordSynced,
    SupersedeLink,
)
from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.clock import Clock
from sync.executor.alerts import Alerts
from sync.executor.codec import (
    WriteAction,
    ids_of,
    new_outbox_item,
)
from sync.executor.delivery import DEFAULT_DRIVE_LIMIT, DEFAULT_LEASE_S, Delivery, DriveReport
from sync.executor.writes import Writes
from sync.flipflop import FLIPS, FROZEN
from sync.lookups import Lookups
from sync.model import Link, LinkState
from sync.settings import Settings
from sync.store.base import (
    DuplicateLinkError,
    LinkStore,
    NewAuditEntry,
    OutboxItem,
    OutboxState,
)

# every line the executor logs is on "sync.executor" (log consumers filter on it)
log = logging.getLogger("sync.executor")


class ExecutorMetrics(Protocol):
    """What the executor reports (``sync.engine`` adapts ``sync.metrics.Metrics``)."""

    def action_done(self, kind: str, outcome: str, duration_s: float) -> None: ...

    def notification(self, kind: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Adoption:
    """A pending link no outbox item owns whose create reached ServiceNow: the incident
    found by its correlation_id, and the BigPanda incident's environment."""

    link: Link
    sn_sys_id: str
    sn_number: str
    environment_id: str | None


@dataclass(slots=True)
class Recovery:
    """What :meth:`Executor.recover_pending_links` found."""

    replan: list[Link] = field(default_factory=list)
    """Superseded (no incident found): their incidents are planned again."""
    adoptions: list[Adoption] = field(default_factory=list)
    """Found: to be adopted with the plan's steps (:meth:`Executor.adopt`)."""


@dataclass(slots=True)
class PairResult:
    """The outcome of one pair's actions.

    ``recorded`` is True when every write either succeeded or is durably in the outbox
    (so the coordinator may move its cursor past the change).
    """

    outcomes: list[tuple[str, str]] = field(default_factory=list)
    recorded: bool = True
    adopted: bool = False
    """A create adopted the ServiceNow incident found by correlation_id."""

    def add(self, kind: str, outcome: str) -> None:
        self.outcomes.append((kind, outcome))


class Executor:
    """Runs actions through the clients, through the outbox, recording every outcome."""

    def __init__(
        self,
        store: LinkStore,
        servicenow: ServiceNowAPI,
        bigpanda: BigPandaAPI,
        settings: Settings,
        clock: Clock,
        *,
        lookups: Lookups | None = None,
        metrics: ExecutorMetrics | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        lookups = lookups or Lookups(servicenow, clock)
        self._writes = Writes(store, servicenow, bigpanda, settings, clock, lookups=lookups)
        self._alerts = Alerts(settings, self._writes.environment_of, metrics)
        self._delivery = Delivery(
            store,
            clock,
            settings.retry,
            self._writes,
            self._alerts,
            pacing=settings.pacing.policy(),
            log_action=self._log_action,
            lease_s=lease_s,
        )

    # ------------------------------------------------------------------ public API

    @property
    def base_url(self) -> str:
        return self._writes.base_url

    @property
    def notifications(self) -> int:
        """How many times the operator was notified (see :mod:`sync.executor.alerts`)."""
        return self._alerts.notifications

    async def execute(self, actions: Sequence[Action], *, environment_id: str | None) -> PairResult:
        """Run one pair's actions in order; each outcome is recorded on its own."""
        result = PairResult()
        for action in actions:
            started = self._clock.monotonic()
            outcome = await self._execute_one(action, environment_id, result)
            if (
                isinstance(action, CreateServiceNowIncident)
                and action.bp_incident_id in self._writes.adopted
            ):
                result.adopted = True  # (_log_action forgets it)
            self._log_action(action, outcome, self._clock.monotonic() - started)
            result.add(action.kind, outcome)
            if isinstance(action, CreateServiceNowIncident) and outcome != "ok":
                break  # everything after a create depends on its link
        return result

    async def drive_due(self, *, limit: int = DEFAULT_DRIVE_LIMIT) -> DriveReport:
        """Send again what is due: failed writes whose interval passed, dead items with
        attempts left, and in-flight items whose lease expired or that a previous process
        claimed before it was killed (this one started later)."""
        return await self._delivery.drive_due(limit=limit)

    async def recover_pending_links(self) -> Recovery:
        """Pending links that no outbox item owns (a crash between the link and the
        enqueue, or a dropped dead letter), looked up by correlation_id: not found, the
        link is superseded and handed back (``replan``: its incident is planned again);
        found, handed back to be adopted with its plan (:meth:`adopt`)."""
        recovery = Recovery()
        pending = await self._store.list_links([LinkState.PENDING], limit=10_000)
        if not pending:
            return recovery
        open_items = await self._store.outbox_heads(
            [OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD]
        )
        owned = {item.link_id for item in open_items if item.kind == CreateServiceNowIncident.kind}
        for link in pending:
            if link.id in owned:
                continue
            record = await self._writes.find_existing(link.bp_incident_id, link.id)
            if record is None:
                now = self._clock.now()
                superseded = await self._store.set_link_state(link.id, LinkState.SUPERSEDED, now)
                recovery.replan.append(superseded)
                log.warning(
                    "pending link without an outbox item and no ServiceNow incident: "
                    "superseded, the incident will be planned again",
                    extra={"bp_incident_id": link.bp_incident_id, "link_id": link.id},
                )
                continue
            recovery.adoptions.append(
                Adoption(
                    link,
                    record.sys_id,
                    record.number,
                    await self.environment_of(link.bp_incident_id),
                )
            )
        return recovery

    async def adopt(self, adoption: Adoption, steps: Sequence[FollowUp]) -> None:
        """A recovered pending link takes the incident found for it, with the steps its
        plan gives (``sync.followups.after_adoption``: the link tag). The steps are in
        the outbox before the link is confirmed: killed in between, the link is still
        pending and recovered again (its steps enqueued once: the same idempotency
        keys); after, they are sent like any write."""
        link = adoption.link
        enqueued: list[tuple[OutboxItem, FollowUp, Mapping[str, Any]]] = []
        for step in steps:
            new, meta = new_outbox_item(step, step.environment_id)
            enqueued.append((await self._delivery.enqueue(new), step, meta))
        # the link confirmed with its "adopted" audit entry, in one transaction
        now = self._clock.now()
        await self._store.confirm_link_and_record(
            link.id, adoption.sn_sys_id, adoption.sn_number, now, audit_outcome="adopted"
        )
        log.info(
            "pending link recovered: adopted the ServiceNow incident found by correlation_id",
            extra={"bp_incident_id": link.bp_incident_id, "sn_sys_id": adoption.sn_sys_id},
        )
        for item, step, step_meta in enqueued:
            await self._delivery.send_enqueued(item, step, step.environment_id, step_meta)

    async def environment_of(self, bp_incident_id: str) -> str | None:
        """The BigPanda environment remembered for an incident (at its create)."""
        return await self._writes.environment_of(bp_incident_id)

    # ------------------------------------------------------------------ one action

    async def _execute_one(self, action: Action, env: str | None, result: PairResult) -> str:
        if action.kind in STORE_ONLY_KINDS:
            await self._apply_store_only(action)
            return "ok"
        assert not isinstance(
            action,
            MarkLinkLinked
            | MarkLinkResolved
            | MoveLink
            | SupersedeLink
            | RecordSynced
            | RecordConflict
            | FreezeField,
        )
        if isinstance(action, CreateServiceNowIncident):
            return await self._start_create(action, result)
        return await self._run_write(action, env, result)

    async def _apply_store_only(self, action: Action) -> None:
        now = self._clock.now()
        if isinstance(action, MarkLinkResolved):
            await self._store.set_link_state(
                action.link_id,
                LinkState.RESOLVED,
                now,
                resolved_at=action.resolved_at,
                reopen_deadline=action.reopen_deadline,
            )
        elif isinstance(action, MarkLinkLinked):
            await self._store.set_link_state(action.link_id, LinkState.LINKED, now)
        elif isinstance(action, MoveLink | SupersedeLink):
            await self._merge_link(action)
        elif isinstance(action, RecordSynced):
            await self._writes.record(action.link_id, action.record_bp, action.record_sn)
        elif isinstance(action, FreezeField):
            state = {FROZEN + action.field: "true", FLIPS + action.field: None}
            await self._writes.record(action.link_id, {}, state)
            log.warning(
                "%s frozen for this pair: it flipped back %d times within the guard's window "
                "(a rule on either side keeps changing it); `bpsync links release %d` resumes it",
                action.field,
                action.writes,
                action.link_id,
                extra={"bp_incident_id": action.bp_incident_id, "link_id": action.link_id},
            )
        elif isinstance(action, RecordConflict):
            await self._store.record_audit(
                NewAuditEntry(
                    "conflict",
                    f"{action.winner.value} wins",
                    link_id=action.link_id,
                    bp_incident_id=action.bp_incident_id,
                    field=action.sn_field,
                    bp_value=action.bp_value,
                    sn_value=action.sn_value,
                    detail={"bp_tag": action.bp_tag, "policy": action.policy},
                ),
                now,
            )

    async def _merge_link(self, action: MoveLink | SupersedeLink) -> None:
        """A merge's link step (``sync.merges``), audited: the move, or as its contract
        says when the destination has a live link meanwhile, the supersede."""
        now = self._clock.now()
        link_id, bp_id = action.link_id, action.bp_incident_id
        detail: dict[str, str] = {"reason": getattr(action, "reason", "")}
        if isinstance(action, MoveLink):
            detail = {"from": bp_id, "to": action.to_bp_incident_id}
            try:
                await self._store.move_link(
                    link_id, action.to_bp_incident_id, now, bp_environment_id=action.environment_id
                )
            except DuplicateLinkError:
                detail["reason"] = f"{action.to_bp_incident_id} has a live link: not moved"
            else:
                await self._store.record_audit(
                    NewAuditEntry(
                        "action", "link moved", link_id=link_id, bp_incident_id=bp_id, detail=detail
                    ),
                    now,
                )
                log.info(
                    "link moved to the merge's destination %s",
                    action.to_bp_incident_id,
                    extra={"bp_incident_id": bp_id, "link_id": link_id},
                )
                return
        link = await self._store.get_link(link_id)
        if link is not None and link.state != LinkState.SUPERSEDED:
            await self._store.set_link_state(link_id, LinkState.SUPERSEDED, now)
        await self._store.record_audit(
            NewAuditEntry(
                "action", "link superseded", link_id=link_id, bp_incident_id=bp_id, detail=detail
            ),
            now,
        )
        log.info(
            "link superseded: %s",
            detail["reason"],
            extra={"bp_incident_id": bp_id, "link_id": link_id},
        )

    async def _start_create(self, action: CreateServiceNowIncident, result: PairResult) -> str:
        now = self._clock.now()
        if action.previous_link_id is not None:
            previous = await self._store.get_link(action.previous_link_id)
            if previous is not None and previous.state != LinkState.SUPERSEDED:
                await self._store.set_link_state(previous.id, LinkState.SUPERSEDED, now)
        env = action.environment_id
        # the pending link, the environment and the create's outbox item in one
        # transaction (all or nothing): a crash leaves either none or all of them
        try:
            link, item = await self._store.create_pending_link_and_enqueue(
                action.bp_incident_id,
                now,
                lambda link: new_outbox_item(action, env, {"link_id": link.id})[0],
                previous_link_id=action.previous_link_id,
                bp_environment_id=env,
            )
        except DuplicateLinkError:
            log.info(
                "another cycle or replica owns this incident's link; create skipped",
                extra={"bp_incident_id": action.bp_incident_id},
            )
            return "skipped"
        except Exception:
            result.recorded = False
            raise
        meta = {"environment_id": env, "link_id": link.id}
        return await self._delivery.send_enqueued(item, action, env, meta)

    async def _run_write(self, action: WriteAction, env: str | None, result: PairResult) -> str:
        """enqueue (SPEC B15: before it is sent) -> send now unless queued behind an older
        write -> complete/fail."""
        new, meta = new_outbox_item(action, env)
        try:
            item = await self._delivery.enqueue(new)
        except Exception:
            result.recorded = False
            raise
        return await self._delivery.send_enqueued(item, action, env, meta)

    # ------------------------------------------------------------------ logging

    def _log_action(
        self, action: Action, outcome: str, duration_s: float, *, retry: bool = False
    ) -> None:
        bp_id, sn_id, link_id = ids_of(action)
        if isinstance(action, CreateServiceNowIncident):
            sn_id, link_id = self._writes.created.pop(action.bp_incident_id, (sn_id, link_id))
            self._writes.adopted.discard(action.bp_incident_id)
        log.info(
            "%s %s",
            action.kind,
            outcome,
            extra={
                "kind": action.kind,
                "outcome": outcome,
                "bp_incident_id": bp_id,
                "sn_sys_id": sn_id,
                "link_id": link_id,
                "duration_ms": round(duration_s * 1000, 1),
                "retry": retry,
            },
        )
        if self._metrics is not None:
            self._metrics.action_done(action.kind, outcome, duration_s)
