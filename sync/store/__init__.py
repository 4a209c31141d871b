"""The link store: links, field state, cursors, outbox, dead letters, audit, leader epoch.

- :class:`sync.store.base.LinkStore`: the protocol the engine codes against.
- :class:`sync.store.memory.MemoryStore`: the in-memory twin (engine tests).
- :class:`sync.store.sql.SqlStore`: SQLite / Postgres, opened with :func:`open_store`.

The SQL side is imported lazily so ``import sync.store.memory`` stays free of SQLAlchemy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sync.store.sql import SqlStore


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; a naive one is a bug in the caller (ValueError)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"the store needs aware datetimes, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


async def open_store(url: str, *, check_schema: bool = True) -> SqlStore:
    """Open the SQL store at ``url`` (SQLite: parent directory created, WAL, busy timeout).

    With ``check_schema`` (the default) a database that is not at the newest migration
    raises StoreError naming ``bpsync db upgrade``.
    """
    from sync.store.sql import open_sql_store

    return await open_sql_store(url, check_schema=check_schema)


async def upgrade_database(url: str) -> tuple[str | None, str]:
    """Apply every Alembic migration up to head; returns (revision before, revision after)."""
    from sync.store.sql import upgrade_database as _upgrade

    return await _upgrade(url)


async def check_schema(url: str) -> None:
    """Raise StoreError unless the database at ``url`` is at the newest migration."""
    from sync.store.sql import check_schema as _check

    await _check(url)


async def current_revision(url: str) -> str | None:
    """The database's Alembic revision (None: empty database)."""
    from sync.store.sql import current_revision as _current

    return await _current(url)


__all__ = [
    "as_utc",
    "check_schema",
    "current_revision",
    "open_store",
    "opt_utc",
    "upgrade_database",
]
