"""``create_app``: the ServiceNow emulator as an ``aiohttp.web`` application."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sync.clock import Clock, SystemClock
from sync.emulators.control import BANNER_KEY, EmulatorControl
from sync.emulators.servicenow.config import (
    CONFIG_KEYS,
    check_option,
    config_handlers,
    realism_banner,
)
from sync.emulators.servicenow.errors import error_response
from sync.emulators.servicenow.routes import MAX_PAYLOAD_BYTES, Api
from sync.emulators.servicenow.rules import BusinessRule
from sync.emulators.servicenow.state import (
    DEFAULT_USERS,
    FIRST_INCIDENT_NUMBER,
    InstanceState,
    Options,
)

STATE_KEY: web.AppKey[InstanceState] = web.AppKey("servicenow_state", InstanceState)
RULE_KEY: web.AppKey[BusinessRule] = web.AppKey("servicenow_business_rule", BusinessRule)


def create_app(
    *,
    clock: Clock | None = None,
    users: Mapping[str, str] | None = None,
    seed: int | None = None,
    **options: Any,
) -> web.Application:
    """The emulator app; ``options`` are the fields of :class:`Options` (see the package docstring).

    ``users`` maps user_name -> password (default ``bpsync``/``bpsync`` and
    ``admin``/``admin``); each becomes a ``sys_user`` row.
    """
    known = set(Options.__dataclass_fields__)
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown ServiceNow emulator options: {sorted(unknown)}")
    opts = Options(**options)
    if opts.close_codes not in {"current", "legacy"}:
        raise ValueError("close_codes must be 'current' or 'legacy'")
    if opts.invalid_query not in {"ignore", "no_rows", "forbidden"}:
        raise ValueError("invalid_query must be 'ignore', 'no_rows' or 'forbidden'")
    for name in CONFIG_KEYS:
        setattr(opts, name, check_option(name, getattr(opts, name)))
    opts.terminal_states = frozenset(str(s) for s in opts.terminal_states)
    the_clock = clock or SystemClock()
    state = InstanceState(the_clock, users if users is not None else DEFAULT_USERS, seed, opts)
    api = Api(state)
    app = web.Application(client_max_size=MAX_PAYLOAD_BYTES + 1024 * 1024)
    app[STATE_KEY] = state
    app.middlewares.append(api.semaphore_middleware)
    app.middlewares.append(api.auth_middleware)
    rule = BusinessRule(state, the_clock)  # push mode's rule (off until given a URL)
    app[RULE_KEY] = rule
    app.middlewares.append(rule.middleware)
    app.on_cleanup.append(rule.stop)
    control = EmulatorControl(
        error_response=error_response,
        on_reset=state.reset,
        clock=the_clock,
        seed=seed,
    )
    control.install(app)
    get_config, set_config = config_handlers(state)
    app.router.add_get("/_emulator/config", get_config)
    app.router.add_post("/_emulator/config", set_config)
    get_rule, set_rule = rule.handlers()
    app.router.add_get("/_emulator/business_rule", get_rule)
    app.router.add_post("/_emulator/business_rule", set_rule)
    app.router.add_post("/oauth_token.do", api.oauth_token)
    for prefix in ("/api/now", "/api/now/{version:v[12]}"):
        app.router.add_route("*", prefix + "/table/{table}", api.collection)
        app.router.add_route("*", prefix + "/table/{table}/{sys_id}", api.record)
    app.router.add_route("*", "/api/{tail:.*}", api.unknown_api)
    banner = [f"user {name} / password {password}" for name, password in state.passwords.items()]
    banner += [
        f"OAuth client_id {cid} / client_secret {secret} (POST /oauth_token.do)"
        for cid, secret in opts.oauth_clients.items()
    ]
    banner.append(
        f"close codes: {opts.close_codes}; incidents number from INC{FIRST_INCIDENT_NUMBER:07d}"
    )
    switches = realism_banner(opts)
    if switches:
        banner.append(switches)
    app[BANNER_KEY] = banner
    return app
