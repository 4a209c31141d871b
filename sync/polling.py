"""Polling: what changed on each side since its cursor, for the coordinator's cycle.

- BigPanda: ``list_changed`` per shared environment (``bigpanda.environments``, or every
  environment from ``list_environments`` when that is empty), from the cursor minus
  ``cursor_overlap`` (SPEC B16). A change's key is ``<id>:<version>:<epoch s>``, the
  version a digest of status, end and tags (``updated_at`` has whole seconds).
- ServiceNow: ``list_changed`` (keyset paging on ``sys_updated_on, sys_id``); the version
  is ``sys_mod_count``. A malformed record, or one whose sys_id bpsync cannot address, is
  skipped once, named (B19); a record stamped in the future counts as changed now.

A key in the cursor's ``seen`` set was processed already and is dropped, so changes that
share a second with the cursor are neither missed nor processed twice. On the first poll
of a side (no watermark) the empty-side guard checks what came back
(:func:`sync.guards.check_empty_side`). An outage is logged once and its recovery once
(:meth:`Poller.guarded`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sync.clients.base import BigPandaAPI, MalformedRow, ServiceNowAPI
from sync.clock import Clock, epoch_s
from sync.constants import Side
from sync.errors import ApiError, FatalError, GuardTripped
from sync.guards import check_empty_side
from sync.model import BPIncident, Link, SNIncident
from sync.pairs import SN_SYS_ID_FORM, bp_change, sn_change
from sync.progress import Change, Progress
from sync.settings import Settings
from sync.store.base import Cursor

# the cycle's lines stay on "sync.coordinator", wherever the code lives
log = logging.getLogger("sync.coordinator")

T = TypeVar("T")


class SkipMetrics(Protocol):
    """What polling reports (part of ``sync.coordinator.CoordinatorMetrics``)."""

    def skipped(self, side: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class BPPoll:
    """What a BigPanda poll brought: the changed incidents (each with its environment),
    their change keys, and every incident listed, seen before or not."""

    found: list[tuple[BPIncident, str]]
    changes: list[Change]
    listed: list[tuple[BPIncident, str]]


@dataclass(frozen=True, slots=True)
class Polled:
    """What the pairing step works on: a cycle's poll of both sides, or the incidents a
    push pass read (:mod:`sync.push`), with the cycle's context."""

    bigpanda: BPPoll
    servicenow: tuple[list[SNIncident], list[Change]]
    environments: Sequence[str]
    live_links: int
    started: float
    """When the cycle (or pass) started (monotonic): its ``cycle_budget`` counts from it."""
    replan: Sequence[Link] = ()
    """Links a crash left to plan again (:func:`sync.coordinator.recover`)."""


def count_changes(metrics: object, progress: Progress, worked: Collection[str], via: str) -> None:
    """``bpsync_changes_total{side,via}``: the changes of paired incidents finished, by
    how they arrived (``push``, or ``poll``: the poll found what no push announced)."""
    changes = getattr(metrics, "changes", None)
    if not callable(changes):
        return
    for side in Side:
        done = {c.key for c in progress.polled[side]} & progress.done
        changes(side.value, via, len(done.intersection(worked)))


class Poller:
    """Polls both sides for the coordinator; remembers which side is down and which
    records were skipped (logged once for the process's life)."""

    def __init__(
        self,
        servicenow: ServiceNowAPI,
        bigpanda: BigPandaAPI,
        settings: Settings,
        clock: Clock,
        *,
        forced: Callable[[], bool],
        metrics: SkipMetrics | None = None,
    ) -> None:
        self._sn = servicenow
        self._bp = bigpanda
        self._settings = settings
        self._clock = clock
        self._forced = forced
        self._metrics = metrics
        self._down: dict[str, str] = {}
        self._skipped: set[tuple[str, str]] = set()
        """(record, reason) of the ServiceNow records skipped or clamped and logged."""

    def is_down(self, side: str) -> bool:
        """The side's outage was logged (and has not ended)."""
        return side in self._down

    async def guarded(self, side: Side, poll: Awaitable[T]) -> T:
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

    async def environments(self, live_links: int) -> list[str]:
        """The shared environments: as configured, else every one BigPanda lists."""
        configured = list(self._settings.bigpanda.environments)
        if configured:
            return configured
        found = [env.id for env in await self._bp.list_environments()]
        self._check_empty(Side.BIGPANDA, len(found), live_links, what="environments")
        return found

    async def bigpanda(
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

    async def servicenow(
        self, cursor: Cursor, live_links: int
    ) -> tuple[list[SNIncident], list[Change]]:
        """Changed incidents (the latest version of each) and their change keys."""
        rows = await self._sn.list_changed(
            cursor.watermark, overlap_s=self._settings.cursor_overlap
        )
        if cursor.watermark is None:
            self._check_empty(Side.SERVICENOW, len(rows), live_links)
        found: dict[str, SNIncident] = {}
        changes: list[Change] = []
        now = self._clock.now()
        for incident in rows:
            if isinstance(incident, MalformedRow):  # B19: one malformed record is skipped
                self._skip_once(
                    incident.name, "malformed", f"ServiceNow record skipped: {incident.problem}"
                )
                continue
            name = incident.sys_id or "?"
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
            if not self._forced():
                raise
            log.warning("guard %s overridden by --force: %s", exc.guard, exc)

    def _skip_once(self, record: str, reason: str, message: str) -> None:
        """One WARNING and one metric count per (record, reason) for the process's life."""
        if (record, reason) in self._skipped:
            return
        self._skipped.add((record, reason))
        log.warning(message, extra={"side": Side.SERVICENOW.value, "reason": reason})
        if self._metrics is not None:
            self._metrics.skipped(Side.SERVICENOW.value, reason)
