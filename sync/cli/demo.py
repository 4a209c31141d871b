"""``bpsync demo``: both emulators, an embedded SQLite store, sample incidents, the sync
engine and a live view of the pairs, in one command (see :mod:`sync.demo`)."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from rich.console import Console

from sync.cli.common import on_stop_signals, run_async
from sync.logs import setup_logging


@click.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="Stop by itself after this many seconds (default: run until Ctrl-C).",
)
@click.option("--no-live", is_flag=True, help="Plain log lines instead of the live table.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.2),
    default=1.5,
    show_default=True,
    help="Seconds between sync cycles.",
)
@click.option(
    "--change-interval",
    type=click.FloatRange(min=0.5),
    default=3.0,
    show_default=True,
    help="Seconds between the demo's own edits of incidents.",
)
@click.option(
    "--incidents",
    type=click.IntRange(min=1, max=200),
    default=6,
    show_default=True,
    help="Sample incidents loaded at the start.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/demo"),
    show_default=True,
    help="Where the demo's SQLite link store lives (recreated on each run).",
)
@click.option("--servicenow-port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option("--bigpanda-port", type=click.IntRange(0, 65535), default=8082, show_default=True)
def demo(  # noqa: PLR0917 - click passes every option
    duration: float | None,
    no_live: bool,
    poll_interval: float,
    change_interval: float,
    incidents: int,
    state_dir: Path,
    servicenow_port: int,
    bigpanda_port: int,
) -> None:
    """See bpsync work: two local emulators, the sync engine and a live table of pairs.

    Loads sample incidents into the BigPanda emulator, syncs them to the ServiceNow
    emulator, and keeps editing a few incidents on both sides so you can watch changes
    travel. The banner shows the emulator URLs and credentials for curl. Ctrl-C stops.
    """
    from sync.demo import Demo, DemoOptions

    live = not no_live
    console = Console()
    if not console.is_terminal:
        live = False  # piped: plain lines, and a table wide enough for the ids
        console = Console(width=max(console.width, 160))
    if live:
        logging.getLogger().handlers[:] = [
            h for h in logging.getLogger().handlers if not getattr(h, "_bpsync", False)
        ]
    else:
        setup_logging("INFO", "text")
    options = DemoOptions(
        duration=duration,
        live=live,
        poll_interval=poll_interval,
        change_interval=change_interval,
        incidents=incidents,
        state_dir=state_dir,
        servicenow_port=servicenow_port,
        bigpanda_port=bigpanda_port,
    )
    runner = Demo(options, console=console)

    async def main() -> None:
        on_stop_signals(lambda _signum: runner.request_stop())
        await runner.run()

    run_async(main())
    result = runner.result
    click.echo(
        f"demo stopped: {result.linked} linked pairs, {result.cycles} cycles, "
        f"{result.changes} edits, {result.actions} bpsync actions"
    )
