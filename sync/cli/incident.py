"""``bpsync incident create|read|update|delete``: the Camunda connector's four operations.

Each command talks to the ServiceNow Table API (``servicenow.table``, default
``incident``) with the configured credentials, prints the record as JSON on stdout,
and reports every failure as one line on stderr with exit code 1 (the error boundary
of :mod:`sync.cli.main`): bad JSON in the payload, a payload that is not an object,
an unknown sys_id ("incident <sys_id> not found"), ServiceNow's own message and
detail, authentication refused, instance unreachable.

``--url``, ``--username`` and ``--password`` override ``servicenow.url`` etc. for one
call (prefer ``BPSYNC_SERVICENOW__PASSWORD``: a password on the command line is
visible to other local users).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from sync.cli.common import echo_json, get_ctx, load_json_argument, run_async, with_pair_option
from sync.clients.base import SNRecord
from sync.clients.servicenow import ServiceNowClient, make_session
from sync.clients.snquery import FIELD_RE
from sync.clock import SystemClock
from sync.errors import BpsyncError, NotFoundError
from sync.settings import ServiceNowSettings

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_SYS_ID_INPUT_RE = re.compile(r"^[0-9A-Fa-f]{32}$")
#: journal fields always come back as "" with display_value=false: never "ignored"
_JOURNAL_FIELDS = frozenset({"work_notes", "comments"})


def _connection_options(func: F) -> F:
    func = click.option(
        "--password",
        help="Override servicenow.password (prefer BPSYNC_SERVICENOW__PASSWORD).",
    )(func)
    func = click.option("--username", help="Override servicenow.username.")(func)
    return click.option(
        "--url", help="Override servicenow.url (e.g. http://127.0.0.1:8081 for the emulator)."
    )(func)


def _settings(url: str | None, username: str | None, password: str | None) -> ServiceNowSettings:
    ctx = get_ctx(click.get_current_context())
    overrides = {
        "servicenow.url": url,
        "servicenow.username": username,
        "servicenow.password": password,
    }
    return ctx.pair_settings(**overrides).servicenow


def _sys_id(value: str) -> str:
    """Validate early: a sys_id is 32 hex digits (ServiceNow writes them lower-case)."""
    value = value.strip()
    if not _SYS_ID_INPUT_RE.fullmatch(value):
        raise BpsyncError(f"invalid sys_id {value!r}: expected 32 hex digits")
    return value.lower()


def _payload(text: str) -> dict[str, str]:
    """``--payload`` as ServiceNow field values (strings; numbers and booleans converted)."""
    data = load_json_argument(text, "payload")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a JSON {type(data).__name__}"
        raise BpsyncError(f"payload must be a JSON object of field values, got {kind}")
    out: dict[str, str] = {}
    for name, value in data.items():
        if not FIELD_RE.fullmatch(name):
            raise BpsyncError(
                f"payload field {name!r} is not a valid ServiceNow field name "
                "(lower-case letters, digits, _)"
            )
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, (int, float)):
            out[name] = str(value)
        elif value is None:
            out[name] = ""
        elif isinstance(value, str):
            out[name] = value
        else:
            raise BpsyncError(
                f"payload field {name!r} holds a JSON {type(value).__name__}; "
                "ServiceNow fields take strings, numbers or booleans"
            )
    return out


def _call(settings: ServiceNowSettings, operation: Callable[[ServiceNowClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with make_session(settings) as session:
            client = ServiceNowClient(session, settings, SystemClock())
            return await operation(client)

    return run_async(go())


def _not_found(settings: ServiceNowSettings, sys_id: str) -> BpsyncError:
    return BpsyncError(f"{settings.table} {sys_id} not found")


def _warn_ignored(payload: dict[str, str], record: SNRecord) -> None:
    """ServiceNow silently ignores unknown (or unreadable) fields: say so (SPEC B19)."""
    ignored = sorted(name for name in payload if name not in record and name not in _JOURNAL_FIELDS)
    if ignored:
        click.echo(
            f"warning: ServiceNow did not take field(s) {', '.join(ignored)} "
            "(unknown on this table, or not writable by this user)",
            err=True,
        )


@click.group()
def incident() -> None:
    """Create, read, update and delete ServiceNow incidents (the Camunda connector's operations).

    Uses servicenow.url (or servicenow.instance) and servicenow.username/password (or
    OAuth client_id/client_secret) from the settings, e.g. BPSYNC_SERVICENOW__URL.
    """


@incident.command()
@click.option(
    "--payload",
    required=True,
    help='Incident fields as JSON, or @file.json: \'{"short_description": "Disk full"}\'.',
)
@_connection_options
def create(payload: str, url: str | None, username: str | None, password: str | None) -> None:
    """Create an incident; prints the new record (sys_id, number, ...) as JSON."""
    fields = _payload(payload)
    settings = _settings(url, username, password)
    record = _call(settings, lambda client: client.create(settings.table, fields))
    _warn_ignored(fields, record)
    echo_json(record)


@incident.command()
@click.argument("sys_id")
@_connection_options
def read(sys_id: str, url: str | None, username: str | None, password: str | None) -> None:
    """Print the incident SYS_ID as JSON."""
    sys_id = _sys_id(sys_id)
    settings = _settings(url, username, password)
    try:
        record = _call(settings, lambda client: client.get(settings.table, sys_id))
    except NotFoundError:
        raise _not_found(settings, sys_id) from None
    echo_json(record)


@incident.command()
@click.argument("sys_id")
@click.option(
    "--payload",
    required=True,
    help='Fields to change as JSON or @file.json: \'{"priority": "2"}\'.',
)
@_connection_options
def update(
    sys_id: str, payload: str, url: str | None, username: str | None, password: str | None
) -> None:
    """Change fields of the incident SYS_ID (PATCH); prints the updated record as JSON."""
    sys_id = _sys_id(sys_id)
    fields = _payload(payload)
    if not fields:
        raise BpsyncError("payload is empty: nothing to update")
    settings = _settings(url, username, password)
    try:
        record = _call(settings, lambda client: client.update(settings.table, sys_id, fields))
    except NotFoundError:
        raise _not_found(settings, sys_id) from None
    _warn_ignored(fields, record)
    echo_json(record)


@incident.command()
@click.argument("sys_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_connection_options
def delete(
    sys_id: str, yes: bool, url: str | None, username: str | None, password: str | None
) -> None:
    """Delete the incident SYS_ID (asks first unless --yes); prints what was deleted."""
    sys_id = _sys_id(sys_id)
    settings = _settings(url, username, password)
    try:
        # read first: an unknown sys_id fails before the question, and the prompt names it
        # the whole record, as read prints it: an odd one can still be deleted
        record = _call(settings, lambda client: client.get(settings.table, sys_id))
        number = str(record.get("number", ""))
        if not yes:
            label = f"{number} ({sys_id})" if number else sys_id
            click.confirm(f"Delete {settings.table} {label}?", abort=True, err=True)
        _call(settings, lambda client: client.delete_incident(sys_id))
    except NotFoundError:
        raise _not_found(settings, sys_id) from None
    echo_json({"deleted": True, "sys_id": sys_id, "number": number, "table": settings.table})


with_pair_option(incident)
