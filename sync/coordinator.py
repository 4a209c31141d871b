"""The coordinator: one sync cycle, and the health of both sides.

``run_cycle()`` (what the scheduler calls every ``poll_interval``):

1. Recover (:func:`recover`, shared with backfill): pending links that no outbox item
   owns (a crash between link and enqueue) are adopted by ``correlation_id``, or
   superseded and re-planned (never a second create); then due outbox items are driven
   (retries, dead items with attempts left, expired leases).
2. Poll both sides from their cursors (:mod:`sync.polling`, SPEC B16): change keys
   ``<id>:<version>:<epoch s>``, those in the cursor's ``seen`` set dropped; a malformed
   record is skipped once, named; a stamp in the future counts as now.
3. Pair changes (live links looked up in one batch): a BigPanda incident with its live
   link (and the ServiceNow incident if it changed too); a ServiceNow change with its
   live link; a ServiceNow change without a link only when its ``correlation_id`` names
   a BigPanda incident that has no live link (adopted by the planner's create, B2);
   anything else is ignored. An active BigPanda incident with neither a link nor a
   ServiceNow change is a newcomer: read later, in batches (:mod:`sync.newcomers`).
4. Hold the pairs whose link still has open writes, release those whose writes are done
   (:mod:`sync.held`). Plan each pair (the pure planner; a pair whose assignee moved
   has its people looked up first, :mod:`sync.assignee_reads`) and check the guards
   (:mod:`sync.guards`).
5. Execute, oldest first, ``pair_concurrency`` pairs at a time, newcomers planned as
   their batches arrive (:mod:`sync.execution`; a pair's conversation is read just
   before it executes, push passes run beside it for other incidents), and record
   progress as it goes: held
   links, then each cursor past what is finished (:func:`sync.progress.next_cursor`),
   every few seconds and at the end, however the cycle ends (``cycle_budget``, a stop,
   an error). A pair whose outcome is not recorded (an unexpected error) holds the
   watermark at its change, to be polled again; after ``MAX_PAIR_FAILURES``
   consecutive failures the change is given up with an ERROR line. The BigPanda keys of
   incidents bpsync wrote to are forgotten: a person who sets a value back within the
   same second makes a snapshot with the old key, which must count as new.

Errors: throttling is the clients' business (paused and sent again, :mod:`sync.clients.pacing`);
a side that cannot be polled for longer than ``pacing.outage_after`` fails the cycle;
the outage is logged once (WARNING, ERROR for refused credentials) and the recovery once
(INFO). A tripped guard fails the
cycle with :class:`~sync.errors.GuardTripped` before any write of it is sent (cursors
stay, so the same changes are guarded again next cycle) until the condition clears;
``force`` (``bpsync run --force``) overrides every guard for the life of the process,
with a WARNING line each time (restart without it to re-arm the guards). ``FatalError`` and
``StoreError`` (``FencedError`` too) stop the cycle. ``run_cycle`` never raises: the
error is in the returned :class:`CycleReport` and was logged once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sync.actions import Action, PlanInput
from sync.assignee_reads import AssigneeReads
from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.clock import Clock
from sync.constants import Side
from sync.errors import ApiError, BpsyncError, GuardTripped
from sync.execution import CycleRun, Planned
from sync.executor import Executor
from sync.followups import after_adoption
from sync.guards import check_mass_resolve
from sync.held import HeldPairs
from sync.journal_reads import JournalReads
from sync.lookups import Lookups
from sync.merge_reads import MergeReads
from sync.model import (
    LIVE_LINK_STATES,
    FieldState,
    JournalInput,
    Link,
    LinkState,
    SNIncident,
)
from sync.newcomers import expand_changed_alerts
from sync.pairing import Pairing
from sync.pairs import Pair, oldest_change, pair_bp_id
from sync.people import BigPandaUsers
from sync.polling import Polled, Poller, count_changes
from sync.progress import Progress, next_cursor
from sync.settings import Settings
from sync.sizes import DEFAULT_SIZES, FieldSizes
from sync.store.base import Cursor, LinkStore

log = logging.getLogger(__name__)

Planner = Callable[[PlanInput, Settings, datetime], list[Action]]

#: consecutive cycles a change may fail unexpectedly before it is given up
MAX_PAIR_FAILURES = 3
#: how long a count of the links serves cycles that change none (s): counting scans
#: every live link (~0.1 ms per 1,000 on SQLite), so idle cycles reuse the last count;
#: a cycle or push pass that executed anything counts again, and what another process
#: changed (``bpsync links``, a backfill) shows within this time
LINK_COUNT_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class LinkCounts:
    """Links counted by state (:meth:`Coordinator.link_counts`)."""

    #: linked or resolved (``bpsync_live_links``)
    linked: int
    #: pending, linked or resolved: the guards' live links
    live: int
    #: when counted (the clock's monotonic seconds)
    at: float


class CoordinatorMetrics(Protocol):
    """What the coordinator reports (``sync.engine`` adapts ``sync.metrics.Metrics``)."""

    def cycle_done(self, outcome: str, duration_s: float) -> None: ...

    def state(
        self,
        *,
        outbox_depth: int,
        dead_letters: int,
        live_links: int,
        cursor_lag_s: Mapping[str, float],
    ) -> None: ...

    def backlog(self, side: str, count: int) -> None: ...

    def skipped(self, side: str, reason: str) -> None: ...


@dataclass(slots=True)
class CycleReport:
    """What one cycle did; ``error`` is None for a good cycle."""

    pairs: int = 0
    actions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    error: BaseException | None = None
    guard: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


async def recover(executor: Executor, settings: Settings) -> list[Link]:
    """What a crash left, before anything new (a cycle's first step, and backfill's):
    pending links that no outbox item owns are adopted by ``correlation_id`` with the
    steps the plan's rule gives them (``followups.after_adoption``: the link tag), or
    superseded and returned, their incidents to be planned again (never a second
    create); then the outbox items due are sent again (retries, dead items with
    attempts left, expired leases)."""
    recovery = await executor.recover_pending_links()
    for adoption in recovery.adoptions:
        link = adoption.link
        steps = after_adoption(link.bp_incident_id, adoption.environment_id, link.id, settings)
        await executor.adopt(adoption, steps)
    await executor.drive_due()
    return recovery.replan


class Coordinator:
    """Runs sync cycles: poll, pair, plan, guard, execute, advance cursors."""

    def __init__(
        self,
        store: LinkStore,
        servicenow: ServiceNowAPI,
        bigpanda: BigPandaAPI,
        executor: Executor,
        settings: Settings,
        *,
        clock: Clock,
        planner: Planner | None = None,
        metrics: CoordinatorMetrics | None = None,
        force: bool = False,
        lookups: Lookups | None = None,
    ) -> None:
        if planner is None:
            from sync.planner import plan as default_plan

            planner = default_plan  # the pure planner; tests may inject their own
        self._store = store
        self._sn = servicenow
        self._bp = bigpanda
        self._executor = executor
        self._settings = settings
        self._clock = clock
        self._plan = planner
        self._metrics = metrics
        self.force = force
        self._pair_failures: dict[str, int] = {}
        self._last_guard: str | None = None
        self._link_counts: LinkCounts | None = None
        self._stopping = False
        self.sizes: FieldSizes = DEFAULT_SIZES
        """field sizes in force (``Engine.prepare`` reads the ServiceNow dictionary)"""
        self.labels: Mapping[str, Mapping[str, str]] = {}
        """choice labels of the fields ``label = true`` rows map (``Engine.prepare``)"""
        self.references: Mapping[str, str] = {}
        """mapped ServiceNow reference fields -> their tables (``Engine.prepare``)"""
        self._lookups = lookups or Lookups(servicenow, clock)
        self._poll = Poller(
            servicenow, bigpanda, settings, clock, forced=lambda: self.force, metrics=metrics
        )
        self.holds = HeldPairs(self)
        self.pairing = Pairing(self)
        self.users = BigPandaUsers(bigpanda, clock)
        """BigPanda users (SCIM), cached: assignees and the authors of comments"""
        self.assignees = AssigneeReads(settings, self.users, self._lookups)
        self.journals = JournalReads(self)
        self.merges = MergeReads(self)
        self.host: CycleRun | None = None
        """the cycle in flight that push passes may run beside (``CycleRun.open_to_guests``)"""
        self.guests = asyncio.Lock()

    # ------------------------------------------------------------------ for the cycle's run

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def bigpanda(self) -> BigPandaAPI:
        return self._bp

    @property
    def servicenow(self) -> ServiceNowAPI:
        return self._sn

    @property
    def executor(self) -> Executor:
        return self._executor

    @property
    def store(self) -> LinkStore:
        return self._store

    @property
    def stopping(self) -> bool:
        """A stop was asked for: the cycle in flight starts no new pair."""
        return self._stopping

    def request_stop(self) -> None:
        """Finish the pairs in flight, record progress, start nothing new (SIGTERM)."""
        self._stopping = True

    def report_backlog(self, side: Side, count: int) -> None:
        if self._metrics is not None:
            self._metrics.backlog(side.value, count)

    # ------------------------------------------------------------------ the cycle

    async def run_cycle(self) -> CycleReport:
        """One cycle; never raises (the error is in the report and logged once)."""
        started = self._clock.monotonic()
        report = CycleReport()
        try:
            await self._cycle(report)
        except GuardTripped as exc:
            report.error, report.guard = exc, exc.guard
            if self._last_guard != exc.guard:
                log.error("cycle stopped: %s", exc, extra={"guard": exc.guard})  # noqa: TRY400
            self._last_guard = exc.guard
        except BpsyncError as exc:
            report.error = exc
            if not isinstance(exc, ApiError) or not self._poll.is_down(exc.side):
                log.error("cycle stopped: %s", exc)  # noqa: TRY400 - one line, no trace
        except Exception as exc:  # a bug must not kill the scheduler
            report.error = exc
            log.exception("cycle failed unexpectedly")
        else:
            if self._last_guard is not None:
                log.info("guard %s cleared", self._last_guard)
                self._last_guard = None
        report.duration_s = self._clock.monotonic() - started
        if self._metrics is not None:
            outcome = "ok" if report.ok else ("guard" if report.guard else "error")
            self._metrics.cycle_done(outcome, report.duration_s)
            await self._report_state()
        return report

    async def _cycle(self, report: CycleReport) -> None:
        started = self._clock.monotonic()
        replan = await recover(self._executor, self._settings)
        held = await self.holds.load()
        live_links = (await self.link_counts()).live
        cursors = await self._store.cursors()
        bp_cursor, sn_cursor = cursors[Side.BIGPANDA], cursors[Side.SERVICENOW]
        poll = self._poll
        environments = await poll.guarded(Side.BIGPANDA, poll.environments(live_links))
        bp_polled = await poll.guarded(
            Side.BIGPANDA, poll.bigpanda(environments, bp_cursor, live_links)
        )
        sn_polled = await poll.guarded(Side.SERVICENOW, poll.servicenow(sn_cursor, live_links))
        progress = Progress({Side.BIGPANDA: bp_polled.changes, Side.SERVICENOW: sn_polled[1]})
        run = CycleRun(self, progress, held, {Side.BIGPANDA: bp_cursor, Side.SERVICENOW: sn_cursor})
        await self.work(
            report, run, Polled(bp_polled, sn_polled, environments, live_links, started, replan)
        )

    async def work(
        self, report: CycleReport, run: CycleRun, polled: Polled, via: str = "poll"
    ) -> None:
        """Pair, hold, plan, guard, execute and record what a poll (or a push pass,
        :mod:`sync.push`) brought: the cycle's steps 3 to 7."""
        progress, held = run.progress, run.held
        bp_polled, sn_polled = polled.bigpanda, polled.servicenow
        environments, live_links = polled.environments, polled.live_links
        worked: set[str] = set()
        try:
            pairs, fresh = await self.pairing.pair(
                bp_polled, sn_polled, polled.replan, environments
            )
            pairs, held, preludes = await self.holds.hold_busy(pairs, held, environments)
            run.held = held
            pairs, fresh = await self.merges.read(pairs, fresh, environments)
            pairs, aside = run.set_aside(pairs)
            await expand_changed_alerts(self._bp, self._settings, pairs, bp_polled.listed)
            # what no pair plans is finished: ignored records, history, and held pairs
            # (their links are in the held checkpoint and read again once released)
            worked.update(c.key for pair in (*pairs, *fresh, *aside) for c in pair.changes)
            progress.finish((k for k in progress.all_keys() if k not in worked), ok=True)
            await self.holds.run_preludes(preludes, live_links)
            if via == "poll":
                await run.open_to_guests(pairs, fresh)
            # each pair's conversation is read by its worker, just before it executes
            journals = await self.journals.pending(pairs, progress)
            now = self._clock.now()
            plans: list[Planned] = []
            # what was last synced, for every linked pair in one read
            synced = await self._store.field_states_for([p.link.id for p in pairs if p.link])
            for pair in sorted(pairs, key=oldest_change):
                known = synced.get(pair.link.id) if pair.link else None
                try:
                    inp = await self.plan_input(pair, synced=known)
                    todo = journals.get(pair_bp_id(pair))
                    actions = self._plan(inp, self._settings, now)
                    plans.append(Planned(pair, actions, inp, todo, now))
                except ValueError as exc:  # a planner refusing odd data: this pair only
                    log.error("cannot plan %s: %s", self.pair_ids(pair), exc)  # noqa: TRY400
                    progress.finish((c.key for c in pair.changes), ok=False)
            self.check_guards([planned.actions for planned in plans], live_links)
            report.pairs = len(pairs) + len(fresh)
            deadline = polled.started + self._settings.cycle_budget
            await run.execute(plans, fresh, deadline=deadline, polled=bp_polled.listed)
        except BaseException:
            # an outage, a store error, a cancelled drain: what finished stays finished
            try:
                await run.close_to_guests()
                await run.checkpoint(final=False)
            except Exception as exc:  # noqa: BLE001 - the first error is the one to report
                log.debug("progress not recorded: %s", exc)
            raise
        else:
            await run.close_to_guests()
            await run.checkpoint(final=True)
        finally:
            if run.actions:  # links may have been made or ended: counted again
                self._link_counts = None
            report.actions += run.actions
            for outcome, count in run.outcomes.items():
                report.outcomes[outcome] = report.outcomes.get(outcome, 0) + count
            count_changes(self._metrics, progress, worked, via)

    async def plan_pair(self, pair: Pair, now: datetime, *, checked: bool = False) -> list[Action]:
        """The planner's actions for one pair (ValueError: the planner refuses its data);
        ``checked``: a batched ServiceNow search found no incident for it (newcomers)."""
        return self._plan(await self.plan_input(pair, checked=checked), self._settings, now)

    def replan(self, inp: PlanInput, journal: JournalInput | None, now: datetime) -> list[Action]:
        """The pair planned again with its conversation, read since (pure, no I/O)."""
        return self._plan(dataclasses.replace(inp, journal=journal), self._settings, now)

    async def plan_input(
        self,
        pair: Pair,
        *,
        checked: bool = False,
        synced: Mapping[tuple[Side, str], FieldState] | None = None,
    ) -> PlanInput:
        """What the planner is given for one pair (its field states and people read);
        ``synced``: its link's field states, when the caller read them already."""
        if synced is None:
            synced = await self._store.field_states(pair.link.id) if pair.link else {}
        assignee = await self.assignees.read(pair.link, pair.bp, pair.sn, synced)
        return PlanInput(
            bp=pair.bp,
            sn=await self._named(pair.sn),
            link=pair.link,
            synced=synced,
            environment_id=pair.environment_id,
            correlation_checked=checked,
            sizes=self.sizes,
            references=self.references,
            labels=self.labels,
            journal=pair.journal,
            merge=pair.merge,
            assignee=assignee,
        )

    async def _named(self, sn: SNIncident | None) -> SNIncident | None:
        """The incident as people see it: each mapped reference field's sys_id replaced
        by the record's display value (a group's name), looked up and cached. A record
        that cannot be read leaves the field out: the planner takes it as unchanged."""
        if sn is None or not self.references:
            return sn
        fields = dict(sn.fields)
        for name in self.references:
            sys_id = fields.get(name)
            if not sys_id:
                continue
            display = await self._lookups.display(self.references[name], sys_id)
            if display is None:
                del fields[name]
            else:
                fields[name] = display
        return dataclasses.replace(sn, fields=fields)

    def check_guards(self, plans: Sequence[Sequence[Action]], live_links: int) -> None:
        try:
            check_mass_resolve(self._settings.guard, plans, live_links)
        except GuardTripped as exc:
            if not self.force:
                raise
            log.warning("guard %s overridden by --force: %s", exc.guard, exc)

    # ------------------------------------------------------------------ pairing

    @staticmethod
    def pair_ids(pair: Pair) -> str:
        bp_id = pair_bp_id(pair) or "?"
        sn_id = pair.sn.sys_id if pair.sn else (pair.link.sn_sys_id if pair.link else None)
        return f"BigPanda {bp_id} / ServiceNow {sn_id or '-'}"

    # ------------------------------------------------------------------ cursors

    async def advance(
        self,
        side: Side,
        cursor: Cursor,
        progress: Progress,
        *,
        final: bool,
        forget: Collection[str] = (),
    ) -> Cursor:
        """Move ``side``'s cursor past what ``progress`` finished (:func:`next_cursor`).

        ``final`` (the cycle's end): failed changes count towards giving up; after
        ``MAX_PAIR_FAILURES`` cycles in a row a change is given up with an ERROR line.
        Returns the cursor now in the store."""
        changes = progress.polled[side]
        given_up: set[str] = set()
        if final:
            for key in progress.failed:
                if key not in {c.key for c in changes}:
                    continue
                count = self._pair_failures.get(key, 0) + 1
                self._pair_failures[key] = count
                if count >= MAX_PAIR_FAILURES:
                    given_up.add(key)
                    log.error("change %s failed %d cycles in a row; given up", key, count)
            for change in changes:
                if change.key in progress.done:
                    self._pair_failures.pop(change.key, None)
        moved = next_cursor(
            side,
            cursor,
            changes,
            open_keys=progress.open_keys(side, given_up),
            now=self._clock.now(),
            overlap=timedelta(seconds=self._settings.cursor_overlap),
            forget=forget,
        )
        if moved is None or moved == cursor:
            return cursor
        await self._store.advance_cursor(moved, self._clock.now())
        return moved

    # ------------------------------------------------------------------ metrics

    async def link_counts(self) -> LinkCounts:
        """The links by state, counted at most every :data:`LINK_COUNT_TTL_S` while no
        cycle or push pass executes anything (one read when counted)."""
        counts = self._link_counts
        now = self._clock.monotonic()
        if counts is None or now - counts.at >= LINK_COUNT_TTL_S or now < counts.at:
            by_state = await self._store.count_links_by_state(LIVE_LINK_STATES)
            linked = by_state[LinkState.LINKED] + by_state[LinkState.RESOLVED]
            counts = LinkCounts(linked, linked + by_state[LinkState.PENDING], now)
            self._link_counts = counts
        return counts

    async def _report_state(self) -> None:
        assert self._metrics is not None
        try:
            summary = await self._store.summary()  # one read
            links = await self.link_counts()
        except BpsyncError as exc:
            log.debug("metrics not refreshed: %s", exc)
            return
        now = self._clock.now()
        lag = {
            side.value: max(0.0, (now - cursor.watermark).total_seconds())
            for side, cursor in summary.cursors.items()
            if cursor.watermark is not None
        }
        self._metrics.state(
            outbox_depth=summary.outbox_depth,
            dead_letters=summary.dead_letters,
            live_links=links.linked,
            cursor_lag_s=lag,
        )
