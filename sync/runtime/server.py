"""The daemon's HTTP server (aiohttp.web): ``/healthz``, ``/readyz``, ``/metrics``.

- ``GET /healthz``: 200 ``{"status": "alive"}`` while the event loop answers.
- ``GET /readyz``: 200 when ready, else 503; the JSON body gives ``status``, ``leader``
  (0/1) and ``reasons`` (see :mod:`sync.runtime.health` for the rule). The database is
  pinged on each request, bounded by ``DB_PING_TIMEOUT_S``.
- ``GET /metrics``: the Prometheus text exposition of the daemon's own registry.
- ``POST /webhooks/bigpanda``, ``POST /webhooks/servicenow``: the push receivers, with
  ``[push] enabled`` (:mod:`sync.runtime.receiver`).
- ``GET /`` and ``GET /status.json``: the status page (HTML without script, and the same
  data as JSON; ``?q=`` a BigPanda incident id or INC number shows that link's trail),
  read-only (:mod:`sync.runtime.status`). With ``status_token`` set, both need
  ``Authorization: Bearer <token>`` or HTTP Basic with the token as password (any
  user: a browser without script asks for it), compared in constant time; otherwise a
  401 with ``WWW-Authenticate: Basic realm="bpsync"``. Never a token in the URL.

No access log: probes every few seconds would drown the daemon's own lines.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import SecretStr

from sync.errors import ConfigError
from sync.metrics import CONTENT_TYPE, Metrics
from sync.runtime.health import ReadinessSource
from sync.runtime.receiver import PairReceivers, PushReceiver
from sync.runtime.status import StatusSource, clean_query
from sync.runtime.status_page import render_page

log = logging.getLogger(__name__)

#: the longest /readyz waits for the database
DB_PING_TIMEOUT_S = 2.0

DbPing = Callable[[], Awaitable[None]]

_HEALTH_KEY: web.AppKey[ReadinessSource] = web.AppKey("health")
_METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
_PING_KEY: web.AppKey[DbPing] = web.AppKey("db_ping")
_STATUS_KEY: web.AppKey[StatusSource] = web.AppKey("status")
_TOKEN_KEY: web.AppKey[bytes] = web.AppKey("status_token", bytes)

#: what every status answer says about itself: never cached, never framed, no scripts
_STATUS_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


async def _healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _ping(db_ping: DbPing) -> str | None:
    """None when the database answered, else one line saying why not."""
    try:
        await asyncio.wait_for(db_ping(), timeout=DB_PING_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {DB_PING_TIMEOUT_S:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        line = (str(exc) or type(exc).__name__).splitlines()[0]
        return line[:300]
    return None


async def _readyz(request: web.Request) -> web.Response:
    health = request.app[_HEALTH_KEY]
    db_error = await _ping(request.app[_PING_KEY])
    readiness = health.readiness(db_error)
    return web.json_response(readiness.as_json(), status=200 if readiness.ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[_METRICS_KEY].render()
    response = web.Response(body=body)
    # set the full header: aiohttp's content_type= refuses a charset parameter
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def presented_token(authorization: str) -> bytes | None:
    """The token an ``Authorization`` header presents: ``Bearer <token>``, or ``Basic``
    with the token as password (any user name); None for anything else."""
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value.encode()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


def _authorised(request: web.Request) -> bool:
    expected = request.app.get(_TOKEN_KEY)
    if not expected:
        return True
    presented = presented_token(request.headers.get("Authorization", ""))
    return presented is not None and hmac.compare_digest(presented, expected)


def _status_response(response: web.Response) -> web.Response:
    response.headers.update(_STATUS_HEADERS)
    return response


async def _status(request: web.Request, *, as_json: bool) -> web.Response:
    if not _authorised(request):
        response = web.Response(status=401, text="401: the status page needs its token\n")
        response.headers["WWW-Authenticate"] = 'Basic realm="bpsync", charset="UTF-8"'
        return _status_response(response)
    try:
        query = clean_query(request.query.get("q"))
    except ValueError as exc:
        if as_json:
            return _status_response(web.json_response({"error": str(exc)}, status=400))
        return _status_response(
            web.Response(
                status=400, text=render_page([], None, error=str(exc)), content_type="text/html"
            )
        )
    pairs = await request.app[_STATUS_KEY](query)
    if as_json:
        body = {"query": query, "pairs": [pair.as_json() for pair in pairs]}
        return _status_response(web.json_response(body))
    text = render_page(pairs, query)
    return _status_response(web.Response(text=text, content_type="text/html"))


async def _status_html(request: web.Request) -> web.Response:
    return await _status(request, as_json=False)


async def _status_json(request: web.Request) -> web.Response:
    return await _status(request, as_json=True)


def make_app(
    *,
    health: ReadinessSource,
    metrics: Metrics,
    db_ping: DbPing,
    push: PushReceiver | PairReceivers | None = None,
    status: StatusSource | None = None,
    status_token: SecretStr | None = None,
) -> web.Application:
    """``status``: the pairs' status (``GET /``, ``/status.json``); ``status_token``: the
    token they ask for, when set."""
    app = web.Application()
    app[_HEALTH_KEY] = health
    app[_METRICS_KEY] = metrics
    app[_PING_KEY] = db_ping
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    if status is not None:
        app[_STATUS_KEY] = status
        app[_TOKEN_KEY] = status_token.get_secret_value().encode() if status_token else b""
        app.router.add_get("/", _status_html)
        app.router.add_get("/status.json", _status_json)
    if push is not None:
        push.install(app)
    return app


class HttpServer:
    """A started server: ``port`` is the bound port (the real one when 0 was asked)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming, not binding
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()


async def start_http_server(
    host: str,
    port: int,
    *,
    health: ReadinessSource,
    metrics: Metrics,
    db_ping: DbPing,
    push: PushReceiver | PairReceivers | None = None,
    status: StatusSource | None = None,
    status_token: SecretStr | None = None,
) -> HttpServer:
    """Bind and serve; a port that cannot be bound is a one-line ConfigError (http_port).
    ``push``: the webhook receivers (push mode), when on; ``status``, ``status_token``:
    the status page (:func:`make_app`)."""
    app = make_app(
        health=health,
        metrics=metrics,
        db_ping=db_ping,
        push=push,
        status=status,
        status_token=status_token,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}", setting="http_port"
        ) from None
    actual = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            actual = int(address[1])
            break
    log.info("http server listening", extra={"host": host, "port": actual})
    return HttpServer(runner, host, actual)


__all__ = ["DB_PING_TIMEOUT_S", "HttpServer", "make_app", "presented_token", "start_http_server"]
