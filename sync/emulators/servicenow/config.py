"""The run-time switches: ``GET/POST /_emulator/config`` and the options of create_app."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from sync.emulators.control import Handler
from sync.emulators.servicenow.state import InstanceState, Options

#: the switches ``GET/POST /_emulator/config`` reads and changes (all options of create_app)
CONFIG_KEYS = (
    "semaphores",
    "semaphore_queue",
    "processing_s",
    "short_pages",
    "user_time_zone",
    "oauth_client_auth",
    "shuffle_unordered",
    "rate_limit_per_hour",
    "user_rate_limits",
    "overlong",
    "dictionary_access",
)
_OAUTH_CLIENT_AUTH = ("form", "basic", "both")
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "oauth_client_auth": _OAUTH_CLIENT_AUTH,
    "overlong": ("truncate", "reject"),
    "dictionary_access": ("read", "hidden", "forbidden"),
}


def _count(name: str, value: Any, *, minimum: int, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "an integer" + (" or null" if nullable else "")
        raise ValueError(f"{name} must be {kind} >= {minimum}, got {value!r}")
    return value


def check_option(name: str, value: Any) -> Any:
    """The normalised value of one run-time switch; ValueError names the bad one."""
    if name == "semaphores":
        return _count(name, value, minimum=1, nullable=True)
    if name == "semaphore_queue":
        return _count(name, value, minimum=0, nullable=False)
    if name == "rate_limit_per_hour":
        return _count(name, value, minimum=0, nullable=True)
    if name in {"processing_s", "short_pages"}:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if name == "short_pages" and value > 1:
            raise ValueError(f"short_pages is a fraction between 0 and 1, got {value!r}")
        return float(value)
    if name == "user_time_zone":
        if value is None or value == "":
            return value  # None: GMT; "": no zone on the user (glide.sys.default.tz applies)
        if not isinstance(value, str):
            raise ValueError(f"user_time_zone must be a zone name or null, got {value!r}")
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"user_time_zone: unknown time zone {value!r}") from None
        return value
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {_CHOICES[name]}, got {value!r}")
        return value
    if name == "shuffle_unordered":
        if not isinstance(value, bool):
            raise ValueError(f"shuffle_unordered must be true or false, got {value!r}")
        return value
    if name == "user_rate_limits":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError("user_rate_limits must map user names to requests per hour")
        return {
            k: _count(f"user_rate_limits[{k}]", v, minimum=0, nullable=False)
            for k, v in value.items()
        }
    raise ValueError(f"unknown option {name!r}")


def config_json(state: InstanceState) -> dict[str, Any]:
    opts = state.options
    body: dict[str, Any] = {name: getattr(opts, name) for name in CONFIG_KEYS}
    body["user_rate_limits"] = dict(opts.user_rate_limits)
    body["semaphore_state"] = state.pool.to_json()
    return body


def apply_config(state: InstanceState, body: Any) -> None:
    """Apply a partial config (all or nothing); ValueError/TypeError for a bad one."""
    if not isinstance(body, dict):
        raise TypeError("the config must be a JSON object")
    if "semaphore_state" in body:
        raise ValueError("semaphore_state is read-only")
    unknown = set(body) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)} (known: {list(CONFIG_KEYS)})")
    values = {name: check_option(name, value) for name, value in body.items()}
    opts = state.options
    for name, value in values.items():
        if name == "user_time_zone":
            state.set_login_time_zone(value)
        else:
            setattr(opts, name, value)
    if {"semaphores", "semaphore_queue"} & set(values):
        state.pool.resize(opts.semaphores, opts.semaphore_queue)


def config_handlers(state: InstanceState) -> tuple[Handler, Handler]:
    async def get_config(request: web.Request) -> web.Response:
        return web.json_response(config_json(state))

    async def set_config(request: web.Request) -> web.Response:
        try:
            apply_config(state, await request.json())
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(config_json(state))

    return get_config, set_config


def realism_banner(opts: Options) -> str | None:
    """One banner line naming the switches that differ from the strict defaults."""
    defaults = Options()
    changed = [
        f"{name}={getattr(opts, name)!r}"
        for name in CONFIG_KEYS
        if getattr(opts, name) != getattr(defaults, name)
    ]
    return "switches: " + ", ".join(changed) if changed else None
