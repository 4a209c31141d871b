"""Alembic owns the schema: upgrade from empty, downgrade to empty, no drift from tables.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from sync.errors import StoreError
from sync.store import check_schema, current_revision, open_store, upgrade_database
from sync.store.admin import alembic_config, head_revision
from sync.store.engines import make_engine
from sync.store.tables import metadata
from tests.store.conftest import postgres_schema

TABLES = {"links", "field_state", "cursors", "outbox", "audit", "leader", "checkpoints"}


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


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _downgrade_to_base(conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.downgrade(cfg, "base")


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_upgrade_from_empty_to_head_and_back(empty_url: str) -> None:
    assert await current_revision(empty_url) is None
    before, after = await upgrade_database(empty_url)
    assert (before, after) == (None, head_revision())
    assert await _run_sync(empty_url, _tables) >= TABLES
    await check_schema(empty_url)
    # upgrading again is a no-op
    assert await upgrade_database(empty_url) == (head_revision(), head_revision())
    await _run_sync(empty_url, _downgrade_to_base)
    assert await _run_sync(empty_url, _tables) <= {"alembic_version"}
    assert await current_revision(empty_url) is None
    # and up again: the downgrade left nothing behind that blocks it
    await upgrade_database(empty_url)
    store = await open_store(empty_url)
    try:
        await store.ping()
        assert await store.count_links() == 0
    finally:
        await store.close()


async def test_models_and_migrations_do_not_drift(empty_url: str) -> None:
    await upgrade_database(empty_url)
    assert await _run_sync(empty_url, _diff) == []


async def test_old_schema_is_refused_with_the_command_to_run(empty_url: str) -> None:
    message = (
        f"database schema is at empty, this bpsync needs {head_revision()}: run `bpsync db upgrade`"
    )
    with pytest.raises(StoreError) as info:
        await check_schema(empty_url)
    assert str(info.value) == message
    with pytest.raises(StoreError, match="bpsync db upgrade"):
        await open_store(empty_url)
    store = await open_store(empty_url, check_schema=False)  # `bpsync db current` and friends
    await store.close()


def test_migrations_are_found_through_the_package() -> None:
    import migrations

    cfg = alembic_config()
    location = Path(str(cfg.get_main_option("script_location")))
    assert location == Path(next(iter(migrations.__path__))).resolve()
    assert (location / "env.py").is_file()
    assert (location / "script.py.mako").is_file()


def test_the_recorded_head_is_alembics_head() -> None:
    """``migrations.HEAD`` lets the daemon check a schema without loading Alembic; it must
    name the newest migration (update it with every new one)."""
    from alembic.script import ScriptDirectory

    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_the_daemon_schema_check_does_not_load_alembic(tmp_path: Path) -> None:
    """About 11 MB of the daemon's ~100 MB budget (SPEC section 5): the check of a database
    at the newest migration reads the version table itself."""
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    script = (
        "import asyncio, sys\n"
        "from sync.store import check_schema, upgrade_database\n"
        f"asyncio.run(check_schema({url!r}))\n"
        f"asyncio.run(upgrade_database({url!r}))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))\n"
    )
    asyncio.run(upgrade_database(url))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def _upgrade_to(revision: str) -> Any:
    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    return run


def _downgrade_to(revision: str) -> Any:
    def run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)

    return run


def _execute(*statements: str) -> Any:
    def run(conn: Connection) -> None:
        for statement in statements:
            conn.execute(text(statement))

    return run


def _select(statement: str) -> Any:
    def run(conn: Connection) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(text(statement))]

    return run


_LINK = (
    "INSERT INTO links (id, bp_incident_id, sn_sys_id, sn_number, state, created_at,"
    " updated_at, previous_link_id) VALUES ({id}, '{bp}', {sys_id}, NULL, '{state}',"
    " '2026-01-01 00:00:00', '2026-01-01 00:00:0{id}', {previous})"
)
_CHECKPOINT = (
    "INSERT INTO checkpoints (name, value, updated_at)"
    " VALUES ('{name}', '{value}', '2026-01-01 00:00:00')"
)


async def test_an_old_database_keeps_its_environments_in_the_links(empty_url: str) -> None:
    """0002: the ``bp_env:<incident>`` checkpoints of a database at 0001 move into the
    ``bp_environment_id`` of the incident's links (every link of it) and are deleted;
    other checkpoints stay; the downgrade writes them back."""
    bp_a, bp_b, bp_c = "a" * 24, "b" * 24, "c" * 24
    await _run_sync(empty_url, _upgrade_to("0001"))
    await _run_sync(
        empty_url,
        _execute(
            _LINK.format(id=1, bp=bp_a, sys_id="'s1'", state="superseded", previous="NULL"),
            _LINK.format(id=2, bp=bp_a, sys_id="NULL", state="pending", previous=1),
            _LINK.format(id=3, bp=bp_b, sys_id="'s3'", state="linked", previous="NULL"),
            _LINK.format(id=4, bp=bp_c, sys_id="'s4'", state="linked", previous="NULL"),
            _CHECKPOINT.format(name=f"bp_env:{bp_a}", value="env-a"),
            _CHECKPOINT.format(name=f"bp_env:{bp_b}", value="env-b"),
            _CHECKPOINT.format(name="bp_env:" + "d" * 24, value="env-gone"),  # no link
            _CHECKPOINT.format(name="held_links", value="{}"),
            _CHECKPOINT.format(name="bpXenv:x", value="not mine"),  # LIKE's _ would match
        ),
    )
    assert await upgrade_database(empty_url) == ("0001", head_revision())
    store = await open_store(empty_url)
    try:
        envs = {link.id: link.bp_environment_id for link in await store.list_links()}
        assert envs == {1: "env-a", 2: "env-a", 3: "env-b", 4: None}
        assert await store.get_checkpoint(f"bp_env:{bp_a}") is None
        assert await store.get_checkpoint(f"bp_env:{bp_b}") is None
        assert await store.get_checkpoint("bp_env:" + "d" * 24) is None
        assert await store.get_checkpoint("held_links") == "{}"
        assert await store.get_checkpoint("bpXenv:x") == "not mine"
    finally:
        await store.close()
    await _run_sync(empty_url, _downgrade_to("0001"))
    names = "SELECT name, value FROM checkpoints"
    assert sorted(await _run_sync(empty_url, _select(names))) == sorted(
        [
            (f"bp_env:{bp_a}", "env-a"),
            (f"bp_env:{bp_b}", "env-b"),
            ("bpXenv:x", "not mine"),
            ("held_links", "{}"),
        ]
    )
    columns = await _run_sync(empty_url, lambda conn: inspect(conn).get_columns("links"))
    assert "bp_environment_id" not in {column["name"] for column in columns}
