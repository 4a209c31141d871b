"""``bpsync dlq list|retry|drop``: the dead-letter queue (writes that gave up).

``retry`` puts items back in the outbox with their attempts reset; the daemon sends them
in its next cycle. ``drop`` deletes an item for good (asks unless ``--yes``).
"""

from __future__ import annotations

import click
from rich.table import Table

from sync.cli.common import run_async
from sync.cli.db import cli_store, console, when
from sync.clock import SystemClock
from sync.errors import BpsyncError
from sync.store.base import OutboxItem, OutboxState

_DEAD = [OutboxState.DEAD]


@click.group()
def dlq() -> None:
    """Inspect, retry or drop writes in the dead-letter queue."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def list_(ctx: click.Context, limit: int) -> None:
    """List dead writes, oldest first."""

    async def run() -> tuple[list[OutboxItem], int]:
        async with cli_store(ctx) as store:
            return await store.list_outbox(_DEAD, limit=limit), await store.count_outbox(_DEAD)

    items, total = run_async(run())
    table = Table(title=f"dead letters ({len(items)} of {total})")
    for name in ("id", "kind", "target", "attempts", "last error", "updated"):
        table.add_column(name, no_wrap=name != "last error")
    for item in items:
        table.add_row(
            str(item.id),
            item.kind,
            item.target,
            str(item.attempts),
            item.last_error or "",
            when(item.updated_at),
        )
    console().print(table)


@dlq.command()
@click.argument("item_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Retry every dead write.")
@click.pass_context
def retry(ctx: click.Context, item_id: int | None, all_: bool) -> None:
    """Send a dead write (ITEM_ID) or every one (--all) again, attempts reset."""
    if (item_id is None) == (not all_):
        raise click.UsageError("give either ITEM_ID or --all")

    async def run() -> int:
        async with cli_store(ctx) as store:
            return await store.retry_dead(None if all_ else item_id, SystemClock().now())

    moved = run_async(run())
    if not all_ and moved == 0:
        raise BpsyncError(f"no dead write with id {item_id} (see `bpsync dlq list`)")
    click.echo(f"{moved} write{'s' if moved != 1 else ''} back in the outbox")


@dlq.command()
@click.argument("item_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def drop(ctx: click.Context, item_id: int, yes: bool) -> None:
    """Delete a dead write for good."""
    if not yes:
        click.confirm(f"Drop dead write {item_id} for good?", abort=True)

    async def run() -> bool:
        async with cli_store(ctx) as store:
            return await store.drop_dead(item_id)

    if not run_async(run()):
        raise BpsyncError(f"no dead write with id {item_id} (see `bpsync dlq list`)")
    click.echo(f"dropped dead write {item_id}")
