"""Actions: what the pure planner decides and the executor carries out.

Every action is a frozen dataclass named by its verb; its ``kind`` (the outbox's and
the logs' name for it) and, for a write, its ``side`` are class constants, defined
once here. The planner (``sync.planner``)
returns a list of them for one BigPanda incident / ServiceNow incident pair; the
executor (``sync.executor``) runs each through the clients and records its outcome in
the store on its own.

Field state ("last synced value", SPEC B5): a write action carries ``record_bp`` and
``record_sn``: the values to store as last-synced on each side *after the write
succeeded* (BigPanda tag id -> value, ServiceNow field -> value). The next poll then
sees those values and recognises them as bpsync's own, so nothing is echoed back.
:class:`RecordSynced` stores values without any write (both sides already agree).

Follow-ups: a ServiceNow write carries the BigPanda writes its plan makes after it,
``on_success`` (the link tag after a create; the link tag back after an ``error``) and
``on_refused`` (B14: the comment with ServiceNow's message and the ``error`` tag). They
wait on the write's result (its number, its refusal), and the executor puts them in the
outbox in the same transaction that settles the write, so a kill loses none.

Look-ups (SPEC B12): a field whose value must be looked up in ServiceNow (a user by
e-mail, a group or CI by name) is given as a :class:`RefLookup`; the executor resolves
it (cached) and leaves the field out, with one warning, when nothing or several match.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from sync.constants import Side
from sync.model import (
    AssigneeInput,
    BPIncident,
    FieldState,
    JournalInput,
    Link,
    MergeFact,
    SNIncident,
)
from sync.sizes import DEFAULT_SIZES, FieldSizes


@dataclass(frozen=True, slots=True)
class RefLookup:
    """A reference field's value, to find as ``table.column = value`` (e.g. sys_user.email)."""

    table: str
    column: str
    value: str


@dataclass(frozen=True, slots=True)
class PlanInput:
    """Everything the planner knows about one pair.

    ``bp`` / ``sn`` is None when that side did not show up in this cycle's poll: it has
    not changed since the last sync, so its mapped values are the last-synced ones in
    ``synced``. ``environment_id`` is the BigPanda environment the incident was seen in.
    """

    bp: BPIncident | None
    sn: SNIncident | None
    link: Link | None
    synced: Mapping[tuple[Side, str], FieldState] = field(default_factory=dict)
    environment_id: str | None = None
    correlation_checked: bool = False
    """The caller searched ServiceNow for an active incident with this BigPanda id as
    ``correlation_id`` (a batched check, just now) and found none."""
    sizes: FieldSizes = DEFAULT_SIZES
    """Field sizes in force (the ServiceNow dictionary's, read at start-up): longer
    values are cut with a marker (:mod:`sync.sizes`)."""
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Choice labels of the fields ``label = true`` rows map (field -> {label: value})."""
    references: Mapping[str, str] = field(default_factory=dict)
    """Mapped ServiceNow reference fields (field -> referenced table, from the dictionary): their
    values in ``sn`` are display values (names), and a name written to one is looked up."""
    journal: JournalInput | None = None
    """The pair's conversation read in this cycle (None: not read), :mod:`sync.journal`."""
    merge: MergeFact | None = None
    """BigPanda merged this incident into another (read in this cycle), :mod:`sync.merges`."""
    assignee: AssigneeInput | None = None
    """The people of a pair whose assignee moved, looked up before it is planned (None:
    nothing moved, or ``sync_assignee`` is off), :mod:`sync.assignment`."""


@dataclass(frozen=True, slots=True)
class CreateServiceNowIncident:
    """B1/B9: create (or adopt, B2) the ServiceNow incident of a BigPanda incident.

    The executor follows the idempotent protocol: pending link -> search
    ``correlation_id`` -> create with ``correlation_id`` = ``bp_incident_id`` -> confirm
    link -> set the link tag. ``previous_link_id`` is set when this replaces a link after
    a reopen past the window (the old link becomes superseded).
    """

    bp_incident_id: str
    environment_id: str
    fields: Mapping[str, str]
    lookups: Mapping[str, RefLookup] = field(default_factory=dict)
    previous_link_id: int | None = None
    record_bp: Mapping[str, str | None] = field(default_factory=dict)
    record_sn: Mapping[str, str | None] = field(default_factory=dict)
    checked_absent: bool = False
    """No active incident had this ``correlation_id`` when planned (a batched check):
    the first attempt creates without searching again; a retry always searches (B2)."""
    kind: ClassVar[str] = "sn.create"
    side: ClassVar[Side] = Side.SERVICENOW
    on_success: tuple[FollowUp, ...] = ()
    on_refused: tuple[FollowUp, ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateServiceNowFields:
    """B3: PATCH only the changed fields."""

    link_id: int
    bp_incident_id: str
    sys_id: str
    fields: Mapping[str, str]
    lookups: Mapping[str, RefLookup] = field(default_factory=dict)
    record_bp: Mapping[str, str | None] = field(default_factory=dict)
    record_sn: Mapping[str, str | None] = field(default_factory=dict)
    kind: ClassVar[str] = "sn.update"
    side: ClassVar[Side] = Side.SERVICENOW
    on_success: tuple[FollowUp, ...] = ()
    on_refused: tuple[FollowUp, ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateBigPandaTags:
    """B4: upsert the changed incident tags; delete ``remove_tags`` (their field was emptied)."""

    link_id: int
    bp_incident_id: str
    environment_id: str
    tags: Mapping[str, str]
    sys_id: str | None = None
    record_bp: Mapping[str, str | None] = field(default_factory=dict)
    record_sn: Mapping[str, str | None] = field(default_factory=dict)
    kind: ClassVar[str] = "bp.tags"
    side: ClassVar[Side] = Side.BIGPANDA
    remove_tags: tuple[str, ...] = ()
    """Tag ids to delete (``DELETE .../tags/{tag_id}``): a mapped field became empty."""


@dataclass(frozen=True, slots=True)
class ResolveServiceNow:
    """B7: state Resolved with close code, close notes and ``resolved_by``."""

    link_id: int
    bp_incident_id: str
    sys_id: str
    close_code: str
    close_notes: str
    resolved_by: RefLookup | None = None
    reopen_deadline: datetime | None = None
    kind: ClassVar[str] = "sn.resolve"
    side: ClassVar[Side] = Side.SERVICENOW
    on_success: tuple[FollowUp, ...] = ()
    on_refused: tuple[FollowUp, ...] = ()


@dataclass(frozen=True, slots=True)
class ResolveBigPanda:
    """B8: resolve the BigPanda incident; ``comment`` carries the closure code and notes."""

    link_id: int
    bp_incident_id: str
    environment_id: str
    comment: str
    sys_id: str | None = None
    reopen_deadline: datetime | None = None
    kind: ClassVar[str] = "bp.resolve"
    side: ClassVar[Side] = Side.BIGPANDA


@dataclass(frozen=True, slots=True)
class SnoozeBigPanda:
    """ServiceNow On Hold -> snooze the BigPanda incident until ``end_time`` (epoch s);
    ``end_time`` None: unsnooze (On Hold left)."""

    link_id: int
    bp_incident_id: str
    environment_id: str
    end_time: int | None
    sys_id: str | None = None
    record_bp: Mapping[str, str | None] = field(default_factory=dict)
    record_sn: Mapping[str, str | None] = field(default_factory=dict)
    kind: ClassVar[str] = "bp.snooze"
    side: ClassVar[Side] = Side.BIGPANDA


@dataclass(frozen=True, slots=True)
class AssignBigPanda:
    """ServiceNow's ``assigned_to`` -> assign the BigPanda incident to ``user_id`` (the
    BigPanda user with that e-mail, :mod:`sync.assignment`); None: unassign it."""

    link_id: int
    bp_incident_id: str
    environment_id: str
    user_id: str | None
    sys_id: str | None = None
    record_bp: Mapping[str, str | None] = field(default_factory=dict)
    record_sn: Mapping[str, str | None] = field(default_factory=dict)
    kind: ClassVar[str] = "bp.assign"
    side: ClassVar[Side] = Side.BIGPANDA


@dataclass(frozen=True, slots=True)
class ReopenServiceNow:
    """B9: a BigPanda reopen inside the window moves the same ServiceNow incident to In Progress."""

    link_id: int
    bp_incident_id: str
    sys_id: str
    work_note: str
    kind: ClassVar[str] = "sn.reopen"
    side: ClassVar[Side] = Side.SERVICENOW
    on_success: tuple[FollowUp, ...] = ()
    on_refused: tuple[FollowUp, ...] = ()


@dataclass(frozen=True, slots=True)
class CommentBigPanda:
    """A comment on the BigPanda incident (closure code, B14 error messages).

    ``with_error``: a follow-up of a refused ServiceNow write; the refusal's message is
    appended to ``text`` when it is sent (the result of the step it follows)."""

    bp_incident_id: str
    environment_id: str
    text: str
    link_id: int | None = None
    kind: ClassVar[str] = "bp.comment"
    side: ClassVar[Side] = Side.BIGPANDA
    with_error: bool = False


@dataclass(frozen=True, slots=True)
class SetLinkTag:
    """Set the ``link_tag`` tag to the ServiceNow number and URL (or ``error``, B14).

    ``value`` None: the link's value, from the link's number and sys_id when it is sent
    (after a create: the create's result). ``only_after_error``: a follow-up that runs
    only while the tag holds ``error`` (the way back after a refusal, B14)."""

    bp_incident_id: str
    environment_id: str
    tag_id: str
    value: str | None
    link_id: int | None = None
    kind: ClassVar[str] = "bp.link_tag"
    side: ClassVar[Side] = Side.BIGPANDA
    only_after_error: bool = False


#: what a ServiceNow write's plan does after it: on success / once it is refused for good
#: (environment "" in a follow-up: the incident's environment as the executor knows it)
FollowUp = CommentBigPanda | SetLinkTag


@dataclass(frozen=True, slots=True)
class CarryEntryToServiceNow:
    """A BigPanda comment becomes one ServiceNow journal entry (``element``: work_notes
    or comments), ``text`` prefixed with its author and time (:mod:`sync.journal`).

    Recorded in the journal ledger before it is sent; a write that may have landed (a
    retry, or an entry the ledger already holds) is looked for in the incident's
    journal by ``digest`` first (the normalised text), never sent twice."""

    link_id: int
    bp_incident_id: str
    sys_id: str
    entry_id: str
    element: str
    text: str
    digest: str
    kind: ClassVar[str] = "sn.journal"
    side: ClassVar[Side] = Side.SERVICENOW
    on_success: tuple[FollowUp, ...] = ()
    on_refused: tuple[FollowUp, ...] = ()


@dataclass(frozen=True, slots=True)
class CarryEntryToBigPanda:
    """A ServiceNow journal entry becomes one BigPanda comment, ``text`` naming its
    author and kind; recorded and re-checked as :class:`CarryEntryToServiceNow`."""

    link_id: int
    bp_incident_id: str
    environment_id: str
    sys_id: str
    entry_id: str
    text: str
    digest: str
    kind: ClassVar[str] = "bp.journal"
    side: ClassVar[Side] = Side.BIGPANDA


@dataclass(frozen=True, slots=True)
class MarkLinkResolved:
    """Store only: both sides are resolved; reopen allowed until ``reopen_deadline``."""

    link_id: int
    resolved_at: datetime
    reopen_deadline: datetime
    kind: ClassVar[str] = "link.resolved"


@dataclass(frozen=True, slots=True)
class MarkLinkLinked:
    """Store only: a resolved link is live again (after a reopen on either side)."""

    link_id: int
    kind: ClassVar[str] = "link.linked"


@dataclass(frozen=True, slots=True)
class MoveLink:
    """Store only (a merge, ``on_merge = "adopt"``): the live link of ``bp_incident_id``
    now belongs to ``to_bp_incident_id`` (its ServiceNow incident follows the merge's
    destination). Atomic; a destination that has a live link meanwhile keeps it, and
    this link is superseded instead (the source's ticket left open, as when both had
    one). Audited."""

    link_id: int
    bp_incident_id: str
    to_bp_incident_id: str
    environment_id: str | None
    kind: ClassVar[str] = "link.move"


@dataclass(frozen=True, slots=True)
class SupersedeLink:
    """Store only: the link stops syncing (history only), its ServiceNow incident left
    as it is (a merge's source whose ticket stays open). Audited with ``reason``."""

    link_id: int
    bp_incident_id: str
    reason: str
    kind: ClassVar[str] = "link.supersede"


@dataclass(frozen=True, slots=True)
class RecordSynced:
    """Store only: remember values as last-synced (both sides already agree)."""

    link_id: int
    record_bp: Mapping[str, str | None] = field(default_factory=dict)
    record_sn: Mapping[str, str | None] = field(default_factory=dict)
    kind: ClassVar[str] = "link.record"


@dataclass(frozen=True, slots=True)
class FreezeField:
    """Store only: stop writing ``field`` (a ServiceNow field and the tags mapped to it)
    for this pair: it flipped back ``writes`` times within the guard's window. Logged
    (WARNING), counted, shown by ``bpsync links show``; ``links release`` ends it."""

    link_id: int
    bp_incident_id: str
    field: str
    writes: int
    kind: ClassVar[str] = "guard.freeze"


@dataclass(frozen=True, slots=True)
class RecordConflict:
    """B6: both sides changed ``sn_field``/``bp_tag``; ``winner`` per conflict_policy. Audited."""

    link_id: int
    bp_incident_id: str
    bp_tag: str
    sn_field: str
    bp_value: str | None
    sn_value: str | None
    winner: Side
    policy: str
    kind: ClassVar[str] = "conflict"


Action = (
    CreateServiceNowIncident
    | UpdateServiceNowFields
    | UpdateBigPandaTags
    | ResolveServiceNow
    | ResolveBigPanda
    | ReopenServiceNow
    | SnoozeBigPanda
    | AssignBigPanda
    | CommentBigPanda
    | SetLinkTag
    | CarryEntryToServiceNow
    | CarryEntryToBigPanda
    | MarkLinkResolved
    | MarkLinkLinked
    | MoveLink
    | SupersedeLink
    | RecordSynced
    | RecordConflict
    | FreezeField
)

#: actions that only touch the store (no HTTP write)
STORE_ONLY_KINDS = frozenset(
    cls.kind
    for cls in (
        MarkLinkResolved,
        MarkLinkLinked,
        MoveLink,
        SupersedeLink,
        RecordSynced,
        RecordConflict,
        FreezeField,
    )
)


__all__ = [
    "STORE_ONLY_KINDS",
    "Action",
    "AssignBigPanda",
    "BPIncident",
    "CarryEntryToBigPanda",
    "CarryEntryToServiceNow",
    "CommentBigPanda",
    "CreateServiceNowIncident",
    "FieldState",
    "FollowUp",
    "FreezeField",
    "Link",
    "MarkLinkLinked",
    "MarkLinkResolved",
    "MoveLink",
    "PlanInput",
    "RecordConflict",
    "RecordSynced",
    "RefLookup",
    "ReopenServiceNow",
    "ResolveBigPanda",
    "ResolveServiceNow",
    "SNIncident",
    "SetLinkTag",
    "SnoozeBigPanda",
    "SupersedeLink",
    "UpdateBigPandaTags",
    "UpdateServiceNowFields",
]
