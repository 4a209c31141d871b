"""``bpsync links list|show|release``: look at the link store's pairs, their history and
audit; resume the fields the flip-flop guard froze."""

from __future__ import annotations

import re

import click
from rich.table import Table

from sync.cli.common import run_async, with_pair_option
from sync.cli.db import cli_store, console, when
from sync.clock import SystemClock
from sync.constants import Side
from sync.errors import BpsyncError
from sync.flipflop import frozen_fields, released
from sync.model import Link, LinkState
from sync.store.base import AuditEntry
from sync.store.sql import SqlStore

_STATES = [s.value for s in LinkState]


def _links_table(title: str, rows: list[Link]) -> Table:
    table = Table(title=title)
    for name in ("id", "BigPanda id", "ServiceNow number", "sys_id", "state"):
        table.add_column(name, no_wrap=True)
    for name in ("created", "resolved", "reopen deadline", "previous"):
        table.add_column(name, no_wrap=True)
    for link in rows:
        table.add_row(
            str(link.id),
            link.bp_incident_id,
            link.sn_number or "",
            link.sn_sys_id or "",
            link.state.value,
            when(link.created_at),
            when(link.resolved_at),
            when(link.reopen_deadline),
            "" if link.previous_link_id is None else str(link.previous_link_id),
        )
    return table


@click.group()
def links() -> None:
    """Inspect links between BigPanda incidents and ServiceNow incidents."""


@links.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(_STATES),
    help="Only links in this state (repeatable).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.pass_context
def list_(ctx: click.Context, states: tuple[str, ...], limit: int) -> None:
    """List links, newest first."""

    async def run() -> tuple[list[Link], int]:
        wanted = [LinkState(s) for s in states] or None
        async with cli_store(ctx) as store:
            return await store.list_links(wanted, limit=limit), await store.count_links(wanted)

    rows, total = run_async(run())
    out = console()
    out.print(_links_table(f"links ({len(rows)} of {total})", rows))


async def _find(store: SqlStore, key: str) -> list[Link]:
    """The history (newest first) of the incident ``key`` names: a link id, a BigPanda
    incident id or a ServiceNow sys_id."""
    if re.fullmatch(r"\d{1,18}", key):
        link = await store.get_link(int(key))
        if link is not None:
            return await store.links_for_bp(link.bp_incident_id)
    history = await store.links_for_bp(key)
    if history:
        return history
    by_sn = await store.links_for_sn(key)
    if by_sn:
        return await store.links_for_bp(by_sn[0].bp_incident_id)
    return []


@links.command()
@click.argument("key")
@click.option("--audit", "audit_limit", default=20, show_default=True, help="Audit entries shown.")
@click.pass_context
def show(ctx: click.Context, key: str, audit_limit: int) -> None:
    """Show one link (by link id, BigPanda incident id or ServiceNow sys_id): its history
    across reopens, the last synced field values and the recent audit."""

    async def run() -> tuple[list[Link], Link, dict[int, list[AuditEntry]], Table, list[str]]:
        async with cli_store(ctx) as store:
            history = await _find(store, key)
            if not history:
                raise BpsyncError(f"no link found for {key!r} (link id, BigPanda id or sys_id)")
            chosen = history[0]
            if key.isdigit():
                chosen = next((x for x in history if str(x.id) == key), chosen)
            fields = await store.field_states(chosen.id)
            audits = {
                x.id: await store.list_audit(link_id=x.id, limit=audit_limit) for x in history
            }
        field_table = Table(title=f"last synced values of link {chosen.id}")
        for name in ("side", "field", "value", "synced"):
            field_table.add_column(name)
        for (side, name), state in sorted(fields.items()):
            field_table.add_row(side.value, name, state.value or "", when(state.synced_at))
        return history, chosen, audits, field_table, sorted(frozen_fields(fields))

    history, chosen, audits, field_table, frozen = run_async(run())
    out = console()
    out.print(_links_table(f"BigPanda incident {chosen.bp_incident_id}: history", history))
    out.print(field_table)
    if frozen:
        out.print(
            f"frozen (a loop with a rule on either side; `bpsync links release "
            f"{chosen.id}` resumes): {', '.join(frozen)}"
        )
    entries = sorted((e for rows in audits.values() for e in rows), key=lambda e: -e.id)
    audit_table = Table(title="recent audit")
    for name in ("at", "link", "kind", "outcome", "field", "BigPanda value", "ServiceNow value"):
        audit_table.add_column(name)
    for entry in entries[:audit_limit]:
        audit_table.add_row(
            when(entry.at),
            "" if entry.link_id is None else str(entry.link_id),
            entry.kind,
            entry.outcome,
            entry.field or "",
            entry.bp_value or "",
            entry.sn_value or "",
        )
    out.print(audit_table)


@links.command()
@click.argument("link_id", type=int)
@click.pass_context
def release(ctx: click.Context, link_id: int) -> None:
    """Resume the fields the flip-flop guard froze on this link (``guard.flip_flop_*``):
    what changed meanwhile syncs in the next cycle."""

    async def run() -> list[str]:
        async with cli_store(ctx) as store:
            if await store.get_link(link_id) is None:
                raise BpsyncError(f"no link {link_id}")
            fields = frozen_fields(await store.field_states(link_id))
            if fields:
                await store.record_field_states(
                    link_id, Side.SERVICENOW, released(fields), SystemClock().now()
                )
            return sorted(fields)

    fields = run_async(run())
    if fields:
        click.echo(f"released on link {link_id}: {', '.join(fields)}")
    else:
        click.echo(f"nothing frozen on link {link_id}")


with_pair_option(links)
