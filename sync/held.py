"""Held pairs: a pair whose link still has open writes waits until they are done.

A pair whose link has a pending create, or an outbox item still to send (a write waiting
for its retry, one in flight, a dead one with attempts left), is *held*: planned now, it
would be planned from last-synced values that the waiting write has not recorded yet
(echoes, a stale value winning). Which links have open writes is one store read for the
cycle's whole batch (``LinkStore.open_writes``, on the outbox targets of
:func:`write_targets`), whatever ran before it.

Held link ids are a store checkpoint (``held_links``: link id -> flags, written before
the cursors move, :data:`sync.pairs.HELD_CHECKPOINT`), so a restart forgets none. Once a
held link's writes are done it is released: read on both sides (which side changed while
it waited is unknown) and planned as it is. A side seen resolved while held and active
again now (resolved and reopened while its writes waited) is planned first as it was, a
*prelude*, so the resolve and the reopen still reach the other side, in that order (B9).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sync.actions import ReopenServiceNow
from sync.constants import SNState
from sync.errors import NotFoundError
from sync.model import LIVE_LINK_STATES, Link, LinkState
from sync.pairs import HELD_CHECKPOINT, Held, Pair, pair_bp_id, resolved_prelude

if TYPE_CHECKING:
    from sync.coordinator import Coordinator

# the cycle's lines stay on "sync.coordinator", wherever the code lives
log = logging.getLogger("sync.coordinator")


def write_targets(bp_incident_id: str, sn_sys_id: str | None) -> list[str]:
    """The outbox targets of a pair's writes (:func:`sync.executor.codec.target_of`):
    its BigPanda incident, its create, and its ServiceNow incident once known."""
    targets = [f"bigpanda:{bp_incident_id}", f"servicenow:create:{bp_incident_id}"]
    if sn_sys_id:
        targets.append(f"servicenow:{sn_sys_id}")
    return targets


@dataclass(frozen=True, slots=True)
class OpenWrites:
    """The open outbox items of some links' targets (target -> kinds), read at once."""

    by_target: Mapping[str, Collection[str]]

    def busy(self, link: Link) -> bool:
        """The link's writes are not all done: a pending create, or an open outbox item."""
        if link.state == LinkState.PENDING:
            return True
        return any(t in self.by_target for t in write_targets(link.bp_incident_id, link.sn_sys_id))

    def reopen_waits(self, sn_sys_id: str | None) -> bool:
        """A reopen of this ServiceNow incident waits in the outbox: until it is sent, the
        incident still reads Resolved."""
        kinds = self.by_target.get(f"servicenow:{sn_sys_id}", ()) if sn_sys_id else ()
        return ReopenServiceNow.kind in kinds


def keep_held(held: Held, pair: Pair) -> None:
    """A pair whose outcome was not recorded stays (or becomes) held."""
    if pair.link is not None:
        held.setdefault(pair.link.id, set())


class HeldPairs:
    """The coordinator's held pairs: which to hold, which to release, and the checkpoint."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._c = coordinator

    async def load(self) -> Held:
        """The held links as the checkpoint has them (an unreadable one: none, logged)."""
        raw = await self._c.store.get_checkpoint(HELD_CHECKPOINT)
        if not raw:
            return {}
        try:
            data = json.loads(raw)
            return {int(link_id): {str(f) for f in flags} for link_id, flags in data.items()}
        except (ValueError, TypeError, AttributeError):
            log.error("checkpoint %s unreadable, ignored: %r", HELD_CHECKPOINT, raw[:200])  # noqa: TRY400
            return {}

    async def save(self, held: Held) -> None:
        """Write the checkpoint (only when it changed)."""
        store = self._c.store
        value = json.dumps({str(k): sorted(v) for k, v in sorted(held.items())})
        if value != (await store.get_checkpoint(HELD_CHECKPOINT) or "{}"):
            await store.set_checkpoint(HELD_CHECKPOINT, value, self._c.clock.now())

    async def open_writes(self, links: Sequence[Link]) -> OpenWrites:
        """The open outbox items of these links' targets: one store read."""
        targets = {t for link in links for t in write_targets(link.bp_incident_id, link.sn_sys_id)}
        attempts = self._c.settings.retry.attempts
        return OpenWrites(await self._c.store.open_writes(targets, attempts=attempts))

    async def hold_busy(
        self, pairs: Sequence[Pair], held: Held, environments: Sequence[str]
    ) -> tuple[list[Pair], Held, list[tuple[Pair, Pair]]]:
        """Split off the pairs whose link has open writes (held: planned once those are
        done); bring back the held links whose writes are done, read on both sides.
        Returns the pairs to plan now, the links still held, and (prelude, pair) for
        released pairs whose side was resolved and reopened while held."""
        c = self._c
        polled = {pair.link.id: pair for pair in pairs if pair.link is not None}
        others: dict[int, Link | None] = {}  # held links not polled, as they are now
        for link_id in sorted(held.keys() - polled.keys()):
            others[link_id] = await c.store.get_link(link_id)
        links = [pair.link for pair in polled.values() if pair.link is not None]
        writes = await self.open_writes(links + [x for x in others.values() if x is not None])
        ready: list[Pair] = []
        still_held: Held = {}
        by_link: dict[int, Pair] = {}
        for pair in pairs:
            if pair.link is not None and writes.busy(pair.link):
                flags = still_held[pair.link.id] = held.get(pair.link.id, set())
                if pair.bp is not None and not pair.bp.active:
                    flags.add("bp_resolved")
                # (Resolved while bpsync's own reopen waits is not a person's resolve)
                if (
                    pair.sn is not None
                    and pair.sn.state == SNState.RESOLVED
                    and not writes.reopen_waits(pair.link.sn_sys_id)
                ):
                    flags.add("sn_resolved")
                log.debug("%s waits for its open writes", c.pair_ids(pair))
                continue
            ready.append(pair)
            if pair.link is not None:
                by_link[pair.link.id] = pair
        preludes: list[tuple[Pair, Pair]] = []
        for link_id in sorted(held.keys() - still_held.keys()):
            known = by_link.get(link_id)
            link = known.link if known is not None else others.get(link_id)
            if link is None or link.state not in LIVE_LINK_STATES:
                continue  # superseded or gone: its incident is another link's now
            if writes.busy(link):
                still_held[link_id] = held[link_id]
                continue
            released = known
            if released is None:
                fetched = await c.pairing.fetch_bp(link.bp_incident_id, environments)
                if fetched is None:
                    log.warning("held link %d: BigPanda incident not found, released", link_id)
                    continue
                released = Pair(fetched[0], None, link, fetched[1])
                ready.append(released)
            released.link = link
            await self._read_both_sides(released)
            prelude = resolved_prelude(released, held[link_id])
            if prelude is not None:
                preludes.append((prelude, released))
            await c.pairing.expand_for_create(released)
        return ready, still_held, preludes

    async def run_preludes(self, preludes: Sequence[tuple[Pair, Pair]], live: int) -> None:
        """Plan and execute each released pair's resolved state first, then refresh the
        pair's link: its own plan then sees the reopen (B9)."""
        c = self._c
        for prelude, pair in preludes:
            actions = await c.plan_pair(prelude, c.clock.now())
            c.check_guards([actions], live)
            if actions:
                await c.executor.execute(actions, environment_id=prelude.environment_id)
            pair.link = await c.store.live_link_for_bp(pair_bp_id(pair))
            await c.pairing.expand_for_create(pair)

    async def _read_both_sides(self, pair: Pair) -> None:
        """Give a released pair the side it lacks, as it is now: which side changed while
        it was held is unknown, and a missing side reads as 'unchanged since synced'."""
        c = self._c
        link = pair.link
        assert link is not None
        try:
            if pair.bp is None and pair.environment_id is not None:
                pair.bp = await c.bigpanda.get_incident(
                    pair.environment_id, link.bp_incident_id, expand_alerts=False
                )
            if pair.sn is None and link.sn_sys_id:
                pair.sn = await c.pairing.read_sn(link.sn_sys_id)
        except (NotFoundError, ValueError) as exc:
            log.warning("%s: a side cannot be read: %s", c.pair_ids(pair), exc)
