"""Prepared statements (sync.store.prepared) run exactly as SQLAlchemy runs them.

Every statement of ``PREPARED`` is run twice on the same database state, once through
SQLAlchemy's ``Connection.execute`` and once prepared, each in a transaction rolled
back afterwards: the same rows, the same row count, the same database afterwards. And a
driver error is raised as SQLAlchemy raises it. Also: SQLite plans the live links of a
page of ids by id.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import IntegrityError, StatementError

import sync.store.statements as s
import sync.store.tables as t
from sync.model import LinkState
from sync.store import upgrade_database
from sync.store.base import NewAuditEntry, NewOutboxItem, OutboxState
from sync.store.engines import make_sqlite_thread_engine
from sync.store.prepared import Prepared, PreparedStatements
from sync.store.rows import audit_values, new_item_values, pending_link_values

NOW = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
EARLIER = NOW - timedelta(seconds=1)


def _item(key: str, link_id: int | None = 1) -> dict[str, Any]:
    new = NewOutboxItem("sn_update", "sn:abc", {"fields": {"impact": "1"}}, key, link_id)
    return new_item_values(new, NOW)


#: each prepared statement with parameters that exercise it (rows found, or written)
CASES: list[tuple[str, Any]] = [
    ("LEADER_EPOCH", {}),
    ("CHECKPOINT_VALUE", {"b_name": "backfill:env"}),
    ("CURSOR_OF_SIDE", {"b_side": "bigpanda"}),
    ("COUNT_LINKS", {}),
    ("COUNT_OUTBOX", {}),
    ("LINK_BY_ID", {"b_id": 1}),
    ("LINK_BY_ID", {"b_id": 99}),
    ("LINKS_NEWEST", {"b_limit": 2, "b_offset": 0}),
    ("LINKS_NEWEST", {"b_limit": 100, "b_offset": 1}),
    ("LINKS_IN_NEWEST", {"b_states": ["pending"], "b_limit": 10_000, "b_offset": 0}),
    ("LINKS_IN_NEWEST", {"b_states": ["linked", "superseded"], "b_limit": 1, "b_offset": 1}),
    ("LIVE_BY_BP", {"b_value": "bp-1"}),
    ("LIVE_BY_SN", {"b_value": "sys-1"}),
    ("LINKS_FOR_BP", {"b_value": "bp-1"}),
    ("COUNT_LINKS_IN", {"b_states": ["linked", "pending"]}),
    ("COUNT_OUTBOX_IN", {"b_states": ["pending"]}),
    ("LIVE_BY_BPS", {"b_values": ["bp-1", "bp-2", "bp-3", "bp-none"]}),
    ("LIVE_BY_SNS", {"b_values": ["sys-1"]}),
    ("FIELD_STATES_FOR", {"b_ids": [1, 2]}),
    ("OPEN_WRITES", {"b_targets": ["sn:abc", "sn:other"], "b_attempts": 5}),
    ("INSERT_LINK", pending_link_values("bp-9", NOW, None, "env-1")),
    ("INSERT_LINK", pending_link_values("bp-8", NOW, 1)),
    (
        "CONFIRM_LINK",
        {"b_id": 2, "sn_sys_id": "sys-2", "sn_number": "INC2", "updated_at": LATER},
    ),
    ("CONFIRM_LINK", {"b_id": 3, "sn_sys_id": "sys-3", "sn_number": "INC3", "updated_at": LATER}),
    ("NOT_DONE_WITH_KEY", {"b_key": "key-1"}),
    ("INSERT_ITEM_UNLESS_OPEN", _item("key-new")),
    ("INSERT_ITEM_UNLESS_OPEN", _item("key-1")),  # an open item has the key: no row
    ("INSERT_ITEM_UNLESS_OPEN", _item("key-none", None)),
    ("COMPLETE_ITEM", {"b_id": 1, "updated_at": LATER}),
    ("COMPLETE_ITEM", {"b_id": 99, "updated_at": LATER}),
    (
        "INSERT_AUDIT",
        audit_values(NewAuditEntry("action", "created", link_id=1, detail={"a": [1]}), NOW),
    ),
    ("INSERT_AUDIT", audit_values(NewAuditEntry("conflict", "kept", field="impact"), NOW)),
    (
        "UPSERT_FIELD_STATE",
        [
            {"link_id": 1, "side": "bigpanda", "name": "impact", "value": "high", "synced_at": NOW},
            {"link_id": 1, "side": "servicenow", "name": "impact", "value": None, "synced_at": NOW},
        ],
    ),
    (
        "UPSERT_FIELD_STATE",
        {"link_id": 1, "side": "bigpanda", "name": "x", "value": "1", "synced_at": NOW},
    ),
    ("UPSERT_CHECKPOINT", {"name": "backfill:env", "value": "{}", "updated_at": LATER}),
    (
        "UPSERT_CURSOR",
        {"side": "bigpanda", "watermark": LATER, "seen": ["k:2", "k:3"], "updated_at": LATER},
    ),
    ("UPSERT_CURSOR", {"side": "servicenow", "watermark": None, "seen": [], "updated_at": NOW}),
    ("CLAIM_DUE", {"b_now": LATER, "b_cutoff": LATER, "b_limit": 10}),  # both
    ("CLAIM_DUE", {"b_now": EARLIER, "b_cutoff": LATER, "b_limit": 10}),  # the lease only
    ("CLAIM_DUE", {"b_now": EARLIER, "b_cutoff": EARLIER, "b_limit": 10}),  # none
    ("CLAIM_DUE", {"b_now": LATER, "b_cutoff": LATER, "b_limit": 1}),
    ("MARK_IN_FLIGHT", {"b_ids": [1, 99], "b_updated_at": LATER}),
    ("OUTBOX_OLDEST", {"b_limit": 1}),
    ("OUTBOX_IN_OLDEST", {"b_states": ["pending", "in_flight", "dead"], "b_limit": 1_000_000}),
    ("OUTBOX_IN_OLDEST", {"b_states": ["in_flight"], "b_limit": 10}),
    (
        "OUTBOX_IN_OLDEST_FOR_TARGET",
        {"b_states": ["pending", "in_flight"], "b_limit": 10, "b_target": "sn:abc"},
    ),
    (
        "OUTBOX_IN_OLDEST_FOR_TARGET",
        {"b_states": ["pending", "in_flight"], "b_limit": 10, "b_target": "sn:other"},
    ),
    ("OUTBOX_BY_IDS", {"b_ids": [2, 1, 99]}),
    ("OUTBOX_HEADS_IN", {"b_states": ["pending", "in_flight", "dead"]}),
    ("OUTBOX_HEADS_IN", {"b_states": ["dead"]}),
]


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    path = (tmp_path / "bpsync.db").as_posix()
    asyncio.run(upgrade_database(f"sqlite+aiosqlite:///{path}"))
    engine = make_sqlite_thread_engine(f"sqlite+aiosqlite:///{path}")
    assert engine is not None
    with engine.connect() as connection:
        with connection.begin():
            connection.execute(s.INSERT_LINK, pending_link_values("bp-1", NOW, None))
            connection.execute(s.INSERT_LINK, pending_link_values("bp-2", NOW, None))
            connection.execute(s.INSERT_LINK, pending_link_values("bp-3", NOW, None))
            connection.execute(
                s.CONFIRM_LINK,
                {"b_id": 1, "sn_sys_id": "sys-1", "sn_number": "INC1", "updated_at": NOW},
            )
            connection.execute(
                t.links.update().where(t.links.c.id == 3).values(state=LinkState.SUPERSEDED.value)
            )
            connection.execute(s.INSERT_ITEM_UNLESS_OPEN, _item("key-1"))
            connection.execute(s.INSERT_ITEM_UNLESS_OPEN, _item("key-2"))
            connection.execute(s.MARK_IN_FLIGHT, {"b_ids": [2], "b_updated_at": NOW})
            state = {"side": "bigpanda", "name": "impact", "value": "low", "synced_at": NOW}
            connection.execute(
                s.UPSERT_FIELD_STATE, [{"link_id": 1, **state}, {"link_id": 2, **state}]
            )
            connection.execute(
                s.UPSERT_CHECKPOINT, {"name": "backfill:env", "value": "[]", "updated_at": NOW}
            )
            cursor = {"side": "bigpanda", "watermark": NOW, "seen": ["k:1"], "updated_at": NOW}
            connection.execute(s.UPSERT_CURSOR, cursor)
        yield connection
    engine.dispose()


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = (t.links, t.outbox, t.audit, t.field_state, t.checkpoints, t.cursors)
    return {table.name: [tuple(r) for r in conn.execute(select(table))] for table in tables}


def _outcome(result: Any, rows_expected: bool) -> tuple[list[dict[str, Any]], int | None]:
    """The rows, or the row count of a statement without rows (pysqlite counts the rows
    of a RETURNING statement only once they are read: SQLAlchemy's count is 0 there)."""
    if rows_expected:
        return [dict(row._mapping) for row in result], None
    return [], result.rowcount


@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
def test_a_prepared_statement_runs_as_sqlalchemy_runs_it(
    conn: Connection, name: str, params: Any
) -> None:
    statement = getattr(s, name)
    prepared = s.PREPARED.get(statement, params, conn.dialect)
    assert isinstance(prepared, Prepared), f"{name} does not run prepared"
    rows_expected = prepared.returns_rows

    with conn.begin() as tx:
        expected = _outcome(conn.execute(statement, params), rows_expected)
        expected_after = _snapshot(conn)
        tx.rollback()
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    with conn.begin() as tx:
        got = _outcome(prepared.run(driver, params), rows_expected)
        got_after = _snapshot(conn)
        tx.rollback()

    assert got == expected
    assert got_after == expected_after
    if rows_expected and got[0]:  # the types as SQLAlchemy reads them back
        for key, value in got[0][0].items():
            assert type(value) is type(expected[0][0][key]), key


def test_every_listed_statement_is_prepared_and_others_are_not(conn: Connection) -> None:
    names = {name for name, _ in CASES}
    listed = {
        name for name in dir(s) if not name.startswith("_") and getattr(s, name) in s.PREPARED
    }
    assert listed == names
    # an empty IN list: through SQLAlchemy (its own SQL for it)
    assert s.PREPARED.get(s.LIVE_BY_BPS, {"b_values": []}, conn.dialect) is None
    assert s.PREPARED.get(s.LIVE_BY_BPS, {"b_values": ["bp-1"]}, conn.dialect) is not None
    # a statement not listed: through SQLAlchemy
    only = PreparedStatements([s.LIVE_BY_BPS])
    assert only.get(s.LIVE_BY_SNS, {"b_values": ["bp-1"]}, conn.dialect) is None
    # rows of several executions at once: through SQLAlchemy
    assert (
        s.PREPARED.get(s.INSERT_LINK, [pending_link_values("x", NOW, None)], conn.dialect) is None
    )


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(conn: Connection) -> None:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    live_again = pending_link_values("bp-1", NOW, None)  # bp-1 has a live link already
    prepared = s.PREPARED.get(s.INSERT_LINK, live_again, conn.dialect)
    assert prepared is not None
    with conn.begin(), pytest.raises(IntegrityError) as caught:
        prepared.run(driver, live_again)
    assert isinstance(caught.value.orig, sqlite3.IntegrityError)
    assert "UNIQUE" in str(caught.value.orig)
    with conn.begin(), pytest.raises(IntegrityError) as caught:
        conn.execute(s.INSERT_LINK, live_again)
    assert isinstance(caught.value.orig, sqlite3.IntegrityError)


def test_a_parameter_it_cannot_bind_is_a_statement_error(conn: Connection) -> None:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    params = {"b_id": 1, "updated_at": NOW.replace(tzinfo=None)}  # naive: refused
    prepared = s.PREPARED.get(s.COMPLETE_ITEM, params, conn.dialect)
    assert prepared is not None
    with conn.begin():
        with pytest.raises(StatementError, match="naive datetime"):
            prepared.run(driver, params)
        with pytest.raises(StatementError, match="naive datetime"):
            conn.execute(s.COMPLETE_ITEM, params)
        with pytest.raises(StatementError, match="required"):
            prepared.run(driver, {"b_id": 1})
    assert OutboxState.DONE.value == "done"
    assert conn.execute(text("SELECT count(*) FROM outbox WHERE state = 'done'")).scalar() == 0


@pytest.mark.parametrize("statement", [s.LIVE_BY_BPS, s.LIVE_BY_SNS], ids=["bp", "sn"])
def test_live_links_of_a_page_of_ids_are_looked_up_by_id_not_by_state(
    conn: Connection, statement: Any
) -> None:
    """A page's ids: by the id index (O(log n) each), never by scanning the state index
    (every live link, on each call), which SQLite's planner takes without statistics."""
    ids = [f"bp-{i}" for i in range(10)]
    sql = str(
        statement.params(b_values=ids).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    plan = " ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    assert "ix_links_state" not in plan
    assert "_bp_incident_id" in plan or "_sn_sys_id" in plan, plan
