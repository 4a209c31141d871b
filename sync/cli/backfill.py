"""``bpsync backfill``: historical BigPanda incidents through the daemon's sync (see
:mod:`sync.backfill`): resumable, a progress bar on stderr, a summary table at the end."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from sync.backfill import OUTCOMES, Backfill, BackfillSummary
from sync.cli.common import (
    fail,
    get_ctx,
    on_stop_signals,
    require,
    run_async,
    with_pair_option,
)
from sync.clock import SystemClock
from sync.logs import setup_logging
from sync.redaction import secret_values
from sync.settings import Settings
from sync.store.base import LinkStore
from sync.window import resolve_window

#: exit code of an interrupted run (progress saved), as for SIGINT
EXIT_INTERRUPTED = 130


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- /s" if speed is None else f"{speed:,.1f} /s", style="progress.data.speed")


class _BarProgress:
    """Feeds a rich progress bar (stderr; disabled when stderr is not a terminal)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("backfill", total=0)
        self._lines_to_bar = progress.console.is_terminal and sys.stdout.isatty()

    def add_total(self, count: int) -> None:
        task = self._progress.tasks[0]
        self._progress.update(self._task, total=(task.total or 0) + count)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def action(self, line: str) -> None:
        if self._lines_to_bar:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            click.echo(line)


@contextlib.contextmanager
def _bar() -> Iterator[Progress]:
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    with progress:
        yield progress


def _summary_table(summary: BackfillSummary) -> Table:
    what = "would be " if summary.dry_run else ""
    start, end = summary.window or (None, None)
    span = (
        "" if start is None or end is None else f" {start:%Y-%m-%d %H:%M}Z .. {end:%Y-%m-%d %H:%M}Z"
    )
    title = f"backfill{' (dry run)' if summary.dry_run else ''}{span}"
    table = Table(title=title)
    table.add_column("outcome")
    table.add_column("incidents", justify="right")
    labels = {
        "created": f"{what}created in ServiceNow",
        "adopted": f"{what}adopted (found by correlation_id)",
        "updated": f"{what}updated",
        "skipped": "skipped (nothing to do)",
        "failed": "failed",
        "queued": "queued for retry (the daemon sends them)",
    }
    for outcome in OUTCOMES:
        count = summary.counts.get(outcome, 0)
        if outcome == "queued" and count == 0:
            continue
        table.add_row(labels[outcome], f"{count:,}")
    table.add_section()
    table.add_row("total", f"{summary.incidents:,}")
    return table


async def _open_store(settings: Settings, dry_run: bool) -> LinkStore:
    """The configured store. A dry run writes nothing: an embedded database that does not
    exist yet is read as empty (in memory); a real run upgrades the embedded one as the
    daemon does."""
    from sync.runtime.daemon import prepare_database
    from sync.store import open_store

    url = settings.effective_database_url
    embedded = settings.database_url is None or not settings.database_url.get_secret_value()
    if dry_run:
        if embedded and not (settings.state_dir / "bpsync.db").exists():
            from sync.store.memory import MemoryStore

            return MemoryStore()
        return await open_store(url, check_schema=True)
    await prepare_database(settings)
    return await open_store(url, check_schema=True)


async def _run(
    settings: Settings,
    *,
    since: str,
    until: str | None,
    environments: tuple[str, ...],
    dry_run: bool,
    restart: bool,
    force: bool,
    with_journal: bool = False,
) -> BackfillSummary:
    from sync.backfill import shared_environments
    from sync.engine import build_engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stop.set()
        click.echo("\nstopping after the current page (Ctrl-C again to abort at once)...", err=True)
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signum)

    on_stop_signals(on_signal)

    # what the clients would refuse, before any session or store is opened
    require(
        settings.servicenow.base_url,
        "servicenow.url",
        "Or set servicenow.instance.",
    )
    api_key = settings.bigpanda.api_key
    require(api_key.get_secret_value() if api_key else None, "bigpanda.api_key")
    store = await _open_store(settings, dry_run)
    try:
        engine = await build_engine(settings, store=store, force=force)
    except BaseException:
        await store.close()
        raise
    try:
        await engine.check_credentials()
        await engine.prepare(dry_run=dry_run)
        chosen = list(environments) or await shared_environments(
            engine.bigpanda, settings.bigpanda.environments
        )
        if not chosen:
            raise click.ClickException("BigPanda has no environments to backfill")
        with _bar() as progress:
            backfill = Backfill(
                store=engine.store,
                bigpanda=engine.bigpanda,
                executor=engine.executor,
                coordinator=engine.coordinator,
                clock=SystemClock(),
                environments=chosen,
                since=since,
                until=until,
                dry_run=dry_run,
                restart=restart,
                progress=_BarProgress(progress),
                should_stop=stop.is_set,
                with_journal=with_journal,
            )
            return await backfill.run()
    finally:
        await engine.close()


@click.command("backfill")
@click.option(
    "--since",
    required=True,
    metavar="T",
    help="Start of the window: ISO 8601 (2026-11-01, 2026-11-01T08:00:00Z) or a duration "
    "before now (30m, 24h, 7d).",
)
@click.option("--until", metavar="T", help="End of the window (same forms). Default: now.")
@click.option(
    "--environment",
    "environments",
    multiple=True,
    metavar="ID",
    help="BigPanda environment (repeatable). Default: bigpanda.environments, or all.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the actions it would take (one line each); write nothing.",
)
@click.option("--restart", is_flag=True, help="Ignore saved progress and start from --since.")
@click.option("--force", is_flag=True, help="Override the mass-resolve guard for this run.")
@click.option(
    "--with-journal",
    is_flag=True,
    help="Also carry each incident's history of comments and work notes ([journal]); "
    "without it, only what is said from now on is carried.",
)
@click.pass_context
def backfill(  # noqa: PLR0917 - click passes every option
    ctx: click.Context,
    since: str,
    until: str | None,
    environments: tuple[str, ...],
    dry_run: bool,
    restart: bool,
    force: bool,
    with_journal: bool,
) -> None:
    """Sync historical BigPanda incidents (active during the window) to ServiceNow.

    Runs them through the daemon's planner and executor, so nothing is created twice.
    Interrupted (Ctrl-C, kill), it resumes where it stopped when run again with the same
    arguments. Ends with a summary table; the exit code is 1 when an incident failed.
    """
    try:
        resolve_window(since, until, SystemClock().now())
    except ValueError as exc:
        raise fail(str(exc)) from None
    settings = get_ctx(ctx).pair_settings()
    level = settings.log_level if "log_level" in get_ctx(ctx).overrides else "WARNING"
    setup_logging(level, "text", secret_values(settings))
    summary = run_async(
        _run(
            settings,
            since=since,
            until=until,
            environments=environments,
            dry_run=dry_run,
            restart=restart,
            force=force,
            with_journal=with_journal,
        )
    )
    out = Console()
    if not out.is_terminal:
        out = Console(width=120, file=sys.stdout)
    if summary.resumed:
        click.echo(f"resumed from saved progress ({', '.join(summary.resumed)})")
    out.print(_summary_table(summary))
    if summary.interrupted:
        click.echo("interrupted: progress saved; run the same command again to resume", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    failed = summary.counts.get("failed", 0)
    if failed:
        click.echo(
            f"{failed} incident(s) failed: see the log above and `bpsync dlq list`", err=True
        )
        raise SystemExit(1)


with_pair_option(backfill)
