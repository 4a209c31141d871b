"""``bpsync run``: the sync daemon (see :mod:`sync.runtime.daemon`)."""

from __future__ import annotations

import click

from sync.cli.common import get_ctx, run_async
from sync.logs import setup_logging
from sync.redaction import secret_values


@click.command("run")
@click.option(
    "--force",
    is_flag=True,
    help="Override the safety guards (empty side, mass resolve) for this process.",
)
@click.option("--once", is_flag=True, help="Run one sync cycle and exit (0 when it succeeded).")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    help="Seconds between cycles (overrides poll_interval).",
)
@click.pass_context
def run(ctx: click.Context, force: bool, once: bool, poll_interval: float | None) -> None:
    """Keep BigPanda and ServiceNow incidents in sync until SIGTERM.

    Checks the database schema and both APIs' credentials first; each start-up problem
    is one line on stderr and exit code 1.
    """
    from sync.runtime.daemon import DaemonOptions, run_daemon

    settings = get_ctx(ctx).settings(poll_interval=poll_interval)
    setup_logging(settings.log_level, settings.log_format, secret_values(settings))
    code = run_async(
        run_daemon(settings, DaemonOptions(force=force, once=once, freeze_start_up=True))
    )
    ctx.exit(code)
