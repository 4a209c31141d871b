"""The link store: links, field state, cursors, outbox, dead letters, audit, leader epoch.

- :mod:`sync.store.base`: the ``LinkStore`` protocols, their records, and the rules
  both stores share (no SQLAlchemy).
- :mod:`sync.store.memory`: ``MemoryStore``, the in-memory twin (engine tests).
- :mod:`sync.store.sql`: ``SqlStore`` on SQLite / Postgres, opened with :func:`open_store`;
  its parts: :mod:`~sync.store.engines` (engines and URLs), :mod:`~sync.store.admin`
  (migrations), :mod:`~sync.store.threads` (the SQLite call driver),
  :mod:`~sync.store.tables`, :mod:`~sync.store.statements` and :mod:`~sync.store.rows`
  (schema, prebuilt statements, rows to records), :mod:`~sync.store.sql_core`
  (transactions and fencing) and :mod:`~sync.store.sql_outbox` (the outbox).

The functions below import the SQL side when called, so that ``import sync.store.memory``
(which runs this package first) stays free of SQLAlchemy. No module of the package
imports this one: the SQL side needs nothing from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync.store.base import as_utc, opt_utc

if TYPE_CHECKING:
    from sync.store.sql import SqlStore


async def open_store(url: str, *, check_schema: bool = True) -> SqlStore:
    """Open the SQL store at ``url`` (SQLite: parent directory created, WAL, busy timeout).

    With ``check_schema`` (the default) a database that is not at the newest migration
    raises StoreError naming ``bpsync db upgrade``.
    """
    from sync.store.sql import open_sql_store

    return await open_sql_store(url, check_schema=check_schema)


async def upgrade_database(url: str) -> tuple[str | None, str]:
    """Apply every Alembic migration up to head; returns (revision before, revision after)."""
    from sync.store.admin import upgrade_database as _upgrade

    return await _upgrade(url)


async def check_schema(url: str) -> None:
    """Raise StoreError unless the database at ``url`` is at the newest migration."""
    from sync.store.admin import check_schema as _check

    await _check(url)


async def current_revision(url: str) -> str | None:
    """The database's Alembic revision (None: empty database)."""
    from sync.store.admin import current_revision as _current

    return await _current(url)


__all__ = [
    "as_utc",
    "check_schema",
    "current_revision",
    "open_store",
    "opt_utc",
    "upgrade_database",
]
