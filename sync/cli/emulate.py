"""``bpsync emulate servicenow|bigpanda|both``: run the local API emulators."""

from __future__ import annotations

import asyncio
import logging

import click
from aiohttp import web

from sync.emulators.control import BANNER_KEY
from sync.logs import setup_logging


async def _serve(apps: list[tuple[str, web.Application, str, int]]) -> None:
    runners: list[web.AppRunner] = []
    try:
        for name, app, host, port in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            runners.append(runner)
            click.echo(f"{name} emulator listening on http://{host}:{port}")
            for line in app.get(BANNER_KEY, []):
                click.echo(f"  {line}")
        click.echo("Press Ctrl-C to stop.")
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def _user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition(":")
    if not sep or not name:
        raise click.BadParameter("expected NAME:PASSWORD", param_hint="--user")
    return name, password


@click.group()
def emulate() -> None:
    """Run local emulators of the ServiceNow and BigPanda APIs (for tests and demos)."""
    setup_logging("INFO", "text")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
