"""Reading the conversations of a cycle's changed pairs, before they are planned.

The coordinator's step for journals (:mod:`sync.journal` decides what to read and what
to carry; this module only reads): for each pair :func:`sync.journal.reads_wanted`
names, its BigPanda comments (``list_activities(types=["incident_commented"])``) and
its ServiceNow journal entries (``sys_journal_field``) through the client protocols,
and the ledger of its incident in one store read for the whole batch; the result is
the pair's :class:`~sync.model.JournalInput`, planned with the pair. Which pairs read
what is decided for the batch (:meth:`JournalReads.pending`); each pair's own reads are
made by the execution worker that takes the pair, just before the pair is planned with
them and executed (:mod:`sync.execution`; a plan of field writes only writes them
before the read, :func:`sync.journal.fields_first`): a burst's field writes do not wait
for the burst's comment reads (BigPanda's ``activities`` are paced like every family,
4.5 requests/s). An idle cycle has no pair, so it reads nothing. A BigPanda comment not
carried yet is named by its author's name (the activity carries only a user id;
:class:`sync.people.BigPandaUsers`, cached), the id kept when the user cannot be found.

A side that cannot be read for one pair (the incident gone, a read refused: an ACL on
``sys_journal_field``) is left unread for that pair, with one WARNING per distinct
reason; an outage stops the cycle as any other read does.

``created``: the execution tells which new incidents got their ticket (and link tag)
in this cycle; their snapshots no newer than that are bpsync's own, not read
(:func:`~sync.journal.reads_wanted`'s ``fresh_until``: a storm of new incidents costs no
read per incident). Kept in memory for an hour: after a restart that change is read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sync.actions import Action, CreateServiceNowIncident, PlanInput
from sync.clients.base import BPActivity
from sync.clock import from_epoch_s
from sync.constants import Side
from sync.errors import NotFoundError, PermanentError
from sync.executor import PairResult
from sync.fieldsync import LinkedPair
from sync.journal import (
    BP_COMMENT_KIND,
    HISTORY,
    Ledger,
    plan_journal,
    reads_all,
    reads_wanted,
)
from sync.model import CarriedEntry, JournalEntry, JournalInput
from sync.pairs import Pair, pair_bp_id
from sync.progress import Progress
from sync.store.base import CarriedRecord

if TYPE_CHECKING:
    from sync.coordinator import Coordinator

# the cycle's lines stay on "sync.coordinator", wherever the code lives
log = logging.getLogger("sync.coordinator")

#: BigPanda's activity type of a comment
COMMENTED = "incident_commented"
#: how long a new link's create is remembered for its first change (s)
FRESH_TTL_S = 3600.0


def comment_entries(activities: Sequence[BPActivity]) -> tuple[JournalEntry, ...]:
    """BigPanda ``incident_commented`` activities (newest first) as entries, oldest first."""
    return tuple(
        JournalEntry(
            id=a.id,
            kind=BP_COMMENT_KIND,
            text=str(a.params.get("comment") or ""),
            author=a.created_by or "",
            at=from_epoch_s(a.timestamp),
        )
        for a in reversed(activities)
        if a.type == COMMENTED
    )


@dataclass(frozen=True, slots=True)
class PendingJournal:
    """One pair's journal reads still to make (which sides), and its ledger as the
    batch's one store read found it."""

    read_bp: bool
    read_sn: bool
    carried: tuple[CarriedEntry, ...]


class JournalReads:
    """The coordinator's journal reads (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._c = coordinator
        #: BigPanda incident id -> when its create (with the link tag) ended (epoch s)
        self._fresh: dict[str, float] = {}
        self._warned: set[str] = set()

    def created(self, pair: Pair, result: PairResult) -> None:
        """A new incident's plan ran: remember when, if its create went through."""
        if (CreateServiceNowIncident.kind, "ok") in result.outcomes:
            self._fresh[pair_bp_id(pair)] = self._c.clock.now().timestamp()

    async def pending(self, pairs: Sequence[Pair], progress: Progress) -> dict[str, PendingJournal]:
        """What each pair that needs it has still to read (by BigPanda id), with its ledger
        (one store read for the batch); nothing is read from the APIs here: each pair's
        own reads come just before it is planned with them and executed
        (:meth:`read_pair`), so a pair's field writes never wait for other pairs' reads.

        A BigPanda incident read in the second its snapshot is stamped may still get a
        comment in that second, which leaves its change key as it is: its key leaves
        ``seen`` (``progress.wrote_bp``, as for an incident bpsync wrote to), so the
        next poll brings it again and it is read once more, a second later (a read made
        later than this decision is later than that second too)."""
        c = self._c
        settings = c.settings.journal
        now_s = c.clock.now().timestamp()
        self._fresh = {k: v for k, v in self._fresh.items() if v >= now_s - FRESH_TTL_S}
        wanted: list[tuple[Pair, bool, bool]] = []
        for pair in pairs:
            fresh = self._fresh.get(pair_bp_id(pair))
            read_bp, read_sn = reads_wanted(
                settings, pair.link, pair.bp, pair.sn, fresh_until=fresh
            )
            if read_bp or read_sn:
                wanted.append((pair, read_bp, read_sn))
            stamp = pair.bp.updated_at if pair.bp is not None else None
            if read_bp and stamp is not None and stamp >= int(now_s):
                progress.wrote_bp.add(pair_bp_id(pair))
        return await self._pending(wanted)

    async def read_all(self, pairs: Sequence[Pair]) -> None:
        """Both sides of each linked pair, whatever changed (backfill ``--with-journal``)."""
        settings = self._c.settings.journal
        wanted = [(pair, *reads_all(settings, pair.link)) for pair in pairs]
        pending = await self._pending([(pair, bp, sn) for pair, bp, sn in wanted if bp or sn])
        limit = asyncio.Semaphore(self._c.settings.pair_concurrency)

        async def one(pair: Pair, todo: PendingJournal) -> None:
            async with limit:
                await self.read_pair(pair, todo)

        items = [(pair, pending[pair_bp_id(pair)]) for pair in pairs if pair_bp_id(pair) in pending]
        tasks = [asyncio.ensure_future(one(*item)) for item in items]
        try:
            await asyncio.gather(*tasks)
        finally:  # an outage: the others stop too
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _pending(
        self, wanted: Sequence[tuple[Pair, bool, bool]]
    ) -> dict[str, PendingJournal]:
        if not wanted:
            return {}
        ids = [pair_bp_id(pair) for pair, _, _ in wanted]
        ledger = await self._c.store.carried_entries(ids)
        return {
            bp_id: PendingJournal(read_bp, read_sn, tuple(ledger.get(bp_id, ())))
            for bp_id, (_, read_bp, read_sn) in zip(ids, wanted, strict=True)
        }

    async def read_pair(self, pair: Pair, todo: PendingJournal) -> None:
        """Read the pair's conversation as ``todo`` says: its :class:`JournalInput`
        (``pair.journal``). An outage raises (the caller's cycle stops)."""
        bp = await self._bigpanda(pair, todo.carried) if todo.read_bp else None
        sn = await self._servicenow(pair) if todo.read_sn else None
        pair.journal = JournalInput(bp, sn, todo.carried)

    async def _bigpanda(
        self, pair: Pair, carried: Sequence[CarriedEntry]
    ) -> tuple[JournalEntry, ...] | None:
        bp_id = pair_bp_id(pair)
        try:
            activities = await self._c.bigpanda.list_activities(bp_id, types=[COMMENTED])
        except (NotFoundError, PermanentError) as exc:
            self._warn(f"BigPanda comments of {bp_id} not read", exc)
            return None
        return await self._named(comment_entries(activities), carried)

    async def _named(
        self, entries: tuple[JournalEntry, ...], carried: Sequence[CarriedEntry]
    ) -> tuple[JournalEntry, ...]:
        """An activity names its author by user id only: each comment still to carry
        (the ledger's :meth:`~sync.journal.Ledger.wanted`: not carried, not history, not
        bpsync's own) gets its author's name (or e-mail) instead, through the cached
        SCIM look-up; a user who cannot be found keeps the id."""
        ledger = Ledger.of(carried)
        out: list[JournalEntry] = []
        for entry in entries:
            named = entry
            if entry.author and ledger.wanted(Side.BIGPANDA, entry):
                author = await self._c.users.display(entry.author)
                named = dataclasses.replace(entry, author=author)
            out.append(named)
        return tuple(out)

    async def _servicenow(self, pair: Pair) -> tuple[JournalEntry, ...] | None:
        link = pair.link
        assert link is not None  # reads_wanted checked: a live link with a sys_id
        assert link.sn_sys_id is not None
        kinds = self._c.settings.journal.from_servicenow
        try:
            entries = await self._c.servicenow.list_journal(link.sn_sys_id, kinds)
        except (NotFoundError, PermanentError) as exc:
            self._warn("ServiceNow journal (sys_journal_field) not read", exc)
            return None
        return tuple(entries)

    def _warn(self, what: str, exc: Exception) -> None:
        reason = str(exc)
        if reason in self._warned:
            log.debug("%s: %s", what, reason)
            return
        self._warned.add(reason)
        log.warning("%s: %s", what, reason)


# --------------------------------------------------------------------------- backfill


async def backfill_journals(
    coordinator: Coordinator, incidents: Sequence[tuple[str, str]], *, execute: bool
) -> list[Action]:
    """``bpsync backfill --with-journal``: the history of these (BigPanda id,
    environment) incidents' live links, read on both sides and carried as a cycle would
    (the same pure plan, the same ledger: a re-run carries nothing twice); with
    ``execute`` False only planned (a dry run)."""
    links = await coordinator.store.live_links_for_bp([bp_id for bp_id, _ in incidents])
    pairs = [Pair(None, None, links[bp_id], env) for bp_id, env in incidents if bp_id in links]
    await coordinator.journals.read_all(pairs)
    now = coordinator.clock.now()
    planned: list[Action] = []
    for pair in pairs:
        link = pair.link
        if pair.journal is None or link is None or link.sn_sys_id is None:
            continue
        inp = PlanInput(
            bp=None,
            sn=None,
            link=link,
            environment_id=pair.environment_id,
            sizes=coordinator.sizes,
            journal=pair.journal,
        )
        actions = plan_journal(LinkedPair(inp, coordinator.settings, now, link, link.sn_sys_id), [])
        if execute and actions:
            await coordinator.executor.execute(actions, environment_id=pair.environment_id)
        planned.extend(actions)
    return planned


async def mark_history(coordinator: Coordinator, bp_incident_ids: Sequence[str]) -> None:
    """``bpsync backfill`` without ``--with-journal``: the links it just made for these
    incidents get a history cutoff on both sides (:data:`~sync.journal.HISTORY`): what
    was said before is not carried, by this run or by the daemon later."""
    store = coordinator.store
    now = coordinator.clock.now()
    links = (await store.live_links_for_bp(bp_incident_ids)).values()
    # one transaction for the page (not one per link and side)
    cutoffs = [CarriedRecord(link.id, side, HISTORY, "") for link in links for side in Side]
    if cutoffs:
        await store.record_carried_many(cutoffs, now)
