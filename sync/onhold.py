"""ServiceNow On Hold <-> BigPanda snooze (pure; ``incidents.hold_to_snooze``).

Part of the planner. Each side's hold is remembered as a field state like a mapped
field (``$snoozed`` on BigPanda, ``$on_hold`` on ServiceNow, ``"true"`` or empty), so
bpsync's own snooze or hold is never taken for a person's (B5):

- ServiceNow enters On Hold (state 3): the BigPanda incident is snoozed until now +
  ``snooze_max`` (89 days by default: snoozes near 90 days fail); leaving On Hold
  unsnoozes it. ServiceNow wins when both moved (the ticket is where people work).
- The BigPanda incident is snoozed: On Hold with ``hold_reason``; unsnoozed (by a person
  or by its end time): back to In Progress.
- Both already agree: only remembered.

Only for a live pair (BigPanda active, ServiceNow not resolved): a resolve wins.
"""

from __future__ import annotations

from sync.actions import Action, RecordSynced, SnoozeBigPanda, UpdateServiceNowFields
from sync.constants import Side, SNState
from sync.fieldsync import LinkedPair, last_synced, on_refused, on_success

__all__ = ["ON_HOLD", "SNOOZED", "plan_hold"]

#: the field state names of each side's hold
SNOOZED = "$snoozed"
ON_HOLD = "$on_hold"


def plan_hold(pair: LinkedPair) -> list[Action]:
    """The pair's hold actions (none unless ``hold_to_snooze``)."""
    inp, opts, link = pair.inp, pair.settings.incidents, pair.link
    if not opts.hold_to_snooze:
        return []
    bp_last = last_synced(inp.synced, Side.BIGPANDA, SNOOZED)
    sn_last = last_synced(inp.synced, Side.SERVICENOW, ON_HOLD)
    bp_now = bp_last if inp.bp is None else ("true" if inp.bp.snoozed else None)
    sn_now = sn_last
    if inp.sn is not None:
        sn_now = "true" if inp.sn.state == SNState.ON_HOLD else None
    bp_moved, sn_moved = bp_now != bp_last, sn_now != sn_last
    if not bp_moved and not sn_moved:
        return []
    if sn_moved and sn_now != bp_now:
        end = None
        if sn_now is not None:
            end = int(pair.now.timestamp() + opts.snooze_max)
        return [
            SnoozeBigPanda(
                link_id=link.id,
                bp_incident_id=link.bp_incident_id,
                environment_id=pair.environment_id,
                end_time=end,
                sys_id=pair.sys_id,
                record_bp={SNOOZED: sn_now},
                record_sn={ON_HOLD: sn_now},
            )
        ]
    if bp_moved and bp_now != sn_now:
        fields = (
            {"state": str(int(SNState.ON_HOLD)), "hold_reason": opts.hold_reason}
            if bp_now is not None
            else {"state": str(int(SNState.IN_PROGRESS))}
        )
        return [
            UpdateServiceNowFields(
                link_id=link.id,
                bp_incident_id=link.bp_incident_id,
                sys_id=pair.sys_id,
                fields=fields,
                record_bp={SNOOZED: bp_now},
                record_sn={ON_HOLD: bp_now},
                on_success=on_success(pair),
                on_refused=on_refused(pair, UpdateServiceNowFields.kind),
            )
        ]
    return [RecordSynced(link.id, record_bp={SNOOZED: bp_now}, record_sn={ON_HOLD: sn_now})]
