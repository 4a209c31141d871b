"""What the status page shows (``GET /``, ``GET /status.json``), read into typed values.

One :class:`PairStatus` per pair (a BigPanda organisation and a ServiceNow instance
kept in sync: the daemon has one today, named ``default``), read by a
:class:`PairStatusReader` from the pair's store and health: the leader replica, the
last good cycle, each side's cursor lag, throttling, the outbox depth, the dead letters
with their reasons, links by state and the last writes. With a search (a BigPanda
incident id, an INC number or a sys_id), the pair's section also carries that
incident's :class:`LinkTrail`: its links across reopens and, newest first, what the
audit log and the outbox recorded of them: creates, writes, conflicts with both values,
failures, reopens.

Read-only, and nothing more than ``bpsync links show`` and ``bpsync dlq list`` show:
no secret, no outbox payload (the values a write carried); the audit's conflict values
are those ``links show`` prints. A :data:`StatusSource` is what the HTTP server asks.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from sync.clock import Clock
from sync.constants import Side
from sync.model import Link, LinkState
from sync.runtime.health import HealthState
from sync.store.base import (
    AuditEntry,
    LinkStore,
    OutboxItem,
    OutboxState,
    needs_a_person,
    readable_error,
)

#: the newest writes shown per pair
LAST_ACTIONS = 20
#: the dead letters listed per pair (all are counted)
DEAD_LETTERS_SHOWN = 50
#: the audit rows and outbox items read per link of a trail
TRAIL_ROWS_PER_LINK = 200
#: the longest search accepted (ids and numbers are far shorter)
MAX_QUERY_CHARS = 100

_INC_NUMBER = re.compile(r"[A-Za-z]{2,8}\d{4,12}")
_SYS_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class LeaderStatus:
    this_replica: str
    """``host:pid`` of the process serving the page."""
    leads: bool
    """This replica writes (the SQLite daemon always; with Postgres, the elected one)."""
    holder: str | None = None
    """The replica that took the newest epoch (Postgres); without epochs (SQLite) this
    replica when it leads; None when unknown."""
    epoch: int | None = None
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class CursorStatus:
    side: str
    watermark: datetime | None
    lag_s: float | None
    """How far the poll cursor is behind now (None: the side was never polled)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    kind: str
    bp_incident_id: str | None
    sn_sys_id: str | None
    attempts: int
    age_s: float
    reason: str
    needs_a_person: bool
    """False: bpsync still retries it by itself."""


@dataclass(frozen=True, slots=True)
class WriteRow:
    """One outbox item as a person reads it: what, where, how it went (no payload)."""

    id: int
    at: datetime
    kind: str
    state: str
    attempts: int
    link_id: int | None
    bp_incident_id: str | None
    sn_sys_id: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class LinkRow:
    id: int
    bp_incident_id: str
    sn_number: str | None
    sn_sys_id: str | None
    state: str
    created_at: datetime
    resolved_at: datetime | None
    previous_link_id: int | None


@dataclass(frozen=True, slots=True)
class TrailEvent:
    at: datetime
    what: str
    """``create``, ``write``, ``conflict``, ``failure``, ``reopen``, ``resolve``, or the
    audit outcome of another entry (``adopted``, ``superseded``)."""
    link_id: int | None
    summary: str
    field: str | None = None
    bp_value: str | None = None
    sn_value: str | None = None


@dataclass(frozen=True, slots=True)
class LinkTrail:
    query: str
    bp_incident_id: str | None
    """The incident found (None: nothing matched the query)."""
    links: list[LinkRow] = field(default_factory=list)
    events: list[TrailEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PairStatus:
    name: str
    generated_at: datetime
    leader: LeaderStatus
    last_good_cycle: datetime | None
    last_cycle_error: str | None
    cursors: list[CursorStatus]
    throttled: dict[str, list[str]]
    outbox_depth: int
    dead_letters_total: int
    dead_letters: list[DeadLetter]
    links_by_state: dict[str, int]
    last_actions: list[WriteRow]
    trail: LinkTrail | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(dataclasses.asdict(self))
        return out


#: the server's way to the pairs: the search (or None) in, one section per pair out
StatusSource = Callable[[str | None], Awaitable[list[PairStatus]]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def clean_query(raw: str | None) -> str | None:
    """The search as looked up: trimmed, None when empty; too long is refused (ValueError)."""
    if raw is None:
        return None
    query = raw.strip()
    if not query:
        return None
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"a search is at most {MAX_QUERY_CHARS} characters")
    return query


def _write_row(item: OutboxItem) -> WriteRow:
    return WriteRow(
        id=item.id,
        at=item.updated_at,
        kind=item.kind,
        state=item.state.value,
        attempts=item.attempts,
        link_id=item.link_id,
        bp_incident_id=item.bp_incident_id,
        sn_sys_id=item.sn_sys_id,
        error=None if item.last_error is None else readable_error(item.last_error),
    )


def _link_row(link: Link) -> LinkRow:
    return LinkRow(
        id=link.id,
        bp_incident_id=link.bp_incident_id,
        sn_number=link.sn_number,
        sn_sys_id=link.sn_sys_id,
        state=link.state.value,
        created_at=link.created_at,
        resolved_at=link.resolved_at,
        previous_link_id=link.previous_link_id,
    )


def link_events(link: Link) -> list[TrailEvent]:
    """What the link row itself tells: its start (a reopen when it follows another) and
    its resolve."""
    out: list[TrailEvent] = []
    if link.previous_link_id is not None:
        out.append(
            TrailEvent(
                link.created_at,
                "reopen",
                link.id,
                f"link {link.id} started after link {link.previous_link_id} (reopened)",
            )
        )
    else:
        out.append(TrailEvent(link.created_at, "create", link.id, f"link {link.id} started"))
    if link.resolved_at is not None:
        out.append(TrailEvent(link.resolved_at, "resolve", link.id, f"link {link.id} resolved"))
    return out


def audit_event(entry: AuditEntry) -> TrailEvent:
    """An audit row: a create (``created``, ``adopted``), a conflict with both values..."""
    if entry.kind == "conflict":
        return TrailEvent(
            entry.at,
            "conflict",
            entry.link_id,
            f"conflict on {entry.field or '?'}: {entry.outcome}",
            field=entry.field,
            bp_value=entry.bp_value,
            sn_value=entry.sn_value,
        )
    what = "create" if entry.outcome in ("created", "adopted") else entry.outcome
    summary = f"{entry.kind} {entry.outcome}"
    if entry.sn_sys_id:
        summary += f" (sys_id {entry.sn_sys_id})"
    return TrailEvent(entry.at, what, entry.link_id, summary, field=entry.field)


def write_event(item: OutboxItem) -> TrailEvent:
    """An outbox item: a write (``sn.reopen``: a reopen), a failure while it failed."""
    row = _write_row(item)
    tries = f"{item.attempts} attempt{'s' if item.attempts != 1 else ''}"
    if item.state == OutboxState.DEAD:
        return TrailEvent(
            item.updated_at, "failure", item.link_id, f"{item.kind} dead after {tries}: {row.error}"
        )
    if item.state == OutboxState.DONE:
        what = "reopen" if item.kind == "sn.reopen" else "write"
        summary = f"{item.kind} done"
        if item.attempts and row.error:
            summary += f" after {tries} (last error: {row.error})"
        return TrailEvent(item.updated_at, what, item.link_id, summary)
    if row.error:
        summary = f"{item.kind} {item.state.value} after {tries}: {row.error}"
        return TrailEvent(item.updated_at, "failure", item.link_id, summary)
    return TrailEvent(item.updated_at, "write", item.link_id, f"{item.kind} {item.state.value}")


class PairStatusReader:
    """Reads one pair's :class:`PairStatus` from its store and health (read-only)."""

    def __init__(
        self,
        name: str,
        store: LinkStore,
        health: HealthState,
        clock: Clock,
        *,
        attempts: int,
        this_replica: str,
        leads: Callable[[], bool],
    ) -> None:
        self.name = name
        self._store = store
        self._health = health
        self._clock = clock
        self._attempts = attempts
        self._this_replica = this_replica
        self._leads = leads

    async def read(self, query: str | None = None) -> PairStatus:
        store, now = self._store, self._clock.now()
        record, leads = await store.leader_record(), self._leads()
        if record is not None:
            holder: str | None = record.holder
        else:  # no epochs (SQLite: one writer, by its lock): the leader is whoever leads
            holder = self._this_replica if leads else None
        leader = LeaderStatus(
            this_replica=self._this_replica,
            leads=leads,
            holder=holder,
            epoch=None if record is None else record.epoch,
            since=None if record is None else record.at,
        )
        summary = await store.summary()
        cursors = []
        for side in Side:
            cursor = summary.cursors[side]
            lag = None
            if cursor.watermark is not None:
                lag = max(0.0, (now - cursor.watermark).total_seconds())
            cursors.append(CursorStatus(side.value, cursor.watermark, lag))
        dead = [
            DeadLetter(
                id=item.id,
                kind=item.kind,
                bp_incident_id=item.bp_incident_id,
                sn_sys_id=item.sn_sys_id,
                attempts=item.attempts,
                age_s=max(0.0, (now - item.created_at).total_seconds()),
                reason=readable_error(item.last_error or ""),
                needs_a_person=needs_a_person(item, self._attempts),
            )
            for item in await store.list_outbox([OutboxState.DEAD], limit=DEAD_LETTERS_SHOWN)
        ]
        by_state = await store.count_links_by_state()
        recent = await store.recent_outbox(limit=LAST_ACTIONS)
        return PairStatus(
            name=self.name,
            generated_at=now,
            leader=leader,
            last_good_cycle=self._health.last_success_at,
            last_cycle_error=self._health.last_error,
            cursors=cursors,
            throttled=self._health.throttled(),
            outbox_depth=summary.outbox_depth,
            dead_letters_total=summary.dead_letters,
            dead_letters=dead,
            links_by_state={state.value: by_state.get(state, 0) for state in LinkState},
            last_actions=[_write_row(item) for item in recent],
            trail=None if query is None else await self.trail(query),
        )

    async def find(self, query: str) -> list[Link]:
        """The history (newest first) of the incident the query names: a BigPanda
        incident id, an INC number or a ServiceNow sys_id."""
        store = self._store
        history = await store.links_for_bp(query)
        if history:
            return history
        if _INC_NUMBER.fullmatch(query):
            by_number = await store.links_for_sn_number(query.upper())
            if by_number:
                return await store.links_for_bp(by_number[0].bp_incident_id)
        if _SYS_ID.fullmatch(query):
            live = await store.live_link_for_sn(query)
            if live is not None:
                return await store.links_for_bp(live.bp_incident_id)
        return []

    async def trail(self, query: str) -> LinkTrail:
        history = await self.find(query)
        if not history:
            return LinkTrail(query=query, bp_incident_id=None)
        events: list[TrailEvent] = []
        for link in history:
            events.extend(link_events(link))
            audit = await self._store.list_audit(link_id=link.id, limit=TRAIL_ROWS_PER_LINK)
            events.extend(audit_event(entry) for entry in audit)
        items = await self._store.recent_outbox(
            limit=TRAIL_ROWS_PER_LINK * len(history), link_ids=[x.id for x in history]
        )
        events.extend(write_event(item) for item in items)
        events.sort(key=lambda e: (e.at, e.link_id or 0), reverse=True)
        return LinkTrail(
            query=query,
            bp_incident_id=history[0].bp_incident_id,
            links=[_link_row(x) for x in history],
            events=events,
        )


def unavailable(name: str, health: HealthState, clock: Clock, this_replica: str) -> PairStatus:
    """The section of a pair that could not start: why, and nothing read."""
    return PairStatus(
        name=name,
        generated_at=clock.now(),
        leader=LeaderStatus(
            this_replica=this_replica, leads=False, holder=None, epoch=None, since=None
        ),
        last_good_cycle=health.last_success_at,
        last_cycle_error=health.not_started or health.last_error,
        cursors=[],
        throttled={},
        outbox_depth=0,
        dead_letters_total=0,
        dead_letters=[],
        links_by_state={},
        last_actions=[],
    )


def pairs_source(pairs: Callable[[], Iterable[PairStatusReader | PairStatus]]) -> StatusSource:
    """The server's :data:`StatusSource`: ``pairs()`` gives, per request and in order, each
    pair's reader, or the status of a pair that has no store to read (:func:`unavailable`)."""

    async def source(query: str | None) -> list[PairStatus]:
        return [
            await pair.read(query) if isinstance(pair, PairStatusReader) else pair
            for pair in pairs()
        ]

    return source


__all__ = [
    "CursorStatus",
    "DeadLetter",
    "LeaderStatus",
    "LinkRow",
    "LinkTrail",
    "PairStatus",
    "PairStatusReader",
    "StatusSource",
    "TrailEvent",
    "WriteRow",
    "clean_query",
    "pairs_source",
    "unavailable",
]
