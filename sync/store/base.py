"""What the engine remembers across restarts: the ``LinkStore`` protocols, their records,
and the rules both stores share.

Two implementations: ``sync.store.memory.MemoryStore`` (engine tests) and
``sync.store.sql.SqlStore`` (SQLite / Postgres via SQLAlchemy 2 async). One contract
test suite (``tests/store``) runs against both. Each method is one short transaction.

:class:`LinkStore` is the union of the parts its callers use: :class:`LinkRepository`
(links and their field state), :class:`Outbox` (writes to send, dead letters),
:class:`Audit`, :class:`Cursors` (poll cursors and checkpoints), :class:`JournalLedger`
(the journal entries carried, ``sync.journal``) and :class:`Leadership` (the leader
epoch and fencing), plus the steps that span them in one transaction.

The semantics both stores follow, where the protocols leave a choice:

- Every datetime given must be aware (:func:`as_utc`); every datetime returned is aware UTC.
- Unknown link or outbox ids in a write raise :class:`StoreError` (``no link 7``).
- ``links_for_bp``, ``list_links`` and ``list_audit`` are newest first (id descending);
  ``list_outbox``, ``outbox_heads`` and ``outbox_items`` are queue order (id ascending).
- ``create_pending_link``: state ``pending``, no sys_id, the BigPanda environment as
  given (``bp_environment_id``, None when not given); a live link for the incident
  raises :class:`DuplicateLinkError`; ``previous_link_id`` must name an existing link.
- ``confirm_link``: sets sys_id and number; ``pending`` becomes ``linked`` (``linked``
  and ``resolved`` keep their state); the environment is kept; a superseded link raises
  StoreError; another live link with that sys_id raises DuplicateLinkError.
- ``set_link_state``: the link's times as :func:`link_times_for` says: to ``resolved``:
  ``resolved_at`` (default ``now``) and ``reopen_deadline`` are set; to
  ``pending``/``linked`` (a reopen): both are set to the given values (default:
  cleared); to ``superseded``: given values replace, others kept. Going back to a live
  state while another link is live raises DuplicateLinkError.
- ``move_link``: the live link now names another BigPanda incident (and environment,
  when given; else the old one is kept), its state, times, sys_id and field states kept;
  a link that names it already is returned unchanged; a link that is not live raises
  StoreError; a live link of the other incident raises DuplicateLinkError.
- ``record_field_states``: upsert per (link, side, name); a None value is stored as None.
  ``field_states_for``: ``field_states`` of several links in one read, every link asked
  for in the answer (``{}`` when it has none, or is unknown).
- ``enqueue``: new items are ``pending``, due ``now``, 0 attempts; an existing item with
  the key that is not ``done`` (pending, in flight or dead) is returned unchanged.
- ``claim_due``: ``pending`` items with ``next_attempt_at <= now`` and ``in_flight``
  items with ``updated_at + lease_s <= now``, ordered by (next_attempt_at, id), become
  ``in_flight`` with ``updated_at = now``; attempts are not touched.
- ``fail``: attempts + 1, back to ``pending`` at ``next_attempt_at``, ``last_error`` set.
- ``dead_letter``: attempts + 1 (it records the attempt that gave up), state ``dead``.
- ``complete``: state ``done`` (kept as history; its key is free for a new item).
- ``open_writes``: per target that has any, the kinds of its *open* items: ``pending``
  and ``in_flight`` ones, and ``dead`` ones that still get attempts (fewer than
  ``attempts``, and not refused for good: ``last_error`` not starting with
  :data:`PERMANENT_ERROR_PREFIX`); one read whatever the number of targets.
- ``retry_dead``: dead -> pending, attempts 0, due ``now``, last error kept; returns the
  number of items moved (0 for an id that is not dead).
- ``drop_dead``: deletes a dead item; False when the id is not a dead item.
- ``get_cursor`` of a side never advanced: ``Cursor(side, None, frozenset())``;
  ``advance_cursor`` stores the cursor as given (the caller decides what "advance" means).
- ``record_push_event``: one row per (side, object id); never fenced (a standby records
  what it receives, the leader works it); ``ack_push_events`` is fenced and deletes only
  rows not delivered again since they were taken.
- ``record_carried``: one row per (link, side, entry id), kept as first recorded (a
  second record returns False); an unknown link raises StoreError; fenced like every
  write. ``record_carried_many``: the same for a batch, in one transaction (all or
  nothing). ``carried_entries``: keyed by BigPanda incident id, the rows of all its links,
  ordered by (link id, time, side, entry id); incidents without rows are left out.
- ``count_links_by_state``: every state, 0 for a state without links. ``summary``: the
  figures a cycle reports and the status page's (outbox depth, dead letters, both
  cursors) in one read transaction. ``cursors``: both sides' cursors in one read.
  ``recent_outbox``: newest first (id descending), every state, optionally only the
  items of the given links. ``links_for_sn_number``: every link with that ServiceNow
  number, newest first. ``leader_record``: None until an epoch was ever taken.
- ``take_epoch``: the first epoch is 1; once fenced (``fence`` or ``take_epoch``), every
  write first checks the stored epoch and raises :func:`fenced_error`'s FencedError when
  it moved on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sync.constants import Side
from sync.errors import StoreError
from sync.model import CarriedEntry, FieldState, Link, LinkState

# the records, re-exported: callers import them from here
from sync.store.records import (
    AuditEntry,
    CarriedRecord,
    Cursor,
    FieldStates,
    LeaderRecord,
    LinkConfirmation,
    NewAuditEntry,
    NewOutboxItem,
    OutboxHead,
    OutboxItem,
    OutboxState,
    PushEvent,
    StoreSummary,
)


class DuplicateLinkError(StoreError):
    """A live link already exists for this BigPanda incident (or ServiceNow sys_id)."""


class FencedError(StoreError):
    """This replica's leader epoch is stale: another replica leads; it must not write."""


def fenced_error(stored: int, held: int) -> FencedError:
    """The error of a write refused because the stored epoch is not the one this replica holds."""
    return FencedError(
        f"leader epoch is {stored}, this replica holds {held}: another replica leads"
    )


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive one is a bug in the caller (ValueError)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"the store needs aware datetimes, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def link_times_for(
    state: LinkState,
    now: datetime,
    *,
    old_resolved_at: datetime | None,
    old_deadline: datetime | None,
    resolved_at: datetime | None,
    reopen_deadline: datetime | None,
) -> tuple[datetime | None, datetime | None]:
    """``(resolved_at, reopen_deadline)`` of a link after ``set_link_state`` (both stores)."""
    if state == LinkState.RESOLVED:
        return (resolved_at or now, reopen_deadline)
    if state == LinkState.SUPERSEDED:
        return (resolved_at or old_resolved_at, reopen_deadline or old_deadline)
    return (resolved_at, reopen_deadline)


# --------------------------------------------------------------------------- checkpoints
# Free-form resumable state under a name. The names below are stored: renaming one
# loses what a running deployment remembers.

#: prefix of ``bp_env:<BigPanda incident id>``, retired: the incident's environment id,
#: written with its create until migration 0002 moved it to ``links.bp_environment_id``
#: (and deleted these); no longer written or read
BP_ENV_CHECKPOINT_PREFIX = "bp_env:"
#: JSON object, link id -> flags, of the links whose changes wait for their open writes
#: (``sync.pairs``)
HELD_LINKS_CHECKPOINT = "held_links"
#: prefix of ``backfill:<environment id>:<arguments>``: one environment's backfill
#: progress, JSON (``sync.backfill.checkpoint_name``)
BACKFILL_CHECKPOINT_PREFIX = "backfill:"

#: ``last_error`` prefix of an outbox item refused for good (a permanent error, stored):
#: such a dead item is never sent again automatically, so it is not open
#: (``sync.executor.delivery.PERMANENT_PREFIX`` writes it)
PERMANENT_ERROR_PREFIX = "permanent: "

#: "<side>: <METHOD> <url>: " at the start of a write's stored error
_REQUEST_IN_ERROR = re.compile(
    r"^(?P<head>(?:permanent: )?\w+: )(?:GET|POST|PUT|PATCH|DELETE) \S+: "
)


def needs_a_person(item: OutboxItem, attempts: int) -> bool:
    """A dead item bpsync no longer retries by itself: refused for good, or out of its
    ``attempts`` (``bpsync dlq list`` and the status page show these)."""
    refused = (item.last_error or "").startswith(PERMANENT_ERROR_PREFIX)
    return refused or item.attempts >= attempts


def readable_error(error: str) -> str:
    """A write's stored error as a person needs it: the vendor's answer, without the
    request URL (the incident is shown beside it)."""
    return _REQUEST_IN_ERROR.sub(lambda m: m.group("head"), error, count=1)


# --------------------------------------------------------------------------- protocols


class LinkRepository(Protocol):
    """Links (one BigPanda incident <-> one ServiceNow incident) and their field state."""

    async def get_link(self, link_id: int) -> Link | None: ...

    async def live_link_for_bp(self, bp_incident_id: str) -> Link | None: ...

    async def live_link_for_sn(self, sn_sys_id: str) -> Link | None: ...

    async def live_links_for_bp(self, bp_incident_ids: Collection[str]) -> dict[str, Link]:
        """The live link of each of these incidents that has one (one read)."""
        ...

    async def live_links_for_sn(self, sn_sys_ids: Collection[str]) -> dict[str, Link]:
        """The live link of each of these ServiceNow incidents that has one (one read)."""
        ...

    async def links_for_bp(self, bp_incident_id: str) -> list[Link]:
        """Every link of the incident, newest first (history across reopens)."""
        ...

    async def create_pending_link(
        self,
        bp_incident_id: str,
        now: datetime,
        *,
        previous_link_id: int | None = None,
        bp_environment_id: str | None = None,
    ) -> Link:
        """Raises DuplicateLinkError if a live link exists (enforced by a unique index);
        ``bp_environment_id``: the incident's BigPanda environment, kept with the link."""
        ...

    async def confirm_link(
        self, link_id: int, sn_sys_id: str, sn_number: str, now: datetime
    ) -> Link: ...

    async def set_link_state(
        self,
        link_id: int,
        state: LinkState,
        now: datetime,
        *,
        resolved_at: datetime | None = None,
        reopen_deadline: datetime | None = None,
    ) -> Link:
        """SUPERSEDED frees the BigPanda incident for a new live link."""
        ...

    async def move_link(
        self,
        link_id: int,
        to_bp_incident_id: str,
        now: datetime,
        *,
        bp_environment_id: str | None = None,
    ) -> Link:
        """A merge's destination takes this live link (``sync.merges``)."""
        ...

    async def list_links(
        self, states: Collection[LinkState] | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[Link]: ...

    async def count_links(self, states: Collection[LinkState] | None = None) -> int: ...

    # --- field state (what was last synced, per side, so echoes are recognised)
    async def field_states(self, link_id: int) -> dict[tuple[Side, str], FieldState]: ...

    async def field_states_for(
        self, link_ids: Collection[int]
    ) -> dict[int, dict[tuple[Side, str], FieldState]]: ...

    async def record_field_states(
        self, link_id: int, side: Side, values: Mapping[str, str | None], now: datetime
    ) -> None: ...


class Outbox(Protocol):
    """Writes recorded before they are sent (SPEC B15), and the dead letters."""

    async def enqueue(
        self,
        kind: str,
        target: str,
        payload: Mapping[str, Any],
        idempotency_key: str,
        now: datetime,
        *,
        link_id: int | None = None,
        bp_incident_id: str | None = None,
        sn_sys_id: str | None = None,
    ) -> OutboxItem:
        """Idempotent on ``idempotency_key``: an existing not-done item is returned as is."""
        ...

    async def claim_due(self, now: datetime, *, limit: int, lease_s: float) -> list[OutboxItem]:
        """Pending items due at ``now`` (and in-flight ones whose lease expired: a crash)
        become in-flight; ``FOR UPDATE SKIP LOCKED`` on Postgres."""
        ...

    async def complete(self, item_id: int, now: datetime) -> None: ...

    async def fail(
        self, item_id: int, error: str, next_attempt_at: datetime, now: datetime
    ) -> OutboxItem:
        """One more failed attempt; back to pending until ``next_attempt_at``."""
        ...

    async def dead_letter(self, item_id: int, error: str, now: datetime) -> OutboxItem: ...

    async def list_outbox(
        self,
        states: Collection[OutboxState] | None = None,
        *,
        limit: int = 100,
        target: str | None = None,
    ) -> list[OutboxItem]:
        """Queue order; only the items of ``target`` when given."""
        ...

    async def outbox_heads(self, states: Collection[OutboxState]) -> list[OutboxHead]:
        """Every item in ``states``, queue order, without payloads (a cycle's read of
        its open writes: cheap however deep the backlog)."""
        ...

    async def outbox_items(self, ids: Collection[int]) -> list[OutboxItem]:
        """The items of these ids that exist, queue order."""
        ...

    async def count_outbox(self, states: Collection[OutboxState] | None = None) -> int: ...

    async def open_writes(
        self, targets: Collection[str], *, attempts: int
    ) -> dict[str, frozenset[str]]:
        """Target -> the kinds of its open items, for each of ``targets`` that has any:
        pending, in flight, or dead with fewer than ``attempts`` attempts and not
        refused for good (one read for the whole batch)."""
        ...

    async def retry_dead(self, item_id: int | None, now: datetime) -> int:
        """Dead item(s) back to pending with attempts reset; None means all. Returns count."""
        ...

    async def drop_dead(self, item_id: int) -> bool: ...


class Audit(Protocol):
    """What was done and what was decided, newest first."""

    async def record_audit(self, entry: NewAuditEntry, now: datetime) -> None: ...

    async def list_audit(
        self, *, link_id: int | None = None, kind: str | None = None, limit: int = 100
    ) -> list[AuditEntry]: ...


class Cursors(Protocol):
    """Where each side's poll has got to, and named checkpoints."""

    async def get_cursor(self, side: Side) -> Cursor: ...

    async def cursors(self) -> dict[Side, Cursor]:
        """Every side's cursor (one without a watermark for a side never polled), in
        one read."""
        ...

    async def advance_cursor(self, cursor: Cursor, now: datetime) -> None: ...

    async def get_checkpoint(self, name: str) -> str | None:
        """Free-form resumable state (backfill progress; see the names above)."""
        ...

    async def set_checkpoint(self, name: str, value: str, now: datetime) -> None: ...


class PushEvents(Protocol):
    """Changes announced by webhooks, until the engine has worked them (``sync.push``)."""

    async def record_push_event(
        self,
        side: Side,
        object_id: str,
        now: datetime,
        *,
        version: str | None = None,
        environment_id: str | None = None,
    ) -> PushEvent:
        """Upsert per (side, object_id): deliveries + 1, ``received_at`` = now, version
        and environment replaced when given. Never fenced (any replica records)."""
        ...

    async def pending_push_events(self, *, limit: int) -> list[PushEvent]:
        """The oldest ``limit`` events (``received_at``, then side and id)."""
        ...

    async def ack_push_events(self, events: Collection[PushEvent]) -> None:
        """Delete each event whose row is still as taken (same ``received_at`` and
        ``deliveries``): one delivered again since stays, to be worked again."""
        ...

    async def count_push_events(self) -> int: ...


class JournalLedger(Protocol):
    """The journal entries bpsync carries, recorded before each is sent (``sync.journal``)."""

    async def record_carried(
        self, link_id: int, side: Side, entry_id: str, digest: str, now: datetime
    ) -> bool:
        """Record that the entry ``entry_id`` read from ``side`` is carried to the other
        side as a text with ``digest``; True when new, False (nothing changed) when the
        ledger holds it already."""
        ...

    async def record_carried_many(
        self, entries: Sequence[CarriedRecord], now: datetime
    ) -> list[bool]:
        """``record_carried`` of each entry in one transaction (all or nothing: a
        missing link raises StoreError and records none); whether each was new, in order."""
        ...

    async def carried_entries(
        self, bp_incident_ids: Collection[str]
    ) -> dict[str, list[CarriedEntry]]:
        """The ledger rows of every link of each of these BigPanda incidents that has
        any (history across reopens included), one read for the batch."""
        ...


class StatusReads(Protocol):
    """Read-only views for the status page (``sync.runtime.status``)."""

    async def summary(self) -> StoreSummary:
        """Outbox depth, dead letters and both cursors, in one read (a cycle's metrics;
        the status page)."""
        ...

    async def count_links_by_state(
        self, states: Collection[LinkState] | None = None
    ) -> dict[LinkState, int]:
        """Links per state, every state (0 when none), in one read; with ``states``
        only those are counted (the others read 0: their rows are not scanned)."""
        ...

    async def recent_outbox(
        self, *, limit: int, link_ids: Collection[int] | None = None
    ) -> list[OutboxItem]:
        """The newest ``limit`` outbox items (id descending), whatever their state;
        with ``link_ids``, only those links' items."""
        ...

    async def links_for_sn_number(self, sn_number: str) -> list[Link]:
        """Every link confirmed with this ServiceNow number (``INC...``), newest first."""
        ...

    async def leader_record(self) -> LeaderRecord | None:
        """The leader row (epoch, holder, when taken); None before any epoch."""
        ...


class Leadership(Protocol):
    """High availability: fencing by epoch."""

    async def take_epoch(self, holder: str, now: datetime) -> int:
        """Increment the leader epoch, record the holder, and fence this store to it."""
        ...

    def fence(self, epoch: int | None) -> None:
        """From now on every write checks the stored epoch equals ``epoch`` (None: off)
        and raises FencedError otherwise."""
        ...


class LinkStore(
    LinkRepository,
    Outbox,
    Audit,
    Cursors,
    Leadership,
    PushEvents,
    JournalLedger,
    StatusReads,
    Protocol,
):
    """Everything the engine needs to remember across restarts: the parts above, the
    lifecycle, and the executor's hot paths, several steps in one transaction."""

    # --- lifecycle
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raises StoreError when the database is unreachable (for /readyz)."""
        ...

    # --- several steps in one transaction (all or nothing): the executor's hot paths
    async def create_pending_link_and_enqueue(
        self,
        bp_incident_id: str,
        now: datetime,
        item_for: Callable[[Link], NewOutboxItem],
        *,
        previous_link_id: int | None = None,
        bp_environment_id: str | None = None,
    ) -> tuple[Link, OutboxItem]:
        """``create_pending_link`` (with its environment), then ``enqueue`` of
        ``item_for(link)``, in one transaction: both or neither. Raises
        DuplicateLinkError (nothing written) if a live link exists."""
        ...

    async def confirm_link_and_record(
        self,
        link_id: int,
        sn_sys_id: str,
        sn_number: str,
        now: datetime,
        *,
        audit_outcome: str | None = None,
        field_states: Sequence[FieldStates] = (),
    ) -> Link:
        """``confirm_link``, then (when ``audit_outcome`` is set) an ``action`` audit
        entry for the link with both ids, then ``record_field_states`` of each, in one
        transaction."""
        ...

    async def complete_and_enqueue(
        self,
        item_id: int,
        now: datetime,
        *,
        follow_ups: Sequence[NewOutboxItem] = (),
        field_states: Sequence[FieldStates] = (),
        confirm: LinkConfirmation | None = None,
    ) -> list[OutboxItem]:
        """``confirm`` (a create's: ``confirm_link`` and its audit entry, as
        ``confirm_link_and_record``), ``record_field_states`` of each, ``enqueue`` of each
        follow-up (idempotent as ``enqueue``), then ``complete(item_id)``, in one
        transaction: a follow-up is never lost (recorded before its item is done), and a
        create is confirmed with its completion or not at all. Raises DuplicateLinkError
        (nothing written) when the confirmed sys_id has another live link. Returns the
        follow-ups' items in order."""
        ...


__all__ = [
    "BACKFILL_CHECKPOINT_PREFIX",
    "BP_ENV_CHECKPOINT_PREFIX",
    "HELD_LINKS_CHECKPOINT",
    "PERMANENT_ERROR_PREFIX",
    "Audit",
    "AuditEntry",
    "CarriedRecord",
    "Cursor",
    "Cursors",
    "DuplicateLinkError",
    "FencedError",
    "FieldStates",
    "JournalLedger",
    "LeaderRecord",
    "Leadership",
    "LinkConfirmation",
    "LinkRepository",
    "LinkStore",
    "NewAuditEntry",
    "NewOutboxItem",
    "Outbox",
    "OutboxHead",
    "OutboxItem",
    "OutboxState",
    "PushEvent",
    "PushEvents",
    "StatusReads",
    "StoreSummary",
    "as_utc",
    "fenced_error",
    "link_times_for",
    "needs_a_person",
    "opt_utc",
    "readable_error",
]
