"""The coordinator: one sync cycle, and the health of both sides.

``run_cycle()`` (what the scheduler calls every ``poll_interval``):

1. Recover pending links that no outbox item owns (crash between link and enqueue):
   adopted by ``correlation_id``, or superseded and re-planned (never a second create).
2. Drive due outbox items (retries, dead items with attempts left, expired leases).
3. Poll BigPanda (``list_changed`` per shared environment: ``bigpanda.environments``, or
   every environment from ``list_environments`` when that is empty) and ServiceNow
   (``list_changed``), each from its cursor minus ``cursor_overlap`` (SPEC B16).
   Every polled change has a key ``<id>:<version>:<epoch s>`` (BigPanda: version = a
   digest of status, end and tags, as ``updated_at`` has whole seconds; ServiceNow:
   ``sys_mod_count``); a key in the cursor's ``seen`` set was
   processed already and is dropped, so changes that share a second with the cursor are
   neither missed nor processed twice. ``seen`` keeps the keys of the overlap window.
4. Pair changes (live links looked up in one batch): a BigPanda incident with its live
   link (and the ServiceNow incident if it changed too); a ServiceNow change with its
   live link; a ServiceNow change without a link only when its ``correlation_id`` names
   a BigPanda incident that has no live link (adopted by the planner's create, B2);
   anything else is ignored. An active BigPanda incident with neither a link nor a
   ServiceNow change is a newcomer: read later, in batches (:mod:`sync.newcomers`). A
   malformed record is skipped once, named; a stamp in the future counts as now.
5. Hold the pairs whose link still has open writes (a pending create, a write waiting
   for its retry): planned now, they would be planned from last-synced values that the
   waiting write has not recorded yet (echoes, a stale value winning). Their link ids are
   kept in the store (checkpoint ``held_links``, written before the cursors move), and
   once their writes have drained they are read on both sides and planned as they are.
   Plan each pair (the pure planner) and check the guards (:mod:`sync.guards`).
6. Execute, oldest first, ``pair_concurrency`` pairs at a time, newcomers planned as
   their batches arrive (:mod:`sync.execution`), and record progress as it goes: held
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

import dataclasses
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sync.actions import Action, PlanInput
from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.clock import Clock, epoch_s
from sync.constants import BP_ID_PATTERN, Side, SNState
from sync.errors import ApiError, BpsyncError, FatalError, GuardTripped, NotFoundError
from sync.execution import CycleRun
from sync.executor import Executor
from sync.guards import check_empty_side, check_mass_resolve
from sync.lookups import Lookups
from sync.mapping import compile_rules, reads_primary_alert, updated_texts
from sync.model import LIVE_LINK_STATES, BPIncident, Link, LinkState, SNIncident
from sync.newcomers import expanded_oldest_first
from sync.pairs import (
    HELD_CHECKPOINT,
    SN_SYS_ID_FORM,
    Held,
    Pair,
    bp_change,
    oldest_change,
    pair_bp_id,
    resolved_prelude,
    sn_change,
)
from sync.progress import Change, Progress, next_cursor
from sync.settings import Settings
from sync.sizes import DEFAULT_SIZES, FieldSizes
from sync.store.base import Cursor, LinkStore, OutboxState

log = logging.getLogger(__name__)

T = TypeVar("T")

Planner = Callable[[PlanInput, Settings, datetime], list[Action]]

#: consecutive cycles a change may fail unexpectedly before it is given up
MAX_PAIR_FAILURES = 3


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


@dataclass(frozen=True, slots=True)
class BPPoll:
    """What a BigPanda poll brought: the changed incidents (each with its environment),
    their change keys, and every incident listed, seen before or not."""

    found: list[tuple[BPIncident, str]]
    changes: list[Change]
    listed: list[tuple[BPIncident, str]]


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
        self._down: dict[str, str] = {}
        self._pair_failures: dict[str, int] = {}
        self._last_guard: str | None = None
        self._stopping = False
        self._skipped: set[tuple[str, str]] = set()
        """(record, reason) of the ServiceNow records skipped or clamped and logged."""
        self.sizes: FieldSizes = DEFAULT_SIZES
        """field sizes in force (``Engine.prepare`` reads the ServiceNow dictionary)"""
        self.references: Mapping[str, str] = {}
        """ServiceNow reference fields -> their tables (``Engine.prepare``, dictionary)"""
        self._lookups = lookups or Lookups(servicenow, clock)

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

    def _skip_once(self, record: str, reason: str, message: str) -> None:
        """One WARNING and one metric count per (record, reason) for the process's life."""
        if (record, reason) in self._skipped:
            return
        self._skipped.add((record, reason))
        log.warning(message, extra={"side": Side.SERVICENOW.value, "reason": reason})
        if self._metrics is not None:
            self._metrics.skipped(Side.SERVICENOW.value, reason)

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
            if not isinstance(exc, ApiError) or exc.side not in self._down:
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
        replan = await self._executor.recover_pending_links()
        await self._executor.drive_due()
        held = await self._held_links()
        live_links = await self._store.count_links(LIVE_LINK_STATES)
        bp_cursor = await self._store.get_cursor(Side.BIGPANDA)
        sn_cursor = await self._store.get_cursor(Side.SERVICENOW)
        environments = await self._guarded_poll(Side.BIGPANDA, self._environments(live_links))
        bp_polled = await self._guarded_poll(
            Side.BIGPANDA, self._poll_bigpanda(environments, bp_cursor, live_links)
        )
        sn_polled = await self._guarded_poll(
            Side.SERVICENOW, self._poll_servicenow(sn_cursor, live_links)
        )
        progress = Progress({Side.BIGPANDA: bp_polled.changes, Side.SERVICENOW: sn_polled[1]})
        run = CycleRun(self, progress, held, {Side.BIGPANDA: bp_cursor, Side.SERVICENOW: sn_cursor})
        try:
            pairs, fresh = await self._pair(bp_polled, sn_polled, replan, environments)
            pairs, held, preludes = await self._hold_busy(pairs, held, environments)
            run.held = held
            await self._expand_alerts(pairs, bp_polled.listed)
            # what no pair plans is finished: ignored records, history, and held pairs
            # (their links are in the held checkpoint and read again once released)
            worked = {c.key for pair in (*pairs, *fresh) for c in pair.changes}
            progress.finish((k for k in progress.all_keys() if k not in worked), ok=True)
            await self._run_preludes(preludes, live_links)
            now = self._clock.now()
            plans: list[tuple[Pair, list[Action]]] = []
            for pair in sorted(pairs, key=oldest_change):
                try:
                    plans.append((pair, await self.plan_pair(pair, now)))
                except ValueError as exc:  # a planner refusing odd data: this pair only
                    log.error("cannot plan %s: %s", self.pair_ids(pair), exc)  # noqa: TRY400
                    progress.finish((c.key for c in pair.changes), ok=False)
            self.check_guards([actions for _, actions in plans], live_links)
            report.pairs = len(pairs) + len(fresh)
            deadline = started + self._settings.cycle_budget
            await run.execute(plans, fresh, deadline=deadline, polled=bp_polled.listed)
        except BaseException:
            # an outage, a store error, a cancelled drain: what finished stays finished
            try:
                await run.checkpoint(final=False)
            except Exception as exc:  # noqa: BLE001 - the first error is the one to report
                log.debug("progress not recorded: %s", exc)
            raise
        else:
            await run.checkpoint(final=True)
        finally:
            report.actions += run.actions
            for outcome, count in run.outcomes.items():
                report.outcomes[outcome] = report.outcomes.get(outcome, 0) + count

    async def plan_pair(self, pair: Pair, now: datetime, *, checked: bool = False) -> list[Action]:
        """The planner's actions for one pair (ValueError: the planner refuses its data);
        ``checked``: a batched ServiceNow search found no incident for it (newcomers)."""
        inp = PlanInput(
            bp=pair.bp,
            sn=await self._named(pair.sn),
            link=pair.link,
            synced=await self._store.field_states(pair.link.id) if pair.link else {},
            environment_id=pair.environment_id,
            correlation_checked=checked,
            sizes=self.sizes,
            references=self.references,
        )
        return self._plan(inp, self._settings, now)

    async def _named(self, sn: SNIncident | None) -> SNIncident | None:
        """The incident as people see it: each mapped reference field's sys_id replaced
        by the record's display value (a group's name), looked up and cached. A record
        that cannot be read leaves the field out: the planner takes it as unchanged."""
        if sn is None or not self.references:
            return sn
        mapped = {rule.field for rule in compile_rules(self._settings)}
        fields = dict(sn.fields)
        for name in mapped & self.references.keys():
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

    # ------------------------------------------------------------------ polling

    async def _guarded_poll(self, side: Side, poll: Awaitable[T]) -> T:
        """Await a poll of ``side``: log an outage once and a recovery once."""
        try:
            value = await poll
        except ApiError as exc:
            if side.value not in self._down:
                self._down[side.value] = str(exc)
                level = logging.ERROR if isinstance(exc, FatalError) else logging.WARNING
                log.log(level, "%s is unavailable: %s", side.value, exc, extra={"side": side.value})
            raise
        if self._down.pop(side.value, None) is not None:
            log.info("%s is available again", side.value, extra={"side": side.value})
        return value

    async def _environments(self, live_links: int) -> list[str]:
        configured = list(self._settings.bigpanda.environments)
        if configured:
            return configured
        found = [env.id for env in await self._bp.list_environments()]
        self._check_empty(Side.BIGPANDA, len(found), live_links, what="environments")
        return found

    async def _poll_bigpanda(
        self, environments: Sequence[str], cursor: Cursor, live_links: int
    ) -> BPPoll:
        """Changed incidents (each with its environment), every change key polled, and
        every incident listed, seen before or not (newcomers' pages are found from it)."""
        since_s = None if cursor.watermark is None else epoch_s(cursor.watermark)
        found: dict[str, tuple[BPIncident, str]] = {}
        changes: list[Change] = []
        total = 0
        now = self._clock.now()
        listed: list[tuple[BPIncident, str]] = []
        for env in environments:
            incidents = await self._bp.list_changed(
                env,
                since_s,
                overlap_s=self._settings.cursor_overlap,
                page_size=self._settings.retrieval_count,
            )
            total += len(incidents)
            listed += [(incident, env) for incident in incidents]
            for incident in incidents:
                change = bp_change(incident, now)
                if change.key in cursor.seen or incident.id in found:
                    continue
                found[incident.id] = (incident, env)
                changes.append(change)
        if cursor.watermark is None:
            self._check_empty(Side.BIGPANDA, total, live_links)
        return BPPoll(list(found.values()), changes, listed)

    async def _poll_servicenow(
        self, cursor: Cursor, live_links: int
    ) -> tuple[list[SNIncident], list[Change]]:
        records = await self._sn.list_changed(
            cursor.watermark, overlap_s=self._settings.cursor_overlap
        )
        if cursor.watermark is None:
            self._check_empty(Side.SERVICENOW, len(records), live_links)
        found: dict[str, SNIncident] = {}
        changes: list[Change] = []
        now = self._clock.now()
        for record in records:
            name = str(record.get("sys_id") or "?")
            try:
                incident = SNIncident.from_record(record)
            except ValueError as exc:  # B19: one malformed record is skipped, named
                self._skip_once(name, "malformed", f"ServiceNow record skipped: {exc}")
                continue
            if not SN_SYS_ID_FORM.fullmatch(incident.sys_id):
                self._skip_once(
                    name,
                    "bad_sys_id",
                    f"ServiceNow record {incident.sys_id!r} ({incident.number or 'no number'}) "
                    "skipped: its sys_id is not 32 letters and digits",
                )
                continue
            change = sn_change(incident, now)
            if incident.sys_updated_on > now:
                self._skip_once(
                    name,
                    "future_timestamp",
                    f"ServiceNow record {incident.sys_id} ({incident.number}) is stamped "
                    f"{incident.sys_updated_on:%Y-%m-%d %H:%M:%S} UTC, in the future: "
                    "taken as changed now (the cursor does not move past now)",
                )
            if change.key in cursor.seen:
                continue
            found[incident.sys_id] = incident  # the latest version wins
            changes.append(change)
        return list(found.values()), changes

    def _check_empty(
        self, side: Side, count: int, live_links: int, *, what: str = "incidents"
    ) -> None:
        try:
            check_empty_side(self._settings.guard, side.value, what, count, live_links)
        except GuardTripped as exc:
            if not self.force:
                raise
            log.warning("guard %s overridden by --force: %s", exc.guard, exc)

    # ------------------------------------------------------------------ pairing

    async def _pair(
        self,
        bp_polled: BPPoll,
        sn_polled: tuple[list[SNIncident], list[Change]],
        replan: Sequence[Link],
        environments: Sequence[str],
    ) -> tuple[list[Pair], list[Pair]]:
        """(pairs to plan now, new incidents): a new incident is an active BigPanda
        incident without a live link and without a ServiceNow change; its alerts and
        duplicate check are read in batches while other pairs execute (newcomers)."""
        pairs: dict[str, Pair] = {}
        bp_changes = {c.key.split(":", 1)[0]: c for c in bp_polled.changes}
        sn_changes = {c.key.split(":", 1)[0]: c for c in sn_polled[1]}
        links = await self._store.live_links_for_bp([i.id for i, _ in bp_polled.found])
        for incident, env in bp_polled.found:
            link = links.get(incident.id)
            pair = Pair(incident, None, link, env, [bp_changes[incident.id]])
            pairs[incident.id] = pair
        for sn in sn_polled[0]:
            change = sn_changes[sn.sys_id]
            link = await self._store.live_link_for_sn(sn.sys_id)
            if link is not None:
                known = pairs.get(link.bp_incident_id)
                if known is not None:
                    known.sn = sn
                    known.changes.append(change)
                    continue
                link_env = await self._executor.environment_of(link.bp_incident_id)
                if link_env is None and len(environments) == 1:
                    link_env = environments[0]
                pairs[link.bp_incident_id] = Pair(None, sn, link, link_env, [change])
                continue
            corr = sn.correlation_id
            if not re.fullmatch(BP_ID_PATTERN, corr or ""):
                continue  # not a BigPanda incident's: ignored (the change counts as seen)
            known = pairs.get(corr)
            if known is not None:
                if known.link is None:
                    known.sn = sn
                    known.changes.append(change)
                continue
            if await self._store.live_link_for_bp(corr) is not None:
                continue  # an old incident of a linked BigPanda incident: history
            fetched = await self._fetch_bp(corr, environments)
            if fetched is not None:
                pairs[corr] = Pair(fetched[0], sn, None, fetched[1], [change])
        for link in replan:
            if link.bp_incident_id in pairs:
                continue
            fetched = await self._fetch_bp(link.bp_incident_id, environments)
            if fetched is not None:
                pairs[link.bp_incident_id] = Pair(fetched[0], None, None, fetched[1])
        ready: list[Pair] = []
        fresh: list[Pair] = []
        for pair in pairs.values():
            bp = pair.bp
            if (
                pair.link is None
                and pair.sn is None
                and bp is not None
                and bp.active
                and not bp.alerts
                and pair.environment_id is not None
            ):
                fresh.append(pair)
                continue
            await self._fetch_other_side(pair)
            await self.expand_for_create(pair)
            ready.append(pair)
        return ready, fresh

    async def _fetch_other_side(self, pair: Pair) -> None:
        """A linked pair whose changed side is now resolved: read the other side too.

        The planner takes an unchanged side of a ``linked`` link as open, which holds
        only while bpsync drove every resolve. With ``resolve_servicenow`` or
        ``resolve_bigpanda`` off (or a resolve still waiting for a retry) the other side
        may have been resolved already: the planner would then never mark the link
        resolved (no reopen, B9), or write Resolved over a Closed ServiceNow incident.
        """
        link = pair.link
        if link is None or link.state != LinkState.LINKED or link.sn_sys_id is None:
            return
        try:
            if pair.sn is None and pair.bp is not None and not pair.bp.active:
                pair.sn = SNIncident.from_record(await self._sn.get_incident(link.sn_sys_id))
            elif (
                pair.bp is None and pair.sn is not None and pair.sn.resolved and pair.environment_id
            ):
                pair.bp = await self._bp.get_incident(
                    pair.environment_id, link.bp_incident_id, expand_alerts=False
                )
        except (NotFoundError, ValueError) as exc:
            log.warning("%s: the other side cannot be read: %s", self.pair_ids(pair), exc)

    async def expand_for_create(self, pair: Pair) -> None:
        """An incident that may need a create is fetched with its alerts (B10, B11).

        A resolved link whose BigPanda incident is active again, without a ServiceNow
        change in this cycle, also gets the current ServiceNow record: the planner takes
        an unchanged side of a resolved link as Resolved (6), but ServiceNow may have
        closed it since (B9: a Closed incident is never reopened, a new one is created).
        """
        bp = pair.bp
        link = pair.link
        if (
            bp is not None
            and bp.active
            and pair.sn is None
            and link is not None
            and link.state == LinkState.RESOLVED
            and link.sn_sys_id
        ):
            try:
                pair.sn = SNIncident.from_record(await self._sn.get_incident(link.sn_sys_id))
            except NotFoundError:
                log.warning("ServiceNow incident %s vanished while being synced", link.sn_sys_id)
            except ValueError as exc:
                log.warning("ServiceNow record skipped: %s", exc)
        if bp is None or not bp.active or bp.alerts or pair.environment_id is None:
            return
        if pair.link is not None and pair.link.state != LinkState.RESOLVED:
            return
        try:
            pair.bp = await self._bp.get_incident(pair.environment_id, bp.id, expand_alerts=True)
        except NotFoundError:
            log.warning("BigPanda incident %s vanished while being synced", bp.id)

    async def _expand_alerts(
        self, pairs: Sequence[Pair], listed: Sequence[tuple[BPIncident, str]]
    ) -> None:
        """Linked pairs whose BigPanda incident changed get its alerts when something
        after the create is built from them: a generated text ``update_fields`` lists
        (B10: the description follows the incident), a mapping row reading
        ``primary_alert.<tag>``. Read in batches like newcomers' (:mod:`sync.newcomers`):
        no request for a pair that did not change, about one page per ten that did."""
        reads_alerts = any(
            rule.to_servicenow and reads_primary_alert(rule.tag)
            for rule in compile_rules(self._settings)
        )
        if not updated_texts(self._settings.incidents) and not reads_alerts:
            return
        wanted: dict[str, dict[str, Pair]] = {}
        for pair in pairs:
            bp, link, env = pair.bp, pair.link, pair.environment_id
            if link is None or link.state != LinkState.LINKED or env is None or bp is None:
                continue
            if bp.active and bp.alert_ids and not bp.alerts:
                wanted.setdefault(env, {})[bp.id] = pair
        for env, by_id in wanted.items():
            polled = [incident for incident, where in listed if where == env]
            incidents = [pair.bp for pair in by_id.values() if pair.bp is not None]
            async for batch in expanded_oldest_first(self._bp, env, incidents, polled):
                for incident in batch:
                    by_id[incident.id].bp = incident

    # ------------------------------------------------------------------ held pairs

    def _busy(self, link: Link) -> bool:
        """The link's writes are not all done: a pending create, or an open outbox item."""
        return link.state == LinkState.PENDING or self._executor.has_open_writes(
            link.bp_incident_id, link.sn_sys_id
        )

    async def _held_links(self) -> Held:
        raw = await self._store.get_checkpoint(HELD_CHECKPOINT)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
            return {int(link_id): {str(f) for f in flags} for link_id, flags in data.items()}
        except (ValueError, TypeError, AttributeError):
            log.error("checkpoint %s unreadable, ignored: %r", HELD_CHECKPOINT, raw[:200])  # noqa: TRY400
            return {}

    async def save_held(self, held: Held) -> None:
        value = json.dumps({str(k): sorted(v) for k, v in sorted(held.items())})
        if value != (await self._store.get_checkpoint(HELD_CHECKPOINT) or "{}"):
            await self._store.set_checkpoint(HELD_CHECKPOINT, value, self._clock.now())

    @staticmethod
    def keep_held(held: Held, pair: Pair) -> None:
        """A pair whose outcome was not recorded stays (or becomes) held."""
        if pair.link is not None:
            held.setdefault(pair.link.id, set())

    async def _hold_busy(
        self, pairs: Sequence[Pair], held: Held, environments: Sequence[str]
    ) -> tuple[list[Pair], Held, list[tuple[Pair, Pair]]]:
        """Split off the pairs whose link has open writes (held: planned once those are
        done); bring back the held links whose writes are done, read on both sides.
        Returns the pairs to plan now, the links still held, and (prelude, pair) for
        released pairs whose side was resolved and reopened while held."""
        ready: list[Pair] = []
        still_held: Held = {}
        by_link: dict[int, Pair] = {}
        for pair in pairs:
            if pair.link is not None and self._busy(pair.link):
                flags = still_held[pair.link.id] = held.get(pair.link.id, set())
                if pair.bp is not None and not pair.bp.active:
                    flags.add("bp_resolved")
                # (Resolved while bpsync's own reopen waits is not a person's resolve)
                if (
                    pair.sn is not None
                    and pair.sn.state == SNState.RESOLVED
                    and not self._executor.reopen_waits(pair.link.sn_sys_id)
                ):
                    flags.add("sn_resolved")
                log.debug("%s waits for its open writes", self.pair_ids(pair))
                continue
            ready.append(pair)
            if pair.link is not None:
                by_link[pair.link.id] = pair
        preludes: list[tuple[Pair, Pair]] = []
        for link_id in sorted(held.keys() - still_held.keys()):
            link = await self._store.get_link(link_id)
            if link is None or link.state not in LIVE_LINK_STATES:
                continue  # superseded or gone: its incident is another link's now
            if self._busy(link):
                still_held[link_id] = held[link_id]
                continue
            polled = by_link.get(link_id)
            if polled is None:
                fetched = await self._fetch_bp(link.bp_incident_id, environments)
                if fetched is None:
                    log.warning("held link %d: BigPanda incident not found, released", link_id)
                    continue
                polled = Pair(fetched[0], None, link, fetched[1])
                ready.append(polled)
            pair = polled
            pair.link = link
            await self._read_both_sides(pair)
            prelude = resolved_prelude(pair, held[link_id])
            if prelude is not None:
                preludes.append((prelude, pair))
            await self.expand_for_create(pair)
        return ready, still_held, preludes

    async def _run_preludes(self, preludes: Sequence[tuple[Pair, Pair]], live: int) -> None:
        """Plan and execute each released pair's resolved state first, then refresh the
        pair's link: its own plan then sees the reopen (B9)."""
        for prelude, pair in preludes:
            actions = await self.plan_pair(prelude, self._clock.now())
            self.check_guards([actions], live)
            if actions:
                await self._executor.execute(actions, environment_id=prelude.environment_id)
            pair.link = await self._store.live_link_for_bp(pair_bp_id(pair))
            await self.expand_for_create(pair)

    async def _read_both_sides(self, pair: Pair) -> None:
        """Give a released pair the side it lacks, as it is now: which side changed while
        it was held is unknown, and a missing side reads as 'unchanged since synced'."""
        link = pair.link
        assert link is not None
        try:
            if pair.bp is None and pair.environment_id is not None:
                pair.bp = await self._bp.get_incident(
                    pair.environment_id, link.bp_incident_id, expand_alerts=False
                )
            if pair.sn is None and link.sn_sys_id:
                pair.sn = SNIncident.from_record(await self._sn.get_incident(link.sn_sys_id))
        except (NotFoundError, ValueError) as exc:
            log.warning("%s: a side cannot be read: %s", self.pair_ids(pair), exc)

    async def _fetch_bp(
        self, incident_id: str, environments: Sequence[str]
    ) -> tuple[BPIncident, str] | None:
        remembered = await self._executor.environment_of(incident_id)
        candidates: list[str] = [remembered] if remembered else []
        candidates += [env for env in environments if env != remembered]
        for env in candidates:
            try:
                incident = await self._bp.get_incident(env, incident_id, expand_alerts=True)
            except NotFoundError:
                continue
            return incident, env
        return None

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

    async def _report_state(self) -> None:
        assert self._metrics is not None
        try:
            depth = await self._store.count_outbox([OutboxState.PENDING, OutboxState.IN_FLIGHT])
            dead = await self._store.count_outbox([OutboxState.DEAD])
            live = await self._store.count_links([LinkState.LINKED, LinkState.RESOLVED])
            now = self._clock.now()
            lag: dict[str, float] = {}
            for side in Side:
                cursor = await self._store.get_cursor(side)
                if cursor.watermark is not None:
                    lag[side.value] = max(0.0, (now - cursor.watermark).total_seconds())
        except BpsyncError as exc:
            log.debug("metrics not refreshed: %s", exc)
            return
        self._metrics.state(
            outbox_depth=depth, dead_letters=dead, live_links=live, cursor_lag_s=lag
        )
