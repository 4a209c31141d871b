"""Given BigPanda incidents planned and executed as a sync cycle would (``bpsync backfill``).

:func:`sync_incidents` takes incidents already read (each with its environment) and
runs them through the same pairing with the live link, the same pure planner, guards
and executor as a cycle; no poll and no cursor. :mod:`sync.backfill` hands it each
search page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sync.actions import Action
from sync.coordinator import Coordinator
from sync.errors import BpsyncError
from sync.executor import PairResult
from sync.guards import resolving_links
from sync.model import LIVE_LINK_STATES, BPIncident, Link
from sync.newcomers import unmatched
from sync.pairs import Pair

log = logging.getLogger(__name__)

#: how many of the given incidents :func:`sync_incidents` executes at once (each
#: incident's writes are its own; the store serialises where it must)
INCIDENT_CONCURRENCY = 10


@dataclass(slots=True)
class IncidentOutcome:
    """What :func:`sync_incidents` planned and did for one incident.

    ``link`` is the live link before; ``result`` None: not executed (no actions, a dry
    run, or ``error``)."""

    bp_incident_id: str
    environment_id: str
    link: Link | None
    actions: list[Action] = field(default_factory=list)
    result: PairResult | None = None
    error: str | None = None


async def sync_incidents(
    coordinator: Coordinator,
    incidents: Sequence[tuple[BPIncident, str]],
    *,
    execute: bool = True,
) -> list[IncidentOutcome]:
    """Plan (and, unless ``execute`` is False, execute) these BigPanda incidents,
    each with its environment, as a cycle plans and executes a polled change: the
    same pairing with the live link, the same planner, guards and executor; no poll
    and no cursor (``bpsync backfill``). With ``execute=False`` nothing is written
    (only reads: the link store and, for a possible create, the incident's alerts).

    One incident's planner refusal or unexpected error is in its outcome; a
    ``GuardTripped``, ``FatalError`` or ``StoreError`` propagates.
    """
    now = coordinator.clock.now()
    outcomes: list[IncidentOutcome] = []
    plans: list[tuple[Pair, IncidentOutcome]] = []
    live = await coordinator.store.live_links_for_bp([incident.id for incident, _ in incidents])
    # one correlation_id query for the incidents without a link (as the daemon's
    # newcomers): a create whose incident it did not find skips its own first search
    unlinked = [incident.id for incident, _ in incidents if incident.id not in live]
    absent = await unmatched(coordinator.servicenow, unlinked) if execute else set()
    for incident, env in incidents:
        pair = Pair(incident, None, live.get(incident.id), env)
        outcome = IncidentOutcome(incident.id, env, pair.link)
        outcomes.append(outcome)
        await coordinator.pairing.expand_for_create(pair)
        try:
            outcome.actions = await coordinator.plan_pair(pair, now, checked=incident.id in absent)
        except ValueError as exc:
            outcome.error = f"cannot plan: {exc}"
            continue
        plans.append((pair, outcome))
    page = [o.actions for _, o in plans]
    if resolving_links(page):  # the only guard of a page weighs its resolves against
        # the live links: counting them (a scan) only then keeps a long backfill linear
        coordinator.check_guards(page, await coordinator.store.count_links(LIVE_LINK_STATES))
    if not execute:
        return outcomes
    runnable = [(pair, outcome) for pair, outcome in plans if outcome.actions]
    ids = [outcome.bp_incident_id for _, outcome in runnable]
    if len(runnable) < 2 or len(set(ids)) < len(ids):
        for pair, outcome in runnable:  # (an incident given twice: one after the other)
            await _execute_incident(coordinator, pair, outcome)
        return outcomes
    # Distinct incidents: executed concurrently, each as it would be alone (its own
    # links, outbox items and targets). The first store or credentials error
    # (BpsyncError) cancels the others, as a crash would stop them: each write is in
    # the outbox before it is sent, so whatever was cut short is driven again.
    limit = asyncio.Semaphore(INCIDENT_CONCURRENCY)

    async def run(pair: Pair, outcome: IncidentOutcome) -> None:
        async with limit:
            await _execute_incident(coordinator, pair, outcome)

    pending = {asyncio.ensure_future(run(pair, outcome)) for pair, outcome in runnable}
    failure: BaseException | None = None
    try:
        while pending and failure is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():  # (not by us: a task cancelled from within)
                    failure = failure or asyncio.CancelledError()
                elif task.exception() is not None:
                    failure = failure or task.exception()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if failure is not None:
        raise failure
    return outcomes


async def _execute_incident(coordinator: Coordinator, pair: Pair, outcome: IncidentOutcome) -> None:
    try:
        outcome.result = await coordinator.executor.execute(
            outcome.actions, environment_id=pair.environment_id
        )
    except BpsyncError:
        raise
    except Exception as exc:  # one incident's bug must not stop the others
        log.exception("executing %s failed", coordinator.pair_ids(pair))
        outcome.error = f"{type(exc).__name__}: {exc}"


__all__ = ["INCIDENT_CONCURRENCY", "IncidentOutcome", "sync_incidents"]
