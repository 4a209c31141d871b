"""``bpsync emulate servicenow|bigpanda|both``: run the local API emulators."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import click
from aiohttp import web

from sync.emulators.bplimits import (
    DEFAULT_RATE_LIMIT_SCOPE,
    DEFAULT_RATE_LIMIT_SHAPE,
    RATE_LIMIT_SCOPES,
    RATE_LIMIT_SHAPES,
)
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


def _servicenow_app(
    user: tuple[str, str],
    *,
    rule_url: str | None = None,
    rule_token: str | None = None,
    **switches: Any,
) -> web.Application:
    from sync.emulators.servicenow import create_app
    from sync.emulators.servicenow.app import RULE_KEY

    app = create_app(users={user[0]: user[1]}, **switches)
    if rule_url:  # push mode's business rule, as config/servicenow/ installs it
        headers = {"Authorization": f"Bearer {rule_token}"} if rule_token else {}
        app[RULE_KEY].config.update({"url": rule_url, "headers": headers})
    return app


def _bigpanda_app(
    api_key: str,
    org_token: str,
    rate_limit: float | None,
    rate_limit_shape: str = DEFAULT_RATE_LIMIT_SHAPE,
    rate_limit_scope: str = DEFAULT_RATE_LIMIT_SCOPE,
    *,
    aia_delay: float | None = None,
    webhook_url: str | None = None,
    webhook_token: str | None = None,
    webhook_envelope: str = "incident",
) -> web.Application:
    from sync.emulators.bigpanda import create_app

    webhook: dict[str, Any] = {}
    if webhook_url:  # AutoShare to a notifications webhook (push mode)
        webhook = {"url": webhook_url, "envelope": webhook_envelope}
        if webhook_token:
            webhook["headers"] = {"Authorization": f"Bearer {webhook_token}"}
    return create_app(
        api_key=api_key,
        org_token=org_token,
        rate_limit_per_s=rate_limit,
        rate_limit_shape=rate_limit_shape,
        rate_limit_scope=rate_limit_scope,
        aia_delay_s=aia_delay,
        webhook=webhook,
    )


def _push_options(command: Callable[..., None], *, sides: tuple[str, ...]) -> Callable[..., None]:
    """Push mode's switches: BigPanda's webhook and ServiceNow's business rule."""
    options = []
    if "bigpanda" in sides:
        options += [
            click.option(
                "--webhook-url",
                metavar="URL",
                help="AutoShare every incident change to this notifications webhook, e.g. "
                "http://127.0.0.1:8080/webhooks/bigpanda (bpsync's [push] receiver).",
            ),
            click.option(
                "--webhook-token",
                metavar="TOKEN",
                help="Sent as 'Authorization: Bearer TOKEN' (bpsync's push.bigpanda_token).",
            ),
            click.option(
                "--webhook-envelope",
                type=click.Choice(["incident", "bare", "v2"]),
                default="incident",
                show_default=True,
                help="The payload: wrapped as {'incident': ...}, the bare incident, or a "
                "Webhook v2 trigger body.",
            ),
        ]
    if "servicenow" in sides:
        options += [
            click.option(
                "--business-rule-url",
                metavar="URL",
                help="Run the business rule of config/servicenow/: POST every incident "
                "insert and update to this URL, e.g. http://127.0.0.1:8080/webhooks/servicenow.",
            ),
            click.option(
                "--business-rule-token",
                metavar="TOKEN",
                help="Sent as 'Authorization: Bearer TOKEN' (bpsync's push.servicenow_token).",
            ),
        ]
    for option in reversed(options):
        command = option(command)
    return command


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
_BP_RATE_SHAPE = click.option(
    "--rate-limit-shape",
    "--bp-rate-limit-shape",
    "rate_limit_shape",
    type=click.Choice(RATE_LIMIT_SHAPES),
    default=DEFAULT_RATE_LIMIT_SHAPE,
    show_default=True,
    help="BigPanda limiter algorithm: token bucket (burst = rate), at most RATE in any "
    "trailing second, or at most RATE per calendar second.",
)
_BP_RATE_SCOPE = click.option(
    "--rate-limit-scope",
    "--bp-rate-limit-scope",
    "rate_limit_scope",
    type=click.Choice(RATE_LIMIT_SCOPES),
    default=DEFAULT_RATE_LIMIT_SCOPE,
    show_default=True,
    help="What one BigPanda rate counter covers: token+method+route, token+route (GET "
    "and POST share it), or route for the whole organisation (all tokens share it).",
)


_BP_AIA = click.option(
    "--aia-delay",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Emulate BigPanda's AI incident analysis: its summary lands in the ai_summary "
    "incident tag this long after an incident forms (real: 1-3 minutes). Off by default.",
)


def _sn_rate_limits(values: tuple[str, ...]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not name or not count.isdigit():
            raise click.BadParameter(
                "expected NAME=REQUESTS_PER_HOUR", param_hint="--user-rate-limit"
            )
        limits[name] = int(count)
    return limits


def _sn_switches(command: Callable[..., None]) -> Callable[..., None]:
    """The ServiceNow emulator's switches (sync.emulators.servicenow, /_emulator/config)."""
    options = [
        click.option(
            "--semaphores",
            type=click.IntRange(min=1),
            default=None,
            help="Integration semaphores per node (requests processed at once); "
            "default: no pool. Beyond them and the queue: 429 without headers.",
        ),
        click.option(
            "--semaphore-queue",
            type=click.IntRange(min=0),
            default=50,
            show_default=True,
            help="Requests allowed to wait for a semaphore (with --semaphores).",
        ),
        click.option(
            "--processing-s",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="Seconds every Table API request holds its semaphore.",
        ),
        click.option(
            "--short-pages",
            type=click.FloatRange(0, 1),
            default=0.0,
            show_default=True,
            help="Fraction of incident rows hidden from list pages after the limit (like "
            "ACLs); X-Total-Count keeps counting them.",
        ),
        click.option(
            "--user-time-zone",
            default=None,
            metavar="ZONE",
            help="The login users' sys_user.time_zone (e.g. America/Los_Angeles); default GMT.",
        ),
        click.option(
            "--oauth-client-auth",
            type=click.Choice(["both", "form", "basic"]),
            default="both",
            show_default=True,
            help="Where /oauth_token.do reads client_id/client_secret: form fields, an "
            "HTTP Basic header, or either.",
        ),
        click.option(
            "--shuffle-unordered/--stable-unordered",
            default=False,
            show_default=True,
            help="Shuffle list results per request when the query has no ORDERBY.",
        ),
        click.option(
            "--rate-limit-per-hour",
            type=click.IntRange(min=0),
            default=None,
            help="A rate limit rule for all users (requests per hour); default: none.",
        ),
        click.option(
            "--user-rate-limit",
            "user_rate_limit",
            multiple=True,
            metavar="NAME=N",
            help="A rate limit rule for one user (requests per hour); repeatable.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@emulate.command("servicenow")
@_HOST
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@_SN_USER
@_sn_switches
@functools.partial(_push_options, sides=("servicenow",))
def servicenow(
    *,
    host: str,
    port: int,
    user: str,
    user_rate_limit: tuple[str, ...],
    business_rule_url: str | None,
    business_rule_token: str | None,
    **switches: Any,
) -> None:
    """The ServiceNow Table API emulator (incident, sys_user, sys_user_group, cmdb_ci...).

    Every switch can also be read and changed at run time: GET/POST /_emulator/config.
    """
    if user_rate_limit:
        switches["user_rate_limits"] = _sn_rate_limits(user_rate_limit)
    if switches.get("user_time_zone") is not None:
        from sync.emulators.servicenow import check_option

        try:
            check_option("user_time_zone", switches["user_time_zone"])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--user-time-zone") from None
    app = _servicenow_app(
        _user(user), rule_url=business_rule_url, rule_token=business_rule_token, **switches
    )
    asyncio.run(_serve([("ServiceNow", app, host, port)]))


@emulate.command("bigpanda")
@_HOST
@click.option("--port", type=click.IntRange(0, 65535), default=8082, show_default=True)
@_BP_KEY
@_BP_TOKEN
@_BP_RATE
@_BP_RATE_SHAPE
@_BP_RATE_SCOPE
@_BP_AIA
@functools.partial(_push_options, sides=("bigpanda",))
def bigpanda(
    *,
    host: str,
    port: int,
    api_key: str,
    org_token: str,
    rate_limit: float,
    rate_limit_shape: str,
    rate_limit_scope: str,
    aia_delay: float | None,
    webhook_url: str | None,
    webhook_token: str | None,
    webhook_envelope: str,
) -> None:
    """The BigPanda API emulator (incidents v2, tags, activities, alert ingest)."""
    app = _bigpanda_app(
        api_key,
        org_token,
        rate_limit or None,
        rate_limit_shape,
        rate_limit_scope,
        aia_delay=aia_delay,
        webhook_url=webhook_url,
        webhook_token=webhook_token,
        webhook_envelope=webhook_envelope,
    )
    asyncio.run(_serve([("BigPanda", app, host, port)]))


@emulate.command("both")
@_HOST
@click.option("--sn-port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option("--bp-port", type=click.IntRange(0, 65535), default=8082, show_default=True)
@_SN_USER
@_BP_KEY
@_BP_TOKEN
@_BP_RATE
@_BP_RATE_SHAPE
@_BP_RATE_SCOPE
@_BP_AIA
@functools.partial(_push_options, sides=("bigpanda", "servicenow"))
def both(
    *,
    host: str,
    sn_port: int,
    bp_port: int,
    user: str,
    api_key: str,
    org_token: str,
    rate_limit: float,
    rate_limit_shape: str,
    rate_limit_scope: str,
    aia_delay: float | None,
    webhook_url: str | None,
    webhook_token: str | None,
    webhook_envelope: str,
    business_rule_url: str | None,
    business_rule_token: str | None,
) -> None:
    """Both emulators in one process (ServiceNow on --sn-port, BigPanda on --bp-port)."""
    sn_app = _servicenow_app(
        _user(user), rule_url=business_rule_url, rule_token=business_rule_token
    )
    apps = [
        ("ServiceNow", sn_app, host, sn_port),
        (
            "BigPanda",
            _bigpanda_app(
                api_key,
                org_token,
                rate_limit or None,
                rate_limit_shape,
                rate_limit_scope,
                aia_delay=aia_delay,
                webhook_url=webhook_url,
                webhook_token=webhook_token,
                webhook_envelope=webhook_envelope,
            ),
            host,
            bp_port,
        ),
    ]
    asyncio.run(_serve(apps))
