"""Alembic environment for bpsync.

Two ways in:

- programmatic (``sync.store.upgrade_database``, the tests): the caller hands over a
  connection in ``config.attributes["connection"]``, already inside its transaction;
- the ``alembic`` command: the URL comes from ``sqlalchemy.url`` or, if unset,
  ``BPSYNC_DATABASE_URL`` (default ``sqlite+aiosqlite:///var/bpsync.db``), and an async
  engine is built the way bpsync builds its own (WAL, busy timeout, search_path).
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from sync.store.tables import metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: autogenerate batch operations (copy-and-move).
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    from sync.store.engines import make_engine

    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    return url or os.environ.get("BPSYNC_DATABASE_URL", "sqlite+aiosqlite:///var/bpsync.db")


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        asyncio.run(_run_async(_url()))
