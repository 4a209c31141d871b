"""Filling a store and the emulators for the scale benchmarks (``bench/scale.py`` and
``bench/scale_pairs.py``): L linked links by bulk ``INSERT``, and a pool of P of them real
on both sides."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from bench import _harness as h
from sync.store import open_store, upgrade_database
from sync.store import tables as t

BATCH = 5_000


def link_url(sn_url: str, i: int) -> str:
    return f"INC{i:07d} {sn_url}/nav_to.do?uri=incident.do?sys_id={h.sn_sys_id(i)}"


async def populate(url: str, links: int, sn_url: str) -> None:
    """``links`` linked links (ids 1..links) with the field states of a synced pair."""
    await upgrade_database(url)
    store = await open_store(url)
    now = datetime.now(UTC) - timedelta(hours=1)
    try:
        for start in range(1, links + 1, BATCH):
            stop = min(links + 1, start + BATCH)
            link_rows = [
                {
                    "id": i,
                    "bp_incident_id": h.bp_id(i),
                    "sn_sys_id": h.sn_sys_id(i),
                    "sn_number": f"INC{i:07d}",
                    "state": "linked",
                    "created_at": now,
                    "updated_at": now,
                    "resolved_at": None,
                    "reopen_deadline": None,
                    "previous_link_id": None,
                }
                for i in range(start, stop)
            ]
            field_rows = []
            for i in range(start, stop):
                field_rows += [
                    {
                        "link_id": i,
                        "side": "bigpanda",
                        "name": "impact_level",
                        "value": "low",
                        "synced_at": now,
                    },
                    {
                        "link_id": i,
                        "side": "servicenow",
                        "name": "impact",
                        "value": "3",
                        "synced_at": now,
                    },
                    {
                        "link_id": i,
                        "side": "bigpanda",
                        "name": "servicenow_link",
                        "value": link_url(sn_url, i),
                        "synced_at": now,
                    },
                ]
            async with store.engine.begin() as conn:
                await conn.execute(insert(t.links), link_rows)
                await conn.execute(insert(t.field_state), field_rows)
    finally:
        await store.close()


async def create_pool(api: h.Api, emus: h.Emulators, pool: int) -> None:
    """Pool incidents 1..pool: a BigPanda fixture and a ServiceNow incident each."""
    fixtures = [
        h.bp_fixture(
            i,
            incident_id=h.bp_id(i),
            tags={"impact_level": "low", "servicenow_link": link_url(emus.sn_url, i)},
            prefix="scale",
        )
        for i in range(1, pool + 1)
    ]
    await api.bp_fixtures(fixtures)
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            await api.sn_create(
                {
                    "sys_id": h.sn_sys_id(i),
                    "correlation_id": h.bp_id(i),
                    "short_description": f"scale-{i}",
                    "impact": "3",
                    "urgency": "3",
                }
            )

    await asyncio.gather(*(one(i) for i in range(1, pool + 1)))


__all__ = ["BATCH", "create_pool", "link_url", "populate"]
