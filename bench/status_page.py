"""Status page: how long ``GET /`` and a search take on a big embedded SQLite store.

Usage::

    python bench/status_page.py              # 100,000 links, 3 outbox items and 1 audit row each
    python bench/status_page.py --links 10000 --requests 50

The store is filled in bulk (as ``bench/store.py`` does): L links (one in ten resolved),
each with 3 outbox items (a create, a tag write, an update: done; one in a hundred
updates dead) and one ``created`` audit row. The real HTTP server serves the page from
a :class:`~sync.runtime.status.PairStatusReader` over the store; the client asks, one
at a time, for ``/``, ``/status.json``, ``/?q=<BigPanda id>`` and ``/?q=<INC number>``
(random links) with the status token, and the median and p95 of each are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pydantic import SecretStr
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync.clock import SystemClock
from sync.metrics import Metrics
from sync.runtime.health import HealthState
from sync.runtime.server import start_http_server
from sync.runtime.status import PairStatusReader, pairs_source
from sync.store import open_store, upgrade_database
from sync.store import tables as t
from sync.store.sql import SqlStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 5_000
TOKEN = "bench-status-token-0123456789"


def bp_id(i: int) -> str:
    return f"{i:024x}"


async def fill(store: SqlStore, links: int) -> None:
    outbox_id = 1
    for start in range(1, links + 1, BATCH):
        stop = min(links + 1, start + BATCH)
        now = T0 + timedelta(seconds=start)
        link_rows, item_rows, audit_rows = [], [], []
        for i in range(start, stop):
            link_rows.append(
                {
                    "id": i,
                    "bp_incident_id": bp_id(i),
                    "sn_sys_id": f"{i:032x}",
                    "sn_number": f"INC{i:07d}",
                    "state": "linked" if i % 10 else "resolved",
                    "created_at": now,
                    "updated_at": now,
                    "resolved_at": None if i % 10 else now,
                    "reopen_deadline": None,
                    "previous_link_id": None,
                }
            )
            for kind in ("sn.create", "bp.link_tag", "sn.update"):
                dead = kind == "sn.update" and i % 100 == 0
                item_rows.append(
                    {
                        "id": outbox_id,
                        "kind": kind,
                        "target": f"servicenow:{i:032x}",
                        "payload": {"action": {"kind": kind}},
                        "idempotency_key": f"k{outbox_id}",
                        "state": "dead" if dead else "done",
                        "attempts": 5 if dead else 1,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                        "link_id": i,
                        "bp_incident_id": bp_id(i),
                        "sn_sys_id": f"{i:032x}",
                        "last_error": "permanent: servicenow: HTTP 403 denied" if dead else None,
                    }
                )
                outbox_id += 1
            audit_rows.append(
                {
                    "at": now,
                    "kind": "action",
                    "outcome": "created",
                    "link_id": i,
                    "bp_incident_id": bp_id(i),
                    "sn_sys_id": f"{i:032x}",
                    "detail": {},
                }
            )
        async with store.engine.begin() as conn:
            await conn.execute(insert(t.links), link_rows)
            await conn.execute(insert(t.outbox), item_rows)
            await conn.execute(insert(t.audit), audit_rows)


async def run(links: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bpsync.db"
        await upgrade_database(url)
        store = await open_store(url)
        assert isinstance(store, SqlStore)
        started = time.perf_counter()
        await fill(store, links)
        print(f"filled {links:,} links in {time.perf_counter() - started:.1f} s")
        clock = SystemClock()
        health = HealthState(clock, 15)
        reader = PairStatusReader(
            "default", store, health, clock, attempts=5, this_replica="bench:1", leads=lambda: True
        )

        async def ping() -> None:
            await store.ping()

        server = await start_http_server(
            "127.0.0.1",
            0,
            health=health,
            metrics=Metrics(),
            db_ping=ping,
            status=pairs_source(lambda: [reader]),
            status_token=SecretStr(TOKEN),
        )
        rng = random.Random(7)
        paths = {
            "GET /": lambda: "/",
            "GET /status.json": lambda: "/status.json",
            "GET /?q=<BigPanda id>": lambda: f"/?q={bp_id(rng.randint(1, links))}",
            "GET /?q=<INC number>": lambda: f"/?q=INC{rng.randint(1, links):07d}",
        }
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with aiohttp.ClientSession(headers=headers) as session:
                for name, path in paths.items():
                    times = []
                    for _ in range(requests):
                        t0 = time.perf_counter()
                        async with session.get(server.url + path()) as resp:
                            body = await resp.read()
                            assert resp.status == 200, resp.status
                        times.append((time.perf_counter() - t0) * 1000)
                    times.sort()
                    p95 = times[max(0, int(len(times) * 0.95) - 1)]
                    print(
                        f"{name:<24} median {statistics.median(times):7.1f} ms  "
                        f"p95 {p95:7.1f} ms  ({len(body):,} bytes)"
                    )
        finally:
            await server.close()
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(args.links, args.requests))


if __name__ == "__main__":
    main()
