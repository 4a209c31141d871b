"""Batched reads for new BigPanda incidents (the storm path; SPEC B1, B2, B10, B11).

A new incident needs its alerts (descriptions, the primary alert) and a ServiceNow
duplicate check before its create. One ``GET .../incidents/{id}?expand=alerts`` and one
``correlation_id=`` query per incident would be two requests per incident on each side;
in an alert storm that is the difference between keeping up and falling behind.

- BigPanda: the search with ``expand=alerts`` (at most 10 per page, docs 4.1) over the
  window of the new incidents' starts (``from``/``to`` = the oldest and the newest
  ``start``; an incident that started later is not active in it, so pages do not shift
  while bpsync works) with ``sort_by=start`` (newest first, ties by id). The poll
  already listed every incident of that window, so the page of each new one is known:
  only those pages are read, the oldest first, each once, however many incidents share
  a start second and however many older ones are still active (they sort after).
  An incident its page did not bring (resolved meanwhile, or past the 10,000 results
  search serves) is read on its own (``GET``), as before.
- Linked incidents that changed get their alerts the same way when a text or a mapping
  row after the create is built from them (:func:`expand_changed_alerts`).
- ServiceNow: one ``correlation_idIN...^active=true`` query per batch. An incident with
  no match is marked checked (its create's first attempt does not search again); a
  match leaves the full check to the executor (adoption, history after a reopen).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from sync.clients.base import BigPandaAPI, ServiceNowAPI
from sync.errors import NotFoundError
from sync.mapping import compile_rules, reads_primary_alert, updated_texts
from sync.model import BPIncident, LinkState
from sync.pairs import Pair
from sync.settings import Settings

log = logging.getLogger(__name__)

#: search with expand=alerts: at most ten incidents per page (docs 4.1)
PAGE = 10
#: search serves the first 10,000 results of a query (docs 3.4)
MAX_RESULTS = 10_000


async def expanded_oldest_first(
    bigpanda: BigPandaAPI,
    environment_id: str,
    incidents: Sequence[BPIncident],
    polled: Sequence[BPIncident] = (),
) -> AsyncIterator[list[BPIncident]]:
    """The given incidents with their alerts, oldest first, about a page at a time; an
    incident gone is left out (one WARNING).

    ``polled``: every incident of the environment this cycle's poll returned. The
    search's order is known (``start`` then id, newest first, within the window of the
    given incidents' starts; incidents that started earlier come after them all), so
    the poll tells on which page each given incident should be: only those pages are
    read, the oldest first, each once. A page that does not hold what it should (an
    incident resolved meanwhile shifts the rest) costs a single read of the missing."""
    wanted = {i.id for i in incidents}
    starts = [i.start for i in incidents if i.start is not None]
    found: set[str] = set()
    if len(wanted) > 1 and len(starts) == len(wanted):
        low, high = min(starts), max(starts)
        ranked = {i.id: i for i in (*polled, *incidents) if i.start is not None}
        order = sorted(
            (i for i in ranked.values() if low <= (i.start or 0) <= high),
            key=lambda i: (i.start or 0, i.id),
            reverse=True,
        )
        pages = sorted({n // PAGE + 1 for n, i in enumerate(order) if i.id in wanted})
        for number in reversed(pages):
            if number * PAGE > MAX_RESULTS:
                continue
            result = await bigpanda.search_incidents(
                environment_id,
                from_s=low,
                to_s=high,
                sort_by="start",
                page=number,
                page_size=PAGE,
                expand_alerts=True,
            )
            batch = [i for i in result.items if i.id in wanted and i.id not in found]
            found.update(i.id for i in batch)
            if batch:
                yield sorted(batch, key=lambda i: (i.start or 0, i.id))
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
    matched = {r.correlation_id for r in records}
    return set(bp_incident_ids) - matched


async def expand_changed_alerts(
    bp: BigPandaAPI,
    settings: Settings,
    pairs: Sequence[Pair],
    listed: Sequence[tuple[BPIncident, str]],
) -> None:
    """Linked pairs whose BigPanda incident changed get its alerts when something
    after the create is built from them: a generated text ``update_fields`` lists
    (B10: the description follows the incident), a mapping row reading
    ``primary_alert.<tag>``. Read in batches like newcomers' (:func:`expanded_oldest_first`):
    no request for a pair that did not change, about one page per ten that did."""
    reads_alerts = any(
        rule.to_servicenow and reads_primary_alert(rule.tag) for rule in compile_rules(settings)
    )
    if not updated_texts(settings.incidents) and not reads_alerts:
        return
    wanted: dict[str, dict[str, Pair]] = {}
    for pair in pairs:
        incident, link, env = pair.bp, pair.link, pair.environment_id
        if link is None or link.state != LinkState.LINKED or env is None or incident is None:
            continue
        if incident.active and incident.alert_ids and not incident.alerts:
            wanted.setdefault(env, {})[incident.id] = pair
    for env, by_id in wanted.items():
        polled = [incident for incident, where in listed if where == env]
        incidents = [pair.bp for pair in by_id.values() if pair.bp is not None]
        async for batch in expanded_oldest_first(bp, env, incidents, polled):
            for incident in batch:
                by_id[incident.id].bp = incident
