"""Pairing a cycle's changes (the coordinator's step 3): each changed incident of either
side with its link and, where the plan needs it, the other side.

A BigPanda change and a ServiceNow change of one linked incident become one
:class:`~sync.pairs.Pair` (links found for the whole batch in one store read per side);
a ServiceNow incident naming an unlinked BigPanda incident in ``correlation_id`` is
paired with it (read from its remembered environment first); a new BigPanda incident
without a ServiceNow change is *fresh*: its alerts and duplicate check are read later in
batches (:mod:`sync.newcomers`). A pair gets the other side's current record only when
its plan depends on it: a resolve seen on one side of a linked pair, an active incident
of a resolved link, a create that needs the alerts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sync.constants import BP_ID_PATTERN
from sync.errors import NotFoundError
from sync.model import BPIncident, Link, LinkState, SNIncident
from sync.pairs import Pair
from sync.polling import BPPoll
from sync.progress import Change

if TYPE_CHECKING:
    from sync.coordinator import Coordinator

# the cycle's lines stay on "sync.coordinator", wherever the code lives
log = logging.getLogger("sync.coordinator")


class Pairing:
    """The coordinator's pairing step (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._c = coordinator

    async def pair(
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
        links = await self._c.store.live_links_for_bp([i.id for i, _ in bp_polled.found])
        for incident, env in bp_polled.found:
            link = links.get(incident.id)
            pair = Pair(incident, None, link, env, [bp_changes[incident.id]])
            pairs[incident.id] = pair
        sn_links = await self._c.store.live_links_for_sn([sn.sys_id for sn in sn_polled[0]])
        for sn in sn_polled[0]:
            change = sn_changes[sn.sys_id]
            link = sn_links.get(sn.sys_id)
            if link is not None:
                known = pairs.get(link.bp_incident_id)
                if known is not None:
                    known.sn = sn
                    known.changes.append(change)
                    continue
                link_env = link.bp_environment_id
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
            if await self._c.store.live_link_for_bp(corr) is not None:
                continue  # an old incident of a linked BigPanda incident: history
            fetched = await self.fetch_bp(corr, environments)
            if fetched is not None:
                pairs[corr] = Pair(fetched[0], sn, None, fetched[1], [change])
        for link in replan:
            if link.bp_incident_id in pairs:
                continue
            fetched = await self.fetch_bp(link.bp_incident_id, environments)
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
            await self._other_side(pair)
            await self.expand_for_create(pair)
            ready.append(pair)
        return ready, fresh

    async def read_sn(self, sys_id: str) -> SNIncident:
        """The ServiceNow incident as it is now (NotFoundError; ValueError: malformed)."""
        return await self._c.servicenow.get_incident(sys_id)

    async def _other_side(self, pair: Pair) -> None:
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
                pair.sn = await self.read_sn(link.sn_sys_id)
            elif (
                pair.bp is None and pair.sn is not None and pair.sn.resolved and pair.environment_id
            ):
                pair.bp = await self._c.bigpanda.get_incident(
                    pair.environment_id, link.bp_incident_id, expand_alerts=False
                )
        except (NotFoundError, ValueError) as exc:
            log.warning("%s: the other side cannot be read: %s", self._c.pair_ids(pair), exc)

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
                pair.sn = await self.read_sn(link.sn_sys_id)
            except NotFoundError:
                log.warning("ServiceNow incident %s vanished while being synced", link.sn_sys_id)
            except ValueError as exc:
                log.warning("ServiceNow record skipped: %s", exc)
        if bp is None or not bp.active or bp.alerts or pair.environment_id is None:
            return
        if pair.link is not None and pair.link.state != LinkState.RESOLVED:
            return
        try:
            pair.bp = await self._c.bigpanda.get_incident(
                pair.environment_id, bp.id, expand_alerts=True
            )
        except NotFoundError:
            log.warning("BigPanda incident %s vanished while being synced", bp.id)

    async def fetch_bp(
        self, incident_id: str, environments: Sequence[str]
    ) -> tuple[BPIncident, str] | None:
        """The incident and its environment: the one remembered first, then the others."""
        remembered = await self._c.executor.environment_of(incident_id)
        candidates: list[str] = [remembered] if remembered else []
        candidates += [env for env in environments if env != remembered]
        for env in candidates:
            try:
                incident = await self._c.bigpanda.get_incident(env, incident_id, expand_alerts=True)
            except NotFoundError:
                continue
            return incident, env
        return None


__all__ = ["Pairing"]
