"""The journal writes: a BigPanda comment as a ServiceNow journal entry, a ServiceNow
journal entry as a BigPanda comment (the plan's :mod:`sync.journal`), each carried once.

Record before send: the entry goes in the journal ledger (``record_carried``) before
the write is sent, so no later plan carries it again, whatever happens next. A write
that may have landed (a retry: ``call.recheck``; or an entry the ledger held already,
written by an earlier item) is looked for in the target's journal first, by the digest
of its normalised text (:func:`sync.journal.digest`), and not sent again when found:
neither BigPanda nor ServiceNow de-duplicates a repeated comment or journal entry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sync.actions import CarryEntryToBigPanda, CarryEntryToServiceNow
from sync.constants import Side
from sync.errors import PermanentError
from sync.journal import digest

if TYPE_CHECKING:
    from sync.executor.writes import WriteCall, Writes

# every line the executor logs is on "sync.executor" (log consumers filter on it)
log = logging.getLogger("sync.executor")

#: BigPanda's activity type of a comment
COMMENTED = "incident_commented"


def _landed(action: CarryEntryToServiceNow | CarryEntryToBigPanda) -> None:
    log.info(
        "%s already on the other side: not sent again",
        action.kind,
        extra={"bp_incident_id": action.bp_incident_id, "sn_sys_id": action.sys_id},
    )


async def carry_to_servicenow(w: Writes, action: CarryEntryToServiceNow, call: WriteCall) -> None:
    fresh = await w.store.record_carried(
        action.link_id, Side.BIGPANDA, action.entry_id, action.digest, w.clock.now()
    )
    if call.recheck or not fresh:
        entries = await w.sn.list_journal(action.sys_id, [action.element])
        if any(digest(entry.text) == action.digest for entry in entries):
            _landed(action)
            return
    await w.sn.update_incident(action.sys_id, {action.element: action.text})


async def carry_to_bigpanda(w: Writes, action: CarryEntryToBigPanda, call: WriteCall) -> None:
    fresh = await w.store.record_carried(
        action.link_id, Side.SERVICENOW, action.entry_id, action.digest, w.clock.now()
    )
    if call.recheck or not fresh:
        activities = await w.bp.list_activities(action.bp_incident_id, types=[COMMENTED])
        texts = (str(a.params.get("comment") or "") for a in activities if a.type == COMMENTED)
        if any(digest(text) == action.digest for text in texts):
            _landed(action)
            return
    env = action.environment_id or call.env or await w.environment_of(action.bp_incident_id)
    if not env:  # a dead letter for a person, not a silent loss
        raise PermanentError("bpsync", "the BigPanda incident's environment is unknown")
    await w.bp.add_comment(env, action.bp_incident_id, action.text)
