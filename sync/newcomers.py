"""Batched reads for new BigPanda incidents (the storm path; SPEC B1, B2, B10, B11).

A new incident needs its alerts (descriptions, the primary alert) and a ServiceNow
duplicate check before its create. One ``GET .../incidents/{id}?expand=alerts`` and one
``correlation_id=`` query per incident would be two requests per incident on each side;
in an alert storm that is the difference between keeping up and falling behind. Here a
chunk of up to ten new incidents of one environment costs:

- BigPanda: one search page with ``expand=alerts`` (at most 10 per page, docs 4.1),
  ``from``/``to`` = the chunk's oldest and newest ``start`` and ``sort_by=start``
  (newest first): the chunk's incidents are active during that window and no incident
  that started later is; further pages only while some are missing and the page still
  reaches back to the chunk's oldest start. An incident the search did not return is
  read on its own (``GET``), as before.
- ServiceNow: one ``correlation_idIN...^active=true`` query. An incident with no match
  is marked checked (its create's first attempt does not search again); a match leaves
  the full check to the executor (adoption, history after a reopen).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.errors import NotFoundError
from sync.model import BPIncident

log = logging.getLogger(__name__)

#: new incidents read together: one search page with expand=alerts holds ten
CHUNK = 10
#: pages of one chunk's search at most (incidents started in the same second: a storm
#: of 200 in one second is 20 pages, read once for all its chunks)
MAX_PAGES = 20


async def expand_alerts(
    bigpanda: BigPandaAPI,
    environment_id: str,
    incidents: Sequence[BPIncident],
    seen: dict[str, BPIncident],
) -> dict[str, BPIncident]:
    """The given incidents with their alerts, by id; an incident gone is left out.

    ``seen``: every expanded incident read so far in this cycle, updated here. Incidents
    that share a start second (a storm) come in one order from the search and may sit on
    later pages than their chunk's; what a page brings for a later chunk is kept, so
    that chunk needs no request of its own."""
    wanted = {i.id: i for i in incidents}
    found: dict[str, BPIncident] = {k: seen[k] for k in wanted if k in seen}
    starts = [i.start for i in incidents if i.start is not None and i.id not in found]
    if starts and len(wanted) - len(found) > 1:
        oldest, newest = min(starts), max(starts)
        page = 1
        while page <= MAX_PAGES and len(found) < len(wanted):
            result = await bigpanda.search_incidents(
                environment_id,
                from_s=oldest,
                to_s=newest,
                sort_by="start",
                page=page,
                page_size=CHUNK,
                expand_alerts=True,
            )
            for item in result.items:
                seen[item.id] = item
                if item.id in wanted:
                    found[item.id] = item
            last_start = result.items[-1].start if result.items else None
            if (
                not result.items
                or page * CHUNK >= result.total
                or (last_start is not None and last_start < oldest)
            ):
                break
            page += 1
    for incident_id in wanted.keys() - found.keys():
        try:
            found[incident_id] = await bigpanda.get_incident(
                environment_id, incident_id, expand_alerts=True
            )
        except NotFoundError:
            log.warning("BigPanda incident %s vanished while being synced", incident_id)
    return found


async def unmatched(servicenow: ServiceNowAPI, bp_incident_ids: Sequence[str]) -> set[str]:
    """The ids no active ServiceNow incident carries as ``correlation_id`` (one query)."""
    if not bp_incident_ids:
        return set()
    records = await servicenow.find_by_correlation_ids(bp_incident_ids, active_only=True)
    matched = {str(r.get("correlation_id", "")) for r in records}
    return set(bp_incident_ids) - matched


def chunks(by_env: Mapping[str, Sequence[BPIncident]]) -> list[tuple[str, list[BPIncident]]]:
    """Chunks of up to :data:`CHUNK` incidents of one environment, oldest first overall."""
    out: list[tuple[str, list[BPIncident]]] = []
    for env, incidents in by_env.items():
        ordered = sorted(incidents, key=lambda i: (i.start or 0, i.id))
        out += [(env, ordered[n : n + CHUNK]) for n in range(0, len(ordered), CHUNK)]
    out.sort(key=lambda item: (item[1][0].start or 0, item[1][0].id))
    return out
