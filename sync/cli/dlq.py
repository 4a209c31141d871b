"""``bpsync dlq list|retry|drop``: the dead-letter queue (writes that gave up).

``retry`` puts items back in the outbox with their attempts reset; the daemon sends them
in its next cycle. ``drop`` deletes an item for good (asks unless ``--yes``).
"""

from __future__ import annotations

from datetime import timedelta

import click
from rich.table import Table

from sync.cli.common import get_ctx, run_async, with_pair_option
from sync.cli.db import cli_store, console
from sync.clock import SystemClock
from sync.errors import BpsyncError
from sync.store.base import OutboxItem, OutboxState, needs_a_person, readable_error

_DEAD = [OutboxState.DEAD]


@click.group()
def dlq() -> None:
    """Inspect, retry or drop writes in the dead-letter queue."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--all", "all_", is_flag=True, help="Also the dead writes bpsync still retries by itself."
)
@click.pass_context
def list_(ctx: click.Context, limit: int, all_: bool) -> None:
    """List the dead writes that need a person, oldest first: age, attempts, last error
    and incident. A dead write that a later write made pointless is closed by bpsync
    (superseded); one with attempts left is retried by bpsync (shown with --all)."""
    attempts = get_ctx(ctx).pair_settings().retry.attempts

    async def run() -> list[OutboxItem]:
        async with cli_store(ctx) as store:
            return await store.list_outbox(_DEAD, limit=1_000_000)

    dead = run_async(run())
    shown = [item for item in dead if all_ or needs_a_person(item, attempts)][:limit]
    retrying = sum(1 for item in dead if not needs_a_person(item, attempts))
    title = f"dead letters ({len(shown)} of {len(dead) if all_ else len(dead) - retrying})"
    if retrying and not all_:
        title += f"; {retrying} more retried by bpsync (--all)"
    table = Table(title=title)
    for name in ("id", "age", "incident", "kind", "attempts", "next", "last error"):
        table.add_column(name, no_wrap=name != "last error")
    now = SystemClock().now()
    for item in shown:
        incident = item.bp_incident_id or ""
        if item.sn_sys_id:
            incident += f" / {item.sn_sys_id}"
        table.add_row(
            str(item.id),
            _age(now - item.created_at),
            incident,
            item.kind,
            f"{item.attempts} of {attempts}",
            "a person" if needs_a_person(item, attempts) else "bpsync retries",
            readable_error(item.last_error or ""),
        )
    console().print(table)


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


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


with_pair_option(dlq)
