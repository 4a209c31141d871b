"""One cycle's execution: pairs worked ``pair_concurrency`` at a time, oldest first.

A pair whose conversation is to be read (:mod:`sync.journal_reads`) is read by the
worker that takes it, then planned again with it (the planner is pure: the same field
actions, the journal entries before them) and executed: one pair's field writes wait
for its own reads only, never for the comment reads of the pairs after it. The
mass-resolve guard has seen every pair's plan before the first write (a journal entry
resolves nothing).

New incidents are read in batched chunks (:mod:`sync.newcomers`) while earlier pairs
execute. Progress (held links, then each side's cursor past what is finished) is
written every :data:`CHECKPOINT_EVERY_S` and at the end, whatever ends the cycle: its
time budget, a stop, or an error. An error stops new work; the pairs in flight finish,
so nothing is left half-done by the cycle, and the first error is raised after.

The time budget stops reads, not paid work: once it is spent no further search page is
read, but the new incidents whose page was read are still sent (:func:`runs_after`).
Left for the next cycle they would cost their page again (in a storm, two or three
pages at every cycle boundary); the queue holds ``pair_concurrency`` pairs, so a cycle
runs over its budget by at most that and one page of new incidents.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sync.actions import Action, CreateServiceNowIncident, PlanInput
from sync.constants import Side
from sync.errors import BpsyncError
from sync.held import keep_held
from sync.journal import carries_nothing, entries_of, fields_first
from sync.model import BPIncident, Link
from sync.newcomers import expanded_oldest_first, unmatched
from sync.pairs import Held, Pair, pair_bp_id
from sync.planner import share_decision
from sync.progress import Progress, seen_after_push
from sync.store.base import Cursor

if TYPE_CHECKING:
    from sync.coordinator import Coordinator
    from sync.journal_reads import PendingJournal

log = logging.getLogger(__name__)

#: how often a long cycle writes its progress (cursors, held links) while it works
CHECKPOINT_EVERY_S = 5.0


def runs_after(*, paid: bool, stopping: bool, past_deadline: bool) -> bool:
    """Whether a queued pair is executed: not after a stop or an error (the pairs in
    flight finish, nothing new starts), nor after the time budget unless its reads are
    paid (a new incident whose search page was read: sent now, not read again by the
    next cycle)."""
    if stopping:
        return False
    return paid or not past_deadline


@dataclass(slots=True)
class Planned:
    """A pair and its plan. ``journal``: the pair's conversation is still to read; its
    worker reads it, then plans ``inp`` again with it at ``now`` (the plan executed).
    ``paid``: a new incident whose search page was read (:func:`runs_after`)."""

    pair: Pair
    actions: list[Action]
    inp: PlanInput | None = None
    journal: PendingJournal | None = None
    now: datetime | None = None
    paid: bool = False


class CycleRun:
    """One cycle's execution: pairs worked ``pair_concurrency`` at a time, oldest first,
    new incidents read in batched chunks while earlier pairs execute; progress written
    every :data:`CHECKPOINT_EVERY_S` and at the end, whatever ends the cycle."""

    def __init__(
        self, coordinator: Coordinator, progress: Progress, held: Held, cursors: dict[Side, Cursor]
    ) -> None:
        self._c = coordinator
        self.progress = progress
        self.held = held
        self._cursors = cursors
        self.actions = 0
        self.outcomes: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._last_checkpoint = coordinator.clock.monotonic()
        self._adopted: set[Side] = set()
        """sides whose cursor took a guest's keys since the last checkpoint"""
        self._owner: dict[str, Pair] = {}
        """each id (both sides', a merge's destination) of this cycle's pairs -> its pair"""
        self._fixed: frozenset[str] = frozenset()
        """ids no guest may claim: new incidents, held links"""
        self._running: set[int] = set()
        self._finished: set[int] = set()
        self._claimed: set[int] = set()
        self._reading = asyncio.Semaphore(self.reads_at_once())

    async def execute(
        self,
        plans: Sequence[Planned],
        fresh: Sequence[Pair],
        *,
        deadline: float,
        polled: Sequence[tuple[BPIncident, str]] = (),
    ) -> None:
        c = self._c
        workers = c.settings.pair_concurrency
        queue: asyncio.Queue[Planned | None] = asyncio.Queue(workers)

        failures: list[BaseException] = []

        def stopping() -> bool:
            return bool(failures) or c.stopping

        def out_of_time() -> bool:
            return stopping() or c.clock.monotonic() >= deadline

        async def produce() -> None:
            try:
                for planned in plans:
                    if out_of_time():
                        return
                    if not planned.actions and planned.journal is None:
                        self.progress.finish((ch.key for ch in planned.pair.changes), ok=True)
                        continue
                    await queue.put(planned)
                fresh_plans = self._fresh_plans(fresh, polled, out_of_time, stopping)
                async for pair, actions in fresh_plans:
                    await queue.put(Planned(pair, actions, paid=True))
            except Exception as exc:  # noqa: BLE001 - kept, raised once the workers stop
                failures.append(exc)
            finally:
                for _ in range(workers):
                    await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                late = c.clock.monotonic() >= deadline
                if not runs_after(paid=item.paid, stopping=stopping(), past_deadline=late):
                    continue  # drained, not done: left for the next cycle
                taken = id(item.pair)
                if taken in self._claimed:
                    continue  # a push pass beside the cycle has it (its change left open)
                try:
                    await self._execute_pair(item)
                except Exception as exc:  # noqa: BLE001 - kept, raised once all stop
                    failures.append(exc)
                finally:
                    self._running.discard(taken)
                    self._finished.add(taken)

        # an error (an outage, a refused credential, the store) stops new work; the
        # pairs in flight finish, so nothing is left half-done by this cycle
        tasks = [asyncio.ensure_future(produce())]
        tasks += [asyncio.ensure_future(work()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if failures:
            raise failures[0]
        if c.stopping or c.clock.monotonic() >= deadline:
            left = self.progress.backlog(Side.BIGPANDA) + self.progress.backlog(Side.SERVICENOW)
            if left:
                reason = "a stop was asked for" if c.stopping else "its time budget ran out"
                log.info("cycle ended early (%s); %d changes wait for the next cycle", reason, left)

    async def _fresh_plans(
        self,
        fresh: Sequence[Pair],
        polled: Sequence[tuple[BPIncident, str]],
        out_of_time: Callable[[], bool],
        stopping: Callable[[], bool],
    ) -> AsyncIterator[tuple[Pair, list[Action]]]:
        """New incidents, oldest first: alerts and duplicate checks read in batches
        (:mod:`sync.newcomers`), then planned. No page is read once ``out_of_time``; a
        page read is planned whole unless ``stopping`` (its reads are paid). Incidents
        not yielded are left for the next cycle; one that vanished is finished (nothing
        to sync)."""
        c = self._c
        by_env: dict[str, list[BPIncident]] = {}
        pairs: dict[str, Pair] = {}
        now = c.clock.now()
        for pair in fresh:
            assert pair.bp is not None
            assert pair.environment_id is not None
            # [share] before anything is read: not shared -> finished; too young -> its
            # change stays open (the cursor waits for it; polled and asked again)
            decision = share_decision(pair.bp, c.settings, now)
            if decision is False:
                self.progress.finish((ch.key for ch in pair.changes), ok=True)
                continue
            if decision is not True:
                continue
            by_env.setdefault(pair.environment_id, []).append(pair.bp)
            pairs[pair.bp.id] = pair
        envs = sorted(by_env, key=lambda env: min(i.start or 0 for i in by_env[env]))
        for env in envs:
            if out_of_time():
                return
            reached: set[str] = set()
            others = [incident for incident, where in polled if where == env]
            async for batch in expanded_oldest_first(c.bigpanda, env, by_env[env], others):
                if stopping():
                    return
                absent = await unmatched(c.servicenow, [i.id for i in batch])
                now = c.clock.now()
                for incident in batch:
                    reached.add(incident.id)
                    pair = pairs[incident.id]
                    pair.bp = incident
                    keys = [ch.key for ch in pair.changes]
                    try:
                        actions = await c.plan_pair(pair, now, checked=incident.id in absent)
                    except ValueError as exc:
                        log.error("cannot plan %s: %s", c.pair_ids(pair), exc)  # noqa: TRY400
                        self.progress.finish(keys, ok=False)
                        continue
                    if not actions:
                        self.progress.finish(keys, ok=True)
                        continue
                    yield pair, actions
                if out_of_time():  # checked before the next page is read, not after
                    return
            for incident in by_env[env]:  # vanished while being synced: nothing to do
                if incident.id not in reached:
                    self.progress.finish((ch.key for ch in pairs[incident.id].changes), ok=True)

    async def _with_journal(self, planned: Planned) -> list[Action] | None:
        """The pair's plan with its own conversation read (None: the pair failed, its
        changes are left open: polled and tried again)."""
        c = self._c
        pair, todo, inp = planned.pair, planned.journal, planned.inp
        if todo is None or inp is None or planned.now is None:
            return planned.actions
        keys = [ch.key for ch in pair.changes]
        try:
            async with self._reading:
                await c.journals.read_pair(pair, todo)
        except BpsyncError:  # an outage, credentials: the cycle stops
            raise
        except Exception:  # one pair's bug must not stop the others
            log.exception("reading the conversation of %s failed", c.pair_ids(pair))
            self.progress.finish(keys, ok=False)
            return None
        if carries_nothing(pair.journal) and carries_nothing(inp.journal):
            return planned.actions  # no entry read, none planned with: the plan stands
        try:
            return c.replan(inp, pair.journal, planned.now)
        except ValueError as exc:  # a planner refusing odd data: this pair only
            log.error("cannot plan %s: %s", c.pair_ids(pair), exc)  # noqa: TRY400
            self.progress.finish(keys, ok=False)
            return None

    async def _execute_pair(self, planned: Planned) -> None:
        c = self._c
        pair = planned.pair
        keys = [ch.key for ch in pair.changes]
        if planned.journal is not None and fields_first(planned.actions):
            # field writes only: written first, its conversation read and carried after
            self._running.add(id(pair))  # from here on no push pass may take it
            recorded = await self._run(pair, planned.actions)
            if recorded is None:
                return
            later = await self._with_journal(planned)
            if later is None:
                return
            entries = entries_of(later)
            if entries:
                more = await self._run(pair, entries)
                if more is None:
                    return
                recorded = recorded and more
        else:
            actions = await self._with_journal(planned)
            if id(pair) in self._claimed:
                return  # given up to a push pass while it was read: its change left open
            self._running.add(id(pair))  # from here on no push pass may take it
            if actions is None:
                return
            recorded = await self._run(pair, actions) if actions else True
            if recorded is None:
                return
        if not recorded:
            keep_held(self.held, pair)
        self.progress.finish(keys, ok=recorded)
        if c.clock.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            await self.checkpoint(final=False)

    async def _run(self, pair: Pair, actions: list[Action]) -> bool | None:
        """Execute a pair's actions: whether their outcome is recorded (None: they
        failed, the pair's changes too: left open, polled and tried again)."""
        c = self._c
        try:
            result = await c.executor.execute(actions, environment_id=pair.environment_id)
        except BpsyncError:  # credentials, the store: the cycle stops
            raise
        except Exception:  # one pair's bug must not stop the others
            log.exception("executing %s failed", c.pair_ids(pair))
            self.progress.finish((ch.key for ch in pair.changes), ok=False)
            keep_held(self.held, pair)
            return None
        self.actions += len(actions)
        if pair.link is None:  # a new incident: its first change may be bpsync's own
            c.journals.created(pair, result)
        for kind, outcome in result.outcomes:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if kind.startswith("bp.") or kind == CreateServiceNowIncident.kind:
                self.progress.wrote_bp.add(pair_bp_id(pair))
        return result.recorded

    def reads_at_once(self) -> int:
        """Pairs reading their conversation at once. With push on, one: a cycle is then
        the reconciling poll, and its comment reads (paced) must leave a push pass's
        read a place in the pacer's queue, not ``pair_concurrency`` reads ahead of it."""
        settings = self._c.settings
        return 1 if settings.push.enabled else settings.pair_concurrency

    # ------------------------------------------------------------------ guests

    def set_aside(self, pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
        """(pairs to work, pairs left open for the next poll): a cycle works them all."""
        return list(pairs), []

    async def open_to_guests(self, pairs: Sequence[Pair], fresh: Sequence[Pair]) -> None:
        """Let push passes run beside this cycle (:mod:`sync.push.passes`, as guests).

        Each incident's work stays serial: a guest :meth:`claim` s an incident before it
        reads it. One of this cycle's pairs not yet taken by a worker is given up to the
        guest (its change left open: the guest's newer read supersedes it), one already
        finished is the guest's; one in flight, a new incident and a held link are not
        (the delivery waits for the cycle's end). A guest's progress joins this run's
        (:meth:`adopt`)."""
        c = self._c
        links = [await c.store.get_link(link_id) for link_id in self.held]
        fixed = {i for link in links if link is not None for i in _link_ids(link)}
        for pair in fresh:
            fixed.update(_pair_ids(pair))
        self._fixed = frozenset(fixed)
        self._owner = {i: pair for pair in pairs for i in _pair_ids(pair)}
        c.host = self

    def claim(self, ids: Collection[str]) -> bool:
        """May a guest work the incident these ids name (see :meth:`open_to_guests`)?"""
        if any(i in self._fixed for i in ids):
            return False
        owners = {id(pair) for i in ids if (pair := self._owner.get(i)) is not None}
        if owners & self._running:
            return False
        self._claimed |= owners - self._finished
        return True

    async def close_to_guests(self) -> None:
        """No new guest; the one in flight ends first (before the cycle's last checkpoint)."""
        c = self._c
        if c.host is self:
            c.host = None
            async with c.guests:
                pass

    async def adopt(self, held: Held, progress: Progress) -> None:
        """A guest's progress: its held links, and the keys it finished join ``seen``
        (:func:`~sync.progress.seen_after_push`), written with this run's next checkpoint."""
        overlap = timedelta(seconds=self._c.settings.cursor_overlap)
        async with self._lock:
            for link_id, flags in held.items():
                self.held.setdefault(link_id, set()).update(flags)
            # a change of a pair given up to the guest, which finished it: finished here too
            self.progress.finish(progress.done & self.progress.all_keys(), ok=True)
            for side in (Side.BIGPANDA, Side.SERVICENOW):
                forget = progress.wrote_bp if side is Side.BIGPANDA else ()
                moved = seen_after_push(
                    self._cursors[side],
                    progress.polled[side],
                    progress.done,
                    overlap=overlap,
                    forget=forget,
                )
                if moved is not None:
                    self._cursors[side] = moved
                    self._adopted.add(side)

    @property
    def cursors(self) -> dict[Side, Cursor]:
        """Each side's cursor as this run has it (written at its checkpoints)."""
        return dict(self._cursors)

    def seen(self, side: Side) -> frozenset[str]:
        """The side's ``seen`` keys as this run has them (a guest's duplicates)."""
        return self._cursors[side].seen

    async def checkpoint(self, *, final: bool) -> None:
        """Held links first, then each side's cursor past what is finished."""
        c = self._c
        async with self._lock:
            self._last_checkpoint = c.clock.monotonic()
            await c.holds.save(self.held)
            for side in (Side.BIGPANDA, Side.SERVICENOW):
                forget = self.progress.wrote_bp if side is Side.BIGPANDA else ()
                cursor = self._cursors[side]
                self._cursors[side] = await c.advance(
                    side, cursor, self.progress, final=final, forget=forget
                )
                if side in self._adopted and self._cursors[side] is cursor:
                    await c.store.advance_cursor(cursor, c.clock.now())  # a guest's keys
                self._adopted.discard(side)
                c.report_backlog(side, self.progress.backlog(side))


def _link_ids(link: Link) -> tuple[str, ...]:
    return (link.bp_incident_id, link.sn_sys_id) if link.sn_sys_id else (link.bp_incident_id,)


def _pair_ids(pair: Pair) -> set[str]:
    """The ids of both sides a pair's plan may touch (a merge's destination too)."""
    ids = {pair_bp_id(pair)}
    if pair.sn is not None:
        ids.update((pair.sn.sys_id, pair.sn.correlation_id or ""))
    for link in (pair.link, pair.merge.destination_link if pair.merge else None):
        if link is not None:
            ids.update(_link_ids(link))
    if pair.merge is not None:
        ids.add(pair.merge.destination_id)
    ids.discard("")
    return ids
