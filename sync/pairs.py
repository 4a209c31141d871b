"""A cycle's pairs: one BigPanda incident with its ServiceNow incident and link, the
change keys that brought it, and the small pure helpers around them (no I/O)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sync.clock import epoch_s, from_epoch_s
from sync.constants import SNState
from sync.model import BPIncident, JournalInput, Link, MergeFact, SNIncident
from sync.progress import Change
from sync.store.base import HELD_LINKS_CHECKPOINT

#: a sys_id bpsync can address: 32 letters and digits (ServiceNow makes 32 lower-case hex
#: digits; an import or a client may supply any 32 alphanumerics, kept as sent)
SN_SYS_ID_FORM = re.compile(r"[A-Za-z0-9]{32}")

#: checkpoint: JSON object, link id -> flags, of the links whose changes wait for their
#: open writes; flag ``bp_resolved`` / ``sn_resolved``: that side was seen resolved while
#: held (a resolve and a reopen while held still reach the other side, in that order)
HELD_CHECKPOINT = HELD_LINKS_CHECKPOINT

Held = dict[int, set[str]]


@dataclass(slots=True)
class Pair:
    bp: BPIncident | None
    sn: SNIncident | None
    link: Link | None
    environment_id: str | None
    changes: list[Change] = field(default_factory=list)
    journal: JournalInput | None = None
    """Its conversation, read before it is planned (``sync.journal_reads``)."""
    merge: MergeFact | None = None
    """BigPanda merged it into another incident (``sync.merge_reads``)."""


def resolved_prelude(pair: Pair, flags: Collection[str]) -> Pair | None:
    """The pair as it was when a side was seen resolved while held, if that side is
    active again now (resolved and reopened while its writes waited); else None."""
    bp, sn = pair.bp, pair.sn
    pre_bp = bp
    if "bp_resolved" in flags and bp is not None and bp.active:
        pre_bp = dataclasses.replace(bp, active=False, status="ok")
    pre_sn = sn
    if "sn_resolved" in flags and sn is not None and not sn.resolved:
        pre_sn = dataclasses.replace(sn, state=SNState.RESOLVED)
    if pre_bp is bp and pre_sn is sn:
        return None
    return Pair(pre_bp, pre_sn, pair.link, pair.environment_id)


def pair_bp_id(pair: Pair) -> str:
    """The pair's BigPanda incident id ("" when neither side names one)."""
    if pair.bp is not None:
        return pair.bp.id
    if pair.link is not None:
        return pair.link.bp_incident_id
    return pair.sn.correlation_id if pair.sn is not None else ""


def bp_change(incident: BPIncident, now: datetime) -> Change:
    """BigPanda stamps changes in whole seconds, so two edits in one second share
    ``updated_at``: the key also carries a digest of what the sync reads."""
    stamp = incident.updated_at or incident.changed_at or incident.start or 0
    content = json.dumps(
        [incident.status, incident.active, incident.end, sorted(incident.tags.items())],
        default=str,
    )
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]
    return Change(f"{incident.id}:{digest}:{stamp}", min(from_epoch_s(stamp), now))


def sn_change(incident: SNIncident, now: datetime) -> Change:
    """A record stamped in the future (a clock ahead, a script) counts as changed now:
    the cursor must not move past changes still to come."""
    stamp = incident.sys_updated_on
    key = f"{incident.sys_id}:{incident.sys_mod_count}:{epoch_s(stamp)}"
    return Change(key, min(stamp, now))


def oldest_change(pair: Pair) -> tuple[datetime, str]:
    """Sort key: the pair's oldest polled change first (a storm is worked oldest first)."""
    oldest = min((c.at for c in pair.changes), default=datetime.min.replace(tzinfo=UTC))
    return oldest, pair_bp_id(pair)
