"""``create_app``: the BigPanda emulator as an ``aiohttp.web`` application."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sync.clock import Clock, SystemClock
from sync.emulators.bigpanda.bpql import compile_bpql
from sync.emulators.bigpanda.model import (
    ALL_INCIDENTS_ENVIRONMENT_ID,
    DEFAULT_AIA_TAG,
    DEFAULT_API_KEY,
    DEFAULT_ENVIRONMENT_ID,
    DEFAULT_ORG_TOKEN,
    DEFAULT_USER_ID,
    GENERIC_404,
    ApiError,
    error_response,
)
from sync.emulators.bigpanda.routes import (
    ALERTS_PATH,
    CONFIG_KEY,
    LIMITER_KEY,
    STATE_KEY,
    WEBHOOKS_KEY,
    add_routes,
    bearer_token,
)
from sync.emulators.bigpanda.state import State
from sync.emulators.bigpanda.users import (
    DEFAULT_SCIM_RATE_LIMIT_PER_S,
    PEOPLE_KEY,
    SCIM_USERS,
    add_user_routes,
)
from sync.emulators.bigpanda.webhooks import WebhookConfig, Webhooks
from sync.emulators.bplimits import DEFAULT_RATE_LIMIT_SCOPE, DEFAULT_RATE_LIMIT_SHAPE, RateLimiter
from sync.emulators.control import BANNER_KEY, EmulatorControl, Handler, route_template

_V2_PREFIX = "/resources/v2.0/"
_V1_PREFIX = "/resources/v1.0/"

_KNOWN_OPTIONS = frozenset(
    {
        "aia_delay_s",
        "aia_tag",
        "correlation_tag",
        "correlation_window_s",
        "reopen_window_s",
        "max_alerts_per_incident",
        "environments",
        "lowercase_status",
        "api_keys",
        "org_tokens",
        "rate_limit_burst",
        "rate_limit_shape",
        "rate_limit_scope",
        "batch_resolve_rate_limit_per_s",
        "scim_rate_limit_per_s",
        "assignee_email",
        "async_delay_s",
        "repeat_window_s",
        "webhook",
    }
)


def create_app(
    *,
    clock: Clock | None = None,
    api_key: str = DEFAULT_API_KEY,
    org_token: str = DEFAULT_ORG_TOKEN,
    rate_limit_per_s: float | None = 5.0,
    seed: int | None = None,
    **options: Any,
) -> web.Application:
    """The BigPanda emulator app.

    ``rate_limit_per_s`` None turns the rate limits off (also at run time through
    ``POST /_emulator/config``). Options:

    - ``correlation_tag`` (``"host"``): alerts whose tag of that name is equal are
      correlated into one active incident ...
    - ``correlation_window_s`` (7200): ... while the alert starts within this many
      seconds of the incident's start;
    - ``reopen_window_s`` (1800): an event for a resolved incident's alert
      (same ``incident_key``) reopens it within this many seconds of its ``end``;
      afterwards a new incident is created;
    - ``max_alerts_per_incident`` (300);
    - ``environments``: extra environments, a list of ``{"id"?, "name", "filter"}``
      (default: one environment ``Production`` with id :data:`DEFAULT_ENVIRONMENT_ID`
      and filter ``*``; "All Incidents" always exists);
    - ``lowercase_status`` (False): incident ``status``/``severity`` in lower case;
    - ``api_keys``: extra User API Keys, a list (access to every environment) or a
      mapping key -> list of environment ids it may use (others answer 403);
    - ``org_tokens``: extra accepted org tokens;
    - ``async_delay_s`` (1.0): merges and splits are applied this long after their 202
      (on the injected clock, at the next request);
    - ``repeat_window_s`` (10.0): an identical merge/split within it answers 409;
    - ``webhook``: a :class:`WebhookConfig` JSON (``{"url", "envelope", "headers",
      "triggers", "environments", "retry_interval_s", "attempts", "dlq_after",
      "faults"}``) to
      simulate AutoShare to a notifications webhook (off by default; also
      ``POST /_emulator/webhook``);
    - ``rate_limit_burst`` (= the rate): bucket size of the ``token_bucket`` shape;
    - ``rate_limit_shape`` (``"token_bucket"``): the limiter's algorithm, one of
      ``"token_bucket"``, ``"sliding_window"`` (at most ``rate`` accepted requests in any
      trailing second), ``"fixed_window"`` (at most ``rate`` per calendar second of
      ``clock.now()``); v1 (150/min) and batch resolve (1/s) use the same shape;
    - ``rate_limit_scope`` (``"token_method_route"``): what one counter covers, one of
      ``"token_method_route"``, ``"token_route"`` (GET and POST of a path share it),
      ``"org_route"`` (every API key shares it);
    - ``batch_resolve_rate_limit_per_s`` (1.0);
    - ``scim_rate_limit_per_s`` (2.0): each SCIM Users route's limit (docs 4.7,
      :mod:`sync.emulators.bigpanda.users`);
    - ``assignee_email`` (True): an assigned incident's ``assignee`` carries the user's
      e-mail, as a real answer did (docs 5.1); False: only ``user_id`` and ``name``;
    - ``aia_delay_s`` (None = off): AI incident analysis; this long after an incident
      forms (on the injected clock, at the next request) its summary is set in the
      ``aia_tag`` (``"ai_summary"``) incident tag, the tag defined (Text) on first use;
      ``POST .../incidents/{id}/ai/analysis`` (docs 4) runs it at once.

    Shapes and scopes are described in :mod:`sync.emulators.bplimits`; an unknown value
    is a ValueError. Both can be changed at run time through ``POST /_emulator/config``.
    """
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise TypeError(f"unknown BigPanda emulator options: {sorted(unknown)}")
    clock = clock or SystemClock()
    env_specs: list[tuple[str, str, str]] = [
        (DEFAULT_ENVIRONMENT_ID, "Production", "*"),
        (ALL_INCIDENTS_ENVIRONMENT_ID, "All Incidents", "*"),
    ]
    for i, spec in enumerate(options.get("environments") or []):
        env_id = str(spec.get("id") or f"{0x5E1F0B1A2C3D4E5F60718300 + i:024x}")
        filter_text = str(spec.get("filter", "*"))
        compile_bpql(filter_text)  # fail early on a bad filter
        env_specs.append((env_id, str(spec["name"]), filter_text))
    state = State(
        clock=clock,
        seed=seed,
        correlation_tag=str(options.get("correlation_tag", "host")),
        correlation_window_s=int(options.get("correlation_window_s", 7200)),
        reopen_window_s=int(options.get("reopen_window_s", 1800)),
        max_alerts_per_incident=int(options.get("max_alerts_per_incident", 300)),
        environments=env_specs,
        lowercase_status=bool(options.get("lowercase_status", False)),
        async_delay_s=float(options.get("async_delay_s", 1.0)),
        repeat_window_s=float(options.get("repeat_window_s", 10.0)),
        aia_delay_s=(None if options.get("aia_delay_s") is None else float(options["aia_delay_s"])),
        aia_tag=str(options.get("aia_tag", DEFAULT_AIA_TAG)),
    )
    state.assignee_email = bool(options.get("assignee_email", True))
    config: dict[str, Any] = {
        "rate_limit_per_s": rate_limit_per_s,
        "rate_limit_burst": options.get("rate_limit_burst"),
        "batch_resolve_rate_limit_per_s": float(options.get("batch_resolve_rate_limit_per_s", 1.0)),
        "scim_rate_limit_per_s": float(
            options.get("scim_rate_limit_per_s", DEFAULT_SCIM_RATE_LIMIT_PER_S)
        ),
    }
    api_keys = {api_key: DEFAULT_USER_ID}
    key_envs: dict[str, frozenset[str] | None] = {api_key: None}
    extra_keys = options.get("api_keys") or []
    for extra in extra_keys:
        api_keys[str(extra)] = DEFAULT_USER_ID
        envs = extra_keys[extra] if isinstance(extra_keys, Mapping) else None
        key_envs[str(extra)] = None if envs is None else frozenset(str(e) for e in envs)
    config["key_environments"] = key_envs
    org_tokens = {org_token, *(str(t) for t in options.get("org_tokens") or [])}
    config["api_keys"] = api_keys
    limiter = RateLimiter(
        clock,
        shape=options.get("rate_limit_shape", DEFAULT_RATE_LIMIT_SHAPE),
        scope=options.get("rate_limit_scope", DEFAULT_RATE_LIMIT_SCOPE),
    )

    def on_reset() -> None:
        state.reset()
        limiter.clear()
        webhooks.log.clear()
        webhooks.dlq.clear()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except web.HTTPNotFound:
            return error_response(404, GENERIC_404)
        except web.HTTPMethodNotAllowed:
            return error_response(405, "Method not allowed.")

    @web.middleware
    async def auth_and_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_emulator/"):
            return await handler(request)
        token = bearer_token(request)
        state.tick()
        if path.startswith(_V1_PREFIX):
            if token not in org_tokens:
                raise ApiError(401, "Unauthorized: missing or invalid org token.")
            if config["rate_limit_per_s"] is not None and not limiter.allow(
                limiter.v1_key(token), 150 / 60, burst=150.0, window=60.0
            ):
                return web.Response(status=429)
            return await handler(request)
        if path == ALERTS_PATH:
            token = token or request.query.get("access_token")
            if token not in org_tokens:
                raise ApiError(401, "Unauthorized: missing or invalid org token.")
            return await handler(request)
        if path.startswith(_V2_PREFIX):
            if token is None or token not in api_keys:
                raise ApiError(401, "Unauthorized: missing or invalid API key.")
            template = route_template(request)
            rate = config["rate_limit_per_s"]
            if template.endswith("/batch-resolve/alerts") and rate is not None:
                rate = config["batch_resolve_rate_limit_per_s"]
            if template.startswith(SCIM_USERS) and rate is not None:
                rate = config["scim_rate_limit_per_s"]  # 2 per route per second (docs 4.7)
            if rate is not None and template != "unmatched":
                burst = float(config["rate_limit_burst"] or max(1.0, rate))
                key = limiter.key(token, request.method, template)
                if not limiter.allow(key, float(rate), burst=burst):
                    # BigPanda's 429 is bare: no Retry-After, no X-RateLimit-* headers
                    return web.Response(status=429)
            return await handler(request)
        raise ApiError(404, GENERIC_404)

    webhook_config = WebhookConfig()
    webhook_config.update(options.get("webhook") or {})
    webhooks = Webhooks(state, clock, webhook_config)

    app = web.Application(middlewares=[errors, auth_and_limits])
    app[STATE_KEY] = state
    app[WEBHOOKS_KEY] = webhooks
    app.on_startup.append(webhooks.start)
    app.on_cleanup.append(webhooks.stop)
    app[CONFIG_KEY] = config
    app[LIMITER_KEY] = limiter
    EmulatorControl(
        error_response=error_response, on_reset=on_reset, clock=clock, seed=seed
    ).install(app)
    app[BANNER_KEY] = [
        f"API key (User API Key, /resources/v2.0): {api_key}",
        f"Org token (/data/v2/alerts): {org_token}",
        f"Environment: {DEFAULT_ENVIRONMENT_ID} (Production); "
        f"{ALL_INCIDENTS_ENVIRONMENT_ID} (All Incidents)",
    ]
    app[PEOPLE_KEY] = state.people
    add_routes(app.router)
    add_user_routes(app.router)
    return app
