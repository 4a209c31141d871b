"""What every command shares: the settings context, async running, one-line errors."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from sync.errors import BpsyncError, ConfigError
from sync.settings import Settings, load_settings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class CliContext:
    """Carried in ``click.Context.obj``: where the settings come from."""

    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    pair: str | None = None
    """``--pair NAME``: the sync pair a command works on (``[[pairs]]``)"""
    _settings: Settings | None = None

    def settings(self, **extra: Any) -> Settings:
        """Load the settings once (CLI flags > env > .env > TOML > defaults).

        ``extra`` are command-specific dotted overrides (``{"http_port": 0}``); passing
        them reloads.
        """
        if self._settings is None or extra:
            merged = {**self.overrides, **{k: v for k, v in extra.items() if v is not None}}
            self._settings = load_settings(self.config_path, merged)
            if self._settings.pairs:  # a wrong pair table: one line now, not mid-command
                from sync.pairconfig import expand_pairs

                expand_pairs(self._settings)
        return self._settings

    def pair_settings(self, **extra: Any) -> Settings:
        """The settings of the pair ``--pair`` names (a configuration of one pair needs
        no ``--pair``; one of several does)."""
        from sync.pairconfig import select_pair

        return select_pair(self.settings(**extra), self.pair).settings


def get_ctx(ctx: click.Context) -> CliContext:
    obj = ctx.find_object(CliContext)
    if obj is None:  # a command invoked without the group (tests)
        obj = CliContext()
        ctx.obj = obj
    return obj


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def _set_pair(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        get_ctx(ctx).pair = value


def pair_param() -> click.Option:
    """``--pair NAME`` (env ``BPSYNC_PAIR``), for the commands that work on one pair."""
    return click.Option(
        ["--pair"],
        metavar="NAME",
        envvar="BPSYNC_PAIR",
        expose_value=False,
        is_eager=True,
        callback=_set_pair,
        help="The sync pair ([[pairs]] name) to work on; needed when there are several.",
    )


def with_pair_option(command: click.Command) -> click.Command:
    """Add ``--pair`` to ``command`` and, for a group, to each of its commands."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_pair_option(sub)
    else:
        command.params.append(pair_param())
    return command


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; Ctrl-C is handled by main()."""
    return asyncio.run(coro)


def on_stop_signals(handler: Callable[[int], object]) -> bool:
    """Call ``handler(signum)`` on SIGINT and SIGTERM in the running loop (a command
    stops after its current step instead of at once). False where the loop cannot take
    them (no signal support on the platform: NotImplementedError; a loop outside the
    main thread: RuntimeError): there the signals keep their default (Ctrl-C stops at
    once, through main()'s KeyboardInterrupt), logged at DEBUG."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, handler, signum)
        except (NotImplementedError, RuntimeError) as exc:
            log.debug("stop signals keep their default here: %s", exc or type(exc).__name__)
            return False
    return True


def fail(message: str) -> click.ClickException:
    """A one-line user-facing error (exit code 1)."""
    return click.ClickException(message)


def require(value: T | None, setting: str, hint: str = "") -> T:
    """Return ``value`` or raise a ConfigError naming the missing setting."""
    if value is None or value == "":
        env = "BPSYNC_" + setting.upper().replace(".", "__")
        extra = f" {hint}" if hint else ""
        raise ConfigError(f"missing setting {setting} (or {env}).{extra}", setting=setting)
    return value


def load_json_argument(text: str, what: str = "payload") -> Any:
    """Parse ``JSON`` or ``@file.json`` into a value; errors name the problem and position."""
    source = "argument"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BpsyncError(f"cannot read {what} file {path}: {exc.strerror}") from None
        source = str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BpsyncError(
            f"{what} is not valid JSON ({source}, line {exc.lineno} column {exc.colno}): {exc.msg}"
        ) from None


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))
