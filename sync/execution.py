"""One cycle's execution: pairs worked ``pair_concurrency`` at a time, oldest first.

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
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from sync.actions import Action, CreateServiceNowIncident
from sync.constants import Side
from sync.errors import BpsyncError
from sync.held import keep_held
from sync.model import BPIncident
from sync.newcomers import expanded_oldest_first, unmatched
from sync.pairs import Held, Pair, pair_bp_id
from sync.planner import share_decision
from sync.progress import Progress
from sync.store.base import Cursor

if TYPE_CHECKING:
    from sync.coordinator import Coordinator

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

    async def execute(
        self,
        plans: Sequence[tuple[Pair, list[Action]]],
        fresh: Sequence[Pair],
        *,
        deadline: float,
        polled: Sequence[tuple[BPIncident, str]] = (),
    ) -> None:
        c = self._c
        workers = c.settings.pair_concurrency
        # (pair, actions, paid): paid = a new incident whose search page was read
        queue: asyncio.Queue[tuple[Pair, list[Action], bool] | None] = asyncio.Queue(workers)

        failures: list[BaseException] = []

        def stopping() -> bool:
            return bool(failures) or c.stopping

        def out_of_time() -> bool:
            return stopping() or c.clock.monotonic() >= deadline

        async def produce() -> None:
            try:
                for pair, actions in plans:
                    if out_of_time():
                        return
                    if not actions:
                        self.progress.finish((ch.key for ch in pair.changes), ok=True)
                        continue
                    await queue.put((pair, actions, False))
                fresh_plans = self._fresh_plans(fresh, polled, out_of_time, stopping)
                async for pair, actions in fresh_plans:
                    await queue.put((pair, actions, True))
            except Exception as exc:  # noqa: BLE001 - kept, raised once the workers stop
                failures.append(exc)
            finally:
                for _ in range(workers):
                    await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                pair, actions, paid = item
                late = c.clock.monotonic() >= deadline
                if not runs_after(paid=paid, stopping=stopping(), past_deadline=late):
                    continue  # drained, not done: left for the next cycle
                try:
                    await self._execute_pair(pair, actions)
                except Exception as exc:  # noqa: BLE001 - kept, raised once all stop
                    failures.append(exc)

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

    async def _execute_pair(self, pair: Pair, actions: list[Action]) -> None:
        c = self._c
        keys = [ch.key for ch in pair.changes]
        try:
            result = await c.executor.execute(actions, environment_id=pair.environment_id)
        except BpsyncError:  # credentials, the store: the cycle stops
            raise
        except Exception:  # one pair's bug must not stop the others
            log.exception("executing %s failed", c.pair_ids(pair))
            self.progress.finish(keys, ok=False)
            keep_held(self.held, pair)
            return
        self.actions += len(actions)
        if pair.link is None:  # a new incident: its first change may be bpsync's own
            c.journals.created(pair, result)
        for kind, outcome in result.outcomes:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            if kind.startswith("bp.") or kind == CreateServiceNowIncident.kind:
                self.progress.wrote_bp.add(pair_bp_id(pair))
        if not result.recorded:
            keep_held(self.held, pair)
        self.progress.finish(keys, ok=result.recorded)
        if c.clock.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            await self.checkpoint(final=False)

    async def checkpoint(self, *, final: bool) -> None:
        """Held links first, then each side's cursor past what is finished."""
        c = self._c
        async with self._lock:
            self._last_checkpoint = c.clock.monotonic()
            await c.holds.save(self.held)
            for side in (Side.BIGPANDA, Side.SERVICENOW):
                forget = self.progress.wrote_bp if side is Side.BIGPANDA else ()
                self._cursors[side] = await c.advance(
                    side, self._cursors[side], self.progress, final=final, forget=forget
                )
                c.report_backlog(side, self.progress.backlog(side))
