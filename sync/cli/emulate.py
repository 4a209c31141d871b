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


def _servicenow_app(user: tuple[str, str]) -> web.Application:
    from sync.emulators.servicenow import create_app

    return create_app(users={user[0]: user[1]})


def _bigpanda_app(api_key: str, org_token: str, rate_limit: float | None) -> web.Application:
    from sync.emulators.bigpanda import create_app

    return create_app(api_key=api_key, org_token=org_token, rate_limit_per_s=rate_limit)


_HOST = click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
_SN_USER = click.option(
    "--user",
    "user",
    default="bpsync:bpsync",
    show_default=True,
    metavar="NAME:PASSWORD",
    help="The ServiceNow user (Basic auth and OAuth password grant).",
)
_BP_KEY = click.option(
    "--api-key",
    default="BPUbpsync-emulator",
    show_default=True,
    help="BigPanda User API Key (Bearer token of /resources/v2.0).",
)
_BP_TOKEN = click.option(
    "--org-token",
    default="bpsync-org-token",
    show_default=True,
    help="BigPanda Org Token (Bearer token of /data/v2/alerts).",
)
_BP_RATE = click.option(
    "--rate-limit",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="BigPanda requests per second per endpoint and token; 0 turns the limit off.",
)


@emulate.command("servicenow")
@_HOST
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@_SN_USER
def servicenow(host: str, port: int, user: str) -> None:
    """The ServiceNow Table API emulator (incident, sys_user, sys_user_group, cmdb_ci...)."""
    app = _servicenow_app(_user(user))
    asyncio.run(_serve([("ServiceNow", app, host, port)]))


@emulate.command("bigpanda")
@_HOST
@click.option("--port", type=click.IntRange(0, 65535), default=8082, show_default=True)
@_BP_KEY
@_BP_TOKEN
@_BP_RATE
def bigpanda(host: str, port: int, api_key: str, org_token: str, rate_limit: float) -> None:
    """The BigPanda API emulator (incidents v2, tags, activities, alert ingest)."""
    app = _bigpanda_app(api_key, org_token, rate_limit or None)
    asyncio.run(_serve([("BigPanda", app, host, port)]))


@emulate.command("both")
@_HOST
@click.option("--sn-port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option("--bp-port", type=click.IntRange(0, 65535), default=8082, show_default=True)
@_SN_USER
@_BP_KEY
@_BP_TOKEN
@_BP_RATE
def both(
    *,
    host: str,
    sn_port: int,
    bp_port: int,
    user: str,
    api_key: str,
    org_token: str,
    rate_limit: float,
) -> None:
    """Both emulators in one process (ServiceNow on --sn-port, BigPanda on --bp-port)."""
    apps = [
        ("ServiceNow", _servicenow_app(_user(user)), host, sn_port),
        ("BigPanda", _bigpanda_app(api_key, org_token, rate_limit or None), host, bp_port),
    ]
    asyncio.run(_serve(apps))
