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

from sync.cli.common import get_ctx, run_async, with_pair_option
from sync.settings import redact_url
from sync.store import current_revision, open_store, upgrade_database
from sync.store.admin import head_revision
from sync.store.sql import SqlStore


@contextlib.asynccontextmanager
async def cli_store(ctx: click.Context) -> AsyncIterator[SqlStore]:
    """The configured store, schema checked (an old one says to run ``bpsync db upgrade``)."""
    url = get_ctx(ctx).pair_settings().effective_database_url
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
    """Apply every migration up to the newest; prints the revisions before and after.
    Every pair's database (or schema) unless ``--pair`` names one."""
    for name, url in _urls(ctx):
        before, after = run_async(upgrade_database(url))
        where = f"{name}: {redact_url(url)}" if name else redact_url(url)
        if before == after:
            click.echo(f"{where}: already at revision {after}")
        else:
            click.echo(f"{where}: upgraded from {before or 'empty'} to {after}")


def _urls(ctx: click.Context) -> list[tuple[str, str]]:
    """(pair name, database URL) of ``--pair`` or of every pair; the name is empty for
    a configuration without ``[[pairs]]`` (its lines stay as they were)."""
    from sync.pairconfig import expand_pairs

    cli = get_ctx(ctx)
    if cli.pair is not None:
        return [(cli.pair, cli.pair_settings().effective_database_url)]
    settings = cli.settings()
    pairs = expand_pairs(settings)
    named = bool(settings.pairs)
    return [(p.name if named else "", p.settings.effective_database_url) for p in pairs]


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Print the database's revision and whether it is the newest (every pair's)."""
    head = head_revision()
    for name, url in _urls(ctx):
        revision = run_async(current_revision(url))
        status = "up to date" if revision == head else "needs `bpsync db upgrade`"
        where = f"{name}: {redact_url(url)}" if name else redact_url(url)
        click.echo(f"{where}: revision {revision or 'empty'} (newest {head}): {status}")


with_pair_option(db)
