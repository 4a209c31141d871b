"""Reading a cycle's merges, before its pairs are planned (the I/O of :mod:`sync.merges`).

The coordinator's step for merges, after the hold step: each pair that
:func:`sync.merges.reads_merge` names (a linked incident the poll shows resolved) has
its ``incident_merged_source`` activities read (one request; idle cycles have no such
pair); a merge found gives the pair its :class:`~sync.model.MergeFact`, with the
destination's live link (one store read for the whole batch) and its environment when
this cycle saw it. A destination that takes the source's ticket
(:func:`sync.merges.destination_waits`) leaves this cycle: planned as a new incident
now, it would get a ticket of its own next to the one the move gives it.

An incident whose activities cannot be read (gone, refused) is planned as a plain
resolve, with one WARNING per distinct reason; an outage stops the cycle as any other
read does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from sync.errors import NotFoundError, PermanentError
from sync.merges import MERGED_SOURCE, destination_waits, merge_destination, reads_merge
from sync.model import MergeFact
from sync.pairs import Pair, pair_bp_id

if TYPE_CHECKING:
    from sync.coordinator import Coordinator

# the cycle's lines stay on "sync.coordinator", wherever the code lives
log = logging.getLogger("sync.coordinator")


class MergeReads:
    """The coordinator's merge reads (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._c = coordinator
        self._warned: set[str] = set()

    async def read(
        self, pairs: Sequence[Pair], fresh: Sequence[Pair], environments: Sequence[str]
    ) -> tuple[list[Pair], list[Pair]]:
        """(pairs, new incidents) to plan: merged pairs carry their fact, destinations
        that take a source's ticket are left out."""
        wanted = [pair for pair in pairs if reads_merge(pair.link, pair.bp)]
        if not wanted:
            return list(pairs), list(fresh)
        limit = asyncio.Semaphore(self._c.settings.pair_concurrency)

        async def one(pair: Pair) -> tuple[Pair, str | None]:
            async with limit:
                return pair, await self._destination(pair_bp_id(pair))

        found = [(p, d) for p, d in await asyncio.gather(*map(one, wanted)) if d is not None]
        if not found:
            return list(pairs), list(fresh)
        links = await self._c.store.live_links_for_bp([dest for _, dest in found])
        seen = {pair_bp_id(pair): pair for pair in (*pairs, *fresh)}
        waiting: set[str] = set()
        for pair, dest in found:
            fact = MergeFact(dest, links.get(dest))
            if destination_waits(fact, self._c.settings, pair.sn):
                # it takes the ticket: read it (seen in this cycle, else one read) so the
                # plan reconciles the two as a new link would be
                other = seen.get(dest)
                if other is not None and other.bp is not None:
                    fact = replace(fact, destination=other.bp)
                    fact = replace(fact, destination_environment=other.environment_id)
                elif (fetched := await self._c.pairing.fetch_bp(dest, environments)) is not None:
                    fact = replace(fact, destination=fetched[0], destination_environment=fetched[1])
            elif (other := seen.get(dest)) is not None:
                fact = replace(fact, destination_environment=other.environment_id)
            pair.merge = fact
            link_id = pair.link.id if pair.link is not None else None
            extra = {"bp_incident_id": pair_bp_id(pair), "link_id": link_id}
            log.info("merged into %s", dest, extra=extra)
            if destination_waits(pair.merge, self._c.settings, pair.sn):
                waiting.add(dest)
        return (
            [pair for pair in pairs if pair_bp_id(pair) not in waiting],
            [pair for pair in fresh if pair_bp_id(pair) not in waiting],
        )

    async def _destination(self, bp_id: str) -> str | None:
        try:
            activities = await self._c.bigpanda.list_activities(bp_id, types=[MERGED_SOURCE])
        except (NotFoundError, PermanentError) as exc:
            reason = str(exc)
            if reason not in self._warned:
                self._warned.add(reason)
                log.warning("BigPanda activities of %s not read for a merge: %s", bp_id, reason)
            return None
        return merge_destination((a.type, a.params) for a in activities)
