"""The push pass: the incidents webhooks announced, read and worked as polled changes.

The daemon runs a pass within ~100 ms of a delivery (:mod:`sync.runtime.daemon`). A
cycle in flight, once polled and paired, has it as its guest (:class:`GuestRun`): the
pass claims each incident before reading it (:meth:`CycleRun.claim`): one the cycle has
not started writing is given up to the pass, one it is writing to (or a new incident, a
held link) waits, unacknowledged, for the cycle's end; per-incident work stays serial:

1. Take the recorded events (:class:`~sync.store.base.PushEvents`, oldest first). More
   than :data:`PASS_BATCH` at once (a storm) is cheaper to poll: the daemon runs a full
   cycle instead, which lists them ten to a hundred a page, and acknowledges them after.
2. Read each incident from its API (a delivery is a hint, not the truth): BigPanda in
   the environment the delivery named if it is shared, else where its link remembers,
   else in each shared environment; ServiceNow by sys_id. An incident that is gone, not
   shared, or (ServiceNow) carries no ``correlation_id`` is not bpsync's: dropped, as the
   poll would never list it.
3. Its change key is the poll's (``<id>:<version>:<epoch s>``, :mod:`sync.pairs`): a key
   already in the cursor's ``seen`` set was synced (by the poll, or by an earlier
   delivery of the same change): a duplicate, a replay or a stale delivery, dropped.
4. The rest go through the cycle's own steps (:meth:`Coordinator.work`): pair, hold,
   plan, guard, execute. bpsync's own writes echoed back by a webhook are new keys and
   are planned, and the field states recognise them (nothing is written back).
5. The finished keys join ``seen`` (:func:`sync.progress.seen_after_push`), so the
   poll's copy of each change is dropped; the watermark does not move. The events are
   acknowledged; one delivered again meanwhile stays for the next pass. An outage keeps
   them for the next pass; any other error leaves them to the poll (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from sync.constants import Side
from sync.errors import ApiError, BpsyncError, NotFoundError
from sync.execution import CycleRun
from sync.model import BPIncident, SNIncident
from sync.pairs import SN_SYS_ID_FORM, Pair, bp_change, sn_change
from sync.polling import BPPoll, Polled
from sync.progress import Change, Progress, seen_after_push
from sync.store.base import PushEvent

if TYPE_CHECKING:
    from sync.coordinator import Coordinator, CycleReport

log = logging.getLogger(__name__)

#: events one pass reads incident by incident; more pending at once: a full cycle
PASS_BATCH = 20
#: events taken at once when a full cycle covers them
TAKE_LIMIT = 1000


@dataclass(slots=True)
class PassResult:
    """What one pass did."""

    events: int = 0
    """Events taken."""
    changes: dict[Side, int] = field(default_factory=dict)
    """New changes worked, per side."""
    duplicates: int = 0
    """Events whose change was synced already (a duplicate, replay or stale delivery)."""
    dropped: int = 0
    """Events about incidents that are not bpsync's (gone, not shared, no correlation)."""
    kept: bool = False
    """An outage: the events stay for the next pass."""
    deferred: int = 0
    """Events about incidents the cycle beside this pass works: left for after it."""
    report: CycleReport | None = None


class PushRun(CycleRun):
    """A push pass's execution: the cycle's, but its progress moves no watermark: the
    finished keys join ``seen`` (:func:`seen_after_push`)."""

    def reads_at_once(self) -> int:
        return self._c.settings.pair_concurrency

    async def checkpoint(self, *, final: bool) -> None:
        c = self._c
        overlap = timedelta(seconds=c.settings.cursor_overlap)
        async with self._lock:
            self._last_checkpoint = c.clock.monotonic()
            await c.holds.save(self.held)
            for side in (Side.BIGPANDA, Side.SERVICENOW):
                forget = self.progress.wrote_bp if side is Side.BIGPANDA else ()
                moved = seen_after_push(
                    self._cursors[side],
                    self.progress.polled[side],
                    self.progress.done,
                    overlap=overlap,
                    forget=forget,
                )
                if moved is not None:
                    await c.store.advance_cursor(moved, c.clock.now())
                    self._cursors[side] = moved


class GuestRun(PushRun):
    """A push pass beside a cycle (its guest): its progress joins the cycle's run, which
    writes it with its own next checkpoint (:meth:`CycleRun.adopt`)."""

    def __init__(self, coordinator: Coordinator, progress: Progress, host: CycleRun) -> None:
        super().__init__(coordinator, progress, {}, host.cursors)
        self._host = host

    def set_aside(self, pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
        """A merged incident whose destination the cycle works is left to the poll (its
        changes stay open: not in ``seen``)."""
        host = self._host
        aside = [
            p for p in pairs if p.merge is not None and not host.claim([p.merge.destination_id])
        ]
        for pair in aside:
            self.progress.finish((ch.key for ch in pair.changes), ok=False)
        return [p for p in pairs if p not in aside], aside

    async def checkpoint(self, *, final: bool) -> None:
        self._last_checkpoint = self._c.clock.monotonic()
        await self._host.adopt(self.held, self.progress)


class PushPass:
    """Works the recorded push events of one engine (see the module docstring)."""

    def __init__(self, coordinator: Coordinator, *, batch: int = PASS_BATCH) -> None:
        self._c = coordinator
        self.batch = batch
        self._listed: list[str] | None = None
        """the environments BigPanda lists (when none is configured), read once"""
        self._stopped = False
        """an outage stopped a pass (logged once)"""

    async def take(self) -> list[PushEvent]:
        """The events recorded and not yet worked, oldest first."""
        return await self._c.store.pending_push_events(limit=TAKE_LIMIT)

    def wants_cycle(self, events: Sequence[PushEvent]) -> bool:
        """Too many at once: a full cycle reads them more cheaply than one by one."""
        return len(events) > self.batch

    async def ack(self, events: Sequence[PushEvent]) -> None:
        await self._c.store.ack_push_events(events)

    async def work(self, events: Sequence[PushEvent], host: CycleRun | None = None) -> PassResult:
        """Read, de-duplicate and work ``events`` (at most :attr:`batch` of them).

        ``host``: a cycle in flight (:meth:`CycleRun.open_to_guests`); the events about
        the incidents it works are left (not acknowledged) for a pass after it."""
        from sync.coordinator import CycleReport

        c = self._c
        result = PassResult(events=len(events))
        started = c.clock.monotonic()
        deferred: list[PushEvent] = []
        try:
            environments = await self._environments()
            if host is not None:
                seen = {side: host.seen(side) for side in Side}
            else:
                seen = {side: (await c.store.get_cursor(side)).seen for side in Side}
            bp_found: list[tuple[BPIncident, str]] = []
            sn_found: list[SNIncident] = []
            changes: dict[Side, list[Change]] = {Side.BIGPANDA: [], Side.SERVICENOW: []}
            for event in events:
                if host is not None and not host.claim([event.object_id]):
                    deferred.append(event)  # the cycle works it now: after the cycle
                    continue
                read = await self._read(event, environments)
                if read is None:
                    result.dropped += 1
                    continue
                incident, env = read
                if host is not None and not host.claim(_ids(incident)):
                    deferred.append(event)
                    continue
                now = c.clock.now()
                if isinstance(incident, BPIncident):
                    change = bp_change(incident, now)
                else:
                    change = sn_change(incident, now)
                known = {ch.key for ch in changes[event.side]}
                if change.key in seen[event.side] or change.key in known:
                    result.duplicates += 1
                    continue
                changes[event.side].append(change)
                if isinstance(incident, BPIncident):
                    bp_found.append((incident, env or ""))
                else:
                    sn_found.append(incident)
            result.changes = {side: len(found) for side, found in changes.items()}
            if bp_found or sn_found:
                live = (await c.link_counts()).live
                bp_polled = BPPoll(bp_found, changes[Side.BIGPANDA], list(bp_found))
                sn_polled = (sn_found, changes[Side.SERVICENOW])
                polled = Polled(bp_polled, sn_polled, environments, live, started)
                run: PushRun
                if host is not None:  # no held link of its own to release: the cycle's
                    run = GuestRun(c, Progress(changes), host)
                else:
                    cursors = await c.store.cursors()
                    run = PushRun(c, Progress(changes), await c.holds.load(), cursors)
                result.report = CycleReport()
                await c.work(result.report, run, polled, via="push")
        except ApiError as exc:
            result.kept = True
            if not self._stopped:  # once per outage (the poll's cycle logs it too)
                self._stopped = True
                log.warning("push pass stopped, its events wait for the next one: %s", exc)
            return result
        except BpsyncError as exc:  # a guard: the poll meets it again, and reports it
            log.warning("push pass stopped, the poll will find these changes: %s", exc)
        except Exception:  # a bug must not stop the loop: the poll is the safety net
            log.exception("push pass failed; the poll will find these changes")
        if self._stopped:
            self._stopped = False
            log.info("push passes work again")
        result.deferred = len(deferred)
        left = {id(event) for event in deferred}
        await self.ack([event for event in events if id(event) not in left])
        return result

    async def _environments(self) -> list[str]:
        configured = list(self._c.settings.bigpanda.environments)
        if configured:
            return configured
        if self._listed is None:
            self._listed = [env.id for env in await self._c.bigpanda.list_environments()]
        return self._listed

    async def _read(
        self, event: PushEvent, environments: Sequence[str]
    ) -> tuple[BPIncident | SNIncident, str | None] | None:
        """The incident as its API has it now, or None when it is not bpsync's."""
        c = self._c
        if event.side is Side.BIGPANDA:
            env = event.environment_id
            if env is not None and env in environments:
                try:
                    incident = await c.bigpanda.get_incident(env, event.object_id)
                except NotFoundError:
                    pass
                else:
                    return incident, env
            others = [e for e in environments if e != env]
            return await c.pairing.fetch_bp(event.object_id, others)
        if not SN_SYS_ID_FORM.fullmatch(event.object_id):
            return None
        try:
            sn = await c.pairing.read_sn(event.object_id)
        except NotFoundError:
            return None
        except ValueError as exc:
            log.warning("pushed ServiceNow record %s skipped: %s", event.object_id, exc)
            return None
        return (sn, None) if sn.correlation_id else None


def _ids(incident: BPIncident | SNIncident) -> tuple[str, ...]:
    """The ids that name the incident's pair: its own, and a ServiceNow incident's
    ``correlation_id`` (the BigPanda incident it belongs to)."""
    if isinstance(incident, BPIncident):
        return (incident.id,)
    return (incident.sys_id, incident.correlation_id or "")


__all__ = ["PASS_BATCH", "GuestRun", "PassResult", "PushPass", "PushRun"]
