"""Batched reads for new BigPanda incidents (the storm path; SPEC B1, B2, B10, B11).

A new incident needs its alerts (descriptions, the primary alert) and a ServiceNow
duplicate check before its create. One ``GET .../incidents/{id}?expand=alerts`` and one
``correlation_id=`` query per incident would be two requests per incident on each side;
in an alert storm that is the difference between keeping up and falling behind.

- BigPanda: one scan of the search with ``expand=alerts`` (at most 10 per page, docs
  4.1) over the window of the new incidents' starts (``from``/``to`` = the oldest and
  the newest ``start``; an incident that started later is not active in it, so pages
  do not shift while bpsync works) with ``sort_by=start`` (newest first). The first
  page tells the total; the others are read from the last to the second, so incidents
  come oldest first, a page (about ten) at a time, each page read once however many
  incidents share a start second. An incident the scan did not bring (gone, or past
  the 10,000 results search serves) is read on its own (``GET``), as before.
- ServiceNow: one ``correlation_idIN...^active=true`` query per batch. An incident with
  no match is marked checked (its create's first attempt does not search again); a
  match leaves the full check to the executor (adoption, history after a reopen).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence

from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.errors import NotFoundError
from sync.model import BPIncident

log = logging.getLogger(__name__)

#: search with expand=alerts: at most ten incidents per page (docs 4.1)
PAGE = 10
#: search serves the first 10,000 results of a query (docs 3.4)
MAX_RESULTS = 10_000


async def expanded_oldest_first(
    bigpanda: BigPandaAPI, environment_id: str, incidents: Sequence[BPIncident]
) -> AsyncIterator[list[BPIncident]]:
    """The given incidents with their alerts, oldest first, about a page at a time; an
    incident gone is left out (one WARNING)."""
    wanted = {i.id for i in incidents}
    starts = [i.start for i in incidents if i.start is not None]
    found: set[str] = set()

    def keep(items: Sequence[BPIncident]) -> list[BPIncident]:
        batch = [i for i in items if i.id in wanted and i.id not in found]
        found.update(i.id for i in batch)
        return sorted(batch, key=lambda i: (i.start or 0, i.id))

    if len(wanted) > 1 and starts:

        async def page(number: int) -> tuple[int, list[BPIncident]]:
            result = await bigpanda.search_incidents(
                environment_id,
                from_s=min(starts),
                to_s=max(starts),
                sort_by="start",
                page=number,
                page_size=PAGE,
                expand_alerts=True,
            )
            return result.total, result.items

        total, newest = await page(1)
        last = math.ceil(min(total, MAX_RESULTS) / PAGE)
        for number in range(last, 1, -1):
            if len(found) == len(wanted):
                break
            batch = keep((await page(number))[1])
            if batch:
                yield batch
        batch = keep(newest)
        if batch:
            yield batch
    leftovers: list[BPIncident] = []
    for incident in sorted(incidents, key=lambda i: (i.start or 0, i.id)):
        if incident.id in found:
            continue
        try:
            leftovers.append(
                await bigpanda.get_incident(environment_id, incident.id, expand_alerts=True)
            )
        except NotFoundError:
            log.warning("BigPanda incident %s vanished while being synced", incident.id)
    if leftovers:
        yield leftovers


async def unmatched(servicenow: ServiceNowAPI, bp_incident_ids: Sequence[str]) -> set[str]:
    """The ids no active ServiceNow incident carries as ``correlation_id`` (one query)."""
    if not bp_incident_ids:
        return set()
    records = await servicenow.find_by_correlation_ids(bp_incident_ids, active_only=True)
    matched = {str(r.get("correlation_id", "")) for r in records}
    return set(bp_incident_ids) - matched
