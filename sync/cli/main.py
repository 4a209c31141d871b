"""Entry point of ``bpsync``: the command group and the error boundary.

Commands are loaded lazily (``_COMMANDS``) so ``bpsync --help`` stays fast and a
command's heavy imports are paid only when it runs. Errors a user can fix are printed
as one line on stderr with exit code 1; never a traceback (set ``BPSYNC_DEBUG=1`` to
see one for a bug).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

import click

from sync import __version__
from sync.cli.common import CliContext
from sync.errors import BpsyncError

#: command name -> "module:attribute" of a click command or group
_COMMANDS: dict[str, str] = {
    "config": "sync.cli.config:config",
    "backfill": "sync.cli.backfill:backfill",
    "db": "sync.cli.db:db",
    "demo": "sync.cli.demo:demo",
    "dlq": "sync.cli.dlq:dlq",
    "links": "sync.cli.links:links",
    "emulate": "sync.cli.emulate:emulate",
    "incident": "sync.cli.incident:incident",
    "run": "sync.cli.run:run",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="BPSYNC_CONFIG",
    help="TOML settings file (see config/bpsync.example.toml). Env: BPSYNC_CONFIG.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Override log_level.",
)
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), help="Override log_format (json|text)."
)
@click.version_option(__version__, prog_name="bpsync")
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, log_level: str | None, log_format: str | None
) -> None:
    """bpsync keeps BigPanda incidents and ServiceNow incidents in sync, both ways.

    Settings come from CLI flags, then BPSYNC_* environment variables (BPSYNC_SERVICENOW__URL,
    ...), then .env, then the TOML file given with --config, then defaults.
    """
    overrides: dict[str, Any] = {}
    if log_level:
        overrides["log_level"] = log_level.upper()
    if log_format:
        overrides["log_format"] = log_format
    ctx.obj = CliContext(config_path=config_path, overrides=overrides)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with the error boundary: one line on stderr, never a traceback."""
    try:
        # standalone_mode=False: click returns ctx.exit(code)'s code instead of exiting
        code = cli.main(args=argv, prog_name="bpsync", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BpsyncError as exc:
        click.echo(f"bpsync: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless asked for more
        if os.environ.get("BPSYNC_DEBUG"):
            traceback.print_exc()
        click.echo(
            f"bpsync: unexpected error: {type(exc).__name__}: {exc} "
            "(set BPSYNC_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
