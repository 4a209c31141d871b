"""``bpsync db upgrade|current``: the link store's schema, and the store opener every
store-backed command shares.

``db upgrade`` applies the Alembic migrations up to head (safe to run again: it does
nothing when the database is current); ``db current`` prints where the database is.
The database is ``database_url`` or the SQLite file in ``state_dir``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from datetime import datetime

import click
from rich.console import Console

from sync.cli.common import get_ctx, run_async
from sync.settings import redact_url
from sync.store import current_revision, open_store, upgrade_database
from sync.store.admin import head_revision
from sync.store.sql import SqlStore


@contextlib.asynccontextmanager
async def cli_store(ctx: click.Context) -> AsyncIterator[SqlStore]:
    """The configured store, schema checked (an old one says to run ``bpsync db upgrade``)."""
    url = get_ctx(ctx).settings().effective_database_url
    store = await open_store(url, check_schema=True)
    try:
        yield store
    finally:
        await store.close()


def console() -> Console:
    """Rich output; wide when piped, so ids are never cut."""
    out = Console()
    if not out.is_terminal:
        out = Console(width=200, file=sys.stdout)
    return out


def when(value: datetime | None) -> str:
    """A stored time for people: UTC, to the second."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


@click.group()
def db() -> None:
    """Manage the link store's database schema (Alembic migrations)."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply every migration up to the newest; prints the revisions before and after."""
    url = get_ctx(ctx).settings().effective_database_url
    before, after = run_async(upgrade_database(url))
    where = redact_url(url)
    if before == after:
        click.echo(f"{where}: already at revision {after}")
    else:
        click.echo(f"{where}: upgraded from {before or 'empty'} to {after}")


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Print the database's revision and whether it is the newest."""
    url = get_ctx(ctx).settings().effective_database_url
    revision = run_async(current_revision(url))
    head = head_revision()
    status = "up to date" if revision == head else "needs `bpsync db upgrade`"
    click.echo(f"{redact_url(url)}: revision {revision or 'empty'} (newest {head}): {status}")
