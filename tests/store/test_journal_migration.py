"""Migration 0004: the journal ledger, and history cutoffs for the links that exist when
journals come (what was said on them before is not copied over all at once)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, inspect, text

from sync.constants import Side
from sync.journal import HISTORY
from sync.store import open_store, upgrade_database
from sync.store.admin import alembic_config
from sync.store.engines import make_engine
from tests.store.conftest import postgres_schema

_LINK = (
    "INSERT INTO links (id, bp_incident_id, sn_sys_id, sn_number, state, created_at,"
    " updated_at) VALUES ({id}, '{bp}', '{sys_id}', NULL, '{state}',"
    " '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{(tmp_path / 'db' / 'bpsync.db').as_posix()}"
        return
    async with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


async def _run_sync(url: str, fn: Any) -> Any:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.run_sync(fn)
            await conn.commit()
            return result
    finally:
        await engine.dispose()


def _migrate(step: str, revision: str) -> Any:
    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, step)(cfg, revision)

    return run


def _insert_links(conn: Connection) -> None:
    conn.execute(text(_LINK.format(id=1, bp="a" * 24, sys_id="1" * 32, state="superseded")))
    conn.execute(text(_LINK.format(id=2, bp="a" * 24, sys_id="2" * 32, state="linked")))
    conn.execute(text(_LINK.format(id=3, bp="b" * 24, sys_id="3" * 32, state="resolved")))


async def test_links_that_exist_get_a_history_cutoff(empty_url: str) -> None:
    await _run_sync(empty_url, _migrate("upgrade", "0003"))
    await _run_sync(empty_url, _insert_links)
    before = datetime.now(UTC) - timedelta(seconds=5)
    await upgrade_database(empty_url)
    store = await open_store(empty_url)
    try:
        found = await store.carried_entries(["a" * 24, "b" * 24])
        # live links only (a superseded one is history itself), both sides each
        assert {
            (r.link_id, r.side, r.entry_id, r.digest) for rows in found.values() for r in rows
        } == {
            (link_id, side, HISTORY, "")
            for link_id in (2, 3)
            for side in (Side.BIGPANDA, Side.SERVICENOW)
        }
        for rows in found.values():
            for row in rows:  # the upgrade's time, read back as aware UTC
                assert row.at.tzinfo == UTC
                assert before <= row.at <= datetime.now(UTC) + timedelta(seconds=5)
        # a new entry goes in beside them
        assert await store.record_carried(2, Side.BIGPANDA, "c" * 32, "d", datetime.now(UTC))
    finally:
        await store.close()
    await _run_sync(empty_url, _migrate("downgrade", "0003"))
    tables = await _run_sync(empty_url, lambda conn: set(inspect(conn).get_table_names()))
    assert "journal_ledger" not in tables
    assert "links" in tables
