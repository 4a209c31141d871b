"""Journals both ways, each entry once (pure): which entries of a pair's conversation to
carry, and how each reads on the other side.

Part of the planner (:func:`sync.planner.plan` calls :func:`plan_journal` for a live
link with a ServiceNow incident); the coordinator reads the entries
(:mod:`sync.journal_reads`), the executor sends them (``sync.executor.journal_writes``).
No I/O here.

What is carried
---------------
- ``[journal] to_servicenow`` (``work_notes``, ``comments`` or ``off``): every BigPanda
  comment (activity ``incident_commented``) becomes one ServiceNow journal entry of that
  kind, ``[bpsync] BigPanda comment by <author> at <time>:`` then its text.
- ``[journal] from_servicenow`` (any of ``work_notes``, ``comments``): every ServiceNow
  journal entry of those kinds (``sys_journal_field``) becomes one BigPanda comment,
  ``[bpsync] ServiceNow work note by <author> at <time>:`` then its text.
- Oldest first; a text longer than the target keeps (the ServiceNow journal's size,
  4,000; a BigPanda comment, :data:`~sync.constants.BP_COMMENT_MAX`) is cut with the
  marker of :func:`sync.sizes.fit`.
- Nothing is written to a ServiceNow incident that is Closed or Canceled (frozen, as
  its fields are); nothing is carried in a plan that replaces the link (a new incident
  after a reopen past the window: its entries follow on the new link).

Never carried
-------------
- bpsync's own texts: every comment and journal entry bpsync writes starts with
  :data:`~sync.constants.MIRROR_MARKER` (:func:`is_own`), and an entry whose normalised
  text is one bpsync wrote on that side (its digest in the ledger) is its own too;
- an entry already in the ledger (:class:`~sync.model.CarriedEntry`): the executor
  records each one before it sends it, so a retry, a kill or a restart never plans it
  again (the write itself is re-checked against the target's journal by its digest);
  the ledger of every link of the BigPanda incident counts, so a new ticket after a
  reopen past the window gets only what no earlier one got;
- history: entries older than a cutoff row of their side (:data:`HISTORY`), written for
  the links that existed when journals came (migration 0004) and for those a backfill
  creates without ``--with-journal``;
- an empty entry.

Texts are compared normalised (:func:`normalise`: line endings, trailing blanks), as a
digest (:func:`digest`), so a target that rewrites either still matches.

When to read (:func:`reads_wanted`)
-----------------------------------
Only for a live link (linked or resolved) with a ServiceNow incident, and only the side
that changed in this cycle (its snapshot in the pair): an idle cycle reads nothing. One
exception keeps a storm of new incidents at its cost: the first change of a new link
that is only bpsync's own create and link tag (the snapshot no newer than the create's
end, ``fresh_until``) is not read; what was written before the ticket existed, or in the
second of its link tag (BigPanda stamps whole seconds), is carried with the incident's
next change. A comment changes no field of the incident that the poll's change key
digests: an incident read in the second its snapshot is stamped is read once more after
that second (``sync.journal_reads``), or a later comment of that second would be lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final

from sync.actions import (
    Action,
    CarryEntryToBigPanda,
    CarryEntryToServiceNow,
    CreateServiceNowIncident,
    FreezeField,
    RecordConflict,
    RecordSynced,
    UpdateBigPandaTags,
    UpdateServiceNowFields,
)
from sync.constants import BP_COMMENT_MAX, MIRROR_MARKER, SN_JOURNAL_MAX, Side, SNState
from sync.fieldsync import LinkedPair, on_refused, on_success
from sync.model import (
    BPIncident,
    CarriedEntry,
    JournalEntry,
    JournalInput,
    Link,
    LinkState,
    SNIncident,
)
from sync.sizes import fit

if TYPE_CHECKING:  # settings pull in pydantic-settings (and asyncio): types only here
    from sync.settings import JournalSettings

__all__ = [
    "BP_COMMENT_KIND",
    "HISTORY",
    "JOURNAL_LINK_STATES",
    "Ledger",
    "bigpanda_text",
    "carries_nothing",
    "digest",
    "entries_of",
    "fields_first",
    "is_own",
    "normalise",
    "plan_journal",
    "reads_all",
    "reads_wanted",
    "servicenow_text",
]

#: the ledger's entry id of a history cutoff: entries of its side older than its time
#: are not carried (stored: migration 0004 writes it too)
HISTORY: Final = "history"
#: the kind of a BigPanda comment entry
BP_COMMENT_KIND: Final = "comment"
#: links whose conversation is carried
JOURNAL_LINK_STATES = frozenset({LinkState.LINKED, LinkState.RESOLVED})
#: how a ServiceNow journal entry's kind reads on BigPanda
SN_KIND_LABELS = {"work_notes": "work note", "comments": "additional comment"}
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


# --------------------------------------------------------------------------- texts


def normalise(text: str) -> str:
    """The text as compared: ``\\r\\n`` and ``\\r`` as ``\\n``, each line's trailing
    blanks and the text's leading and trailing blank lines dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def digest(text: str) -> str:
    """A short digest of the normalised text (the ledger's, and a re-check's key)."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:32]


def is_own(text: str) -> bool:
    """A text bpsync wrote: it starts with the mirror marker."""
    return text.lstrip().startswith(MIRROR_MARKER)


def _header(what: str, entry: JournalEntry) -> str:
    author = f" by {entry.author}" if entry.author else ""
    return f"{MIRROR_MARKER} {what}{author} at {entry.at.strftime(_TIME_FORMAT)}:\n"


def servicenow_text(entry: JournalEntry, limit: int | None = SN_JOURNAL_MAX) -> str:
    """A BigPanda comment as a ServiceNow journal entry, within ``limit``."""
    return fit(_header("BigPanda comment", entry) + entry.text, limit)


def bigpanda_text(entry: JournalEntry, limit: int = BP_COMMENT_MAX) -> str:
    """A ServiceNow journal entry as a BigPanda comment, within ``limit``."""
    label = SN_KIND_LABELS.get(entry.kind, entry.kind)
    return fit(_header(f"ServiceNow {label}", entry) + entry.text, limit)


# --------------------------------------------------------------------------- the ledger


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the ledger says about one incident's entries, per side read from."""

    carried: frozenset[tuple[Side, str]]
    written: dict[Side, frozenset[str]]
    """Digests of the texts bpsync wrote on each side."""
    since: dict[Side, datetime]
    """Each side's history cutoff."""

    @classmethod
    def of(cls, rows: Iterable[CarriedEntry]) -> Ledger:
        carried: set[tuple[Side, str]] = set()
        written: dict[Side, set[str]] = {Side.BIGPANDA: set(), Side.SERVICENOW: set()}
        since: dict[Side, datetime] = {}
        for row in rows:
            if row.entry_id == HISTORY:
                if row.side not in since or row.at > since[row.side]:
                    since[row.side] = row.at
                continue
            carried.add((row.side, row.entry_id))
            other = Side.SERVICENOW if row.side is Side.BIGPANDA else Side.BIGPANDA
            written[other].add(row.digest)
        return cls(frozenset(carried), {side: frozenset(d) for side, d in written.items()}, since)

    def wanted(self, side: Side, entry: JournalEntry) -> bool:
        """Is ``entry`` (read from ``side``) still to carry?"""
        if not entry.text.strip() or is_own(entry.text):
            return False  # empty, or bpsync's own (the marker)
        if (side, entry.id) in self.carried:
            return False  # carried already (or being carried: recorded before sent)
        cutoff = self.since.get(side)
        if cutoff is not None and entry.at < cutoff:
            return False  # history
        # bpsync's own text whose marker the target dropped
        return digest(entry.text) not in self.written.get(side, frozenset())


# --------------------------------------------------------------------------- reads


def _own_stamp(stamp_s: float | None, fresh_until: float | None) -> bool:
    return stamp_s is not None and fresh_until is not None and stamp_s <= fresh_until


def reads_wanted(
    settings: JournalSettings,
    link: Link | None,
    bp: BPIncident | None,
    sn: SNIncident | None,
    *,
    fresh_until: float | None = None,
) -> tuple[bool, bool]:
    """(read the BigPanda comments, read the ServiceNow journal) of a pair this cycle:
    a live link with a ServiceNow incident, the side's snapshot there (it changed, or
    the pair was read on that side), and journals on for that direction.
    ``fresh_until``: the link was created in this process and its create (with the link
    tag) ended then (epoch s); a change no newer is bpsync's own, not read."""
    if link is None or link.state not in JOURNAL_LINK_STATES or not link.sn_sys_id:
        return False, False
    read_bp = (
        settings.to_servicenow != "off"
        and bp is not None
        and not _own_stamp(bp.updated_at, fresh_until)
    )
    read_sn = (
        bool(settings.from_servicenow)
        and sn is not None
        and not _own_stamp(sn.sys_updated_on.timestamp(), fresh_until)
    )
    return read_bp, read_sn


def reads_all(settings: JournalSettings, link: Link | None) -> tuple[bool, bool]:
    """(BigPanda comments, ServiceNow journal) to read for a backfill ``--with-journal``:
    both sides of a live link with a ServiceNow incident, whatever changed."""
    if link is None or link.state not in JOURNAL_LINK_STATES or not link.sn_sys_id:
        return False, False
    return settings.to_servicenow != "off", bool(settings.from_servicenow)


# --------------------------------------------------------------------------- the plan


def _oldest_first(entries: Sequence[JournalEntry]) -> list[JournalEntry]:
    return sorted(entries, key=lambda e: e.at)  # stable: the source's order in a second


#: actions that only sync fields: a plan of these may write before its conversation is read
FIELD_ACTIONS = (
    UpdateServiceNowFields,
    UpdateBigPandaTags,
    RecordSynced,
    RecordConflict,
    FreezeField,
)


def fields_first(planned: Sequence[Action]) -> bool:
    """May the pair's field writes go before its conversation is read and carried? Yes
    when the plan (without the conversation) only syncs fields: nothing in it has to
    read after an entry (a resolve, a reopen, a comment, a link's change or a create
    stays behind the entries, :func:`plan_journal`). A change's fields then reach the
    other side without waiting for the comment read (BigPanda paces it)."""
    return bool(planned) and all(isinstance(a, FIELD_ACTIONS) for a in planned)


def carries_nothing(journal: JournalInput | None) -> bool:
    """Is there no entry in this conversation as read (or was it not read)? Then a plan
    with it is the plan without it (:func:`plan_journal` carries entries only, and the
    planner reads nothing else of it): a pair planned before its read, with no entry
    then either, need not be planned again (``sync.execution``)."""
    return journal is None or (not journal.bigpanda and not journal.servicenow)


def entries_of(actions: Sequence[Action]) -> list[Action]:
    """The journal entries a plan carries (its field actions written already)."""
    return [a for a in actions if isinstance(a, CarryEntryToServiceNow | CarryEntryToBigPanda)]


def plan_journal(pair: LinkedPair, planned: Sequence[Action]) -> list[Action]:
    """The entries of a linked pair to carry, oldest first, BigPanda's then ServiceNow's
    (``planned``: the pair's other actions, which the caller puts after these: an entry
    written before a resolve reads before it)."""
    inp, settings, link = pair.inp, pair.settings.journal, pair.link
    journal = inp.journal
    if journal is None or any(isinstance(a, CreateServiceNowIncident) for a in planned):
        return []  # not read, or the link is being replaced (a reopen past the window)
    ledger = Ledger.of(journal.carried)
    out: list[Action] = []
    frozen = inp.sn is not None and inp.sn.state in (SNState.CLOSED, SNState.CANCELED)
    element = settings.to_servicenow
    if journal.bigpanda is not None and element != "off" and not frozen:
        size = inp.sizes.sn(element) or SN_JOURNAL_MAX
        for entry in _oldest_first(journal.bigpanda):
            if not ledger.wanted(Side.BIGPANDA, entry):
                continue
            text = servicenow_text(entry, size)
            out.append(
                CarryEntryToServiceNow(
                    link_id=link.id,
                    bp_incident_id=link.bp_incident_id,
                    sys_id=pair.sys_id,
                    entry_id=entry.id,
                    element=element,
                    text=text,
                    digest=digest(text),
                    on_success=on_success(pair),
                    on_refused=on_refused(pair, CarryEntryToServiceNow.kind),
                )
            )
    kinds = set(settings.from_servicenow)
    if journal.servicenow is not None and kinds:
        for entry in _oldest_first(journal.servicenow):
            if entry.kind not in kinds or not ledger.wanted(Side.SERVICENOW, entry):
                continue
            text = bigpanda_text(entry)
            out.append(
                CarryEntryToBigPanda(
                    link_id=link.id,
                    bp_incident_id=link.bp_incident_id,
                    environment_id=pair.environment_id,
                    sys_id=pair.sys_id,
                    entry_id=entry.id,
                    text=text,
                    digest=digest(text),
                )
            )
    return out
