"""The ``/_emulator/`` control API shared by both emulators, and a helper to serve an app.

Routes (same contract on both emulators):

- ``GET /_emulator/stats``: ``{"total", "writes", "requests": {"METHOD /path-template": n},
  "statuses": {"200": n}, "by_method": {"GET": n}}``; with ``?log=1`` also ``"log"``: the
  most recent requests (``t`` = seconds on the emulator's monotonic clock, ``method``,
  ``path``, ``template``, ``status``).
- ``POST /_emulator/faults`` with ``{"rate": 0.3, "status": 503, "methods": ["POST"],
  "path": "/api/now/table/incident", "count": 10, "latency_ms": 0,
  "reset_connection": false, "retry_after_s": null}``: adds a fault rule (every key
  optional). ``path`` is a prefix of the request path. ``count`` caps how many requests
  the rule affects. A matching request gets ``status`` with the emulator's own error
  body (and ``Retry-After`` when ``retry_after_s`` is set), or its connection dropped
  (``reset_connection``), after ``latency_ms``. A rule with only ``latency_ms`` delays
  and then serves normally.
- ``DELETE /_emulator/faults``: removes every rule.
- ``POST /_emulator/reset``: forgets counters and rules and resets the emulator's data.

Control requests are neither counted nor subject to faults.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sync.clock import Clock, SystemClock

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorResponse = Callable[[int, str], web.Response]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOG_SIZE = 20_000


CONTROL_KEY: web.AppKey[EmulatorControl] = web.AppKey("control")
BANNER_KEY: web.AppKey[list[str]] = web.AppKey("banner")
"""Lines ``bpsync emulate`` prints under the URL (credentials, seeded ids)."""


@dataclass
class FaultRule:
    """One injected fault (see the module docstring)."""

    rate: float = 1.0
    status: int | None = 503
    methods: frozenset[str] | None = None
    path: str | None = None
    count: int | None = None
    latency_ms: int = 0
    reset_connection: bool = False
    retry_after_s: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        """Validate a control request body; ValueError names the bad key."""
        if not isinstance(data, dict):
            raise TypeError("fault rule must be a JSON object")
        known = {
            "rate",
            "status",
            "methods",
            "path",
            "count",
            "latency_ms",
            "reset_connection",
            "retry_after_s",
        }
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        rate = float(data.get("rate", 1.0))
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        status = data.get("status", 503)
        if status is not None and not (isinstance(status, int) and 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code or null")
        methods = data.get("methods")
        if methods is not None and not (
            isinstance(methods, list) and all(isinstance(m, str) for m in methods)
        ):
            raise ValueError("methods must be a list of strings")
        count = data.get("count")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError("count must be a non-negative integer or null")
        retry_after = data.get("retry_after_s")
        return cls(
            rate=rate,
            status=status,
            methods=frozenset(m.upper() for m in methods) if methods else None,
            path=data.get("path"),
            count=count,
            latency_ms=int(data.get("latency_ms", 0)),
            reset_connection=bool(data.get("reset_connection", False)),
            retry_after_s=None if retry_after is None else float(retry_after),
        )

    def matches(self, request: web.Request) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.methods is not None and request.method not in self.methods:
            return False
        return self.path is None or request.path.startswith(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "status": self.status,
            "methods": sorted(self.methods) if self.methods else None,
            "path": self.path,
            "count": self.count,
            "latency_ms": self.latency_ms,
            "reset_connection": self.reset_connection,
            "retry_after_s": self.retry_after_s,
        }


def route_template(request: web.Request) -> str:
    """The matched route's path template (``/api/now/table/{table}``), or ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class EmulatorControl:
    """Request counting, fault injection and reset, installed on an emulator app."""

    def __init__(
        self,
        *,
        error_response: ErrorResponse,
        on_reset: Callable[[], None],
        clock: Clock | None = None,
        seed: int | None = None,
    ) -> None:
        self._error_response = error_response
        self._on_reset = on_reset
        self._clock = clock or SystemClock()
        self._random = random.Random(seed)
        self.faults: list[FaultRule] = []
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_SIZE)

    def install(self, app: web.Application) -> None:
        """Add the middleware (first, so faults precede auth and rate limits) and routes."""
        app.middlewares.insert(0, self._middleware)
        app.router.add_get("/_emulator/stats", self._stats)
        app.router.add_post("/_emulator/faults", self._add_fault)
        app.router.add_delete("/_emulator/faults", self._clear_faults)
        app.router.add_post("/_emulator/reset", self._reset)
        app[CONTROL_KEY] = self

    def reset_counters(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self.by_method.clear()
        self.log.clear()

    def _pick_fault(self, request: web.Request) -> FaultRule | None:
        for rule in self.faults:
            if rule.matches(request) and self._random.random() < rule.rate:
                if rule.count is not None:
                    rule.count -= 1
                return rule
        return None

    def _record(self, request: web.Request, template: str, status: int) -> None:
        self.requests[f"{request.method} {template}"] += 1
        self.statuses[str(status)] += 1
        self.by_method[request.method] += 1
        self.log.append(
            {
                "t": self._clock.monotonic(),
                "method": request.method,
                "path": request.path,
                "template": template,
                "status": status,
            }
        )

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        template = route_template(request)
        fault = self._pick_fault(request)
        status = 0  # 0 in the log means the connection was dropped
        try:
            if fault is not None:
                if fault.latency_ms:
                    await self._clock.sleep(fault.latency_ms / 1000)
                if fault.reset_connection:
                    if request.transport is not None:
                        request.transport.abort()
                    raise ConnectionResetError("fault injection: connection reset")
                if fault.status is not None:
                    response = self._error_response(fault.status, "Injected fault")
                    if fault.retry_after_s is not None:
                        response.headers["Retry-After"] = str(math.ceil(fault.retry_after_s))
                    status = response.status
                    return response
            result = await handler(request)
            status = result.status
            return result
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            self._record(request, template, status)

    async def _stats(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {
            "total": sum(self.requests.values()),
            "writes": sum(n for m, n in self.by_method.items() if m in WRITE_METHODS),
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "by_method": dict(self.by_method),
            "faults": [rule.to_json() for rule in self.faults],
        }
        if request.query.get("log") in {"1", "true"}:
            body["log"] = list(self.log)
        return web.json_response(body)

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            rule = FaultRule.from_json(await request.json())
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.faults.append(rule)
        return web.json_response({"faults": [r.to_json() for r in self.faults]}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"faults": []})

    async def _reset(self, request: web.Request) -> web.Response:
        self.faults.clear()
        self.reset_counters()
        self._on_reset()
        return web.json_response({"reset": True})


@asynccontextmanager
async def serve_app(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``app`` on ``host:port`` (0 = any free port); yields its base URL."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        actual = sockets[0].getsockname()[1] if sockets else port
        yield f"http://{host}:{actual}"
    finally:
        await runner.cleanup()
