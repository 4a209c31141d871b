"""Backfill: historical BigPanda incidents through the daemon's planner and executor.

``bpsync backfill --since T [--until T] [--environment ID] [--dry-run]`` (SPEC section 2)
searches each shared environment for the incidents active during the window (BigPanda's
``from``/``to`` semantics), page by page, and hands every page to
:func:`sync_incidents`: the same pairing with the
live link, the same pure planner, guards and executor (outbox, idempotent create, B2)
as a sync cycle. A re-run therefore never creates a second ServiceNow incident.

Paging
------
Search is sorted by ``start`` (fixed once an incident exists, so pages do not shift
while bpsync writes tags) with ``expand=alerts`` (page size at most 10, so a create
needs no extra fetch for its description and primary alert). BigPanda serves only the
first 10,000 results of a search: a slice of the window with more is halved until it
fits. An incident active across two slices is seen twice; the run de-duplicates it.

Resuming
--------
Progress is a checkpoint in the link store per environment, named after the arguments
as given (``backfill:<env>:<since>:<until>``): the window as first resolved (so ``7d``
means the same instants on the re-run), the slice and the next page, and the counts so
far. It is written after each page's outcomes are recorded; an interrupted run, re-run
with the same arguments, resumes at the page it was on (that page is planned again,
which is harmless: its incidents are linked or pending). A finished backfill starts over
when run again. What a crash left is recovered first, as a cycle does
(:func:`sync.coordinator.recover`): pending links without a write are adopted or planned
again, then the writes left pending (B15) are driven.

``dry_run``: every action is reported (one line each) and nothing is written: no HTTP
write, no store write (not even the checkpoint).

Journals (``sync.journal``): with ``with_journal`` (``--with-journal``) each page's
linked incidents have their history read on both sides and carried, each entry once (a
re-run carries nothing twice); without it, the links a page makes get a history cutoff,
so neither the backfill nor the daemon later copies what was said before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sync.actions import (
    STORE_ONLY_KINDS,
    Action,
    CarryEntryToBigPanda,
    CarryEntryToServiceNow,
    CommentBigPanda,
    CreateServiceNowIncident,
    MarkLinkLinked,
    MarkLinkResolved,
    MoveLink,
    RecordConflict,
    RecordSynced,
    ReopenServiceNow,
    ResolveBigPanda,
    ResolveServiceNow,
    SetLinkTag,
    SupersedeLink,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.clients.base import BigPandaAPI, BPSearchPage
from sync.clock import Clock, epoch_s, from_epoch_s
from sync.coordinator import Coordinator, recover
from sync.errors import NotFoundError
from sync.executor import Executor
from sync.given_incidents import IncidentOutcome, sync_incidents
from sync.journal_reads import backfill_journals, mark_history
from sync.model import BPIncident
from sync.store.base import BACKFILL_CHECKPOINT_PREFIX, LinkStore
from sync.window import resolve_window

log = logging.getLogger(__name__)

#: BigPanda search serves only the first 10,000 results of a query
MAX_SEARCH_RESULTS = 10_000
#: ``expand=alerts`` allows at most 10 incidents per page
EXPANDED_PAGE_SIZE = 10
#: the checkpoint name prefix of a backfill (stored; see ``sync.store.base``)
CHECKPOINT_PREFIX = BACKFILL_CHECKPOINT_PREFIX
#: the summary's rows, in order
OUTCOMES = ("created", "adopted", "updated", "skipped", "failed", "queued")


# --------------------------------------------------------------------------- reporting


class BackfillProgress(Protocol):
    """What the run reports while it goes (the CLI draws a progress bar)."""

    def add_total(self, count: int) -> None: ...

    def advance(self, count: int) -> None: ...

    def action(self, line: str) -> None:
        """One line per action (dry run)."""
        ...


class _NoProgress:
    def add_total(self, count: int) -> None:
        pass

    def advance(self, count: int) -> None:
        pass

    def action(self, line: str) -> None:
        log.info("%s", line)


@dataclass
class BackfillSummary:
    """Counts per outcome (``queued``: in the outbox, to be retried by the daemon)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    incidents: int = 0
    environments: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    """Environments whose run resumed from a checkpoint."""
    interrupted: bool = False
    dry_run: bool = False
    window: tuple[datetime, datetime] | None = None

    def add(self, outcome: str, count: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + count

    @property
    def ok(self) -> bool:
        return self.counts.get("failed", 0) == 0 and not self.interrupted


@dataclass
class _EnvState:
    """One environment's checkpoint."""

    since: int
    until: int
    position: int
    slice_to: int | None = None
    page: int = 1
    counts: dict[str, int] = field(default_factory=dict)
    incidents: int = 0
    done: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "since": self.since,
                "until": self.until,
                "position": self.position,
                "slice_to": self.slice_to,
                "page": self.page,
                "counts": self.counts,
                "incidents": self.incidents,
                "done": self.done,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> _EnvState | None:
        try:
            data = json.loads(text)
            return cls(
                since=int(data["since"]),
                until=int(data["until"]),
                position=int(data["position"]),
                slice_to=None if data.get("slice_to") is None else int(data["slice_to"]),
                page=max(1, int(data.get("page", 1))),
                counts={str(k): int(v) for k, v in dict(data.get("counts", {})).items()},
                incidents=int(data.get("incidents", 0)),
                done=bool(data.get("done", False)),
            )
        except (ValueError, KeyError, TypeError):
            return None


def checkpoint_name(environment_id: str, since: str, until: str | None) -> str:
    """The checkpoint of one environment's backfill with these arguments (as typed)."""
    args = f"{since.strip()}:{(until or 'now').strip()}"
    name = f"{CHECKPOINT_PREFIX}{environment_id}:{args}"
    if len(name) > 200:  # the store's key length
        digest = hashlib.sha256(args.encode("utf-8")).hexdigest()[:16]
        name = f"{CHECKPOINT_PREFIX}{environment_id[:150]}:{digest}"
    return name


# --------------------------------------------------------------------------- describing


def _fields(values: Mapping[str, Any], limit: int = 6) -> str:
    shown = [f"{k}={str(v)[:40]!r}" for k, v in list(values.items())[:limit]]
    if len(values) > limit:
        shown.append(f"... ({len(values) - limit} more)")
    return ", ".join(shown)


def describe_action(action: Action, environment_id: str | None = None) -> str:
    """One line for a person: what the action would do."""
    bp = getattr(action, "bp_incident_id", None)
    where = f"BigPanda {bp}" if bp else "link"
    if isinstance(action, CreateServiceNowIncident):
        env = f" (environment {action.environment_id})"
        return (
            f"create ServiceNow incident for {where}{env} (or adopt the one with "
            f"correlation_id {bp}): {_fields(action.fields)}"
        )
    if isinstance(action, UpdateServiceNowFields):
        return f"update ServiceNow {action.sys_id} of {where}: {_fields(action.fields)}"
    if isinstance(action, ResolveServiceNow):
        return f"resolve ServiceNow {action.sys_id} of {where}: close_code={action.close_code!r}"
    if isinstance(action, ReopenServiceNow):
        return f"reopen ServiceNow {action.sys_id} of {where}"
    if isinstance(action, UpdateBigPandaTags):
        removed = f"; remove {', '.join(action.remove_tags)}" if action.remove_tags else ""
        return f"set tags on {where}: {_fields(action.tags)}{removed}"
    if isinstance(action, ResolveBigPanda):
        return f"resolve {where}"
    if isinstance(action, CommentBigPanda):
        return f"comment on {where}: {action.text[:60]!r}"
    if isinstance(action, CarryEntryToServiceNow):
        return f"{action.element} on ServiceNow {action.sys_id}: {action.text[:60]!r}"
    if isinstance(action, CarryEntryToBigPanda):
        return f"comment on {where} from ServiceNow: {action.text[:60]!r}"
    if isinstance(action, SetLinkTag):
        return f"set tag {action.tag_id} on {where} to {action.value!r}"
    if isinstance(action, MarkLinkResolved):
        return f"mark link {action.link_id} resolved (store only)"
    if isinstance(action, MarkLinkLinked):
        return f"mark link {action.link_id} linked again (store only)"
    if isinstance(action, RecordSynced):
        return f"record link {action.link_id}'s values as synced (store only)"
    if isinstance(action, MoveLink | SupersedeLink):
        return f"{action.kind} {action.link_id} (a merge; store only)"
    assert isinstance(action, RecordConflict)
    return (
        f"conflict on {where} {action.sn_field}/{action.bp_tag}: "
        f"{action.winner.value} wins (audit only)"
    )


# --------------------------------------------------------------------------- the run


class Backfill:
    """One backfill run over some environments (see the module docstring)."""

    def __init__(
        self,
        *,
        store: LinkStore,
        bigpanda: BigPandaAPI,
        executor: Executor,
        coordinator: Coordinator,
        clock: Clock,
        environments: Sequence[str],
        since: str,
        until: str | None = None,
        dry_run: bool = False,
        restart: bool = False,
        progress: BackfillProgress | None = None,
        should_stop: Callable[[], bool] | None = None,
        with_journal: bool = False,
    ) -> None:
        self._store = store
        self._bp = bigpanda
        self._executor = executor
        self._coordinator = coordinator
        self._clock = clock
        self._environments = list(environments)
        self._since_arg = since
        self._until_arg = until
        self._dry_run = dry_run
        self._restart = restart
        self._with_journal = with_journal
        self._progress: BackfillProgress = progress or _NoProgress()
        self._should_stop = should_stop or (lambda: False)
        self._seen: set[str] = set()
        now = clock.now()
        self.window = resolve_window(since, until, now)  # ValueError: bad input
        self.summary = BackfillSummary(dry_run=dry_run, window=self.window)

    async def run(self) -> BackfillSummary:
        environments = self._environments
        self.summary.environments = list(environments)
        states: dict[str, _EnvState] = {}
        for env in environments:
            states[env] = await self._load_state(env)
        for env, state in states.items():  # the totals first, for the bar's ETA
            remaining = await self._count(env, state)
            self._progress.add_total(remaining)
        if not self._dry_run:
            await self._recover()
        for env, state in states.items():
            if self._should_stop():
                self.summary.interrupted = True
                break
            await self._run_environment(env, state)
        return self.summary

    # ------------------------------------------------------------------ state

    async def _load_state(self, env: str) -> _EnvState:
        since, until = (epoch_s(t) for t in self.window)
        fresh = _EnvState(since=since, until=until, position=since)
        if self._dry_run or self._restart:
            return fresh
        text = await self._store.get_checkpoint(self._name(env))
        state = None if text is None else _EnvState.from_json(text)
        if state is None or state.done:
            return fresh
        self.summary.resumed.append(env)
        self.window = (from_epoch_s(state.since), from_epoch_s(state.until))
        self.summary.window = self.window
        for outcome, count in state.counts.items():
            self.summary.add(outcome, count)
        self.summary.incidents += state.incidents
        log.info(
            "resuming the backfill of environment %s at %s (page %d)",
            env,
            from_epoch_s(state.position).isoformat(),
            state.page,
        )
        return state

    def _name(self, env: str) -> str:
        return checkpoint_name(env, self._since_arg, self._until_arg)

    async def _save(self, env: str, state: _EnvState) -> None:
        if self._dry_run:
            return
        await self._store.set_checkpoint(self._name(env), state.to_json(), self._clock.now())

    async def _count(self, env: str, state: _EnvState) -> int:
        page = await self._bp.search_incidents(
            env, from_s=state.position, to_s=state.until, sort_by="start", page=1, page_size=1
        )
        done_in_slice = (state.page - 1) * EXPANDED_PAGE_SIZE if state.slice_to else 0
        return max(0, page.total - done_in_slice)

    # ------------------------------------------------------------------ recovery

    async def _recover(self) -> None:
        """What a crash left, as a cycle does (:func:`recover`); the incidents of the
        pending links superseded are fetched and planned again."""
        replan = await recover(self._executor, self._coordinator.settings)
        batch: list[tuple[BPIncident, str]] = []
        for link in replan:
            env = await self._executor.environment_of(link.bp_incident_id)
            for candidate in [env] if env else self._environments:
                try:
                    incident = await self._bp.get_incident(
                        candidate, link.bp_incident_id, expand_alerts=True
                    )
                except NotFoundError:
                    continue
                batch.append((incident, candidate))
                break
        if batch:
            await self._handle(batch)

    # ------------------------------------------------------------------ paging

    async def _search(self, env: str, state: _EnvState, slice_to: int) -> BPSearchPage:
        """The page ``state.page`` of the incidents active in [position, slice_to]."""
        return await self._bp.search_incidents(
            env,
            from_s=state.position,
            to_s=slice_to,
            sort_by="start",
            page=state.page,
            page_size=EXPANDED_PAGE_SIZE,
            expand_alerts=True,
        )

    async def _run_environment(self, env: str, state: _EnvState) -> None:
        while state.position < state.until:
            slice_to = state.slice_to or state.until
            page = await self._search(env, state, slice_to)
            if (
                state.page == 1
                and page.total > MAX_SEARCH_RESULTS
                and slice_to - state.position > 1
            ):
                state.slice_to = state.position + (slice_to - state.position) // 2
                continue  # too many to page through: a narrower slice first
            state.slice_to = slice_to
            while True:
                fresh = [i for i in page.items if i.id not in self._seen]
                self._seen.update(i.id for i in page.items)
                for kind in await self._handle([(i, env) for i in fresh]):
                    state.counts[kind] = state.counts.get(kind, 0) + 1
                    state.incidents += 1
                self._progress.advance(len(page.items))
                state.page += 1
                last = not page.items or (state.page - 1) * EXPANDED_PAGE_SIZE >= page.total
                if last:
                    break
                await self._save(env, state)
                if self._should_stop():
                    self.summary.interrupted = True
                    return
                page = await self._search(env, state, slice_to)
            state.position, state.slice_to, state.page = slice_to, None, 1
            state.done = state.position >= state.until
            await self._save(env, state)
            if self._should_stop() and not state.done:
                self.summary.interrupted = True
                return

    # ------------------------------------------------------------------ one page

    async def _handle(self, batch: Sequence[tuple[BPIncident, str]]) -> list[str]:
        """Plan and execute a page; returns each incident's outcome (summary updated)."""
        if not batch:
            return []
        kinds: list[str] = []
        outcomes = await sync_incidents(self._coordinator, batch, execute=not self._dry_run)
        for outcome in outcomes:
            self.summary.incidents += 1
            kind = await self._classify(outcome)
            self.summary.add(kind)
            kinds.append(kind)
            if outcome.error:
                log.error("BigPanda incident %s: %s", outcome.bp_incident_id, outcome.error)
            if self._dry_run:
                for action in outcome.actions:
                    self._progress.action(describe_action(action, outcome.environment_id))
        await self._journals(outcomes)
        return kinds

    async def _journals(self, outcomes: Sequence[IncidentOutcome]) -> None:
        """``with_journal``: the page's history carried (sync.journal); else the links
        this page made get a history cutoff, so the daemon does not carry it either."""
        c = self._coordinator
        if self._with_journal:
            pairs = [(o.bp_incident_id, o.environment_id) for o in outcomes if not o.error]
            for action in await backfill_journals(c, pairs, execute=not self._dry_run):
                if self._dry_run:
                    self._progress.action(describe_action(action))
        elif not self._dry_run:
            await mark_history(c, [o.bp_incident_id for o in outcomes if o.link is None])

    async def _classify(self, outcome: IncidentOutcome) -> str:
        """created, adopted, updated, skipped, failed or queued (would-be, in a dry run)."""
        if outcome.error:
            return "failed"
        writes = [a for a in outcome.actions if a.kind not in STORE_ONLY_KINDS]
        creates = [a for a in writes if isinstance(a, CreateServiceNowIncident)]
        if not writes:
            return "skipped"  # nothing to write (at most remembered in the store)
        result = outcome.result
        if result is None:  # dry run
            return "created" if creates else "updated"
        kinds = [o for _, o in result.outcomes]
        if "dead" in kinds:
            return "failed"
        if any(o in ("retry", "queued", "deferred") for o in kinds):
            return "queued"
        if creates:
            first = next(o for k, o in result.outcomes if k == CreateServiceNowIncident.kind)
            if first != "ok":
                return "skipped"  # another cycle or replica owns the incident
            return "adopted" if result.adopted else "created"
        return "updated"


async def shared_environments(bigpanda: BigPandaAPI, configured: Sequence[str]) -> list[str]:
    """``bigpanda.environments``, or every environment when that is empty."""
    if configured:
        return list(configured)
    return [env.id for env in await bigpanda.list_environments()]


__all__ = [
    "OUTCOMES",
    "Backfill",
    "BackfillProgress",
    "BackfillSummary",
    "checkpoint_name",
    "describe_action",
    "shared_environments",
]
