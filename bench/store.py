"""Link store benchmark: insert and lookup throughput, size and query plans at 10k and 100k links.

Usage::

    python bench/store.py                     # SQLite (+ Postgres if BPSYNC_TEST_POSTGRES_URL)
    python bench/store.py --quick             # 10k links only (well under a minute)
    python bench/store.py --postgres-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
    python bench/store.py --json              # machine-readable figures

For each backend, in a fresh database (SQLite: a temporary file; Postgres: a temporary
schema, dropped at the end):

1. ``create path``: incidents created through the store the way the executor creates
   one (a backfill's or a cycle's create): the pending link with the create's outbox item
   (``create_pending_link_and_enqueue``); the confirmation, its audit entry, the field
   states, the link tag's outbox item and the create's completion
   (``complete_and_enqueue``); the link tag's completion with its field state (the
   same). Outbox payloads are the executor's own encoding of the two actions. Reported:
   incidents per second, the store's CPU per created incident (the part of issue 16's
   2 ms target the store takes, without HTTP), and the transactions and statements
   each costs, counted on the database connection (SQLite: the driver's trace of every
   statement it runs, a row of an ``executemany`` counted as one; Postgres:
   SQLAlchemy's cursor and commit events) over 100 incidents after the first (which
   opens the connections), the CPU over the rest;
2. ``bulk insert``: the rest up to 10,000 and then 100,000 links (each with 4 field
   states) in batches, the way a migration or backfill import would;
3. at 10k and at 100k: lookups of one live link by BigPanda id and by ServiceNow sys_id
   through the store API (random ids, one transaction each), the database size, and the
   query plan of the lookup (it must use an index: O(log n), not a scan);
4. ``backlog``: 10,000 open outbox writes (2,000 with ``--quick``), failed once and
   waiting for their retry, as a ServiceNow outage leaves them; the CPU of the read every
   cycle makes of them (``outbox_heads``: no payloads) beside reading them whole
   (``list_outbox``), the median of 5 reads each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event, insert, select, text
from sqlalchemy.engine import Engine

from bench._harness import machine, postgres_schema
from sync.actions import CreateServiceNowIncident, SetLinkTag, UpdateServiceNowFields
from sync.constants import Side
from sync.executor.codec import new_outbox_item
from sync.model import LIVE_LINK_STATES
from sync.store import open_store, upgrade_database
from sync.store import tables as t
from sync.store.base import OutboxState
from sync.store.records import FieldStates, LinkConfirmation
from sync.store.sql import SqlStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FIELDS_PER_SIDE = ("short_description", "urgency")
BATCH = 5_000


def bp_id(i: int) -> str:
    return f"{i:024x}"


def sys_id(i: int) -> str:
    return f"{i:032x}"


@dataclass
class Checkpoint:
    links: int
    lookup_bp_per_s: float
    lookup_sn_per_s: float
    lookup_bp_us: float
    lookup_sn_us: float
    size_bytes: int
    plan_bp: list[str]
    plan_sn: list[str]
    index_used: bool


@dataclass
class Backlog:
    items: int
    heads_read: int
    heads_cpu_ms: float
    whole_cpu_ms: float


@dataclass
class CreatePath:
    incidents: int
    per_s: float
    cpu_ms_per_incident: float
    counted: int  # incidents whose transactions and statements were counted
    transactions_per_incident: float
    statements_per_incident: float  # besides BEGIN and COMMIT


@dataclass
class Result:
    backend: str
    create: CreatePath
    bulk_links_per_s: float
    checkpoints: list[Checkpoint] = field(default_factory=list)
    backlog: Backlog | None = None


OPEN = (OutboxState.PENDING, OutboxState.IN_FLIGHT, OutboxState.DEAD)


async def backlog(store: SqlStore, count: int) -> Backlog:
    """``count`` ServiceNow updates in the outbox, failed once, due in 15 minutes (bulk
    inserted: their payloads as the executor encodes them); then the CPU of reading them."""
    due = T0 + timedelta(minutes=15)
    rows = []
    for i in range(1, count + 1):
        write = UpdateServiceNowFields(
            i,
            bp_id(i),
            sys_id(i),
            {"short_description": f"incident {i} " + "x" * 60, "urgency": "2", "impact": "2"},
            record_bp={"impact_level": "high"},
            record_sn={"impact": "2", "urgency": "2"},
        )
        new, _ = new_outbox_item(write, "env-1")
        rows.append(
            {
                "kind": new.kind,
                "target": new.target,
                "payload": new.payload,
                "idempotency_key": new.idempotency_key,
                "state": OutboxState.PENDING.value,
                "attempts": 1,
                "last_error": "servicenow: HTTP 503: Service Unavailable",
                "next_attempt_at": due,
                "created_at": T0,
                "updated_at": T0,
                "link_id": i,
                "bp_incident_id": bp_id(i),
                "sn_sys_id": sys_id(i),
            }
        )
    for start in range(0, count, BATCH):
        async with store.engine.begin() as conn:
            await conn.execute(insert(t.outbox), rows[start : start + BATCH])

    async def cpu_ms(read: Any) -> tuple[float, int]:
        times, got = [], 0
        for _ in range(5):
            started = time.process_time()
            got = len(await read())
            times.append(1000 * (time.process_time() - started))
        return statistics.median(times), got

    heads_ms, heads = await cpu_ms(lambda: store.outbox_heads(OPEN))
    whole_ms, _ = await cpu_ms(lambda: store.list_outbox(OPEN, limit=10 * count))
    return Backlog(count, heads, round(heads_ms, 1), round(whole_ms, 1))


class StatementCounter:
    """Transactions and statements run on the store's connections while counting.

    SQLite: the hot statements run on the pysqlite driver itself (``sync.store.prepared``),
    past SQLAlchemy's events, so every ``sqlite3`` connection opened while this is
    installed gets the driver's trace callback (each statement the driver runs, BEGIN and
    COMMIT included). Postgres: SQLAlchemy's cursor and commit events of the store's
    engine (every statement runs through it there)."""

    def __init__(self) -> None:
        self.counting = False
        self.transactions = 0
        self.statements = 0
        event.listen(Engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.set_trace_callback(self._traced)

    def _traced(self, sql: str) -> None:
        if not self.counting:
            return
        head = sql.lstrip()[:8].upper()
        if head.startswith("COMMIT"):
            self.transactions += 1
        elif not head.startswith(("BEGIN", "ROLLBACK")):
            self.statements += 1

    def watch_postgres(self, store: SqlStore) -> None:
        engine = store.engine.sync_engine
        if engine.dialect.name != "postgresql":
            return

        @event.listens_for(engine, "before_cursor_execute")
        def _statement(*_args: Any) -> None:
            if self.counting:
                self.statements += 1

        @event.listens_for(engine, "commit")
        def _commit(*_args: Any) -> None:
            if self.counting:
                self.transactions += 1

    def close(self) -> None:
        event.remove(Engine, "connect", self._on_connect)


async def create_incident(store: SqlStore, i: int) -> None:
    """The store calls of one created incident, as the executor makes them (see
    ``sync.executor.core._start_create`` and ``sync.executor.delivery._drive``)."""
    now = T0 + timedelta(seconds=i)
    bp, sn, number = bp_id(i), sys_id(i), f"INC{i:07d}"
    tag = SetLinkTag(bp, "", "servicenow_link", None)
    create = CreateServiceNowIncident(
        bp,
        "env-1",
        {"short_description": f"incident {i} " + "x" * 60, "impact": "2", "urgency": "2"},
        record_bp={"impact_level": "high"},
        record_sn={"impact": "2", "short_description": f"incident {i} " + "x" * 60},
        checked_absent=True,
        on_success=(tag,),
    )
    link, item = await store.create_pending_link_and_enqueue(
        bp,
        now,
        lambda link: new_outbox_item(create, "env-1", {"link_id": link.id})[0],
        bp_environment_id="env-1",
    )
    value = f"{number} https://example.service-now.com/nav_to.do?uri=incident.do?sys_id={sn}"
    tag_new, _ = new_outbox_item(
        SetLinkTag(bp, "env-1", "servicenow_link", value, link_id=link.id), "env-1"
    )
    [tag_item] = await store.complete_and_enqueue(
        item.id,
        now,
        follow_ups=[tag_new],
        field_states=[
            FieldStates(link.id, Side.BIGPANDA, create.record_bp),
            FieldStates(link.id, Side.SERVICENOW, create.record_sn),
        ],
        confirm=LinkConfirmation(link.id, sn, number, "created"),
    )
    await store.complete_and_enqueue(
        tag_item.id,
        now,
        field_states=[FieldStates(link.id, Side.BIGPANDA, {"servicenow_link": value})],
    )


async def create_path(
    store: SqlStore, counter: StatementCounter, first: int, count: int
) -> CreatePath:
    counted = min(100, count // 2)
    counter.watch_postgres(store)
    await create_incident(store, first)  # the connections opened (their set-up uncounted)
    counter.counting = True
    for i in range(first + 1, first + 1 + counted):
        await create_incident(store, i)
    counter.counting = False
    rest = range(first + 1 + counted, first + count)
    started, cpu_started = time.perf_counter(), time.process_time()
    for i in rest:
        await create_incident(store, i)
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - started
    return CreatePath(
        incidents=count,
        per_s=round(len(rest) / wall, 1),
        cpu_ms_per_incident=round(1000 * cpu / len(rest), 3),
        counted=counted,
        transactions_per_incident=round(counter.transactions / counted, 2),
        statements_per_incident=round(counter.statements / counted, 2),
    )


async def bulk_insert(store: SqlStore, first: int, last: int) -> float:
    """Links ``first..last-1`` with explicit ids (= i), 4 field states each."""
    started = time.perf_counter()
    for start in range(first, last, BATCH):
        stop = min(last, start + BATCH)
        now = T0 + timedelta(seconds=start)
        link_rows = [
            {
                "id": i,
                "bp_incident_id": bp_id(i),
                "sn_sys_id": sys_id(i),
                "sn_number": f"INC{i:07d}",
                "state": "linked" if i % 10 else "resolved",
                "created_at": now,
                "updated_at": now,
                "resolved_at": None if i % 10 else now,
                "reopen_deadline": None,
                "previous_link_id": None,
            }
            for i in range(start, stop)
        ]
        field_rows = [
            {
                "link_id": i,
                "side": side.value,
                "name": name,
                "value": f"{name} of {i}",
                "synced_at": now,
            }
            for i in range(start, stop)
            for side in Side
            for name in FIELDS_PER_SIDE
        ]
        async with store.engine.begin() as conn:
            await conn.execute(insert(t.links), link_rows)
            await conn.execute(insert(t.field_state), field_rows)
    if store.engine.dialect.name == "postgresql":
        async with store.engine.begin() as conn:  # explicit ids: move the sequence past them
            await conn.execute(
                text("SELECT setval(pg_get_serial_sequence('links', 'id'), max(id)) FROM links")
            )
    return (last - first) / (time.perf_counter() - started)


async def lookups(store: SqlStore, total: int, count: int, *, by_sn: bool) -> float:
    rng = random.Random(total)
    keys = [rng.randrange(1, total + 1) for _ in range(count)]
    started = time.perf_counter()
    for i in keys:
        link = await (
            store.live_link_for_sn(sys_id(i)) if by_sn else store.live_link_for_bp(bp_id(i))
        )
        assert link is not None, i
    return count / (time.perf_counter() - started)


async def plan(store: SqlStore, *, by_sn: bool) -> list[str]:
    """The plan of the exact query the store runs for a live-link lookup."""
    column = t.links.c.sn_sys_id if by_sn else t.links.c.bp_incident_id
    query = (
        select(t.links)
        .where(column == (sys_id(7) if by_sn else bp_id(7)))
        .where(t.links.c.state.in_([s.value for s in LIVE_LINK_STATES]))
        .limit(1)
    )
    dialect = store.engine.dialect
    sql = str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    async with store.engine.connect() as conn:
        if dialect.name == "sqlite":
            rows = await conn.execute(text("EXPLAIN QUERY PLAN " + sql))
            return [str(row[-1]) for row in rows]
        rows = await conn.execute(text("EXPLAIN " + sql))
        return [str(row[0]) for row in rows]


def uses_index(lines: list[str]) -> bool:
    """SQLite says ``SEARCH links USING INDEX ...``, Postgres ``Index Scan using ...``;
    a full scan is ``SCAN links`` / ``Seq Scan``."""
    if any(line.startswith("SCAN") or "Seq Scan" in line for line in lines):
        return False
    return any("INDEX" in line.upper() for line in lines)


async def db_size(store: SqlStore, sqlite_path: Path | None) -> int:
    if sqlite_path is not None:
        async with store.engine.connect() as conn:  # fold the WAL in, so the file is the size
            await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        return sum(
            p.stat().st_size
            for p in (sqlite_path, Path(f"{sqlite_path}-wal"), Path(f"{sqlite_path}-shm"))
            if p.exists()
        )
    async with store.engine.connect() as conn:
        value = await conn.execute(
            text(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )
        )
        return int(value.scalar_one())


async def checkpoint(
    store: SqlStore, total: int, lookups_n: int, sqlite_path: Path | None
) -> Checkpoint:
    async with store.engine.begin() as conn:  # fresh statistics, as autovacuum would have
        await conn.execute(text("ANALYZE"))
    by_bp = await lookups(store, total, lookups_n, by_sn=False)
    by_sn = await lookups(store, total, lookups_n, by_sn=True)
    plan_bp = await plan(store, by_sn=False)
    plan_sn = await plan(store, by_sn=True)
    return Checkpoint(
        links=total,
        lookup_bp_per_s=round(by_bp, 1),
        lookup_sn_per_s=round(by_sn, 1),
        lookup_bp_us=round(1e6 / by_bp, 1),
        lookup_sn_us=round(1e6 / by_sn, 1),
        size_bytes=await db_size(store, sqlite_path),
        plan_bp=plan_bp,
        plan_sn=plan_sn,
        index_used=uses_index(plan_bp) and uses_index(plan_sn),
    )


async def run_backend(
    name: str,
    url: str,
    *,
    sizes: list[int],
    create_n: int,
    lookups_n: int,
    backlog_n: int,
    sqlite_path: Path | None,
) -> Result:
    await upgrade_database(url)
    counter = StatementCounter()
    store = await open_store(url)
    assert isinstance(store, SqlStore)
    try:
        result = Result(name, await create_path(store, counter, 1, create_n), 0.0)
        log(f"  {name}: {create_n:,} incidents created through the store")
        done = create_n
        bulk_rates = []
        for size in sizes:
            bulk_rates.append(await bulk_insert(store, done + 1, size + 1))
            done = size
            result.checkpoints.append(await checkpoint(store, size, lookups_n, sqlite_path))
            log(f"  {name}: {size:,} links measured")
        result.bulk_links_per_s = round(sum(bulk_rates) / len(bulk_rates), 1)
        result.backlog = await backlog(store, backlog_n)
        log(f"  {name}: backlog of {backlog_n:,} open writes measured")
        return result
    finally:
        counter.close()
        await store.close()


async def postgres_run(
    base_url: str, sizes: list[int], create_n: int, lookups_n: int, backlog_n: int
) -> Result:
    async with postgres_schema(base_url) as url:
        return await run_backend(
            "postgres",
            url,
            sizes=sizes,
            create_n=create_n,
            lookups_n=lookups_n,
            backlog_n=backlog_n,
            sqlite_path=None,
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report(results: list[Result]) -> None:
    for r in results:
        print(f"\n== {r.backend}")
        c = r.create
        print(
            f"create path          : {c.per_s:>10,.0f} incidents/s, "
            f"{c.cpu_ms_per_incident:.3f} CPU ms each ({c.incidents:,} incidents; "
            f"{c.transactions_per_incident:g} transactions and "
            f"{c.statements_per_incident:g} statements each)"
        )
        print(f"bulk insert          : {r.bulk_links_per_s:>10,.0f} links/s (4 field states each)")
        print(
            f"{'links':>8} {'by bp id/s':>11} {'µs':>7} {'by sys_id/s':>12} {'µs':>7} "
            f"{'size MB':>9}  index"
        )
        for c in r.checkpoints:
            print(
                f"{c.links:>8,} {c.lookup_bp_per_s:>11,.0f} {c.lookup_bp_us:>7.0f} "
                f"{c.lookup_sn_per_s:>12,.0f} {c.lookup_sn_us:>7.0f} "
                f"{c.size_bytes / 1e6:>9.1f}  {'yes' if c.index_used else 'NO'}"
            )
        last = r.checkpoints[-1]
        print(f"plan, lookup by BigPanda id at {last.links:,}:")
        for line in last.plan_bp:
            print(f"    {line}")
        print(f"plan, lookup by sys_id at {last.links:,}:")
        for line in last.plan_sn:
            print(f"    {line}")
        if r.backlog is not None:
            b = r.backlog
            print(
                f"backlog of {b.items:,} open writes, a cycle's read (no payloads): "
                f"{b.heads_cpu_ms:,.1f} CPU ms; read whole: {b.whole_cpu_ms:,.1f} CPU ms"
            )


async def main_async(args: argparse.Namespace) -> list[Result]:
    sizes = [10_000] if args.quick else [10_000, 100_000]
    create_n = 500 if args.quick else 2_000
    lookups_n = args.lookups
    backlog_n = 2_000 if args.quick else 10_000
    results = []
    with tempfile.TemporaryDirectory(prefix="bpsync-bench-") as tmp:
        path = Path(tmp) / "bpsync.db"
        log(f"sqlite: {path}")
        results.append(
            await run_backend(
                "sqlite",
                f"sqlite+aiosqlite:///{path.as_posix()}",
                sizes=sizes,
                create_n=create_n,
                lookups_n=lookups_n,
                backlog_n=backlog_n,
                sqlite_path=path,
            )
        )
    if args.postgres_url:
        log("postgres: temporary schema")
        results.append(await postgres_run(args.postgres_url, sizes, create_n, lookups_n, backlog_n))
    else:
        log("postgres: skipped (no --postgres-url and no BPSYNC_TEST_POSTGRES_URL)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k links only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BPSYNC_TEST_POSTGRES_URL"),
        help="Postgres to measure (a temporary schema is used); default $BPSYNC_TEST_POSTGRES_URL",
    )
    parser.add_argument("--lookups", type=int, default=2_000, help="lookups per measurement")
    args = parser.parse_args()
    started = time.perf_counter()
    results = asyncio.run(main_async(args))
    if args.json:
        payload = {
            "benchmark": "store",
            "quick": args.quick,
            "machine": machine(),
            "results": [asdict(r) for r in results],
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(payload))
    else:
        report(results)
        print(f"\n(total {time.perf_counter() - started:.1f} s)")
    if not all(c.index_used for r in results for c in r.checkpoints):
        log("a lookup does not use an index")
        sys.exit(1)


if __name__ == "__main__":
    main()
