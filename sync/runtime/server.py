"""The daemon's HTTP server (aiohttp.web): ``/healthz``, ``/readyz``, ``/metrics``.

- ``GET /healthz``: 200 ``{"status": "alive"}`` while the event loop answers.
- ``GET /readyz``: 200 when ready, else 503; the JSON body gives ``status``, ``leader``
  (0/1) and ``reasons`` (see :mod:`sync.runtime.health` for the rule). The database is
  pinged on each request, bounded by ``DB_PING_TIMEOUT_S``.
- ``GET /metrics``: the Prometheus text exposition of the daemon's own registry.
- ``POST /webhooks/bigpanda``, ``POST /webhooks/servicenow``: the push receivers, with
  ``[push] enabled`` (:mod:`sync.runtime.receiver`).

No access log: probes every few seconds would drown the daemon's own lines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from sync.errors import ConfigError
from sync.metrics import CONTENT_TYPE, Metrics
from sync.runtime.health import ReadinessSource
from sync.runtime.receiver import PairReceivers, PushReceiver

log = logging.getLogger(__name__)

#: the longest /readyz waits for the database
DB_PING_TIMEOUT_S = 2.0

DbPing = Callable[[], Awaitable[None]]

_HEALTH_KEY: web.AppKey[ReadinessSource] = web.AppKey("health")
_METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
_PING_KEY: web.AppKey[DbPing] = web.AppKey("db_ping")


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


def make_app(
    *,
    health: ReadinessSource,
    metrics: Metrics,
    db_ping: DbPing,
    push: PushReceiver | PairReceivers | None = None,
) -> web.Application:
    app = web.Application()
    app[_HEALTH_KEY] = health
    app[_METRICS_KEY] = metrics
    app[_PING_KEY] = db_ping
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
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
) -> HttpServer:
    """Bind and serve; a port that cannot be bound is a one-line ConfigError (http_port).
    ``push``: the webhook receivers (push mode), when on."""
    app = make_app(health=health, metrics=metrics, db_ping=db_ping, push=push)
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


__all__ = ["DB_PING_TIMEOUT_S", "HttpServer", "make_app", "start_http_server"]
