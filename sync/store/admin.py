"""Migrations administration: the schema's revision, its upgrade, and the daemon's check.

Alembic is imported only by :func:`alembic_config` and :func:`upgrade_database`, when a
database is really upgraded: the schema check reads Alembic's version table itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.errors import StoreError
from sync.store.engines import WRITE_OPTION, make_engine, mapped_errors, normalise_url

if TYPE_CHECKING:
    from alembic.config import Config

#: Alembic's version table (its default name, as migrations/env.py leaves it)
VERSION_TABLE = "alembic_version"


def alembic_config() -> Config:
    """Alembic's configuration, found via the ``migrations`` package (checkout or installed).

    Alembic is imported only here and in :func:`upgrade_database`, when a database is
    really upgraded: the daemon's schema check reads the version table itself."""
    from alembic.config import Config

    import migrations

    # __path__, not __file__: an editable install made before migrations/__init__.py
    # existed maps the package as a namespace, which has no __file__.
    here = Path(next(iter(migrations.__path__))).resolve()
    ini = here / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(here))
    return cfg


def head_revision() -> str:
    """The newest migration (``migrations.HEAD``, kept equal to Alembic's head by a test)."""
    import migrations

    return migrations.HEAD


def _current_sync(connection: Connection) -> str | None:
    """The database's revision, read from Alembic's version table (None: no table/row)."""
    if not sa_inspect(connection).has_table(VERSION_TABLE):
        return None
    row = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()  # noqa: S608 - a constant
    return None if row is None else str(row[0])


async def current_revision(url: str) -> str | None:
    """The database's Alembic revision (None: empty database)."""
    engine = make_engine(url)
    try:
        async with mapped_errors(url), engine.connect() as conn:
            return await conn.run_sync(_current_sync)
    finally:
        await engine.dispose()


async def _ensure_schema(url: str) -> None:
    """``CREATE SCHEMA IF NOT EXISTS`` the first schema of a Postgres URL's search_path."""
    parsed = normalise_url(url)
    search_path = parsed.query.get("search_path")
    if parsed.get_backend_name() != "postgresql" or not search_path:
        return
    schema = str(search_path).split(",")[0].strip().strip('"')
    if not schema or schema == "public":
        return
    bare = parsed.difference_update_query(["search_path"]).render_as_string(hide_password=False)
    engine = make_engine(bare)
    quoted = '"' + schema.replace('"', '""') + '"'
    try:
        async with mapped_errors(url), engine.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    finally:
        await engine.dispose()


async def upgrade_database(url: str) -> tuple[str | None, str]:
    """``alembic upgrade head`` on ``url``; returns (revision before, revision after).
    A database already at the head is left alone, without loading Alembic. A Postgres
    URL with ``search_path`` gets that schema first when it is missing (a new pair's)."""
    await _ensure_schema(url)
    current = await current_revision(url)
    if current == head_revision():
        return current, current
    from alembic import command

    cfg = alembic_config()

    def run(connection: Connection) -> str | None:
        before = _current_sync(connection)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")
        return before

    engine = make_engine(url)
    try:
        async with mapped_errors(url):
            async with engine.connect() as conn:
                await conn.execution_options(**{WRITE_OPTION: True})
                before = await conn.run_sync(run)
                await conn.commit()
            async with engine.connect() as conn:
                after = await conn.run_sync(_current_sync)
    finally:
        await engine.dispose()
    assert after is not None
    return before, after


async def check_schema(url: str) -> None:
    """Raise StoreError unless the database is at the newest migration."""
    engine = make_engine(url)
    try:
        await check_schema_engine(engine, url)
    finally:
        await engine.dispose()


async def check_schema_engine(engine: AsyncEngine, url: str) -> None:
    """:func:`check_schema` on an engine already open (``url`` names it in the error)."""
    async with mapped_errors(url), engine.connect() as conn:
        current = await conn.run_sync(_current_sync)
    head = head_revision()
    if current != head:
        raise StoreError(
            f"database schema is at {current or 'empty'}, this bpsync needs {head}: "
            "run `bpsync db upgrade`"
        )


__all__ = [
    "VERSION_TABLE",
    "alembic_config",
    "check_schema",
    "check_schema_engine",
    "current_revision",
    "head_revision",
    "upgrade_database",
]
